"""Calibrated conversion: fit each converted layer to the dense layer on real activations.

Two levers improve on the data-free start ``Wt = encode_weight(W, F)`` (docs/operator.md,
"Calibrated conversion"): (a) least squares for ``Wt`` on real activations (E, D fixed: the output is linear in Wt), and
(b) layer-wise distillation, here: (a), then Adam on E, D and Wt together against the same
targets. Both run *sequentially*, as GPTQ does: layers are converted in execution order, and a
layer is fitted on the inputs it sees once every earlier layer is already STL, so it learns to
work on the converted model's activations rather than on the dense model's.

Groups: one calibration pass captures the inputs of the first pending layers in execution order
that share one input tensor (q/k/v of an attention block, gate/up of a gated MLP) and stops the
forward there (nothing after them runs); the group is converted, and the next pass captures the
next group. A model with G groups costs about G/2 full forwards over the calibration data.

Padding: with a 2-D ``attention_mask`` in a batch, a row's rows are its tokens from its first to its
last real one, tiled from the first (as the converted model tiles them, ``stl_torch.decode``, which
also lays out the layers converted so far during calibration); padding before and after takes no part
in the fit.

Errors are relative output errors ``||STL(X) - X W^T|| / ||X W^T||`` (bias excluded: it is
copied), measured on tiles held out from the fit (every ``holdout``-th tile), so they show
generalisation, not memorisation (Wt alone has r/t^2 = 1.5x the dense weight's parameters at
t=4, r=24).
"""
import math
from typing import Dict, List

import torch
from torch import nn

from . import decode, tiling
from ._call import call_model, split_inputs
from .config import CalibrationConfig
from .ops import stl_linear


class _Stop(Exception):
    """Raised from a hook to end a calibration forward once its group is captured."""


def layer_rows(x, t):
    """(rows, N) as STLinear tiles ``x``, completed to whole tiles (the unit of every fit)."""
    return tiling.pad_rows(tiling.to_tiles(x, t), t)


def real_spans(model, batch):
    """``(spans, S)`` of a batch with a padded 2-D ``attention_mask`` (B, S): per row, the (start, stop)
    of its tokens from the first to the last real one (None: no real token). None without padding."""
    args, kwargs = split_inputs(batch)
    mask = decode._call_args(model, args, kwargs).get("attention_mask")
    if not torch.is_tensor(mask) or mask.dim() != 2:
        return None
    real = mask != 0
    if bool(real.all()):
        return None
    S = real.shape[1]
    first, last = real.int().argmax(1).tolist(), (S - real.flip(1).int().argmax(1)).tolist()
    return [(a, b) if any_real else None for any_real, a, b in zip(real.any(1).tolist(), first, last)], S


def batch_rows(x, t, spans, fqn):
    """:func:`layer_rows` of a layer input ``x`` of one batch, only the real rows (``spans``) of each sequence."""
    if spans is None:
        return layer_rows(x, t)
    spans, S = spans
    if x.dim() != 3 or x.shape[0] != len(spans) or x.shape[1] != S:
        raise ValueError(f"convert: a calibration batch has a padded attention_mask of shape ({len(spans)}, {S}), "
                         f"but layer '{fqn}' gets an input of shape {tuple(x.shape)}, not (batch, tokens, features): "
                         "its padding rows cannot be left out. Calibrate on unpadded batches.")
    parts = [layer_rows(x[b:b + 1, s[0]:s[1]], t) for b, s in enumerate(spans) if s is not None]
    return torch.cat(parts) if parts else x.new_zeros(0, x.shape[-1])


