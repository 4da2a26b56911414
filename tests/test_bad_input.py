"""Bad input raises a clear Python exception naming the argument; nothing crashes."""
import pytest
import torch

from stl_torch import STLinear, stl_linear

from conftest import operands

fwd = torch.ops.stl_torch.stl_forward.default
bwd = torch.ops.stl_torch.stl_backward.default
NOB = torch.empty(0)


def good(dtype=torch.float32):
    x, E, Wt, D, b = operands(8, 8, 12, 4, 6, dtype)
    return [x, E, Wt, D, b, 4, False]


def call_with(i, value, dtype=torch.float32):
    args = good(dtype)
    args[i] = value
    return fwd(*args)


@pytest.mark.parametrize("i,value,pattern", [
    (0, torch.zeros(8, 8, dtype=torch.int64), r"'x' has dtype int64; expected float32, float64, bfloat16 or float16"),
    (0, torch.zeros(8, 8, dtype=torch.bool), r"'x' has dtype bool"),
    (0, torch.zeros(8, 8, dtype=torch.float16), r"'E' has dtype float32 but 'x' has dtype float16"),
    (4, None, r"'bias' is None; expected a tensor"),
    (1, torch.zeros(6, 16, dtype=torch.float64), r"'E' has dtype float64 but 'x' has dtype float32"),
    (0, torch.zeros(8, 6), r"'x' has N=6 columns; expected a positive multiple of tile=4"),
    (0, torch.zeros(8, 0), r"'x' has N=0"),
    (0, torch.zeros(8), r"'x' has shape \(8\); expected a 2-D"),
    (0, torch.zeros(2, 8, 8), r"'x' has shape \(2, 8, 8\); expected a 2-D"),
    (1, torch.zeros(6, 9), r"'E' has shape \(6, 9\); expected \(rank, tile\*tile\)"),
    (1, torch.zeros(0, 16), r"'E' has rank 0"),
    (2, torch.zeros(6, 3, 3), r"'Wt' has shape \(6, 3, 3\); expected \(rank, N/tile, P/tile\) = \(6, 2"),
    (2, torch.zeros(5, 2, 3), r"'Wt' has shape \(5, 2, 3\)"),
    (2, torch.zeros(6, 2, 0), r"'Wt' has P/tile=0"),
    (3, torch.zeros(6, 16), r"'D' has shape \(6, 16\); expected \(tile\*tile, rank\) = \(16, 6\)"),
    (3, torch.zeros(16, 5), r"'D' has shape \(16, 5\); expected \(tile\*tile, rank\) = \(16, 6\)"),
    (4, torch.zeros(7), r"'bias' has shape \(7\); expected \(P,\) = \(12,\)"),
    (0, torch.zeros(8, 16)[:, ::2], r"'x' must be contiguous"),
    (2, torch.zeros(6, 3, 2).transpose(1, 2), r"'Wt' must be contiguous"),
    (5, 0, r"'tile' is 0"),
    (5, 17, r"'tile' is 17"),
])
def test_forward_op_rejects(i, value, pattern):
    with pytest.raises(RuntimeError, match=pattern):
        call_with(i, value)


def test_backward_op_rejects():
    x, E, Wt, D, b, t, _ = good()
    g = torch.randn(8, 12)
    with pytest.raises(RuntimeError, match=r"'grad_y' has shape \(8, 11\); expected \(M, P\) = \(8, 12\)"):
        bwd(torch.randn(8, 11), NOB, x, E, Wt, D, NOB, True, t)
    with pytest.raises(RuntimeError, match=r"'z' has shape \(6, 2, 2\); expected \(rank, ceil\(M/tile\), P/tile\)"):
        bwd(g, NOB, x, E, Wt, D, torch.zeros(6, 2, 2), True, t)
    with pytest.raises(RuntimeError, match=r"'grad_z' has dtype float64 but 'x' has dtype float32"):
        bwd(g, torch.zeros(6, 2, 3, dtype=torch.float64), x, E, Wt, D, NOB, True, t)
    with pytest.raises(RuntimeError, match=r"'grad_y' must be contiguous"):
        bwd(torch.randn(12, 8).t(), NOB, x, E, Wt, D, NOB, True, t)


