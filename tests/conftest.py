import pytest
import torch

# relative error in the Frobenius norm, per storage dtype (bf16 stores Xe and Z in bf16)
TOL = {torch.float64: 1e-12, torch.float32: 2e-5, torch.bfloat16: 2.5e-2}


def rel_err(a, b):
    a, b = a.double(), b.double()
    den = b.norm()
    return ((a - b).norm() / (den if den > 0 else 1)).item()


def operands(M, N, P, t, r, dtype=torch.float64, bias=True, seed=None, requires_grad=False):
    """Fresh random (x, E, Wt, D, bias) for one STL call."""
    g = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**31)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    vals = [mk(M, N), mk(r, t * t) / t, mk(r, N // t, P // t) / (N / t) ** 0.5, mk(t * t, r) / r ** 0.5,
            mk(P) if bias else None]
    if requires_grad:
        vals = [v.requires_grad_() if v is not None else None for v in vals]
    return vals


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
