"""Optimisation and checkpoint pieces shared by the recipes: AdamW parameter groups, the warm-up
+ cosine schedule, bf16 autocast, atomic checkpoints and resume checks."""
import contextlib
import math
import os
import sys
import tempfile

import torch
from torch import nn

from stl_torch.nn import STLinear

__all__ = ["param_groups", "make_optimizer", "warmup_cosine", "resolve_amp", "autocast_ctx",
           "atomic_torch_save", "check_resume_args", "load_checkpoint", "atomic_write_text"]

NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d)


def param_groups(model, *, lr, weight_decay, ed_lr_mult=1.0, no_decay_names=(),
                 decay_embeddings=False):
    """AdamW groups: weight decay only on weight matrices (dense weights, STL ``Wt``); none on
    STL's encoder/decoder ``E``/``D``, biases, norms, (embeddings unless asked) and the names in
    ``no_decay_names``. ``E``/``D`` get ``lr * ed_lr_mult``: they are a few hundred numbers shared
    by every tile of a layer, so their effective step differs from ``Wt``'s."""
    decay, no_decay, ed, seen = [], [], [], set()
    for mname, mod in model.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{mname}.{pname}" if mname else pname
            if isinstance(mod, STLinear) and pname in ("E", "D"):
                ed.append(p)
            elif (p.ndim < 2 or isinstance(mod, NORM_TYPES)
                  or (isinstance(mod, nn.Embedding) and not decay_embeddings)
                  or any(k in full for k in no_decay_names)):
                no_decay.append(p)
            else:
                decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "lr": lr, "name": "decay"},
              {"params": no_decay, "weight_decay": 0.0, "lr": lr, "name": "no_decay"}]
    if ed:
        groups.append({"params": ed, "weight_decay": 0.0, "lr": lr * ed_lr_mult, "name": "stl_E_D"})
    return [g for g in groups if g["params"]]


def add_schedule_args(g, *, lr, weight_decay):
    """The optimizer and schedule options the LLM recipes share (AdamW, warm-up + cosine, clipping,
    bf16 autocast), added to argparse group ``g`` with the recipe's own defaults."""
    g.add_argument("--lr", type=float, default=lr, help="peak AdamW learning rate")
    g.add_argument("--min-lr-ratio", type=float, default=0.1, help="final lr / peak lr (cosine)")
    g.add_argument("--warmup-frac", type=float, default=0.05, help="warm-up steps / total steps")
    g.add_argument("--weight-decay", type=float, default=weight_decay,
                   help="AdamW weight decay (weight matrices and STL Wt only)")
    g.add_argument("--clip-grad", type=float, default=1.0, help="max global grad norm (0: off)")
    g.add_argument("--amp", choices=["auto", "bf16", "none"], default="auto",
                   help="bf16 autocast (auto: on for CUDA)")


def make_optimizer(groups, *, betas=(0.9, 0.999), eps=1e-8, device=None):
    kw = {}
    if device is not None and device.type == "cuda":
        kw["fused"] = True
    return torch.optim.AdamW(groups, betas=betas, eps=eps, **kw)


def warmup_cosine(total_steps, warmup_steps, min_ratio=0.0):
    """LambdaLR factor: linear warm-up from ~0 to 1, then cosine down to ``min_ratio``."""
    def f(step):
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        prog = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, prog)))
    return f


def resolve_amp(model, device, amp):
    """'auto' -> bf16 on CUDA, none elsewhere. With STL layers, first checks that the STL op runs
    under autocast (mixed fp32/bf16 operands); if not, falls back to fp32 with a warning rather
    than failing mid-run. Returns 'bf16' or 'none' (record it: it decides the numbers)."""
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" else "none"
    stl = next((m for m in model.modules() if isinstance(m, STLinear)), None)
    if amp == "bf16" and stl is not None:
        x = torch.randn(2, stl.tile, stl.in_features, device=device)
        try:
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
                stl(x.to(torch.bfloat16))
                stl(x)
        except RuntimeError as e:
            print(f"WARNING: STL layers do not run under bf16 autocast ({str(e)[:160]}); "
                  f"training in float32 instead", file=sys.stderr, flush=True)
            amp = "none"
    return amp


def autocast_ctx(device, amp):
    """bf16 autocast on GPU (no GradScaler needed for bf16); a no-op otherwise."""
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" else "none"
    if amp == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


# ----------------------------------------------------------------------------- checkpoints
def atomic_torch_save(obj, path):
    """Writes to a temp file in the same directory, fsyncs, then renames: a run killed while
    saving leaves the previous checkpoint intact."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def check_resume_args(saved, current, keys):
    """Refuses to resume a checkpoint written with a different model/method configuration."""
    diff = {k: (saved.get(k), current.get(k)) for k in keys if saved.get(k) != current.get(k)}
    if diff:
        raise SystemExit("--resume: the checkpoint was written with different settings "
                         + ", ".join(f"{k}: {a!r} (checkpoint) vs {b!r} (now)" for k, (a, b) in diff.items())
                         + "; use another --out-dir")


def load_checkpoint(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def atomic_write_text(path, text):
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
