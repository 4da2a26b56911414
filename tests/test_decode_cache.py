"""The product cache of incremental decoding (docs/llm.md "Decode speed", issue 30): a decode step
computes only the r/t products of its token's level (torch.ops.stl_torch.stl_decode_step) and decodes
from the cached Z rows of the lower levels; outputs equal a full forward for every batch layout."""
import copy
import os

import pytest
import torch

import stl_torch
from stl_torch import STLinear
from stl_torch.decode import tile_cache
from stl_torch.init import causal_levels
from stl_torch.nn import TileContext
from stl_torch.step_op import decode_step, decode_step_reference

transformers = pytest.importorskip("transformers")
from test_decode import GEN, left_pad, prompt, tiny_llama  # noqa: E402


def poison_outside_the_step(rows, z, E, D, pos, t, r):
    """NaN wherever a decode step at row pos[b] of its tile must not read: the previous tile's rows,
    the Z rows of levels above pos[b], E and D outside the causal support. Returns the levels."""
    lev = torch.as_tensor(causal_levels(t, r))
    for b in range(rows.shape[0]):
        rows[b, :t - 1 - int(pos[b])] = float("nan")
        z[b, lev > pos[b]] = float("nan")
    rowsE = torch.arange(t * t) // t
    E[rowsE[None, :] > lev[:, None]] = float("nan")
    D[rowsE[:, None] < lev[None, :]] = float("nan")
    return lev


def stl_layers(model):
    return [m for m in model.modules() if isinstance(m, STLinear)]


@pytest.fixture
def step_calls(monkeypatch):
    calls = []

    def counting(*a):
        calls.append(a[7].clone())  # pos
        return decode_step(*a)

    monkeypatch.setattr(stl_torch.decode, "decode_step", counting)
    return calls


def test_generate_uses_the_step_op_and_gives_the_tokens_of_use_cache_false(step_calls):
    model = tiny_llama(3)
    n_layers = len(stl_layers(model))
    ids = prompt(3, 6)
    with torch.no_grad():
        a = model.generate(ids, max_new_tokens=9, **GEN)
        assert len(step_calls) == 8 * n_layers  # every decode step of every layer: the product cache
        b = model.generate(ids, max_new_tokens=9, use_cache=False, **GEN)
    assert torch.equal(a, b)


@pytest.mark.parametrize("chunks", [[1] * 13, [3, 1, 1, 1, 5, 2], [6, 7], [6, 1, 7], [4, 4, 1, 4],
                                    [2, 1, 1, 1, 1, 3, 1, 1]])
def test_chunks_equal_the_full_forward(chunks, step_calls):
    """Calls of 1..7 tokens, starting and ending anywhere in a tile, through the cache that the
    first call (no cache given, use_cache=True) returns: logits within 1e-8 of one full forward;
    every one-token step after the first call runs the product-cache step."""
    model = tiny_llama(4)
    ids = prompt(4, sum(chunks))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        cache, out, pos = None, [], 0
        for n in chunks:
            o = model(ids[:, pos:pos + n], cache=cache, use_cache=True)
            cache, pos = o.cache, pos + n
            out.append(o.logits)
            assert tile_cache(cache).length == pos
    assert (torch.cat(out, 1) - full).abs().max() < 1e-8
    steps = sum(1 for i, n in enumerate(chunks) if n == 1 and i > 0)
    assert len(step_calls) == steps * len(stl_layers(model))


def test_a_step_reads_only_its_levels_blocks_of_wt():
    """Poison every Wt block but the token's level with NaN: the step's output does not change (it
    reads r/t products' Wt, r*N*P/t^3 multiply-adds), where recomputing the tile would read them all."""
    model = tiny_llama(5)
    ids = prompt(5, 6)  # next token at row 2 of its tile
    t, r = 4, 24
    lev = torch.as_tensor(causal_levels(t, r))
    with torch.no_grad():
        cache = model(ids, use_cache=True).cache
        saved = copy.deepcopy(cache)
        nxt = torch.tensor([[7]])
        want = model(nxt, cache=cache).logits
        for m in stl_layers(model):
            m.Wt[lev != 2] = float("nan")
        got = model(nxt, cache=saved).logits
    assert torch.isfinite(got).all() and (got - want).abs().max() < 1e-12


