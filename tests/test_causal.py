"""Causal mode: with causal=True no output position ever depends on a later token (docs/operator.md, "Causal mode")."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stl_torch import STLConfig, STLinear, convert
from stl_torch.init import make_init
from stl_torch.tiling import tensor_error

from conftest import tiny_llama


class CausalBlock(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(B, T, 3, self.heads, C // self.heads).permute(
            2, 0, 3, 1, 4)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(C // self.heads)
        att = att.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C)
        x = x + self.proj(y)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TinyGPT(nn.Module):
    def __init__(self, vocab=32, d=16, depth=2, heads=2, max_len=16):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(max_len, d)
        self.blocks = nn.Sequential(*[CausalBlock(d, heads) for _ in range(depth)])
        self.head = nn.Linear(d, vocab)

    def forward(self, ids):
        x = self.tok(ids) + self.pos(torch.arange(ids.shape[1]))
        return self.head(self.blocks(x))


def gpt(causal, tile=4, rank=24, init="fitted"):
    torch.manual_seed(0)
    model = TinyGPT().double().eval()
    report = convert(model, STLConfig(tile=tile, rank=rank, init=init, causal=causal), only_if_cheaper=False)
    assert len(report.converted) == 9
    return model


def future_changes(model, ids, vocab):
    """For each position i: max |change| of outputs at positions <= i when every later token changes."""
    with torch.no_grad():
        base = model(ids)
        out = []
        for i in range(ids.shape[1] - 1):
            ids2 = ids.clone()
            ids2[:, i + 1:] = (ids2[:, i + 1:] + 1 + torch.arange(ids.shape[1] - i - 1)) % vocab
            out.append((model(ids2)[:, :i + 1] - base[:, :i + 1]).abs().max().item())
    return out


@pytest.mark.parametrize("init,seq", [("fitted", 8), ("fitted", 7), ("fitted", 5), ("fitted", 1),
                                      ("strassen", 7), ("polynomial", 6), ("random", 7)])
def test_causal_stl_never_sees_the_future(init, seq):
    model = gpt(causal=True, init=init)
    ids = torch.randint(0, 32, (3, seq), generator=torch.Generator().manual_seed(seq))
    assert all(c == 0.0 for c in future_changes(model, ids, 32))  # exactly, in float64
    # and a prefix alone gives the same outputs as the whole sequence
    with torch.no_grad():
        full = model(ids)
        for i in range(1, seq + 1):
            torch.testing.assert_close(model(ids[:, :i]), full[:, :i], rtol=0, atol=1e-12)


@pytest.mark.parametrize("seq", [8, 7])
def test_non_causal_stl_leaks_inside_a_tile(seq):
    model = gpt(causal=False)
    ids = torch.randint(0, 32, (3, seq), generator=torch.Generator().manual_seed(seq))
    changes = future_changes(model, ids, 32)
    for i, c in enumerate(changes):
        if i % 4 != 3:      # a later token shares position i's tile: leak
            assert c > 1e-6, (i, changes)


def test_exact_t2_conversion_is_dense_hence_causal():
    """With an exact decomposition the converted model *is* the dense one (causal by itself);
    causal=False leaks only through the approximation error of lower ranks."""
    model = gpt(causal=False, tile=2, rank=7, init="strassen")
    ids = torch.randint(0, 32, (2, 6), generator=torch.Generator().manual_seed(0))
    assert max(future_changes(model, ids, 32)) < 1e-12


def test_causal_stlinear_masks_persist_through_training():
    m = STLinear(16, 8, rank=12, causal=True, init="random", dtype=torch.float64)
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        m(torch.randn(2, 8, 16, dtype=torch.float64)).square().sum().backward()
        opt.step()
    x = torch.randn(1, 8, 16, dtype=torch.float64)
    y = m(x)
    for i in range(7):
        x2 = x.clone()
        x2[:, i + 1:] += 1
        assert torch.equal(m(x2)[:, :i + 1], y[:, :i + 1])


def test_causal_cost_in_tensor_error():
    """Causality costs expressiveness: at t=4, r=24 the best causal error is sqrt(1 - 24/64)."""
    free = tensor_error(*make_init("fitted", 4, 24), 4)
    causal = tensor_error(*make_init("fitted", 4, 24, causal=True), 4)
    assert abs(causal - math.sqrt(1 - 24 / 64)) < 1e-6
    assert free < causal - 0.05


def test_llama_causal_conversion():
    model = tiny_llama()
    convert(model, STLConfig(tile=4, rank=24, init="fitted", causal=True), only_if_cheaper=False)
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1))

    class Logits(nn.Module):
        def forward(self, ids):
            return model(ids).logits

    assert all(c == 0.0 for c in future_changes(Logits(), ids, 64))


# Non-finite values at a later token (docs/operator.md section 8, "Skip masked terms"). The causal
# masks zero E and D entries; 0 * NaN is NaN, so only kernels that skip zero-coefficient terms keep
# a later token's NaN / inf out of earlier rows. With kernels that multiply by the zeros these fail.
# bfloat16 too: on a CPU with AVX512-BF16 its GEMMs run through torch's bfloat16 bmm (and
# test_kernels.py::test_bf16_gemms_on_any_cpu reruns these with them forced on elsewhere)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("pos", [2, 6])
def test_non_finite_later_token_never_reaches_earlier_rows(bad, pos, dtype):
    torch.manual_seed(0)
    m = STLinear(16, 16, rank=24, causal=True, dtype=dtype)
    x = torch.randn(2, 8, 16, dtype=dtype)
    x[0, pos, 3] = bad
    y = m(x)
    assert torch.isfinite(y[0, :pos]).all()   # rows before it, in its tile (pos % 4 of them) and before
    assert torch.isfinite(y[1]).all()         # the other sequence
    assert not torch.isfinite(y[0, pos]).all()  # the row itself does see it


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_non_finite_gradient_of_a_row_never_reaches_later_inputs(dtype):
    """dx row a' collects the gradients of the output rows >= a' of its tile only."""
    torch.manual_seed(0)
    m = STLinear(16, 16, rank=24, causal=True, dtype=dtype)
    x = torch.randn(1, 8, 16, dtype=dtype, requires_grad=True)
    g = torch.zeros(1, 8, 16, dtype=dtype)
    g[0, 1] = float("nan")
    m(x).backward(g)
    assert torch.isfinite(x.grad[0, 2:]).all()


def _llama_with_nan_at(model, pos):
    """Puts a NaN into token ``pos`` of the last block's down_proj input: after it, only row-wise
    ops (residual, norm, lm_head) reach the logits, so a NaN in an earlier row is the layer's leak."""
    def hook(_mod, args):
        x = args[0].clone()
        x[:, pos] = float("nan")
        return (x,)
    return model.model.layers[-1].mlp.down_proj.register_forward_pre_hook(hook)


def test_llama_nan_probe_is_clean_on_the_dense_model():
    """The probe below can only fail through STL: on the dense model earlier logits stay finite."""
    model = tiny_llama()
    h = _llama_with_nan_at(model, 2)
    with torch.no_grad():
        logits = model(torch.randint(0, 64, (2, 7)), use_cache=False).logits
    h.remove()
    assert torch.isfinite(logits[:, :2]).all() and not torch.isfinite(logits[:, 2]).all()


def test_llama_nan_at_a_later_token_leaves_earlier_logits_finite():
    model = tiny_llama()
    convert(model, STLConfig(tile=4, rank=24, init="fitted", causal=True), only_if_cheaper=False)
    h = _llama_with_nan_at(model, 2)
    with torch.no_grad():
        logits = model(torch.randint(0, 64, (2, 7)), use_cache=False).logits
    h.remove()
    assert torch.isfinite(logits[:, :2]).all()
