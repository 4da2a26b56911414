"""Swap a model's nn.Linear layers for STLinear in place (like torchao's ``sparsify_``).

Each converted layer is ``STLinear.from_linear(linear, config)``: ``Wt = encode_weight(W, F)``
for the init's (E, F, D), bias copied, so the converted model starts as close to the dense one
as the rank allows (exactly equal with an exact init, e.g. ``init="strassen", tile=2, rank=7``).
The data-free start can be improved on real activations: ``convert(..., calibration_data=...)``
(least squares for Wt, or layer-wise distillation of E, D and Wt; see ``stl_torch.calibrate``).
"""
import fnmatch
from dataclasses import asdict, dataclass, field
from typing import Callable, List, Optional, Sequence, Union

import torch
from torch import nn

from . import calibrate as stl_calib
from . import decode, hub
from ._call import call_model
from .config import CalibrationConfig, STLConfig
from .flops import linear_macs, stl_macs
from .nn import STLinear

__all__ = ["convert", "ConversionReport", "LayerConversion"]


@dataclass
class LayerConversion:
    """One nn.Linear: converted or skipped (with the reason); params and MACs per token."""
    name: str
    in_features: int
    out_features: int
    converted: bool
    reason: str = ""
    params_before: int = 0
    params_after: int = 0
    macs_before: float = 0  # multiply-adds per token (row), dense
    macs_after: float = 0   # per token after conversion (STL formula, no padding)
    # with calibration data: relative output error on held-out calibration tiles of the
    # data-free start, the least-squares Wt, the distilled (E, D, Wt), and of what was kept
    err_data_free: Optional[float] = None
    err_lstsq: Optional[float] = None
    err_distill: Optional[float] = None
    err_calibrated: Optional[float] = None


@dataclass
class ConversionReport:
    config: STLConfig
    layers: List[LayerConversion] = field(default_factory=list)
    params_before: int = 0  # whole model (unique parameters)
    params_after: int = 0

    @property
    def converted(self):
        return [x for x in self.layers if x.converted]

    @property
    def skipped(self):
        return [x for x in self.layers if not x.converted]

    @property
    def macs_before(self):
        """Multiply-adds per token of all nn.Linear layers before conversion."""
        return sum(x.macs_before for x in self.layers)

    @property
    def macs_after(self):
        return sum(x.macs_after for x in self.layers)

    def to_dict(self):
        return {"config": asdict(self.config), "layers": [asdict(x) for x in self.layers],
                "params_before": self.params_before, "params_after": self.params_after,
                "macs_per_token_before": self.macs_before, "macs_per_token_after": self.macs_after}

    def __str__(self):
        c = self.config
        calibrated = any(x.err_calibrated is not None for x in self.layers)
        out = [f"STL conversion (tile={c.tile}, rank={c.rank}, init={c.init!r}, causal={c.causal}): "
               f"{len(self.converted)} of {len(self.layers)} nn.Linear layers converted",
               "| layer | in -> out | status | params | MACs/token |" + (" calibration error |" if calibrated else ""),
               "|---|---|---|---:|---:|" + ("---|" if calibrated else "")]
        for x in self.layers:
            status = "converted" if x.converted else f"skipped: {x.reason}"
            row = (f"| {x.name} | {x.in_features} -> {x.out_features} | {status} | "
                   f"{x.params_before:,} -> {x.params_after:,} | "
                   f"{x.macs_before:,.0f} -> {x.macs_after:,.0f} |")
            if calibrated:
                row += (f" {x.err_data_free:.3f} -> {x.err_calibrated:.3f} |" if x.err_calibrated is not None
                        else " – |")
            out.append(row)
        ratio = self.macs_before / self.macs_after if self.macs_after else float("nan")
        out.append(f"model parameters: {self.params_before:,} -> {self.params_after:,} "
                   f"({self.params_after / max(self.params_before, 1):.2f}x)")
        out.append(f"linear multiply-adds per token: {self.macs_before:,.0f} -> {self.macs_after:,.0f} "
                   f"({ratio:.2f}x fewer)")
        return "\n".join(out)


def _param_count(model):
    return sum(p.numel() for p in model.parameters())


def _swap(model, replace):
    """One walk over ``model``: every reference to a module ``old`` with ``id(old)`` in
    ``replace`` becomes ``replace[id(old)]``."""
    for parent in list(model.modules()):
        for cname, child in list(parent._modules.items()):  # named_children() dedups
            if id(child) in replace:
                setattr(parent, cname, replace[id(child)])


