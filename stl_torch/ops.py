"""Python side of the C ops: fake (meta) kernels, autograd, and the user-facing ``stl_linear``.

The ops themselves (``torch.ops.stl_torch.stl_forward`` / ``stl_backward``) are defined and
implemented in C (csrc/ops.c). Their schemas use plain ``Tensor`` arguments only (the C ABI's
encoding of optionals has changed between torch releases), so "no bias", "no saved z" and
"no grad for z" are passed as empty tensors.
"""
import torch

from .config import MAX_RANK, MAX_TILE

__all__ = ["stl_linear"]

_forward = torch.ops.stl_torch.stl_forward.default
_backward = torch.ops.stl_torch.stl_backward.default


def _empty(like):
    return like.new_empty((0,))


_FLOATS = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _int(v):
    """A size for an error message: its value, also for a symbolic size (we are failing anyway)."""
    try:
        return int(v)
    except Exception:
        return v


def _dt(t):
    """A dtype as csrc/ops.c names it ("float32", not "torch.float32")."""
    return str(t.dtype).removeprefix("torch.")


def _shape(t):
    return "(" + ", ".join(str(_int(s)) for s in t.shape) + ")"


def _check_like(op, name, t, x):
    """What csrc/ops.c's expect_like checks: x's dtype and device, contiguous."""
    torch._check(t.dtype == x.dtype, lambda: f"{op}: argument '{name}' has dtype {_dt(t)} but 'x' has dtype "
                 f"{_dt(x)}; all tensors must share one dtype")
    torch._check(t.device == x.device, lambda: f"{op}: argument '{name}' is on {t.device} but 'x' is on {x.device}")
    torch._check(t.numel() == 0 or t.is_contiguous(),
                 lambda: f"{op}: argument '{name}' must be contiguous (call .contiguous() first)")


def _check_shape(op, name, t, want, meaning):
    """``t`` has exactly the sizes ``want`` (None = any)."""
    ok = t.dim() == len(want) and all(w is None or s == w for s, w in zip(t.shape, want))
    torch._check(ok, lambda: f"{op}: argument '{name}' has shape {_shape(t)}; expected {meaning}")


