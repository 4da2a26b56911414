"""Swap a model's nn.Linear layers for STLinear in place (like torchao's ``sparsify_``).

Each converted layer is ``STLinear.from_linear(linear, config)``: ``Wt = encode_weight(W, F)``
for the init's (E, F, D), bias copied, so the converted model starts as close to the dense one
as the rank allows (exactly equal with an exact init, e.g. ``init="strassen", tile=2, rank=7``).
The data-free start can be improved on real activations: ``convert(..., calibration_data=...)``
(least squares for Wt, or layer-wise distillation of E, D and Wt; see ``stl_torch.calibrate``).
"""
import fnmatch
import inspect
import re
import warnings
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

__all__ = ["convert", "plan_conversion", "apply_conversion", "ConversionReport", "LayerConversion"]


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
    """What ``plan_conversion`` chose (``applied`` False: the model is untouched; ``converted`` lists
    the layers it will convert) or what ``apply_conversion``/``convert`` did (``applied`` True).
    MACs per token assume inputs with a token axis ``(*, tokens, features)``, as ``stl_torch.flops``
    counts them; layers seen with 2-D inputs are skipped when an ``example_input`` is given."""
    config: STLConfig
    layers: List[LayerConversion] = field(default_factory=list)
    params_before: int = 0  # whole model (unique parameters)
    params_after: int = 0
    applied: bool = False

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
               f"{len(self.converted)} of {len(self.layers)} nn.Linear layers "
               + ("converted" if self.applied else "to convert (a plan: the model is unchanged)"),
               "| layer | in -> out | status | params | MACs/token |" + (" calibration error |" if calibrated else ""),
               "|---|---|---|---:|---:|" + ("---|" if calibrated else "")]
        for x in self.layers:
            status = ("converted" if self.applied else "to convert") if x.converted else f"skipped: {x.reason}"
            row = (f"| {x.name} | {x.in_features} -> {x.out_features} | {status} | "
                   f"{x.params_before:,} -> {x.params_after:,} | "
                   f"{x.macs_before:,.0f} -> {x.macs_after:,.0f} |")
            if calibrated:
                row += (f" {x.err_data_free:.3f} -> {x.err_calibrated:.3f} |" if x.err_calibrated is not None
                        else " – |")
            out.append(row)
        ratio = self.macs_before / self.macs_after if self.macs_after else float("nan")
        if self.applied:
            out.append(f"model parameters: {self.params_before:,} -> {self.params_after:,} "
                       f"({self.params_after / max(self.params_before, 1):.2f}x)")
        out.append(f"linear multiply-adds per token: {self.macs_before:,.0f} -> {self.macs_after:,.0f} "
                   f"({ratio:.2f}x fewer)")
        if self.applied and self.converted and c.causal and not calibrated:
            # a causal decomposition with rank < t^3 cannot equal the dense layer (operator.md, section 8)
            out.append("note: causal layers converted without calibration_data start far from the dense "
                       "layers (a causal STL of rank < tile^3 cannot be exact): a pretrained language model "
                       "generates nonsense until it is calibrated (convert(..., calibration_data=...)) and "
                       "fine-tuned")
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


_REGEX_CHARS = re.compile(r"[|()^$+{}\\]")


def _make_filter(filter):
    if filter is None:
        return lambda mod, fqn: True
    if callable(filter):
        return filter
    if isinstance(filter, str):
        filter = [filter]
    if isinstance(filter, (list, tuple)) and all(isinstance(p, str) for p in filter):
        pats = list(filter)
        for pat in pats:
            if _REGEX_CHARS.search(pat):
                warnings.warn(f"convert: filter pattern {pat!r} looks like a regular expression; patterns are "
                              "fnmatch globs matched against the whole name (e.g. '*.mlp.*'). For a regex pass "
                              "a callable: filter=lambda mod, fqn: re.search(PATTERN, fqn) is not None",
                              UserWarning, stacklevel=4)
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
    try:
        _trial(model, example_input)
    finally:
        for h in handles:
            h.remove()
    return seen


