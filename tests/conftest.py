import pytest
import torch

# relative error in the Frobenius norm, per storage dtype: a small factor above the worst case
# measured over tests/test_ops.py (float64 1.3e-15, float32 2.1e-7; 16-bit, relative to the sum
# of |terms| since each output is rounded once: bfloat16 2.7e-3, float16 3.4e-4)
TOL = {torch.float64: 1e-14, torch.float32: 1.5e-6, torch.bfloat16: 6e-3, torch.float16: 8e-4}


def rel_err(a, b):
    a, b = a.double(), b.double()
    den = b.norm()
    return ((a - b).norm() / (den if den > 0 else 1)).item()


def operands(M, N, P, t, r, dtype=torch.float64, bias=True, seed=0, requires_grad=False):
    """Random (x, E, Wt, D, bias) for one STL call, fixed by ``seed`` (a failure reproduces)."""
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    vals = [mk(M, N), mk(r, t * t) / t, mk(r, N // t, P // t) / (N / t) ** 0.5, mk(t * t, r) / r ** 0.5,
            mk(P) if bias else None]
    if requires_grad:
        vals = [v.requires_grad_() if v is not None else None for v in vals]
    return vals


def tiny_llama(seed=0, **config):
    """A tiny random float64 LlamaForCausalLM (vocab 64, hidden 32, 2 layers, GQA) in eval mode;
    ``config`` overrides LlamaConfig fields. Skips the test when transformers is missing."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(**{**dict(vocab_size=64, hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             max_position_embeddings=64), **config})
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(cfg).double().eval()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