def test_left_padding_beams_and_mixed_levels_in_one_batch(step_calls):
    """Rows at different positions in their tiles step together (one bmm per level present)."""
    model = tiny_llama(6)
    prompts = [prompt(20, 7), prompt(21, 2), prompt(22, 5), prompt(23, 4)]
    ids, mask = left_pad(prompts)
    with torch.no_grad():
        nxt = torch.randint(1, 64, (4, 6), generator=torch.Generator().manual_seed(1))
        full_ids = torch.cat([ids, nxt], 1)
        full_mask = torch.cat([mask, torch.ones_like(nxt)], 1)
        full = model(full_ids, attention_mask=full_mask, use_cache=False).logits[:, ids.shape[1]:]
        o = model(ids, attention_mask=mask, use_cache=True)
        cache, out = o.cache, []
        for i in range(6):
            o = model(nxt[:, i:i + 1], attention_mask=full_mask[:, :ids.shape[1] + i + 1], cache=cache)
            out.append(o.logits)
    assert (torch.cat(out, 1) - full).abs().max() < 1e-8
    assert len({tuple(p.tolist()) for p in step_calls}) > 1 and any(len(set(p.tolist())) > 1 for p in step_calls)
    with torch.no_grad():  # beams: reorder_cache must carry the product cache
        kw = dict(attention_mask=mask, max_new_tokens=9, num_beams=3, num_return_sequences=2, output_scores=True,
                  return_dict_in_generate=True, **GEN)
        a = model.generate(ids, **kw)
        b = model.generate(ids, use_cache=False, **kw)
    assert torch.equal(a.sequences, b.sequences)
    assert (a.sequences_scores - b.sequences_scores).abs().max() < 1e-10


def test_reorder_select_and_repeat_carry_the_product_cache():
    model = tiny_llama(8)
    ids = prompt(40, 6, batch=3)
    with torch.no_grad():
        cache = model(ids).cache
        z = {k: v.clone() for k, v in tile_cache(cache).z.items()}
        assert z and len(z) == len(tile_cache(cache).rows)
        cache.reorder_cache(torch.tensor([2, 2, 0]))
        for k, v in tile_cache(cache).z.items():
            assert torch.equal(v, z[k][[2, 2, 0]])
        nxt = torch.tensor([[5], [6], [7]])
        step = model(nxt, cache=cache).logits[:, -1]
        ref = model(torch.cat([ids[[2, 2, 0]], nxt], 1), use_cache=False).logits[:, -1]
        assert (step - ref).abs().max() < 1e-8
        cache.batch_select_indices(torch.tensor([1]))
        cache.batch_repeat_interleave(2)
        step = model(torch.tensor([[9], [9]]), cache=cache).logits[:, -1]
        ref = model(torch.cat([ids[[2]], torch.tensor([[6, 9]])], 1), use_cache=False).logits[:, -1]
        assert (step - ref).abs().max() < 1e-8


def test_a_call_with_autograd_drops_the_product_cache_and_steps_stay_exact(step_calls):
    model = tiny_llama(9)
    ids = prompt(9, 10)
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        o = model(ids[:, :5], use_cache=True)
    cache, out = o.cache, [o.logits]
    o = model(ids[:, 5:6], cache=cache)  # autograd on: today's tile path, no product cache kept
    out.append(o.logits.detach())
    assert not tile_cache(cache).z
    with torch.no_grad():
        for i in range(6, 10):
            out.append(model(ids[:, i:i + 1], cache=cache).logits)
    assert (torch.cat(out, 1) - full).abs().max() < 1e-8
    assert len(step_calls) == 3 * len(stl_layers(model))  # positions 7, 8, 9: position 6 refilled the cache


