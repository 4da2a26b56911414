"""Distillation from the dense model while fine-tuning (llama_finetune.py --distill).

The teacher is the loaded dense model itself, copied before any conversion (STL, 2:4) and frozen:
eval mode, ``requires_grad=False``, never in the optimizer, run under ``torch.no_grad`` and the
student's autocast. Every method (dense fine-tune, 2:4, STL) distils from the same teacher, so a
comparison stays fair. The loss of one micro-batch:

    (1 - alpha) * LM  +  alpha * T^2 * KL(p_teacher^T || p_student^T)  +  W * hidden

- LM: the mean next-token NLL (what training without distillation minimises);
- KL at temperature T on the logits (Hinton, Vinyals and Dean, "Distilling the Knowledge in a
  Neural Network", 2015): both distributions softened by T, the T^2 keeps the soft targets'
  gradient on the scale of T = 1 as T changes. Mean over the scored tokens. It is 0 when the
  student computes what the teacher computes;
- hidden (weight W, off by default): per block, the squared error of the block's output against
  the teacher's, divided by the teacher's own mean square (the normalised feature loss of
  SquareHead, Kurtic et al., "Sparse Fine-tuning for Inference Acceleration of Large Language
  Models", 2023: residual streams grow with depth and carry outlier features, so a raw MSE would be
  dominated by the last blocks), averaged over the blocks. The blocks' outputs are
  transformers' ``output_hidden_states`` after the embeddings (the last one after the final norm).

Defaults: alpha 0.5 (LM and KL weighted equally: the pretrained teacher's distributions, not only
the one-hot next token, while keeping the corpus' own signal), T 1 (the distribution whose
perplexity is reported), W 0. Padding is excluded from every term by the LM loss' own mask
(``llama.scored_mask``).
"""
import copy
import time

import torch
import torch.nn.functional as F

from .llama import logits_nll_sum, model_inputs, scored_mask

__all__ = ["DEFAULT_ALPHA", "DEFAULT_TEMPERATURE", "make_teacher", "kl_sum", "hidden_loss", "train_loss"]

DEFAULT_ALPHA = 0.5
DEFAULT_TEMPERATURE = 1.0


def make_teacher(model):
    """A frozen copy of ``model`` (call before converting it): eval mode, no gradients, same dtype
    and device as ``model`` is now (move it with the student)."""
    teacher = copy.deepcopy(model).eval()
    teacher.requires_grad_(False)
    return teacher


def kl_sum(student_logits, teacher_logits, mask=None, temperature=DEFAULT_TEMPERATURE):
    """T^2 * sum over the scored positions (``mask``, (B, L) bool; None: all) of
    KL(softmax(teacher / T) || softmax(student / T)), in float32."""
    s, t = student_logits.float(), teacher_logits.float()
    if mask is not None:
        s, t = s[mask], t[mask]
    ls = F.log_softmax(s / temperature, -1)
    lt = F.log_softmax(t / temperature, -1)
    return temperature ** 2 * F.kl_div(ls, lt, log_target=True, reduction="sum")


def hidden_loss(student_hidden, teacher_hidden, mask=None):
    """Mean over blocks of ||h_s - h_t||^2 / ||h_t||^2, both sums over the scored positions and
    features; ``*_hidden`` are ``output_hidden_states`` tuples (index 0, the embeddings, is skipped)."""
    terms = []
    for hs, ht in zip(student_hidden[1:], teacher_hidden[1:]):
        hs, ht = hs.float(), ht.float()
        if mask is not None:
            hs, ht = hs[mask], ht[mask]
        terms.append((hs - ht).square().sum() / ht.square().sum().clamp_min(1e-12))
    return torch.stack(terms).mean()


def train_loss(model, x, amp, teacher=None, alpha=DEFAULT_ALPHA, temperature=DEFAULT_TEMPERATURE,
               hidden=0.0, attention_mask=None):
    """(loss to minimise, parts) for one micro-batch ``x`` (B, L+1) of token ids. Without a
    teacher the loss is the mean next-token NLL and parts is {"lm": float}; with one, the mix in
    the module docstring, and parts adds "kd" (T^2 * KL per token), "hidden" (when W > 0) and
    "teacher_s" (seconds in the teacher's forward, synchronised on CUDA)."""
    mask = scored_mask(attention_mask)
    kw = model_inputs(x, attention_mask)
    want_hidden = teacher is not None and hidden > 0
    with amp():
        out = model(**kw, output_hidden_states=True) if want_hidden else model(**kw)
    s, n = logits_nll_sum(out.logits, x, mask)
    lm = s / n
    if teacher is None:
        return lm, {"lm": lm.item()}
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    with torch.no_grad(), amp():
        tout = teacher(**kw, output_hidden_states=want_hidden)
    sync()
    teacher_s = time.perf_counter() - t0
    kd = kl_sum(out.logits, tout.logits, mask, temperature) / n
    loss = (1 - alpha) * lm + alpha * kd
    parts = {"lm": lm.item(), "kd": kd.item(), "teacher_s": teacher_s}
    if want_hidden:
        h = hidden_loss(out.hidden_states, tout.hidden_states, mask)
        loss = loss + hidden * h
        parts["hidden"] = h.item()
    return loss, parts
