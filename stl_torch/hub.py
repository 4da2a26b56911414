"""Save and reload converted Hugging Face models.

``convert()`` records what it converted in ``model.config.stl_torch`` (when the model has a
Hugging Face config), so ``model.save_pretrained(d)`` writes it into ``config.json`` next to the
weights (``E``, ``Wt``, ``D``, ``bias`` and the causal masks, in safetensors as usual).
:func:`from_pretrained` rebuilds that model: the recorded layers are STLinear from the start,
built on the meta device, so no initialisation runs for them; transformers then loads every weight.

Plain ``transformers.AutoModelForCausalLM.from_pretrained`` must not load such a folder: it would build
the recorded layers as nn.Linear, find no ``weight`` for them and initialise them at random (reporting
only missing keys). So the config also carries a ``quantization_config`` without a ``quant_method``
(:data:`GUARD`), which transformers' loader refuses with a ``ValueError`` (an unknown ``quant_method``
would only be warned about and skipped); :func:`from_pretrained` removes it before loading.
"""
import copy
from dataclasses import fields

import torch

from . import decode
from . import init as stl_init
from .config import STLConfig
from .nn import STLinear

__all__ = ["from_pretrained", "record_conversion", "conversion_record", "drop_gguf_quantization"]

KEY = "stl_torch"
FORMAT = 1
# config.quantization_config of a converted model: no quant_method, so transformers refuses to load it
GUARD = {KEY: "Strassen-Tile (STL) layers replace nn.Linear layers of this model: load it with "
              "stl_torch.from_pretrained(path). (No quant_method on purpose: plain transformers refuses this "
              "folder instead of building those layers as dense ones with random weights.)"}


def _is_guard(qc):
    return isinstance(qc, dict) and KEY in qc and "quant_method" not in qc


def _guard(config):
    """Mark ``config`` as unloadable by plain transformers, unless it holds a real quantization config
    (a GGUF model's, dropped later by :func:`drop_gguf_quantization`, which then adds the mark)."""
    if getattr(config, "quantization_config", None) is None:
        config.quantization_config = dict(GUARD)


def record_conversion(model, layers):
    """Add ``layers`` ({qualified name: STLConfig}, names relative to ``model``) to the record in
    ``model.config.stl_torch``. No-op for a model without a Hugging Face config."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict") or not layers:
        return None
    rec = getattr(config, KEY, None) or {"format": FORMAT, "root": type(model).__name__, "configs": [],
                                          "layers": {}}
    if rec.get("root") != type(model).__name__:  # names of another (inner) module: make them relative to it
        raise ValueError(f"convert: this model's config already records a conversion of a "
                         f"{rec.get('root')}; convert that module, not a {type(model).__name__}")
    for name, cfg in layers.items():
        d = cfg.to_dict()
        if d not in rec["configs"]:
            rec["configs"].append(d)
        rec["layers"][name] = rec["configs"].index(d)
    setattr(config, KEY, rec)
    _guard(config)
    return rec


def drop_gguf_quantization(model):
    """Make a transformers model loaded from a GGUF file (``from_pretrained(..., gguf_file=...)``)
    saveable: its weights are already dequantized to ordinary tensors, but transformers keeps the
    GGUF quantizer on the model and refuses ``save_pretrained`` ("quantized with gguf and is not
    serializable"). Removes the quantizer and the config's ``quantization_config``; the weights and
    outputs are unchanged. Returns ``model``; a no-op for any other model."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None or "gguf" not in type(quantizer).__name__.lower():
        return model
    model.hf_quantizer = None
    try:  # an attribute in some transformers releases, derived from hf_quantizer in others
        model.is_quantized = False
    except AttributeError:
        pass
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "quantization_config"):
        del config.quantization_config
        if conversion_record(config) is not None:  # converted before: it still must not load as dense
            _guard(config)
    return model


def conversion_record(config):
    """The record of a (saved) config, or None."""
    return getattr(config, KEY, None)


def _root(model, rec):
    """The module the record's names are relative to (convert() may have been given an inner model)."""
    if type(model).__name__ == rec["root"]:
        return model
    found = [m for m in model.modules() if type(m).__name__ == rec["root"]]
    if len(found) != 1:
        raise ValueError(f"from_pretrained: the conversion record is relative to a {rec['root']}, and this "
                         f"{type(model).__name__} holds {len(found)} of them")
    return found[0]


