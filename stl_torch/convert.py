"""Swap a model's nn.Linear layers for STLinear in place (like torchao's ``quantize_``).

Each converted layer is ``STLinear.from_linear(linear, ...)``: ``Wt = encode_weight(W, F)`` for
the init's (E, F, D), bias copied, so the converted model starts as close to the dense one as
the rank allows (exactly equal with an exact init, e.g. ``init="strassen", tile=2, rank=7``).
The data-free start can be improved on real activations with :func:`calibrate`.
"""
import fnmatch
from dataclasses import asdict, dataclass, field
from typing import Callable, List, Optional, Sequence, Union

import torch
from torch import nn

from . import init as stl_init
from . import reference as stl_reference
from .flops import linear_macs, stl_macs
from .nn import STLinear

__all__ = ["STLConfig", "convert", "ConversionReport", "LayerConversion", "calibrate"]


@dataclass
class STLConfig:
    """How to convert: tile t, rank r, init name (see ``stl_torch.init``), causal mode, seed."""
    tile: int = 4
    rank: int = 24
    init: str = "fitted"
    causal: bool = False
    seed: Optional[int] = None

    def __post_init__(self):
        for name in ("tile", "rank"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"STLConfig: '{name}' must be a positive integer, got {v!r}")
        if self.init not in stl_init.INITS:
            raise ValueError(f"STLConfig: unknown init {self.init!r}; valid names: "
                             f"{', '.join(stl_init.INITS)}")
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
    err_data_free: Optional[float] = None   # with calibration data: relative output error of
    err_calibrated: Optional[float] = None  # the data-free / calibrated Wt on that data


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
            calibration_data=None, damp: float = 1e-2, max_unknowns: int = 8192
            ) -> ConversionReport:
    """Replace every selected ``nn.Linear`` of ``model`` by an ``STLinear`` (in place).

    ``filter``: None (every nn.Linear), a list of fnmatch patterns on the qualified name
    (``"*.mlp.*"``), or a callable ``(module, fqn) -> bool``. Selected layers are skipped, with
    the reason in the report, when in/out features do not divide by the tile, when the weight is
    tied to another module's parameter (converting would silently untie it: untie first if you
    mean it), or when the parent is ``nn.MultiheadAttention`` (it reads ``out_proj.weight``
    directly). A module reachable under several names is converted once and replaced everywhere.

    ``calibration_data`` (optional): an iterable of model inputs (a tensor, a tuple of args or a
    dict of kwargs), run through the *dense* model first to fit each converted layer's ``Wt`` to
    real activations (see :func:`_Calibrator`; ``damp`` and ``max_unknowns`` are its ridge and
    size limit). Without it the conversion is data-free: ``Wt = encode_weight(W, F)``.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"convert: argument 'model' must be an nn.Module, got {type(model).__name__}")
    if isinstance(model, nn.Linear):
        raise ValueError("convert: argument 'model' is itself an nn.Linear and cannot be replaced "
                         "in place; use STLinear.from_linear(model, ...)")
    config = STLConfig() if config is None else config
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

    replace, chosen = {}, []
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
    calib = None
    if calibration_data is not None and chosen:
        calib = _Calibrator(model, config, [(f, m) for f, m, _ in chosen], damp, max_unknowns)
        calib.run(calibration_data)
    for fqn, mod, entry in chosen:
        new = STLinear.from_linear(mod, tile=t, rank=r, init=config.init, causal=config.causal,
                                   seed=config.seed)
        if calib is not None:
            res = calib.solve(fqn, new)
            if res is not None:
                entry.err_data_free, entry.err_calibrated = res
        replace[id(mod)] = new
    for parent in list(model.modules()):
        for cname, child in list(parent._modules.items()):  # named_children() dedups
            if id(child) in replace:
                setattr(parent, cname, replace[id(child)])
    report.params_after = _param_count(model)
    return report




def _pad_tokens(x, t):
    """(rows, N) as STLinear tiles them: the token dim of each sequence padded to a multiple of t."""
    if x.dim() >= 3 and x.shape[-2] % t:
        x = torch.nn.functional.pad(x, (0, 0, 0, (-x.shape[-2]) % t))
    x = x.reshape(-1, x.shape[-1])
    if x.shape[0] % t:
        x = torch.nn.functional.pad(x, (0, 0, 0, (-x.shape[0]) % t))
    return x


class _Calibrator:
    """Least-squares fit of each layer's Wt to the dense layer's outputs on real activations.

    Why: ``Wt = encode_weight(W, F)`` is the best data-free choice, i.e. optimal for white
    Gaussian inputs. Real activations are correlated and close to low-rank, so fitting Wt to
    reproduce ``X W^T`` on a few hundred real rows per layer (as GPTQ/SparseGPT calibrate) starts
    closer (STL.md section 4, lever (a)). E and D stay at the init.

    With E, D fixed the layer output is linear in Wt and, per output tile column J, the problem
    ``min ||decode(Xe @ Wt[:, :, J]) - Y[:, J-tile]||`` has the design A[(I,a,b), (l,K)] =
    D[a*t+b, l] Xe[l, I, K]. Its normal matrix does not depend on J:
      H[(l,K), (l',K')] = (D^T D)[l, l'] * sum_I Xe[l,I,K] Xe[l',I,K'],
    and the right-hand sides are ``Xe[l]^T Gz[l]`` with ``Gz = D^T``-encoded targets (the same
    map as the backward pass). So one pass over the data accumulates H (r N/t square) and the
    right-hand side per layer, then one symmetric solve (ridge ``damp`` times the mean diagonal,
    as GPTQ's percdamp) gives every column of Wt. Targets are the dense outputs without bias
    (the bias is copied); rows of padding count with target 0. Layers with r N/t >
    ``max_unknowns`` are left data-free (H would be too large).
    """

    def __init__(self, model, config, layers, damp, max_unknowns):
        self.model, self.t, self.damp = model, config.tile, damp
        dec = stl_init.make_init(config.init, config.tile, config.rank, causal=config.causal,
                                 seed=config.seed)
        self.E, self.D = dec.E, dec.D
        self.layers = {fqn: mod for fqn, mod in layers
                       if config.rank * mod.in_features // config.tile <= max_unknowns}
        self.stats = {}

    def _hook(self, fqn, mod):
        t = self.t

        def fn(_mod, args, _out):
            x = _pad_tokens(args[0].detach().to(torch.float64), t)
            W = mod.weight.detach().to(device=x.device, dtype=torch.float64)
            E, D = self.E.to(x.device), self.D.to(x.device)
            r = E.shape[0]
            y = x @ W.t()
            xe = stl_reference.encode_activations(x, E, t)             # (r, MI, K)
            mi, pj = x.shape[0] // t, y.shape[1] // t
            gz = torch.einsum("abl,iajb->lij", D.reshape(t, t, r), y.reshape(mi, t, pj, t))
            xf = xe.permute(1, 0, 2).reshape(mi, -1)                   # (MI, r K)
            st = self.stats.get(fqn)
            if st is None:
                st = self.stats[fqn] = [0, 0, 0.0]
            st[0] = st[0] + xf.t() @ xf
            st[1] = st[1] + torch.einsum("lik,lij->lkj", xe, gz).reshape(xf.shape[1], pj)
            st[2] += y.square().sum().item()
        return fn

    @torch.no_grad()
    def run(self, batches):
        handles = [m.register_forward_hook(self._hook(f, m)) for f, m in self.layers.items()]
        try:
            for b in batches:
                if isinstance(b, dict):
                    self.model(**b)
                elif isinstance(b, (tuple, list)):
                    self.model(*b)
                else:
                    self.model(b)
        finally:
            for h in handles:
                h.remove()

    @torch.no_grad()
    def solve(self, fqn, layer):
        """Sets ``layer.Wt``; returns (data-free, calibrated) relative errors on the data."""
        st = self.stats.get(fqn)
        if st is None or st[2] == 0:
            return None
        C, B, yy = st
        r, K, J = layer.Wt.shape
        DtD = (self.D.t() @ self.D).to(C.device)
        H = C * DtD.repeat_interleave(K, 0).repeat_interleave(K, 1)
        w0 = layer.Wt.detach().to(device=C.device, dtype=torch.float64).reshape(r * K, J)

        def err(w):
            return max((w * (H @ w)).sum().item() - 2 * (w * B).sum().item() + yy, 0.0) ** 0.5 \
                / yy ** 0.5

        ridge = self.damp * H.diagonal().mean().clamp_min(1e-30)
        Hd = H + ridge * torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
        try:
            L = torch.linalg.cholesky(Hd)
            w = torch.cholesky_solve(B + ridge * w0, L)
        except RuntimeError:
            w = torch.linalg.lstsq(Hd, B + ridge * w0).solution
        before, after = err(w0), err(w)
        if after < before:  # never make a layer worse on its own calibration data
            layer.Wt.copy_(w.reshape(r, K, J).to(layer.Wt))
        return before, min(before, after)