@torch.no_grad()
def _trial(model, example_input):
    was_training = model.training
    model.eval()
    try:
        call_model(model, example_input)
    finally:
        model.train(was_training)


def _model_method(model, name):
    """``model.name()`` (e.g. transformers' get_output_embeddings, timm's get_classifier), or None."""
    get = getattr(model, name, None)
    if not callable(get):
        return None
    try:
        return get()
    except (NotImplementedError, AttributeError, TypeError):
        return None


_SOURCES = {}


def _reads_weight(parent, cname):
    """Does the code of ``parent``'s class read ``self.<cname>.weight`` (e.g. ``F.linear(x,
    self.qkv.weight, ...)``)? An STLinear has no dense weight, so such a layer must stay dense."""
    cls = type(parent)
    if cls not in _SOURCES:
        try:
            _SOURCES[cls] = inspect.getsource(cls)
        except (OSError, TypeError):
            _SOURCES[cls] = ""
    return re.search(rf"\bself\.{re.escape(cname)}\.weight\b", _SOURCES[cls]) is not None


def _check_config(config):
    config = STLConfig() if config is None else config
    if not isinstance(config, STLConfig):
        raise ValueError(f"convert: argument 'config' must be an STLConfig, got {type(config).__name__}")
    return config.resolved(converting=True)


def _check_model(model):
    if not isinstance(model, nn.Module):
        raise ValueError(f"convert: argument 'model' must be an nn.Module, got {type(model).__name__}")
    if isinstance(model, nn.Linear):
        raise ValueError("convert: argument 'model' is itself an nn.Linear and cannot be replaced "
                         "in place; use STLinear.from_linear(model, config)")


def _skip_reason(mod, fqn, ctx):
    """Why the selected nn.Linear ``mod`` must stay dense, or "" to convert it."""
    t, r = ctx["config"].tile, ctx["config"].rank
    n, p = mod.in_features, mod.out_features
    tied = [o for o in ctx["owners"].get(id(mod.weight), []) if o != f"{fqn}.weight"]
    parent, cname = ctx["parents"].get(id(mod), (None, ""))
    if n % t or p % t:
        bad = [f"{k}={v}" for k, v in (("in_features", n), ("out_features", p)) if v % t]
        return f"{', '.join(bad)} not divisible by tile={t}"
    if tied:
        return f"weight tied to {tied[0]}"
    if isinstance(parent, nn.MultiheadAttention):
        return "inside nn.MultiheadAttention (weight read directly)"
    if parent is not None and _reads_weight(parent, cname):
        return f"{type(parent).__name__} reads self.{cname}.weight (STLinear has no dense weight)"
    if mod is ctx["out_emb"]:
        return "output embedding (read through .weight by resize_token_embeddings/tie_weights)"
    if ctx["dims"] is not None and 0 < ctx["dims"].get(id(mod), 0) <= 2:
        return "2-D input (batch, features): STL would compute it row by row, costing more than dense"
    if ctx["dims"] is None and mod is ctx["classifier"]:
        return ("classifier head (get_classifier(): a pooled (batch, features) input, which STL computes row "
                "by row, costing more than dense; pass example_input= to decide from a real call)")
    if ctx["only_if_cheaper"] and stl_macs(t, n, p, t, r) >= linear_macs(t, n, p):
        return (f"STL would cost {stl_macs(t, n, p, t, r) / t:,.0f} multiply-adds per token, "
                f"dense {linear_macs(1, n, p):,} (only_if_cheaper=False converts it anyway)")
    return ""


