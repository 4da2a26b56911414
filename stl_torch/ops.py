"""Python side of the C ops: fake (meta) kernels, autograd, and the user-facing ``stl_linear``.

The ops themselves (``torch.ops.stl_torch.stl_forward`` / ``stl_backward``) are defined and
implemented in C (csrc/ops.c). Their schemas use plain ``Tensor`` arguments only (the C ABI's
encoding of optionals has changed between torch releases), so "no bias", "no saved z" and
"no grad for z" are passed as empty tensors.
"""
import torch

__all__ = ["stl_linear"]

_forward = torch.ops.stl_torch.stl_forward.default
_backward = torch.ops.stl_torch.stl_backward.default


def _empty(like):
    return like.new_empty((0,))


def _check_devices(op, **tensors):
    (xname, x), *rest = tensors.items()
    for name, t in rest:
        torch._check(t.device == x.device,
                     lambda: f"{op}: argument '{name}' is on {t.device} but '{xname}' is on {x.device}")


@torch.library.register_fake("stl_torch::stl_forward")
@torch.library.register_fake("stl_torch::stl_forward_unfused")
def _forward_fake(x, E, Wt, D, bias, tile, need_z):
    _check_devices("stl_forward", x=x, E=E, Wt=Wt, D=D, bias=bias)
    torch._check(x.dim() == 2, lambda: f"stl_forward: argument 'x' must be 2-D, got {x.dim()}-D")
    m, r, pt = x.shape[0], E.shape[0], Wt.shape[2]
    y = x.new_empty((m, pt * tile))
    z = x.new_empty((r, (m + tile - 1) // tile, pt)) if need_z else _empty(x)
    return y, z


@torch.library.register_fake("stl_torch::stl_backward")
def _backward_fake(grad_y, grad_z, x, E, Wt, D, z, has_bias, tile):
    _check_devices("stl_backward", x=x, grad_y=grad_y, grad_z=grad_z, E=E, Wt=Wt, D=D, z=z)
    db = x.new_empty((grad_y.shape[1],)) if has_bias else _empty(x)
    return (torch.empty_like(x), torch.empty_like(E), torch.empty_like(Wt), torch.empty_like(D), db)


def _setup_context(ctx, inputs, output):
    x, E, Wt, D, bias, tile, need_z = inputs
    _, z = output
    ctx.tile = tile
    ctx.has_bias = bias.numel() > 0
    ctx.save_for_backward(x, E, Wt, D, z)


def _backward_fn(ctx, grad_y, grad_z):
    x, E, Wt, D, z = ctx.saved_tensors
    # autograd hands None for an unused z and may hand non-contiguous (e.g. expanded) grads
    grad_y = torch.zeros((x.shape[0], Wt.shape[2] * ctx.tile), dtype=x.dtype, device=x.device) \
        if grad_y is None else grad_y.contiguous()
    grad_z = _empty(x) if grad_z is None or z.numel() == 0 else grad_z.contiguous()
    dx, dE, dWt, dD, db = _backward(grad_y, grad_z, x, E, Wt, D, z, ctx.has_bias, ctx.tile)
    return dx, dE, dWt, dD, (db if ctx.has_bias else None), None, None


torch.library.register_autograd("stl_torch::stl_forward", _backward_fn, setup_context=_setup_context)


def stl_linear(x, E, Wt, D, bias=None, tile=4):
    """STL of a 2-D ``x`` (M, N): ``decode(encode(x, E) @ Wt, D) + bias``, rows tiled in order.

    Inputs are made contiguous; under ``torch.autocast`` every operand is cast to the autocast
    dtype (like ``F.linear``). When autograd will need it, the product ``Z`` is kept for the
    backward pass (saves one batched GEMM) instead of being recomputed.
    """
    if bias is None:
        bias = _empty(x)
    dev = x.device.type
    if torch.amp.is_autocast_available(dev) and torch.is_autocast_enabled(dev):
        dt = torch.get_autocast_dtype(dev)
        x, E, Wt, D, bias = (v.to(dt) for v in (x, E, Wt, D, bias))
    need_z = torch.is_grad_enabled() and any(
        t.requires_grad for t in (x, E, Wt, D, bias))
    y, _ = _forward(x.contiguous(), E.contiguous(), Wt.contiguous(), D.contiguous(),
                    bias.contiguous(), tile, need_z)
    return y