@torch.no_grad()
def capture_next_group(model, pending: Dict[str, nn.Linear], batches, t, max_rows):
    """Inputs (rows, N), rows tiled as STLinear tiles them (padding left out), of the next group of
    ``pending`` layers (see the module docstring). Returns {fqn: X}; empty when no pending layer ran."""
    order: List[str] = []  # the group, in call order (fixed by the first batch)
    rows: Dict[str, list] = {}
    state = {"first": None, "seen": set(), "spans": None}

    def hook_first(fqn):
        # first batch: the group is the first layer plus the later ones fed the same input tensor
        def fn(_mod, args, _out):
            x = args[0]
            key = (x.data_ptr(), x.shape, x.stride(), x._version)  # _version: not changed in place since
            if state["first"] is None:
                state["first"] = (x, key)  # x held, so that no later input can reuse its memory and pass for it
            elif key != state["first"][1] or fqn in order:
                raise _Stop
            order.append(fqn)
            rows[fqn] = [batch_rows(x.detach(), t, state["spans"], fqn)]
        return fn

    def hook_next(fqn):
        def fn(_mod, args, _out):
            if fqn in state["seen"]:
                raise _Stop  # called again in the same forward: keep the first call only
            state["seen"].add(fqn)
            rows[fqn].append(batch_rows(args[0].detach(), t, state["spans"], fqn))
            if len(state["seen"]) == len(order):
                raise _Stop
        return fn

    was_training = model.training
    model.eval()
    try:
        for i, batch in enumerate(batches):
            state["seen"], state["spans"] = set(), real_spans(model, batch)
            hooked = pending if i == 0 else {f: pending[f] for f in order}
            handles = [m.register_forward_hook((hook_first if i == 0 else hook_next)(f))
                       for f, m in hooked.items()]
            try:
                call_model(model, batch)
            except _Stop:
                pass
            finally:
                for h in handles:
                    h.remove()
            if not order:
                return {}
            if sum(r.shape[0] for r in rows[order[0]]) >= max_rows:
                break
    finally:
        model.train(was_training)
    keep = max(t, (max_rows // t) * t)
    return {f: torch.cat(rows[f])[:keep] for f in order}


def split_tiles(X, t, holdout):
    """Row indices of fit and held-out tiles: every ``holdout``-th tile is held out."""
    n = X.shape[0] // t
    tiles = torch.arange(n, device=X.device)
    held = (tiles % holdout) == holdout - 1 if n >= holdout else torch.zeros_like(tiles, dtype=torch.bool)
    expand = lambda sel: (tiles[sel][:, None] * t + torch.arange(t, device=X.device)).reshape(-1)  # noqa: E731
    return expand(~held), expand(held)


def rel_error(layer, X, Y):
    """||STL(X) - Y|| / ||Y|| (no bias), float64 accumulation."""
    E, D = layer.effective_encoders()
    with torch.no_grad():
        y = stl_linear(X.to(layer.Wt.dtype), E, layer.Wt, D, None, layer.tile).double()
    return ((y - Y).norm() / Y.norm().clamp_min(1e-300)).item()


@torch.no_grad()
def lstsq_wt(X, Y, E, D, t, damp):
    """Least-squares ``Wt`` for fixed E, D: per output tile column J, the design is
    A[(I,a,b), (l,K)] = D[a*t+b, l] Xe[l, I, K], whose normal matrix does not depend on J:
      H[(l,K), (l',K')] = (D^T D)[l, l'] * sum_I Xe[l,I,K] Xe[l',I,K'],
    and the right-hand sides are ``Xe[l]^T Gz[l]`` with Gz the D^T-encoded targets (the map of
    the backward pass). One symmetric solve with ridge ``damp`` x mean diagonal (GPTQ's percdamp).
    X (rows, N), Y (rows, P) float64; returns (r, N/t, P/t) float64."""
    r = E.shape[0]
    xe = tiling.encode_activations(X, E, t)  # (r, MI, K)
    mi, K = xe.shape[1], xe.shape[2]
    pj = Y.shape[1] // t
    gz = torch.einsum("abl,iajb->lij", D.reshape(t, t, r), Y.reshape(mi, t, pj, t))
    xf = xe.permute(1, 0, 2).reshape(mi, r * K)
    H = (xf.t() @ xf) * (D.t() @ D).repeat_interleave(K, 0).repeat_interleave(K, 1)
    B = torch.einsum("lik,lij->lkj", xe, gz).reshape(r * K, pj)
    ridge = damp * H.diagonal().mean().clamp_min(1e-30)
    H.diagonal().add_(ridge)
    try:
        w = torch.cholesky_solve(B, torch.linalg.cholesky(H))
    except RuntimeError:
        w = torch.linalg.lstsq(H, B).solution
    return w.reshape(r, K, pj)


def distill(layer, X, Y, steps, lr, rows_per_step, seed=0):
    """Adam on the layer's E, D and Wt for ``steps`` minibatches of whole tiles, minimising the
    relative squared output error; per-tensor step sizes scale with each tensor's RMS (E, D are
    O(1), Wt has the dense weight's scale), cosine-decayed. Causal masks stay applied."""
    t = layer.tile
    n_tiles = X.shape[0] // t
    per = max(1, min(n_tiles, rows_per_step // t))
    g = torch.Generator(device="cpu").manual_seed(seed)
    params = [layer.E, layer.D, layer.Wt]
    groups = [{"params": [p], "lr": lr * p.detach().pow(2).mean().sqrt().item()} for p in params]
    opt = torch.optim.Adam(groups, betas=(0.9, 0.99))
    base = [gr["lr"] for gr in opt.param_groups]
    Yn = Y.to(layer.Wt.dtype)
    Xn = X.to(layer.Wt.dtype)
    ar = torch.arange(t, device=X.device)
    for step in range(steps):
        for gr, b in zip(opt.param_groups, base):
            gr["lr"] = b * 0.5 * (1 + math.cos(math.pi * step / steps))
        sel = torch.randperm(n_tiles, generator=g)[:per].to(X.device)
        idx = (sel[:, None] * t + ar).reshape(-1)
        E, D = layer.effective_encoders()
        y = stl_linear(Xn[idx], E, layer.Wt, D, None, t)
        tgt = Yn[idx]
        loss = (y - tgt).pow(2).sum() / tgt.pow(2).sum().clamp_min(1e-30)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    opt.zero_grad(set_to_none=True)


def fit_layer(layer, dense: nn.Linear, X, cfg: CalibrationConfig):
    """Fit a freshly converted ``layer`` (data-free init) to ``dense`` on inputs X (rows, N).
    Returns a dict of held-out errors: data_free, lstsq (None if skipped), distill (None if
    not run) and final (the best, whose parameters the layer keeps)."""
    t = layer.tile
    X = X.to(layer.Wt.device)
    Wd = dense.weight.detach().to(device=X.device, dtype=torch.float64)
    X64 = X.double()
    Y = X64 @ Wd.t()
    fit, held = split_tiles(X64, t, cfg.holdout)
    if held.numel() == 0:
        held = fit
    Xf, Yf, Xh, Yh = X64[fit], Y[fit], X64[held], Y[held]
    res = {"data_free": rel_error(layer, Xh, Yh), "lstsq": None, "distill": None}
    best = (res["data_free"], {k: v.detach().clone() for k, v in layer.state_dict().items()})

    def keep_if_better(err):
        nonlocal best
        if err < best[0]:
            best = (err, {k: v.detach().clone() for k, v in layer.state_dict().items()})
        else:
            layer.load_state_dict(best[1])

    E, D = (m.detach().double() for m in layer.effective_encoders())
    if layer.rank * layer.in_features // t <= cfg.max_unknowns:
        with torch.no_grad():
            layer.Wt.copy_(lstsq_wt(Xf, Yf, E, D, t, cfg.damp).to(layer.Wt))
        res["lstsq"] = rel_error(layer, Xh, Yh)
        keep_if_better(res["lstsq"])
    if cfg.method == "distill" and cfg.distill_steps > 0:
        with torch.enable_grad():
            distill(layer, Xf, Yf, cfg.distill_steps, cfg.distill_lr, cfg.rows_per_step, cfg.seed)
        res["distill"] = rel_error(layer, Xh, Yh)
        keep_if_better(res["distill"])
    res["final"] = best[0]
    return res


def progress_bar(total, enabled):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="STL calibration", unit="layer")


__all__ = ["capture_next_group", "fit_layer", "lstsq_wt", "distill", "layer_rows", "real_spans"]