def _check_operands(op, x, E, Wt, D, tile):
    """The checks of csrc/ops.c's check_operands, in its order and with its wording, so that a malformed
    call fails the same way at trace time (torch.compile, meta tensors) as it does in the kernel.
    Returns (M, r, P/tile)."""
    torch._check(1 <= tile <= MAX_TILE, lambda: f"{op}: argument 'tile' is {tile}; expected 1 <= tile <= {MAX_TILE}")
    torch._check(x.dtype in _FLOATS, lambda: f"{op}: argument 'x' has dtype {_dt(x)}; expected float32, "
                 "float64, bfloat16 or float16")
    torch._check(x.dim() == 2, lambda: f"{op}: argument 'x' has shape {_shape(x)}; expected a 2-D (M, N) tensor")
    torch._check(x.numel() == 0 or x.is_contiguous(),
                 lambda: f"{op}: argument 'x' must be contiguous (call .contiguous() first)")
    M, N = x.shape
    torch._check(N > 0 and N % tile == 0,
                 lambda: f"{op}: argument 'x' has N={N} columns; expected a positive multiple of tile={tile}")
    _check_shape(op, "E", E, (None, tile * tile), f"(rank, tile*tile) = (r, {tile * tile})")
    r = E.shape[0]
    torch._check(r >= 1, lambda: f"{op}: argument 'E' has rank 0; expected at least one product")
    torch._check(r <= MAX_RANK, lambda: f"{op}: argument 'E' has rank {r}; expected at most {MAX_RANK} products")
    _check_like(op, "E", E, x)
    _check_shape(op, "Wt", Wt, (r, N // tile, None), f"(rank, N/tile, P/tile) = ({r}, {N // tile}, P/{tile})")
    _check_like(op, "Wt", Wt, x)
    pt = Wt.shape[2]
    torch._check(pt >= 1, lambda: f"{op}: argument 'Wt' has P/tile=0 output tiles; expected at least one")
    _check_shape(op, "D", D, (tile * tile, r), f"(tile*tile, rank) = ({tile * tile}, {r})")
    _check_like(op, "D", D, x)
    return M, r, pt


def _check_z_like(op, name, z, x, r, mt, pt, meaning):
    if z.numel() == 0:
        return  # "absent"
    _check_shape(op, name, z, (r, mt, pt), f"(rank, ceil(M/tile), P/tile) = ({r}, {mt}, {pt}) {meaning}")
    _check_like(op, name, z, x)


@torch.library.register_fake("stl_torch::stl_forward")
@torch.library.register_fake("stl_torch::stl_forward_unfused")
def _forward_fake(x, E, Wt, D, bias, tile, need_z):
    m, r, pt = _check_operands("stl_forward", x, E, Wt, D, tile)
    if bias.numel() != 0:
        _check_shape("stl_forward", "bias", bias, (pt * tile,),
                     f"(P,) = ({pt * tile},), or an empty tensor for no bias")
        _check_like("stl_forward", "bias", bias, x)
    y = x.new_empty((m, pt * tile))
    z = x.new_empty((r, (m + tile - 1) // tile, pt)) if need_z else _empty(x)
    return y, z


@torch.library.register_fake("stl_torch::stl_backward")
def _backward_fake(grad_y, grad_z, x, E, Wt, D, z, has_bias, tile):
    m, r, pt = _check_operands("stl_backward", x, E, Wt, D, tile)
    _check_shape("stl_backward", "grad_y", grad_y, (m, pt * tile), f"(M, P) = ({m}, {pt * tile}), the shape of y")
    _check_like("stl_backward", "grad_y", grad_y, x)
    mt = (m + tile - 1) // tile
    _check_z_like("stl_backward", "grad_z", grad_z, x, r, mt, pt, "or an empty tensor")
    _check_z_like("stl_backward", "z", z, x, r, mt, pt, "or an empty tensor to recompute it")
    db = x.new_empty((pt * tile,)) if has_bias else _empty(x)
    return (torch.empty_like(x), torch.empty_like(E), torch.empty_like(Wt), torch.empty_like(D), db)


def _setup_context(ctx, inputs, output):
    x, E, Wt, D, bias, tile, need_z = inputs
    _, z = output
    ctx.tile = tile
    ctx.has_bias = bias.numel() > 0
    # an unused z (stl_linear never returns it) must reach the backward as None, not as a
    # materialised Z-sized tensor of zeros that the backward would then read and add
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, E, Wt, D, z)


def _differentiable_backward(grad_y, grad_z, x, E, Wt, D, t, has_bias):
    """The backward of docs/operator.md section 5 in differentiable torch ops, for double backward
    (``create_graph=True``): each gradient is linear in grad_y and in each of x, E, Wt, D, so its own
    derivatives are the same encode / batched GEMM / decode / correlate steps (section 6), which
    autograd derives from these einsums. Only used then; the C backward stays the default path.
    Z is recomputed from x (not the saved z) so that it carries the graph to x, E and Wt."""
    m, n = x.shape
    r, pt = E.shape[0], Wt.shape[2]
    mt = (m + t - 1) // t
    pad = mt * t - m
    xt = torch.nn.functional.pad(x, (0, 0, 0, pad)).reshape(mt, t, n // t, t)            # I a K c
    gt = torch.nn.functional.pad(grad_y, (0, 0, 0, pad)).reshape(mt, t, pt, t)          # I a J b
    E3, D3 = E.reshape(r, t, t), D.reshape(t, t, r)                                      # l a c, a b l
    xe = torch.einsum("lac,iakc->lik", E3, xt)
    gz = torch.einsum("abl,iajb->lij", D3, gt)
    if grad_z is not None:
        gz = gz + grad_z
    z = torch.bmm(xe, Wt)
    dxe = torch.bmm(gz, Wt.transpose(1, 2))
    dWt = torch.bmm(xe.transpose(1, 2), gz)
    dx = torch.einsum("lac,lik->iakc", E3, dxe).reshape(mt * t, n)[:m]
    dE = torch.einsum("lik,iakc->lac", dxe, xt).reshape(r, t * t)
    dD = torch.einsum("lij,iajb->abl", z, gt).reshape(t * t, r)
    db = grad_y.sum(0) if has_bias else None
    return dx, dE, dWt, dD, db


def _backward_fn(ctx, grad_y, grad_z):
    x, E, Wt, D, z = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: the C backward has no derivative of its own
        if grad_y is None:
            grad_y = torch.zeros((x.shape[0], Wt.shape[2] * ctx.tile), dtype=x.dtype, device=x.device)
        gz = grad_z if grad_z is not None and z.numel() > 0 else None
        dx, dE, dWt, dD, db = _differentiable_backward(grad_y, gz, x, E, Wt, D, ctx.tile, ctx.has_bias)
        return dx, dE, dWt, dD, db, None, None
    # autograd hands None for an unused z and may hand non-contiguous (e.g. expanded) grads
    grad_y = torch.zeros((x.shape[0], Wt.shape[2] * ctx.tile), dtype=x.dtype, device=x.device) \
        if grad_y is None else grad_y.contiguous()
    grad_z = _empty(x) if grad_z is None or z.numel() == 0 else grad_z.contiguous()
    dx, dE, dWt, dD, db = _backward(grad_y, grad_z, x, E, Wt, D, z, ctx.has_bias, ctx.tile)
    return dx, dE, dWt, dD, (db if ctx.has_bias else None), None, None


torch.library.register_autograd("stl_torch::stl_forward", _backward_fn, setup_context=_setup_context)


# On the CPU, Z (r/t^2 times the size of y) is kept for the backward only up to Z_KEEP_CPU_BYTES,
# or when recomputing it would cost more than Z_RECOMPUTE_MAX_K multiply-adds per element (N/t).
# glibc serves blocks past 32 MiB with fresh pages on every call: at N/t up to 144 the page faults
# of writing such a Z cost more than the backward recomputing it, at N/t = 512 (TinyLlama's MLP)
# less (docs/results.md).
Z_KEEP_CPU_BYTES = 32 << 20
Z_RECOMPUTE_MAX_K = 256


def _keep_z(x, E, Wt, tile):
    if x.device.type != "cpu" or Wt.shape[1] > Z_RECOMPUTE_MAX_K:
        return True
    mt = (x.shape[0] + tile - 1) // tile
    return E.shape[0] * mt * Wt.shape[2] * x.element_size() <= Z_KEEP_CPU_BYTES


def stl_linear(x, E, Wt, D, bias=None, tile=4):
    """STL of a 2-D ``x`` (M, N): ``decode(encode(x, E) @ Wt, D) + bias``, rows tiled in order.

    Inputs are made contiguous; under ``torch.autocast`` every operand is cast to the autocast
    dtype (like ``F.linear``). When autograd will need it, the product ``Z`` is kept for the
    backward pass (saves one batched GEMM) instead of being recomputed; on the CPU, only while it
    is at most ``Z_KEEP_CPU_BYTES`` or N/t exceeds ``Z_RECOMPUTE_MAX_K``.
    """
    if bias is None:
        bias = _empty(x)
    dev = x.device.type
    if torch.amp.is_autocast_available(dev) and torch.is_autocast_enabled(dev):
        dt = torch.get_autocast_dtype(dev)
        x, E, Wt, D, bias = (v.to(dt) for v in (x, E, Wt, D, bias))
    need_z = torch.is_grad_enabled() and any(
        t.requires_grad for t in (x, E, Wt, D, bias)) and _keep_z(x, E, Wt, tile)
    y, _ = _forward(x.contiguous(), E.contiguous(), Wt.contiguous(), D.contiguous(),
                    bias.contiguous(), tile, need_z)
    return y
