"""Second derivatives (docs/operator.md section 6): create_graph=True through the STL op gives the true
second derivatives (gradgradcheck), not the silent zeros of a backward without autograd."""
import pytest
import torch

import stl_torch.ops as stl_ops
from stl_torch import STLinear, stl_linear

from conftest import operands

fwd = torch.ops.stl_torch.stl_forward.default


@pytest.mark.parametrize("shape", [(5, 4, 6, 2, 3), (6, 8, 4, 4, 5), (3, 3, 3, 1, 2)])
@pytest.mark.parametrize("bias", [True, False])
def test_gradgradcheck(shape, bias):
    M, N, P, t, r = shape
    ins = operands(M, N, P, t, r, bias=bias, requires_grad=True, seed=1)
    if not bias:
        ins = ins[:4]
    f = lambda *a: stl_linear(*a, tile=t)  # noqa: E731
    assert torch.autograd.gradcheck(f, ins)
    assert torch.autograd.gradgradcheck(f, ins)


def test_gradgradcheck_with_the_z_output():
    x, E, Wt, D, b = operands(5, 4, 6, 2, 3, requires_grad=True, seed=2)
    f = lambda *a: fwd(*a, 2, True)[1].sin().sum() + fwd(*a, 2, True)[0].square().sum()  # noqa: E731
    assert torch.autograd.gradgradcheck(f, (x, E, Wt, D, b))


def test_hessian_vector_product_through_stlinear_is_not_zero():
    """A gradient penalty (create_graph=True) must move the parameters; with a backward without
    autograd its gradient would be silently zero."""
    torch.manual_seed(0)
    m = STLinear(8, 8, tile=2, rank=5, init="random", dtype=torch.float64)
    x = torch.randn(3, 4, 8, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(m(x).square().sum(), x, create_graph=True)
    gx.square().sum().backward()
    for name, p in m.named_parameters():
        if name != "bias":  # the bias adds a constant to y: d(gx)/d(bias) is zero indeed
            assert p.grad is not None and p.grad.abs().max() > 1e-6, name


def test_first_order_backward_stays_on_the_c_kernel(monkeypatch):
    calls = []
    monkeypatch.setattr(stl_ops, "_differentiable_backward", lambda *a: calls.append(1))
    x, E, Wt, D, b = operands(6, 8, 4, 4, 5, requires_grad=True, seed=3)
    stl_linear(x, E, Wt, D, b, tile=4).square().sum().backward()
    assert not calls and x.grad is not None
