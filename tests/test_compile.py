"""torch.compile(fullgraph=True) through the custom ops: no graph break, the numbers of the float64
reference and of eager (float64, so inductor's fused LayerNorm/GELU rounding does not hide a real
mismatch)."""
import pytest
import torch
from torch import nn

from stl_torch import STLinear
from stl_torch.tiling import from_tiles, stl_reference, to_tiles


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = STLinear(16, 32, rank=12, init="random", dtype=torch.float64)
        self.fc2 = STLinear(32, 16, rank=12, init="random", bias=False, dtype=torch.float64)
        self.norm = nn.LayerNorm(16, dtype=torch.float64)

    def forward(self, x):
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(x))))


def reference_block(model, x):
    """Block's forward from the float64 formulas (stl_torch.tiling), differentiable by autograd."""
    def stl(layer, h):
        y = stl_reference(to_tiles(h, layer.tile), layer.E, layer.Wt, layer.D, layer.bias, layer.tile)
        return from_tiles(y, h.shape[:-1] + (layer.out_features,), layer.tile)
    return x + stl(model.fc2, torch.nn.functional.gelu(stl(model.fc1, model.norm(x))))


def test_compile_fullgraph_matches_reference_and_eager():
    torch._dynamo.reset()
    model = Block()
    x = torch.randn(2, 7, 16, dtype=torch.float64)  # 7 tokens: exercises the per-sequence padding under compile
    formula = reference_block(model, x)
    formula.square().mean().backward()
    formula_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ref_out = model(x)
    ref_out.square().mean().backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    torch.testing.assert_close(ref_out, formula, rtol=1e-10, atol=1e-10)
    for g, f in zip(ref_grads, formula_grads):
        torch.testing.assert_close(g, f, rtol=1e-10, atol=1e-10)
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(x)
    out.square().mean().backward()
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    for p, g in zip(model.parameters(), ref_grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-10)
    # and under no_grad (need_z=False path) as well
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), ref_out, rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------ fake kernels check like the C op
fwd = torch.ops.stl_torch.stl_forward.default
bwd = torch.ops.stl_torch.stl_backward.default


def _meta(*shape, dtype=torch.float32):
    return torch.empty(*shape, dtype=dtype, device="meta")


def _good_forward():  # M=8, N=8, P=12, t=4, r=6
    return [_meta(8, 8), _meta(6, 16), _meta(6, 2, 3), _meta(16, 6), _meta(12), 4, False]


FORWARD_BAD = [  # (argument index, value, message) as csrc/ops.c words them
    (0, _meta(8, 8, dtype=torch.int64), r"'x' has dtype int64; expected float32, float64, bfloat16 or float16"),
    (1, _meta(6, 16, dtype=torch.float64), r"'E' has dtype float64 but 'x' has dtype float32"),
    (0, _meta(8, 6), r"'x' has N=6 columns; expected a positive multiple of tile=4"),
    (0, _meta(8, 0), r"'x' has N=0 columns"),
    (0, _meta(8), r"'x' has shape \(8\); expected a 2-D"),
    (0, _meta(2, 8, 8), r"'x' has shape \(2, 8, 8\); expected a 2-D"),
    (0, _meta(8, 16)[:, ::2], r"'x' must be contiguous"),
    (1, _meta(6, 9), r"'E' has shape \(6, 9\); expected \(rank, tile\*tile\)"),
    (1, _meta(0, 16), r"'E' has rank 0"),
    (2, _meta(6, 3, 3), r"'Wt' has shape \(6, 3, 3\); expected \(rank, N/tile, P/tile\) = \(6, 2, P/4\)"),
    (2, _meta(5, 2, 3), r"'Wt' has shape \(5, 2, 3\)"),
    (2, _meta(6, 2, 0), r"'Wt' has P/tile=0"),
    (2, _meta(6, 3, 2).transpose(1, 2), r"'Wt' must be contiguous"),
    (3, _meta(6, 16), r"'D' has shape \(6, 16\); expected \(tile\*tile, rank\) = \(16, 6\)"),
    (3, _meta(16, 6, dtype=torch.bfloat16), r"'D' has dtype bfloat16"),
    (4, _meta(7), r"'bias' has shape \(7\); expected \(P,\) = \(12,\)"),
    (4, _meta(12, dtype=torch.float64), r"'bias' has dtype"),
    (1, torch.empty(6, 16), r"'E' is on cpu but 'x' is on meta"),
    (1, _meta(65537, 16), r"'E' has rank 65537; expected at most 65536 products"),
    (5, 0, r"'tile' is 0"),
    (5, 17, r"'tile' is 17"),
]


def _real(v):
    """The CPU tensor of a meta tensor's shape, strides and dtype (finite values)."""
    if not (torch.is_tensor(v) and v.is_meta):
        return v
    base = torch.randn(max(v.storage_offset() + sum((n - 1) * s for n, s in zip(v.shape, v.stride())) + 1, 1))
    return base.to(v.dtype).as_strided(v.shape, v.stride(), v.storage_offset())


