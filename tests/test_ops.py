"""torch.ops.stl_torch.* (the C kernels) against the float64 reference, gradcheck and opcheck."""
import pytest
import torch

import stl_torch  # noqa: F401
from stl_torch import stl_linear
from stl_torch.tiling import stl_reference

from conftest import TOL, operands, rel_err

fwd = torch.ops.stl_torch.stl_forward.default
bwd = torch.ops.stl_torch.stl_backward.default
SHAPES = [  # (M, N, P, t, r): odd M, t = 1/2/4, ranks below/at/above exact
    (37, 64, 48, 4, 24),
    (5, 6, 10, 2, 7),
    (128, 256, 128, 4, 49),
    (3, 8, 4, 4, 16),
    (9, 12, 20, 2, 3),
    (7, 5, 3, 1, 2),
    (130, 96, 200, 4, 64),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16],
                         ids=["f64", "f32", "bf16", "f16"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_forward_and_grads_match_reference(dtype, shape, bias):
    M, N, P, t, r = shape
    ins = operands(M, N, P, t, r, dtype, bias, requires_grad=True)
    y = stl_linear(*ins, tile=t)
    assert y.dtype == dtype and y.shape == (M, P)
    ref_ins = [v.detach().double().requires_grad_() if v is not None else None for v in ins]
    ref = stl_reference(*ref_ins, tile=t)
    g = torch.randn(M, P, dtype=torch.float64)
    y.backward(g.to(dtype))
    ref.backward(g)
    # 16-bit outputs are rounded once, so a sum with cancellation is off by eps * sum|terms|: scale
    # the error by the same computation on |operands| (condition-aware) instead of by the result
    scale_ins = [v.detach().double().abs().requires_grad_() if v is not None else None for v in ins]
    scale = stl_reference(*scale_ins, tile=t)
    scale.backward(g.abs())
    def err(got, want, sum_abs):
        den = sum_abs if dtype in (torch.bfloat16, torch.float16) else want
        return ((got.double() - want).norm() / den.norm()).item()

    assert err(y, ref, scale) < TOL[dtype]
    for name, a, b, s in zip(("x", "E", "Wt", "D", "bias"), ins, ref_ins, scale_ins):
        if a is None:
            continue
        assert a.grad is not None and a.grad.dtype == dtype, name
        assert err(a.grad, b.grad, s.grad) < TOL[dtype], name


@pytest.mark.parametrize("keep_bytes,max_k,kept", [(0, 256, False), (1 << 40, 256, True), (0, 15, True)])
def test_z_kept_or_recomputed_by_size(monkeypatch, keep_bytes, max_k, kept):
    """On the CPU stl_linear keeps Z for the backward only up to Z_KEEP_CPU_BYTES, or when N/t
    exceeds Z_RECOMPUTE_MAX_K; otherwise the backward recomputes Z. Both ways give the reference's
    gradients."""
    import stl_torch.ops as ops
    monkeypatch.setattr(ops, "Z_KEEP_CPU_BYTES", keep_bytes)
    monkeypatch.setattr(ops, "Z_RECOMPUTE_MAX_K", max_k)  # N/t = 16 below
    M, N, P, t, r = 37, 64, 48, 4, 24
    ins = operands(M, N, P, t, r, torch.float64, True, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda v: saved.append(v.shape) or v, lambda v: v):
        y = stl_linear(*ins, tile=t)
    z_shape = (r, (M + t - 1) // t, P // t)
    assert (z_shape in saved) == kept, saved
    ref_ins = [v.detach().requires_grad_() for v in ins]
    ref = stl_reference(*ref_ins, tile=t)
    g = torch.randn(M, P, dtype=torch.float64)
    y.backward(g)
    ref.backward(g)
    assert rel_err(y, ref) < TOL[torch.float64]
    for a, b in zip(ins, ref_ins):
        assert rel_err(a.grad, b.grad) < TOL[torch.float64]


def test_z_output_is_the_product_and_its_grad_counts():
    M, N, P, t, r = 10, 8, 12, 2, 5
    x, E, Wt, D, b = operands(M, N, P, t, r, requires_grad=True)
    y, z = fwd(x, E, Wt, D, b, t, True)
    from stl_torch.tiling import encode_activations
    assert rel_err(z, torch.bmm(encode_activations(x, E, t), Wt)) < 1e-13
    y0, z0 = fwd(x, E, Wt, D, b, t, False)
    assert z0.numel() == 0 and torch.equal(y0, y)
    # a loss that uses z directly: gradcheck covers the grad_z path of the backward
    torch.autograd.gradcheck(lambda *a: fwd(*a, t, True)[1].sin().sum() + fwd(*a, t, True)[0].sum(),
                             (x, E, Wt, D, b))


def test_unused_z_reaches_the_backward_as_no_gradient(monkeypatch):
    """stl_linear never returns z: its backward must get an empty grad_z, not a materialised
    Z-sized tensor of zeros that the kernel would read and add (a whole extra pass)."""
    import stl_torch.ops as ops
    seen = []
    real = ops._backward

    def spy(grad_y, grad_z, *rest):
        seen.append(grad_z.numel())
        return real(grad_y, grad_z, *rest)
    monkeypatch.setattr(ops, "_backward", spy)
    x, E, Wt, D, b = operands(12, 8, 8, 4, 5, requires_grad=True)
    stl_linear(x, E, Wt, D, b, 4).sum().backward()
    assert seen == [0]
    fwd(x, E, Wt, D, b, 4, True)[1].sum().backward()  # a used z still brings its gradient
    assert seen[1] == 5 * 3 * 2


@pytest.mark.parametrize("shape", [(5, 4, 6, 2, 3), (6, 8, 4, 4, 5), (3, 3, 3, 1, 2)])
@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck(shape, bias):
    M, N, P, t, r = shape
    ins = operands(M, N, P, t, r, bias=bias, requires_grad=True)
    if not bias:
        ins = ins[:4]
    assert torch.autograd.gradcheck(lambda *a: stl_linear(*a, tile=t), ins)
    # the backward op recomputes z when it was not kept: gradcheck that path too
    assert torch.autograd.gradcheck(
        lambda *a: fwd(*a, torch.empty(0, dtype=torch.float64), t, False)[0], ins[:4])


def _sample_forward(dtype=torch.float32, requires_grad=True):
    x, E, Wt, D, b = operands(9, 8, 12, 2, 5, dtype, requires_grad=requires_grad)
    return (x, E, Wt, D, b, 2, True), (x, E, Wt, D, b.detach()[:0], 2, False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_forward(dtype):
    for args in _sample_forward(dtype):
        torch.library.opcheck(fwd, args)


def test_opcheck_backward():
    x, E, Wt, D, _ = operands(9, 8, 12, 2, 5)
    g = torch.randn(9, 12, dtype=torch.float64)
    _, z = fwd(x, E, Wt, D, torch.empty(0, dtype=torch.float64), 2, True)
    empty = torch.empty(0, dtype=torch.float64)
    for gz, zz, has_bias in ((empty, z, True), (torch.randn_like(z), z, False), (empty, empty, True)):
        torch.library.opcheck(bwd, (g, gz, x, E, Wt, D, zz, has_bias, 2))


def test_zero_rows():
    x, E, Wt, D, b = operands(0, 8, 12, 4, 6, requires_grad=True)
    y = stl_linear(x, E, Wt, D, b, tile=4)
    assert y.shape == (0, 12)
    y.sum().backward()
    assert x.grad.shape == (0, 8)
    assert torch.count_nonzero(E.grad) == 0 and torch.count_nonzero(D.grad) == 0
    assert torch.count_nonzero(Wt.grad) == 0 and torch.count_nonzero(b.grad) == 0


def test_nan_propagates_only_within_its_tile():
    x, E, Wt, D, b = operands(8, 8, 8, 4, 6)
    x[1, 3] = float("nan")
    y = stl_linear(x, E, Wt, D, b, tile=4)
    assert torch.isnan(y[:4]).all()  # the tile that holds the NaN
    assert torch.isfinite(y[4:]).all()  # the other tile is untouched


def test_noncontiguous_inputs_through_wrapper():
    x, E, Wt, D, b = operands(12, 16, 8, 4, 6)
    xt = x.t().contiguous().t()  # same values, column-major
    assert not xt.is_contiguous()
    assert rel_err(stl_linear(xt, E, Wt, D, b, tile=4), stl_reference(x, E, Wt, D, b, tile=4)) < 1e-12


def test_result_does_not_depend_on_thread_count():
    x, E, Wt, D, b = operands(256, 64, 64, 4, 24, torch.float32, requires_grad=True)
    n = torch.get_num_threads()
    outs = []
    try:
        for k in (1, 2):
            torch.set_num_threads(k)
            for v in (x, E, Wt, D, b):
                v.grad = None
            y = stl_linear(x, E, Wt, D, b, tile=4)
            y.square().sum().backward()
            outs.append([y.detach().clone()] + [v.grad.clone() for v in (x, E, Wt, D, b)])
    finally:
        torch.set_num_threads(n)
    for a, c in zip(*outs):
        assert torch.equal(a, c)