def test_a_layer_with_other_masks_keeps_the_tile_path(step_calls):
    model = tiny_llama(10)
    layers = stl_layers(model)
    with torch.no_grad():
        layers[0].mask_E[5, 0] = 0.0  # still causal, but not the level layout: no product cache
        layers[0].E[5, 0] = 0.0
    assert not layers[0].product_cache_ready() and layers[1].product_cache_ready()
    ids = prompt(10, 9)
    with torch.no_grad():
        a = model.generate(ids, max_new_tokens=6, **GEN)
        b = model.generate(ids, max_new_tokens=6, use_cache=False, **GEN)
    assert torch.equal(a, b)
    assert len(step_calls) == 5 * (len(layers) - 1)


def test_float32_and_bfloat16_generate_the_tokens_of_use_cache_false():
    for dt in (torch.float32, torch.bfloat16):
        model = tiny_llama(11).to(dt)
        ids = prompt(11, 7)
        with torch.no_grad():
            a = model.generate(ids, max_new_tokens=10, **GEN)
            b = model.generate(ids, max_new_tokens=10, use_cache=False, **GEN)
        assert torch.equal(a, b), dt


def operands(B=4, N=16, P=12, t=4, r=24, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    return (mk(B, N), mk(B, t - 1, N), mk(r, t * t), mk(r, N // t, P // t), mk(t * t, r), mk(P),
            mk(B, r, P // t), torch.arange(B) % t, t)


@pytest.mark.parametrize("t,r", [(4, 24), (4, 10), (2, 7), (3, 2), (4, 64)])
def test_step_op_matches_its_reference_and_ignores_what_it_must_not_read(t, r):
    """NaN in rows of the previous tile, in E/D outside the causal support and in the Z rows of
    levels above the token's never reach the output; the level's Z rows are written in place."""
    x, rows, E, Wt, D, bias, z, pos, _ = operands(B=5, N=4 * t, P=3 * t, t=t, r=r)
    pos = torch.tensor([0, 1, t - 1, 0, t - 1]) % t
    lev = poison_outside_the_step(rows, z, E, D, pos, t, r)
    want_y, want_z = decode_step_reference(x, rows.nan_to_num(), E.nan_to_num(), Wt, D.nan_to_num(), bias,
                                           z.nan_to_num(), pos, t)
    y = decode_step(x, rows, E, Wt, D, bias, z, pos, t)
    assert torch.isfinite(y).all() and (y - want_y).abs().max() < 1e-12
    for b in range(5):
        keep = lev <= pos[b]
        assert (z[b, keep] - want_z[b, keep]).abs().max() < 1e-12


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_step_op_low_precision(dtype):
    args = list(operands(dtype=dtype))
    want, _ = decode_step_reference(*args)
    y = decode_step(*args)
    tol = {torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 3e-3}[dtype]
    assert ((y.double() - want).norm() / want.norm()).item() < tol


@pytest.mark.parametrize("i,bad,match", [
    (6, lambda a: a[6][:, :3].contiguous(), r"argument 'zcache' has shape \(4, 3, 3\); expected \(B, rank, P/tile\)"),
    (7, lambda a: a[7] + 4, r"argument 'pos' holds 4 at index 0; expected 0 <= pos < tile=4"),
    (7, lambda a: a[7].int(), r"argument 'pos' must be an int64 tensor"),
    (1, lambda a: a[1][:, :2].contiguous(), r"argument 'rows' has shape \(4, 2, 16\)"),
    (3, lambda a: a[3].float(), r"argument 'Wt' has a different dtype than 'x'"),
    (2, lambda a: a[2][:, :9].contiguous(), r"argument 'E' has shape \(24, 9\)"),
    (4, lambda a: a[4].t(), r"argument 'D' (must be contiguous|has shape)"),
    (5, lambda a: a[5][:5], r"argument 'bias' has shape \(5\); expected \(P,\) = \(12,\)"),
    (8, lambda a: 0, r"argument 'tile' is 0"),
    (6, lambda a: a[6][:, ::2], r"argument 'zcache' must be contiguous"),
])
def test_step_op_names_the_bad_argument(i, bad, match):
    args = list(operands())
    args[i] = bad(args)
    with pytest.raises(RuntimeError, match="stl_decode_step: " + match):
        decode_step(*args)


def test_tile_context_is_the_one_interface():
    layer = STLinear(8, 8, rank=12, causal=True, dtype=torch.float64)

    class Twice(TileContext):
        def run(self, layer, x):
            return 2 * layer.rows_forward(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)

        def processed_rows(self, layer, shape):
            return 7

    x = torch.randn(1, 4, 8, dtype=torch.float64)
    ref = layer(x)
    layer.set_tile_context(Twice())
    assert layer.tile_context is not None and layer.processed_rows(x.shape) == 7
    assert torch.allclose(layer(x), 2 * ref)
    layer.set_tile_context(None)
    assert torch.equal(layer(x), ref)
    with pytest.raises(TypeError, match="expected a TileContext"):
        layer.set_tile_context(object())
    import inspect
    assert "decode" not in inspect.getsource(stl_torch.nn).split('"""', 2)[2].split("class TileContext")[0]


# shapes that reach every path of the kernel (csrc/cpu/step_isa.inc) at every vector width: P/t with
# whole 4-vector column blocks, single vectors and a scalar tail, more than one decode chunk (64
# columns), 9 sequences (groups of 4 and a remainder) at every row of their tiles; 40 sequences
# (10 per row of the tile: the bfloat16 dot-product gemv's passes of 8 and a remainder, odd N/t)
KERNEL_SHAPES = [(4, 24, 4 * 37, 4 * 150, 9), (4, 10, 4 * 8, 4 * 67, 6), (2, 7, 2 * 21, 2 * 19, 9),
                 (3, 2, 3 * 5, 3 * 33, 3), (8, 24, 8 * 4, 8 * 70, 9), (4, 24, 4 * 21, 4 * 80, 40),
                 (4, 24, 4 * 19, 4 * 100, 24)]  # 100 columns: 64-column strips of two passes, then 32


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("t,r,N,P,B", KERNEL_SHAPES)
def test_step_kernel_against_float64_with_nan_where_it_must_not_read(t, r, N, P, B, dtype):
    """Fresh random inputs at the ISA level of this process (test_step_kernel_at_every_isa_level reruns
    it at every level the CPU has): y and the level's Z rows against the float64 reference, rows_out
    the shifted rows; NaN in the rows of the previous tile, in E/D outside the causal support and in
    the Z rows of levels above each token's never reach the output."""
    g = torch.Generator().manual_seed(1000 * t + r + N + P)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    x, rows, E, Wt, D, bias, z = mk(B, N), mk(B, t - 1, N), mk(r, t * t), mk(r, N // t, P // t), mk(t * t, r), \
        mk(P), mk(B, r, P // t)
    pos = torch.randint(0, t, (B,), generator=g)
    pos[:t] = torch.arange(min(B, t))
    x, rows, E, Wt, D, bias, z = (v.to(dtype) for v in (x, rows, E, Wt, D, bias, z))
    lev = poison_outside_the_step(rows, z, E, D, pos, t, r)
    want_y, want_z = decode_step_reference(x, rows.nan_to_num(), E.nan_to_num(), Wt, D.nan_to_num(), bias,
                                           z.nan_to_num(), pos, t)
    rows_before = rows.clone()
    rows_out = torch.full_like(rows, float("nan"))
    y = decode_step(x, rows, E, Wt, D, bias, z, pos, t, rows_out)
    assert torch.isfinite(y).all()
    tol = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 2e-2, torch.float16: 2e-3}[dtype]
    assert ((y.double() - want_y).norm() / want_y.norm()).item() < tol
    for b in range(B):
        keep = lev <= pos[b]
        assert ((z[b, keep].double() - want_z[b, keep]).norm() / want_z[b, keep].norm()).item() < tol
    assert torch.equal(rows_out[:, -1], x) and torch.equal(rows_out[:, :-1].isnan(), rows_before[:, 1:].isnan())
    assert torch.equal(rows_out[:, :-1].nan_to_num(), rows_before[:, 1:].nan_to_num())
    # rows_out may be rows itself: the same step, the rows shifted in place
    z2 = z.clone()
    y2 = decode_step(x, rows, E, Wt, D, bias, z2, pos, t, rows)
    assert torch.equal(y2, y) and torch.equal(rows.nan_to_num(), rows_out.nan_to_num())


@pytest.mark.skipif(os.environ.get("STL_TORCH_CPU_ISA") is not None, reason="already a per-level run")
@pytest.mark.parametrize("level", ["baseline", "avx2", "avx512", "avx512bf16", "amx"])
def test_step_kernel_at_every_isa_level(level):
    """The step kernel is compiled per ISA level (step_<level>.c) and chosen at import: the kernel
    tests again in a subprocess at every level this CPU has (STL_TORCH_CPU_ISA)."""
    from test_kernels import _levels_below, rerun_in_subprocess
    if level not in _levels_below():
        pytest.skip(f"this CPU does not support {level}")
    if level == stl_torch._C.abi_info()["cpu_isa"]:
        pytest.skip("that is this process")
    rerun_in_subprocess(["test_decode_cache.py"], {"STL_TORCH_CPU_ISA": level}, k="step_kernel or step_op")


def test_step_kernel_runs_at_the_operators_level():
    """Every ISA level has its own step kernel: a level without one would run the baseline's."""
    info = stl_torch._C.abi_info()
    assert info["cpu_step_isa"] == info["cpu_isa"]


# ------------------------------------------------------------------ compiled decoding (issue 31, item 4)
@pytest.mark.parametrize("layout", ["left-padded", "one-sequence"])
def test_compiled_forward_decodes_in_one_graph_per_shape_with_the_tokens_of_eager(layout):
    """model.forward compiled with fullgraph=True (any graph break raises): the hooks run around it,
    the decode steps' graphs hold the step op, and 11 steps (every row of a tile; a left-padded batch
    whose rows sit at different levels, or one sequence whose 35-token prompt ends inside a tile)
    add no graph beyond transformers' own (prefill, first step, dynamic cache length): no guard on
    the cache length or on a row's position in its tile. The second case also checks that the rows
    a compiled prefill keeps (the same for q, k and v) do not alias: inductor may hand back views of
    one buffer, and the next step's graph would be built for aliased inputs (a size assertion later).
    Both cases in one process: a second model compiled after the first."""
    from torch._dynamo.backends.registry import lookup_backend
    graphs = []

    def recording(gm, example_inputs):  # inductor, with a look at each graph on the way
        graphs.append({str(n.target) for n in gm.graph.nodes if n.op == "call_function"})
        return lookup_backend("inductor")(gm, example_inputs)

    model = tiny_llama(7)
    if layout == "left-padded":
        ids, mask = left_pad([prompt(1, 5), prompt(2, 7)])
    else:
        ids = prompt(1, 35)
        mask = torch.ones_like(ids)
    with torch.no_grad():
        eager = model.generate(ids, attention_mask=mask, max_new_tokens=12, **GEN)
        torch._dynamo.reset()
        model.forward = torch.compile(model.forward, fullgraph=True, backend=recording)
        try:
            compiled = model.generate(ids, attention_mask=mask, max_new_tokens=12, **GEN)
        finally:
            del model.forward
            torch._dynamo.reset()
    assert torch.equal(compiled, eager)
    assert len(graphs) <= 3, f"{len(graphs)} graphs for one prefill and 11 decode steps: something recompiles per step"
    steps = [g for g in graphs if "stl_torch.stl_decode_step.default" in g]
    assert len(steps) == len(graphs) - 1, "every graph after the prefill's must run the product cache's step op"


def test_compiled_model_call_decodes_with_the_tokens_of_eager():
    """torch.compile(model) (the hooks run eagerly, torch.compiler.disable) in a plain decode loop."""
    from transformers import DynamicCache
    model = tiny_llama(8)

    def loop(m):
        cache, toks, out = DynamicCache(config=model.config), prompt(3, 6, batch=2), []
        for _ in range(9):
            toks = m(toks, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
            out.append(toks)
        return torch.cat(out, 1)

    with torch.no_grad():
        eager = loop(model)
        torch._dynamo.reset()
        assert torch.equal(loop(torch.compile(model)), eager)