@pytest.mark.parametrize("i,value,pattern", [c for c in FORWARD_BAD if not (torch.is_tensor(c[1]) and not c[1].is_meta)])
def test_the_kernel_checks_like_the_fake(i, value, pattern):
    """The same malformed calls on real CPU tensors: csrc/ops.c raises the same message, so the two
    checks (trace time, run time) cannot drift apart unseen."""
    args = [_real(a) for a in _good_forward()]
    args[i] = _real(value)
    with pytest.raises(RuntimeError, match=pattern):
        fwd(*args)


@pytest.mark.parametrize("i,value,pattern", FORWARD_BAD)
def test_fake_forward_checks_like_the_kernel(i, value, pattern):
    args = _good_forward()
    args[i] = value
    with pytest.raises(RuntimeError, match=pattern):
        fwd(*args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_fake_forward_accepts_good_calls(dtype):
    x, E, Wt, D, b, t, _ = [a.to(dtype) if torch.is_tensor(a) else a for a in _good_forward()]
    y, z = fwd(x, E, Wt, D, b, t, True)
    assert y.shape == (8, 12) and z.shape == (6, 2, 3) and y.dtype == dtype
    assert fwd(x, E, Wt, D, b[:0], t, False)[1].numel() == 0  # empty bias / no z


def test_fake_backward_checks_like_the_kernel():
    x, E, Wt, D, _, t, _ = _good_forward()
    g, nob = _meta(8, 12), _meta(0)
    outs = bwd(g, nob, x, E, Wt, D, _meta(6, 2, 3), True, t)
    assert [o.shape for o in outs] == [(8, 8), (6, 16), (6, 2, 3), (16, 6), (12,)]
    cases = [
        ((_meta(8, 11), nob, x, E, Wt, D, nob), r"'grad_y' has shape \(8, 11\); expected \(M, P\) = \(8, 12\)"),
        ((g, nob, x, E, Wt, D, _meta(6, 2, 2)),
         r"'z' has shape \(6, 2, 2\); expected \(rank, ceil\(M/tile\), P/tile\)"),
        ((g, _meta(6, 2, 3, dtype=torch.float64), x, E, Wt, D, nob), r"'grad_z' has dtype float64"),
        ((g, _meta(5, 2, 3), x, E, Wt, D, nob), r"'grad_z' has shape \(5, 2, 3\)"),
        ((_meta(12, 8).t(), nob, x, E, Wt, D, nob), r"'grad_y' must be contiguous"),
        ((g, nob, x, _meta(6, 9), Wt, D, nob), r"stl_backward: argument 'E' has shape \(6, 9\)"),
    ]
    for args, pattern in cases:
        with pytest.raises(RuntimeError, match=pattern):
            bwd(*args, True, t)


def test_compile_rejects_a_malformed_call_at_trace_time():
    """With the checks in the fake kernel, dynamo fails while tracing (TorchRuntimeError), before
    anything runs; without them the trace succeeds and only the C kernel would catch it."""
    torch._dynamo.reset()
    x, E, Wt, D, b = torch.randn(8, 8), torch.randn(6, 16), torch.randn(6, 3, 3), torch.randn(16, 6), torch.randn(12)
    f = torch.compile(lambda x, E, Wt, D, b: fwd(x, E, Wt, D, b, 4, False)[0] * 2, fullgraph=True)
    with pytest.raises(torch._dynamo.exc.TorchRuntimeError, match=r"'Wt' has shape \(6, 3, 3\)"):
        f(x, E, Wt, D, b)
    with pytest.raises(torch._dynamo.exc.TorchRuntimeError, match=r"'bias' has shape \(7\)"):
        f(x, E, torch.randn(6, 2, 3), D, torch.randn(7))


# ------------------------------------------------------------------ dynamic token counts
def test_export_with_a_dynamic_token_dim_runs_every_length():
    """torch.export with the batch and token dims dynamic: no guard on tokens % tile (the tiling pads
    by a formula, not a branch), and the exported program equals eager at lengths on and off the tile."""
    from torch.export import Dim, export
    model = Block()
    B, T = Dim("B", min=1, max=64), Dim("T", min=1, max=4096)
    ep = export(model, (torch.randn(2, 7, 16, dtype=torch.float64),), dynamic_shapes=({0: B, 1: T},))
    for b, s in ((1, 1), (2, 5), (3, 8), (2, 13), (1, 64)):
        x = torch.randn(b, s, 16, dtype=torch.float64)
        out = ep.module()(x)
        assert out.shape == (b, s, 16) and out.is_contiguous()
        torch.testing.assert_close(out, model(x), rtol=1e-12, atol=1e-12)


def test_dynamic_compile_serves_every_token_count_with_one_graph():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = Block()
    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    with torch.no_grad():
        for s in (7, 8, 9, 3, 12):
            x = torch.randn(2, s, 16, dtype=torch.float64)
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-10, atol=1e-10)
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert frames == 1, f"{frames} graphs for five token counts: a guard on tokens % tile is back"
