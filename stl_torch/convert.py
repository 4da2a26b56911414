"""Swap a model's nn.Linear layers for STLinear in place (like torchao's ``quantize_``).

Each converted layer is ``STLinear.from_linear(linear, ...)``: ``Wt = encode_weight(W, F)`` for
the init's (E, F, D), bias copied, so the converted model starts as close to the dense one as
the rank allows (exactly equal with an exact init, e.g. ``init="strassen", tile=2, rank=7``).
The data-free start can be improved on real activations: ``convert(..., calibration_data=...)``
(least squares for Wt, or layer-wise distillation of E, D and Wt; see ``stl_torch.calibrate``).
"""
import fnmatch
from dataclasses import asdict, dataclass, field
from typing import Callable, List, Optional, Sequence, Union

import torch
from torch import nn

from . import calibrate as stl_calib
from . import init as stl_init
from .flops import linear_macs, stl_macs
from .nn import STLinear, check_ed_norm

__all__ = ["STLConfig", "convert", "ConversionReport", "LayerConversion"]


@dataclass
class STLConfig:
    """How to convert: tile t, rank r, init name (see ``stl_torch.init``), causal mode, seed,
    and the scale of E and D (``ed_norm``, see ``STLinear``)."""
    tile: int = 4
    rank: int = 24
    init: str = "fitted"
    causal: bool = False
    seed: Optional[int] = None
    ed_norm: Optional[float] = 1.0

    def __post_init__(self):
        for name in ("tile", "rank"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"STLConfig: '{name}' must be a positive integer, got {v!r}")
        if self.init not in stl_init.INITS:
            raise ValueError(f"STLConfig: unknown init {self.init!r}; valid names: "
                             f"{', '.join(stl_init.INITS)}")
        check_ed_norm(self.ed_norm, "STLConfig: 'ed_norm'")
        if self.init == "strassen" and self.tile & (self.tile - 1):
            raise ValueError(f"STLConfig: init='strassen' needs a power-of-2 tile, got tile={self.tile}")


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
        out = [f"STL conversion (tile={c.tile}, rank={c.rank}, init={c.init!r}, causal={c.causal}): "
               f"{len(self.converted)} of {len(self.layers)} nn.Linear layers converted",
               "| layer | in -> out | status | params | MACs/token |", "|---|---|---|---:|---:|"]
        for x in self.layers:
            status = "converted" if x.converted else f"skipped: {x.reason}"
            out.append(f"| {x.name} | {x.in_features} -> {x.out_features} | {status} | "
                       f"{x.params_before:,} -> {x.params_after:,} | "
                       f"{x.macs_before:,.0f} -> {x.macs_after:,.0f} |")
            if x.err_calibrated is not None:
                out[-1] += f" calibration error {x.err_data_free:.3f} -> {x.err_calibrated:.3f}"
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


def convert(model: nn.Module, config: Optional[STLConfig] = None,
            filter: Union[None, Sequence[str], Callable[[nn.Module, str], bool]] = None, *,
            calibration_data=None, calibration: str = "lstsq", damp: float = 1e-2,
            max_unknowns: int = 12288, distill_steps: int = 200, distill_lr: float = 3e-3,
            rows_per_step: int = 2048, max_rows: int = 8192, holdout: int = 10,
            progress: bool = False) -> ConversionReport:
    """Replace every selected ``nn.Linear`` of ``model`` by an ``STLinear`` (in place).

    ``filter``: None (every nn.Linear), a list of fnmatch patterns on the qualified name
    (``"*.mlp.*"``), or a callable ``(module, fqn) -> bool``. Selected layers are skipped, with
    the reason in the report, when in/out features do not divide by the tile, when the weight is
    tied to another module's parameter (converting would silently untie it: untie first if you
    mean it), or when the parent is ``nn.MultiheadAttention`` (it reads ``out_proj.weight``
    directly). A module reachable under several names is converted once and replaced everywhere.

    ``calibration_data`` (optional): an iterable of model inputs (a tensor, a tuple of args or a
    dict of kwargs; read several times). Layers are then converted sequentially in execution
    order, each fitted on the inputs it sees in the partly converted model (``stl_torch.calibrate``):
    ``calibration="lstsq"`` solves ``Wt`` by least squares with E, D at the init (ridge ``damp``
    x mean diagonal; layers with r N/t > ``max_unknowns`` unknowns per column keep the data-free
    Wt); ``"distill"`` then runs ``distill_steps`` Adam steps on E, D and Wt (``distill_lr``
    relative to each tensor's RMS, ``rows_per_step`` rows per step). At most ``max_rows`` rows per
    layer are used; every ``holdout``-th tile is held out, the reported errors are measured there,
    and a layer keeps whichever of data-free / lstsq / distilled is best on it. Layers the data
    never reaches stay data-free. ``progress``: a tqdm bar per layer.
    Without calibration data the conversion is data-free: ``Wt = encode_weight(W, F)``.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"convert: argument 'model' must be an nn.Module, got {type(model).__name__}")
    if isinstance(model, nn.Linear):
        raise ValueError("convert: argument 'model' is itself an nn.Linear and cannot be replaced "
                         "in place; use STLinear.from_linear(model, ...)")
    config = STLConfig() if config is None else config
    if calibration_data is not None:
        stl_calib.check_options(calibration, distill_steps, distill_lr, rows_per_step, max_rows, holdout)
    if not isinstance(config, STLConfig):
        raise ValueError(f"convert: argument 'config' must be an STLConfig, got {type(config).__name__}")
    keep = _make_filter(filter)
    t, r = config.tile, config.rank
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
        else:
            chosen.append((fqn, mod, entry))
            entry.converted = True
            entry.params_after = r * (n // t) * (p // t) + 2 * r * t * t + nb
            entry.macs_after = stl_macs(t, n, p, t, r) / t  # one tile of t rows, per row

    def make(mod):
        return STLinear.from_linear(mod, tile=t, rank=r, init=config.init, causal=config.causal,
                                    seed=config.seed, ed_norm=config.ed_norm)

    pending = {fqn: (mod, entry) for fqn, mod, entry in chosen}
    if calibration_data is not None and pending:
        batches = list(calibration_data)
        bar = stl_calib.progress_bar(len(pending), progress)
        while pending:
            caps = stl_calib.capture_next_group(model, {f: m for f, (m, _) in pending.items()},
                                                batches, t, max_rows)
            if not caps:
                break  # the rest never runs on this data: data-free below
            swapped = {}
            for fqn, X in caps.items():
                mod, entry = pending.pop(fqn)
                new = swapped[id(mod)] = make(mod)
                res = stl_calib.fit_layer(new, mod, X, method=calibration, damp=damp,
                                          max_unknowns=max_unknowns, steps=distill_steps,
                                          lr=distill_lr, rows_per_step=rows_per_step,
                                          holdout=holdout, seed=config.seed or 0)
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
    return report