def plan_conversion(model: nn.Module, config: Optional[STLConfig] = None,
                    filter: Union[None, Sequence[str], Callable[[nn.Module, str], bool]] = None, *,
                    only_if_cheaper: bool = True, example_input=None) -> ConversionReport:
    """Which ``nn.Linear`` layers :func:`convert` would replace, and why the others stay dense,
    without touching ``model`` (``example_input``, if given, runs it once). The arguments are
    :func:`convert`'s; pass the result to :func:`apply_conversion`."""
    _check_model(model)
    config = _check_config(config)
    keep = _make_filter(filter)
    t, r = config.tile, config.rank
    dims = None
    if example_input is not None:
        dims = _input_dims(model, example_input, [m for m in model.modules() if isinstance(m, nn.Linear)])
    owners = {}  # parameter id -> qualified names (to spot tied weights)
    for mname, mod in model.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            owners.setdefault(id(p), []).append(f"{mname}.{pname}" if mname else pname)
    parents = {id(child): (parent, cname) for parent in model.modules() for cname, child in parent.named_children()}
    ctx = {"config": config, "owners": owners, "parents": parents, "dims": dims, "only_if_cheaper": only_if_cheaper,
           "out_emb": _model_method(model, "get_output_embeddings"),
           "classifier": _model_method(model, "get_classifier")}
    report = ConversionReport(config, params_before=_param_count(model))
    selected = 0
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
        selected += 1
        entry.reason = _skip_reason(mod, fqn, ctx)
        if not entry.reason:
            entry.converted = True
            entry.params_after = r * (n // t) * (p // t) + 2 * r * t * t + nb
            entry.macs_after = stl_macs(t, n, p, t, r) / t  # one tile of t rows, per row
    if filter is not None and report.layers and not selected:
        warnings.warn(f"convert: the filter matched none of the model's {len(report.layers)} nn.Linear layers "
                      f"(names look like {report.layers[0].name!r}); nothing is converted", UserWarning, stacklevel=3)
    report.params_after = report.params_before
    return report


def _calibrate(model, pending, make, batches, calibration, t, progress):
    """Convert the ``pending`` layers ({fqn: (nn.Linear, report entry)}, emptied as they are converted) group
    by group in execution order, each fitted on the inputs it gets in the partly converted model."""
    bar = stl_calib.progress_bar(len(pending), progress)
    try:
        while pending:
            caps = stl_calib.capture_next_group(model, {f: m for f, (m, _) in pending.items()},
                                                batches, t, calibration.max_rows)
            if not caps:
                break  # the rest never runs on this data: data-free
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
    finally:
        if bar is not None:
            bar.close()


def apply_conversion(model: nn.Module, plan: ConversionReport, *, calibration_data=None,
                     calibration: Optional[CalibrationConfig] = None, example_input=None,
                     progress: bool = False) -> ConversionReport:
    """Carry out ``plan`` (from :func:`plan_conversion` on this model): swap its layers, fit them to
    ``calibration_data`` if given, check the converted model runs on ``example_input`` (else restore
    the dense layers and raise), record the conversion and enable the tile cache. Returns the
    report (``plan``, now ``applied``)."""
    if not isinstance(plan, ConversionReport) or plan.applied:
        raise ValueError("apply_conversion: argument 'plan' must be an unapplied ConversionReport from plan_conversion")
    calibration = CalibrationConfig() if calibration is None else calibration
    if not isinstance(calibration, CalibrationConfig):
        raise ValueError("convert: argument 'calibration' must be a CalibrationConfig, got "
                         f"{type(calibration).__name__}")
    config, t = plan.config, plan.config.tile
    modules = dict(model.named_modules())
    pending = {}
    for entry in plan.converted:
        mod = modules.get(entry.name)
        if not isinstance(mod, nn.Linear) or (mod.in_features, mod.out_features) != (entry.in_features,
                                                                                       entry.out_features):
            raise ValueError(f"apply_conversion: the plan's layer '{entry.name}' is not the model's nn.Linear of "
                             "that name: make the plan on this model, just before applying it")
        pending[entry.name] = (mod, entry)
    originals = {}  # id(new) -> the dense layer, to restore the model if the trial fails

    def make(mod):
        new = STLinear.from_linear(mod, config)
        originals[id(new)] = mod
        return new

    batches = None if calibration_data is None else list(calibration_data)
    hooked = decode._is_enabled(model)
    try:
        if batches is not None and pending:
            decode.enable(model)  # layers converted so far tile from each row's first real token (left padding)
            _calibrate(model, pending, make, batches, calibration, t, progress)
        _swap(model, {id(mod): make(mod) for mod, _ in pending.values()})
        if example_input is not None and originals:
            try:
                _trial(model, example_input)
            except Exception as e:
                raise RuntimeError(f"convert: the converted model fails on example_input ({type(e).__name__}: {e}); "
                                   "the dense layers were restored. Exclude the failing layers with filter=") from e
    except BaseException:  # leave the model as it was
        _swap(model, originals)
        if not hooked:
            decode._remove_hooks(model, (decode._pre_hook, decode._post_hook))
        raise
    plan.params_after = _param_count(model)
    plan.applied = True
    if plan.converted:
        hub.record_conversion(model, {x.name: config for x in plan.converted})
        decode.enable(model)
    return plan


def convert(model: nn.Module, config: Optional[STLConfig] = None,
            filter: Union[None, Sequence[str], Callable[[nn.Module, str], bool]] = None, *,
            calibration_data=None, calibration: Optional[CalibrationConfig] = None,
            only_if_cheaper: bool = True, example_input=None, progress: bool = False) -> ConversionReport:
    """Replace every selected ``nn.Linear`` of ``model`` by an ``STLinear`` (in place):
    :func:`plan_conversion` then :func:`apply_conversion`.

    ``config``: the ``STLConfig`` of every converted layer (default ``STLConfig()``; ``init=None``
    converts with ``"fitted"``, the closest start). ``filter``: None (every nn.Linear), a list of
    fnmatch patterns on the qualified name (``"*.mlp.*"``), or a callable ``(module, fqn) -> bool``;
    a filter that selects no layer warns. Selected layers are skipped, with the reason in the
    report, when in/out features do not divide by the tile, when the weight is tied to another
    module's parameter (converting would silently untie it: untie first if you mean it), when the
    parent is ``nn.MultiheadAttention`` or its code reads ``self.<layer>.weight`` (an STLinear has
    no dense weight), when the layer is the model's output embedding
    (``model.get_output_embeddings()``, read through ``.weight`` by transformers'
    ``resize_token_embeddings`` / ``tie_weights``), when it is the classifier head of
    ``model.get_classifier()`` and no ``example_input`` says otherwise, and, with
    ``only_if_cheaper`` (the default), when STL would need at least as many multiply-adds per
    token as the dense layer (narrow layers: encode and decode cost r*(N+P) per row, see
    docs/operator.md). A module reachable under several names is converted once and replaced
    everywhere.

    ``calibration_data`` (optional): an iterable of model inputs (a tensor, a tuple of args, or a
    mapping of kwargs such as a tokenizer's ``BatchEncoding``; read several times). Layers are then
    converted sequentially in execution order, each fitted on the inputs it sees in the partly
    converted model, as ``calibration`` (a ``CalibrationConfig``, default ``CalibrationConfig()``:
    least squares) says. Layers the data never reaches stay data-free. ``progress``: a tqdm bar.
    Without calibration data the conversion is data-free: ``Wt = encode_weight(W, F)``.

    ``example_input`` (optional; default: the first calibration batch, if any): a model input (as
    for ``calibration_data``). The model runs on it once before conversion, and layers that only
    ever see inputs of at most 2 dims, ``(batch, features)`` with no token axis (a classifier
    head), are skipped: STL computes such inputs row by row, each row padded to a tile, costing
    more than dense. After conversion the model runs on it once more: if that fails, the dense
    layers are restored and a ``RuntimeError`` says why.

    The conversion is recorded in ``model.config.stl_torch`` when the model has a Hugging Face
    config (``save_pretrained`` writes it, ``stl_torch.from_pretrained`` reads it back), and the
    model's tile cache is enabled (``stl_torch.decode.enable``): tiles start at each sequence's
    first real token (``attention_mask``) and ``generate()`` decodes incrementally.
    """
    batches = None if calibration_data is None else list(calibration_data)
    if example_input is None and batches:
        example_input = batches[0]
    plan = plan_conversion(model, config, filter, only_if_cheaper=only_if_cheaper, example_input=example_input)
    return apply_conversion(model, plan, calibration_data=batches, calibration=calibration,
                            example_input=example_input, progress=progress)