def _make_filter(filter):
    if filter is None:
        return lambda mod, fqn: True
    if callable(filter):
        return filter
    if isinstance(filter, str):
        filter = [filter]
    if isinstance(filter, (list, tuple)) and all(isinstance(p, str) for p in filter):
        pats = list(filter)
        return lambda mod, fqn: any(fnmatch.fnmatchcase(fqn, p) for p in pats)
    raise ValueError("convert: argument 'filter' must be None, a list of fnmatch patterns or a "
                     f"callable (module, fqn) -> bool, got {type(filter).__name__}")


@torch.no_grad()
def _input_dims(model, example_input, linears):
    """{id(linear): largest input dim it saw} over one call of ``model`` on ``example_input``."""
    seen = {}

    def hook(mod, args):
        seen[id(mod)] = max(seen.get(id(mod), 0), args[0].dim())

    handles = [m.register_forward_pre_hook(hook) for m in linears]
    was_training = model.training
    model.eval()
    try:
        call_model(model, example_input)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return seen


def _output_embedding(model):
    get = getattr(model, "get_output_embeddings", None)
    if not callable(get):
        return None
    try:
        return get()
    except (NotImplementedError, AttributeError):
        return None


def convert(model: nn.Module, config: Optional[STLConfig] = None,
            filter: Union[None, Sequence[str], Callable[[nn.Module, str], bool]] = None, *,
            calibration_data=None, calibration: Optional[CalibrationConfig] = None,
            only_if_cheaper: bool = True, example_input=None, progress: bool = False) -> ConversionReport:
    """Replace every selected ``nn.Linear`` of ``model`` by an ``STLinear`` (in place).

    ``config``: the ``STLConfig`` of every converted layer (default ``STLConfig()``; ``init=None``
    converts with ``"fitted"``, the closest start). ``filter``: None (every nn.Linear), a list of
    fnmatch patterns on the qualified name (``"*.mlp.*"``), or a callable ``(module, fqn) -> bool``.
    Selected layers are skipped, with the reason in the report, when in/out features do not
    divide by the tile, when the weight is tied to another module's parameter (converting would
    silently untie it: untie first if you mean it), when the parent is
    ``nn.MultiheadAttention`` (it reads ``out_proj.weight`` directly), when the layer is the model's
    output embedding (``model.get_output_embeddings()``, read through ``.weight`` by transformers'
    ``resize_token_embeddings`` / ``tie_weights``; an STLinear has no ``.weight``), and, with
    ``only_if_cheaper`` (the default), when STL would need at least as many multiply-adds per
    token as the dense layer (narrow layers: encode and decode cost r*(N+P) per row, see
    docs/operator.md). A module reachable under several names is converted once and replaced
    everywhere.

    ``calibration_data`` (optional): an iterable of model inputs (a tensor, a tuple of args or a
    dict of kwargs; read several times). Layers are then converted sequentially in execution
    order, each fitted on the inputs it sees in the partly converted model, as ``calibration``
    (a ``CalibrationConfig``, default ``CalibrationConfig()``: least squares) says. Layers the
    data never reaches stay data-free. ``progress``: a tqdm bar per layer.
    Without calibration data the conversion is data-free: ``Wt = encode_weight(W, F)``.

    ``example_input`` (optional; default: the first calibration batch, if any): a model input (as
    for ``calibration_data``). The model runs on it once, and layers that only ever see inputs of
    at most 2 dims, ``(batch, features)`` with no token axis (a classifier head), are skipped: STL
    computes such inputs row by row, each row padded to a tile, costing more than dense.

    The conversion is recorded in ``model.config.stl_torch`` when the model has a Hugging Face
    config (``save_pretrained`` writes it, ``stl_torch.from_pretrained`` reads it back), and the
    model's tile cache is enabled (``stl_torch.decode.enable``): tiles start at each sequence's
    first real token (``attention_mask``) and ``generate()`` decodes incrementally.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"convert: argument 'model' must be an nn.Module, got {type(model).__name__}")
    if isinstance(model, nn.Linear):
        raise ValueError("convert: argument 'model' is itself an nn.Linear and cannot be replaced "
                         "in place; use STLinear.from_linear(model, config)")
    config = STLConfig() if config is None else config
    if not isinstance(config, STLConfig):
        raise ValueError(f"convert: argument 'config' must be an STLConfig, got {type(config).__name__}")
    config = config.resolved(converting=True)
    calibration = CalibrationConfig() if calibration is None else calibration
    if not isinstance(calibration, CalibrationConfig):
        raise ValueError("convert: argument 'calibration' must be a CalibrationConfig, got "
                         f"{type(calibration).__name__}")
    keep = _make_filter(filter)
    t, r = config.tile, config.rank
    batches = None if calibration_data is None else list(calibration_data)
    if example_input is None and batches:
        example_input = batches[0]
    dims = None
    if example_input is not None:
        dims = _input_dims(model, example_input, [m for m in model.modules() if isinstance(m, nn.Linear)])
    out_emb = _output_embedding(model)
    report = ConversionReport(config, params_before=_param_count(model))

    owners = {}  # parameter id -> first qualified name (to spot tied weights)
    for mname, mod in model.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            owners.setdefault(id(p), []).append(f"{mname}.{pname}" if mname else pname)
    parents = {id(child): type(parent) for parent in model.modules() for child in parent.children()}

    chosen = []
    for fqn, mod in model.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        n, p = mod.in_features, mod.out_features
        nb = p if mod.bias is not None else 0
        entry = LayerConversion(fqn, n, p, False, params_before=n * p + nb, params_after=n * p + nb,
                                macs_before=linear_macs(1, n, p), macs_after=linear_macs(1, n, p))
        report.layers.append(entry)
        if not keep(mod, fqn):
            entry.reason = "excluded by filter"
            continue
        tied = [o for o in owners.get(id(mod.weight), []) if o != f"{fqn}.weight"]
        if n % t or p % t:
            bad = [f"{k}={v}" for k, v in (("in_features", n), ("out_features", p)) if v % t]
            entry.reason = f"{', '.join(bad)} not divisible by tile={t}"
        elif tied:
            entry.reason = f"weight tied to {tied[0]}"
        elif issubclass(parents.get(id(mod), nn.Module), nn.MultiheadAttention):
            entry.reason = "inside nn.MultiheadAttention (weight read directly)"
        elif mod is out_emb:
            entry.reason = "output embedding (read through .weight by resize_token_embeddings/tie_weights)"
        elif dims is not None and 0 < dims.get(id(mod), 0) <= 2:
            entry.reason = ("2-D input (batch, features): STL would compute it row by row, costing more "
                            "than dense")
        elif only_if_cheaper and stl_macs(t, n, p, t, r) >= linear_macs(t, n, p):
            entry.reason = (f"STL would cost {stl_macs(t, n, p, t, r) / t:,.0f} multiply-adds per token, "
                            f"dense {linear_macs(1, n, p):,} (only_if_cheaper=False converts it anyway)")
        else:
            chosen.append((fqn, mod, entry))
            entry.converted = True
            entry.params_after = r * (n // t) * (p // t) + 2 * r * t * t + nb
            entry.macs_after = stl_macs(t, n, p, t, r) / t  # one tile of t rows, per row

    def make(mod):
        return STLinear.from_linear(mod, config)

    pending = {fqn: (mod, entry) for fqn, mod, entry in chosen}
    if batches is not None and pending:
        bar = stl_calib.progress_bar(len(pending), progress)
        while pending:
            caps = stl_calib.capture_next_group(model, {f: m for f, (m, _) in pending.items()},
                                                batches, t, calibration.max_rows)
            if not caps:
                break  # the rest never runs on this data: data-free below
            swapped = {}
            for fqn, X in caps.items():
                mod, entry = pending.pop(fqn)
                new = swapped[id(mod)] = make(mod)
                res = stl_calib.fit_layer(new, mod, X, calibration)
                entry.err_data_free, entry.err_lstsq = res["data_free"], res["lstsq"]
                entry.err_distill, entry.err_calibrated = res["distill"], res["final"]
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(f"{fqn}: {res['data_free']:.3f} -> {res['final']:.3f}")
            _swap(model, swapped)  # the next group is captured on the converted model
        if bar is not None:
            bar.close()
    _swap(model, {id(mod): make(mod) for mod, _ in pending.values()})
    report.params_after = _param_count(model)
    if report.converted:
        hub.record_conversion(model, {x.name: config for x in report.converted})
        decode.enable(model)
    return report