def test_error_leaves_the_process_usable():
    for _ in range(200):  # handles are freed before raising: no leak, no crash
        with pytest.raises(RuntimeError):
            call_with(1, torch.zeros(6, 9))
    args = good()
    y, _ = fwd(*args)
    assert torch.isfinite(y).all()


def test_mismatched_devices_rejected_by_fake_kernel():
    x, E, Wt, D, b, t, nz = good()
    with pytest.raises(RuntimeError, match=r"'E' is on cpu but 'x' is on meta"):
        fwd(x.to("meta"), E, Wt, D, b, t, nz)


def test_module_rejects():
    with pytest.raises(ValueError, match=r"in_features=6 is not divisible by tile=4"):
        STLinear(6, 8)
    with pytest.raises(ValueError, match=r"out_features=10 is not divisible by tile=4"):
        STLinear(8, 10)
    m = STLinear(8, 12, rank=6)
    with pytest.raises(ValueError, match=r"input last dim is 7, expected in_features=8"):
        m(torch.randn(3, 7))
    with pytest.raises(RuntimeError, match=r"'x' has dtype float64 but 'E' has dtype float32|'E' has dtype float32 but 'x' has dtype float64"):
        m(torch.randn(3, 8, dtype=torch.float64))
    with pytest.raises(RuntimeError, match=r"'x' has dtype int32"):
        stl_linear(torch.zeros(4, 8, dtype=torch.int32), m.E, m.Wt, m.D, None, 4)
    with pytest.raises(RuntimeError, match=r"is on meta but 'x' is on cpu|'x' is on cpu but|is on a different device"):
        stl_linear(torch.randn(4, 8), m.E.to("meta"), m.Wt, m.D, None, 4)
    y = m(torch.randn(0, 8))  # zero rows work
    assert y.shape == (0, 12)
    y.sum().backward()
    assert torch.count_nonzero(m.Wt.grad) == 0


def test_sizes_are_64_bit_and_bounded():
    """A rank that does not fit in 32 bits is rejected, not truncated (2^32 + 3 rows once read as
    rank 3); ranks past t^3 of the largest tile are refused with the bound."""
    x, E, Wt, D, b, t, nz = good()
    huge = torch.zeros(1, 16).expand(2 ** 32 + 3, 16)  # no memory behind it: only its size matters
    with pytest.raises(RuntimeError, match=r"'E' has rank 4294967299; expected at most 65536 products"):
        fwd(x, huge, Wt, D, b, t, nz)
    with pytest.raises(RuntimeError, match=r"'E' has rank 65537; expected at most 65536"):
        fwd(x, torch.zeros(65537, 16), torch.zeros(65537, 2, 3), torch.zeros(16, 65537), b, t, nz)


def test_wide_layers_keep_their_bias():
    """Bias and output columns are indexed in 64 bits (a P >= 2^31 once dropped the bias): checked
    at a width past every chunk and panel of the kernels instead of 2^31."""
    M, N, P, t, r = 5, 8, 4 * 1000, 4, 3
    x, E, Wt, D, b = operands(M, N, P, t, r, torch.float32)
    y, _ = fwd(x, E, Wt, D, b, t, False)
    y0, _ = fwd(x, E, Wt, D, torch.empty(0), t, False)
    torch.testing.assert_close(y - y0, b.expand(M, P), rtol=0, atol=1e-5)


def test_a_0d_input_is_named():
    from stl_torch import STLinear
    with pytest.raises(ValueError, match="input must be a tensor of shape \\(\\*, in_features=8\\), got a 0-D"):
        STLinear(8, 8, tile=4, rank=4)(torch.tensor(1.0))