def _swap_in_skeletons(model, rec):
    """Replace each recorded nn.Linear by an STLinear built on the meta device: no initialisation runs;
    its tensors are filled by loading the checkpoint."""
    if rec.get("format") != FORMAT:
        raise ValueError(f"from_pretrained: unknown stl_torch record format {rec.get('format')!r}")
    root = _root(model, rec)
    names = [f.name for f in fields(STLConfig)]
    configs = [STLConfig(**{k: v for k, v in c.items() if k in names}) for c in rec["configs"]]
    for fqn, i in rec["layers"].items():
        parent_name, _, child = fqn.rpartition(".")
        parent = root.get_submodule(parent_name) if parent_name else root
        lin = getattr(parent, child)
        if isinstance(lin, STLinear):
            continue
        if not isinstance(lin, torch.nn.Linear):
            raise ValueError(f"from_pretrained: recorded layer '{fqn}' is a {type(lin).__name__}, expected nn.Linear")
        new = STLinear(lin.in_features, lin.out_features, lin.bias is not None, device="meta",
                       dtype=lin.weight.dtype, config=configs[i])
        if not lin.weight.is_meta:
            new = new.to_empty(device=lin.weight.device)
        setattr(parent, child, new)


def _model_class(config):
    import transformers
    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    return transformers.AutoModelForCausalLM._model_mapping[type(config)]


def from_pretrained(path, model_class=None, **kwargs):
    """A model saved with ``save_pretrained`` after ``stl_torch.convert()``, with its trained
    weights, exactly, and its tile cache enabled (``stl_torch.decode``): ready for ``generate()``.

    ``path``: a directory (or hub name) with ``config.json`` holding the ``stl_torch`` record.
    ``model_class``: the transformers class to build (default: the config's ``architectures``).
    ``kwargs`` go to ``model_class.from_pretrained`` (``dtype``, ``device_map``, ...). The recorded
    layers are STLinear before the weights are loaded, so no initialisation runs for them."""
    import os

    import transformers
    if isinstance(path, (str, os.PathLike)) and (os.path.sep in str(path) or str(path).startswith(".")) \
            and not os.path.isdir(path):
        raise FileNotFoundError(f"from_pretrained: argument 'path' is {str(path)!r}, which is not a directory "
                                "(expected a folder written by model.save_pretrained)")
    where = {k: kwargs[k] for k in ("revision", "token", "cache_dir", "local_files_only", "subfolder",
                                    "trust_remote_code") if k in kwargs}  # how to find the config too
    config = kwargs.pop("config", None)
    config = copy.deepcopy(config) if config is not None else transformers.AutoConfig.from_pretrained(path, **where)
    rec = conversion_record(config)
    if rec is None:
        raise ValueError(f"from_pretrained: {path} has no '{KEY}' record in its config: it was not saved from a "
                         "model converted by stl_torch.convert() (load it with transformers instead)")
    if _is_guard(getattr(config, "quantization_config", None)):
        del config.quantization_config  # transformers refuses it (see the module docstring); put back below
    cls = model_class or _model_class(config)

    def __init__(self, config, *args, **kw):
        cls.__init__(self, config, *args, **kw)
        _swap_in_skeletons(self, conversion_record(config))

    # a subclass that converts right after construction, i.e. before transformers loads the weights
    skeleton = type(cls.__name__, (cls,), {"__init__": __init__, "__module__": cls.__module__,
                                           "__qualname__": cls.__qualname__})
    loaded = skeleton.from_pretrained(path, config=config, **kwargs)
    model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True: (model, info)
    model.__class__ = cls  # the subclass only differed in __init__
    _guard(model.config)  # saving it again keeps it away from plain transformers (older folders gain it)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, STLinear) and m.causal:  # deterministic: never trust a stale copy
                mE, mD = stl_init.causal_masks(m.tile, m.rank)
                m.mask_E.copy_(mE)
                m.mask_D.copy_(mD)
    decode.enable(model)
    return loaded if isinstance(loaded, tuple) else model
