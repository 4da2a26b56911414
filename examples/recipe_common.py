"""Pieces shared by the recipes (t2t_vit/train.py, llama_finetune.py).

Distributed setup, the dense/STL/2:4 switch, optimizer parameter groups, the warm-up + cosine
schedule, atomic checkpoints, metrics (JSON + CSV + PNG) and linear-layer FLOP accounting.
Only plain torch here; stl_torch is imported lazily so that the dense paths run without it.
"""
import csv
import hashlib
import json
import math
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


# ----------------------------------------------------------------------------- distributed
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self):
        return self.rank == 0

    @property
    def enabled(self):
        return self.world > 1


def setup_distributed(device="auto"):
    """Reads torchrun's env (RANK, WORLD_SIZE, LOCAL_RANK); NCCL on GPU, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        dev = torch.device("cuda", local_rank if world > 1 else torch.device(device).index or 0)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device(device)
    if world > 1:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, local_rank, dev)


def cleanup_distributed(d: Dist):
    if d.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(d: Dist):
    if d.enabled:
        dist.barrier()


def all_reduce_sum(d: Dist, *values):
    """Sums python/tensor scalars over ranks (float64 so that counts stay exact)."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64,
                     device=d.device if d.device.type == "cuda" else "cpu")
    if d.enabled:
        dist.all_reduce(t)
    return t.tolist()


def unwrap(model):
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def seed_everything(seed):
    import random

    import numpy as np
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- dense/STL switch
def stl_module_class():
    """stl_torch.STLinear, or None when stl_torch is not installed (dense runs still work)."""
    try:
        import stl_torch
    except ImportError:
        return None
    return stl_torch.STLinear


def is_stl(module):
    cls = stl_module_class()
    return cls is not None and isinstance(module, cls)


def tileable(linear: nn.Linear, tile: int) -> bool:
    return linear.in_features % tile == 0 and linear.out_features % tile == 0


def to_stl(model, *, tile, rank, init, causal, include, calibration_data=None, ed_norm=1.0,
           **convert_kw):
    """Replaces every nn.Linear whose qualified name passes ``include(name, module)`` by an STLinear
    initialised from it (``Wt`` encodes the dense weight, bias copied) with ``stl_torch.convert``.
    Returns ``(names, report)``. Layers whose dims are not multiples of ``tile`` are never
    selected. ``calibration_data`` (model inputs) makes convert fit each ``Wt`` to the dense
    layer's outputs on real activations instead of the data-free encoding; ``convert_kw`` go to
    ``stl_torch.convert`` (calibration="distill", distill_steps, progress, ...).
    """
    import stl_torch

    names = [n for n, m in model.named_modules()
             if isinstance(m, nn.Linear) and tileable(m, tile) and include(n, m)]
    if not names:
        raise ValueError("to_stl: no nn.Linear layer selected")
    cfg = stl_torch.STLConfig(tile=tile, rank=rank, init=init, causal=causal, ed_norm=ed_norm)
    wanted = set(names)
    report = stl_torch.convert(model, config=cfg, filter=lambda m, fqn: fqn in wanted,
                               calibration_data=calibration_data, **convert_kw)
    got = [n for n, m in model.named_modules() if is_stl(m)]
    if sorted(got) != sorted(names):
        raise RuntimeError(f"stl_torch.convert converted {len(got)} layers, expected {len(names)}")
    return names, report


def report_to_json(report):
    """JSON view of a stl_torch report (ConversionReport / FlopReport) plus its table."""
    if report is None:
        return None
    return {"table": str(report), "data": json.loads(json.dumps(report.to_dict(), default=str))}


# ----------------------------------------------------------------------------- FLOPs / params
def linear_layer_flops(module, x_shape):
    """(flops, dense_equivalent_flops) of one forward of ``module`` on an input of ``x_shape``.
    FLOPs = 2 x multiply-adds (stl_torch.flops' counts, STL.md section 2); bias adds are ignored.
    A 2:4-masked layer counts half the dense GEMM."""
    from stl_torch.flops import linear_macs, stl_macs, stl_rows
    m = math.prod(x_shape[:-1])
    n, p = module.in_features, module.out_features
    dense = 2 * linear_macs(m, n, p)
    if is_stl(module):
        return 2 * stl_macs(stl_rows(x_shape, module.tile), n, p, module.tile, module.rank), dense
    if getattr(module, "weight_mask", None) is not None:  # 2:4 sparsity, see apply_24_sparsity
        return dense // 2, dense
    return dense, dense


def count_linear_flops(model, run):
    """Runs ``run()`` (one forward) with hooks on every nn.Linear / STLinear; returns totals and
    per-layer rows. Exact for what actually ran (token counts, padding)."""
    rows, hooks = [], []

    def hook(name):
        def fn(mod, inp, out):
            fl, dense = linear_layer_flops(mod, tuple(inp[0].shape))
            rows.append({"layer": name, "kind": kind_of(mod), "flops": fl, "dense_flops": dense})
        return fn

    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) or is_stl(mod):
            hooks.append(mod.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            run()
    finally:
        for h in hooks:
            h.remove()
    total = sum(r["flops"] for r in rows)
    dense = sum(r["dense_flops"] for r in rows)
    conv = [r for r in rows if r["kind"] != "dense"]
    conv_fl = sum(r["flops"] for r in conv)
    conv_dense = sum(r["dense_flops"] for r in conv)
    return {
        "linear_flops": total,
        "linear_flops_if_dense": dense,
        "linear_flop_reduction": dense / total if total else 1.0,
        "converted_layers": len(conv),
        "converted_flops": conv_fl,
        "converted_flops_if_dense": conv_dense,
        "converted_flop_reduction": conv_dense / conv_fl if conv_fl else 1.0,
        "per_layer": rows,
    }


def kind_of(mod):
    if is_stl(mod):
        return "stl"
    if getattr(mod, "weight_mask", None) is not None:
        return "sparse24"
    return "dense"


def library_flops(model, example_input):
    """stl_torch.flops(model, example_input) as JSON."""
    import stl_torch
    with torch.no_grad():
        return report_to_json(stl_torch.flops(model, example_input))


def param_counts(model):
    total = sum(p.numel() for p in unique_params(model))
    lin = 0
    for m in model.modules():
        if isinstance(m, nn.Linear) or is_stl(m):
            lin += sum(p.numel() for p in m.parameters(recurse=False))
    return {"params_total": total, "params_linear": lin}


def unique_params(model):
    seen = set()
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            yield p


def param_checksum(model):
    """sha256 over every parameter's bytes, in name order (replicas in sync <=> equal)."""
    h = hashlib.sha256()
    for name, p in sorted(unwrap(model).named_parameters()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- 2:4 sparsity
def mask_24(weight: torch.Tensor) -> torch.Tensor:
    """Magnitude 2:4 mask: in every group of 4 consecutive input weights of a row keep the 2
    largest |w| (the layout sparse tensor cores accelerate)."""
    p, n = weight.shape
    if n % 4:
        raise ValueError(f"2:4 sparsity needs in_features % 4 == 0, got {n}")
    g = weight.detach().abs().reshape(p, n // 4, 4)
    keep = g.topk(2, dim=-1).indices
    mask = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, keep, True)
    return mask.reshape(p, n)


def apply_24_sparsity(model, include):
    """Registers a fixed ``weight_mask`` buffer on each selected nn.Linear and zeroes the pruned
    weights. Call ``reapply_masks`` after every optimizer step to keep them at zero."""
    names = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and mod.in_features % 4 == 0 and include(name, mod):
            mask = mask_24(mod.weight)
            mod.register_buffer("weight_mask", mask)
            with torch.no_grad():
                mod.weight.mul_(mask)
            names.append(name)
    if not names:
        raise ValueError("apply_24_sparsity: no nn.Linear layer selected")
    return names


@torch.no_grad()
def reapply_masks(model):
    for mod in model.modules():
        mask = getattr(mod, "weight_mask", None)
        if mask is not None and isinstance(mod, nn.Linear):
            mod.weight.mul_(mask)


# ----------------------------------------------------------------------------- optimizer
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
            if is_stl(mod) and pname in ("E", "D"):
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
    stl = next((m for m in model.modules() if is_stl(m)), None)
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
    import contextlib
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


def _atomic_write_text(path, text):
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- metrics
class Metrics:
    """Keeps the run's metadata and per-epoch (or per-eval) rows; rewrites metrics.json,
    metrics.csv and the PNG after every row (rank 0 only), so a killed run keeps what finished.
    The history lives in the checkpoint too, so a resumed run continues the same files."""

    def __init__(self, out_dir, meta, enabled=True, plot=None):
        self.out_dir, self.meta, self.enabled, self.plot_spec = out_dir, meta, enabled, plot
        self.history = []
        if enabled:
            os.makedirs(out_dir, exist_ok=True)

    def log(self, row):
        self.history.append(row)
        self.write()

    def write(self):
        if not self.enabled:
            return
        _atomic_write_text(os.path.join(self.out_dir, "metrics.json"),
                           json.dumps({"meta": self.meta, "history": self.history}, indent=1,
                                      default=str))
        keys = []
        for r in self.history:
            keys += [k for k in r if k not in keys]
        path = os.path.join(self.out_dir, "metrics.csv")
        with open(path + ".tmp", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(self.history)
        os.replace(path + ".tmp", path)
        if self.plot_spec and self.history:
            try:
                plot_metrics(self.history, os.path.join(self.out_dir, "metrics.png"),
                             **self.plot_spec)
            except Exception as e:  # a plotting problem must not stop training
                print(f"warning: plot failed: {e!r}", file=sys.stderr)


def plot_metrics(history, path, x, panels, title="", logy=()):
    """panels: list of (key, label); one subplot each, y against history[*][x]; keys in
    ``logy`` get a log y axis (perplexities)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6))
    axes = [axes] if len(panels) == 1 else axes
    for ax, (key, label) in zip(axes, panels):
        pts = [(r[x], r[key]) for r in history if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", ms=3)
        if key in logy and pts:
            ax.set_yscale("log")
        ax.set_xlabel(x)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=110)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)


def env_info(d: Dist):
    info = {"torch": torch.__version__, "device": str(d.device), "world_size": d.world,
            "python": sys.version.split()[0], "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    if d.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(d.device)
    try:
        import stl_torch
        info["stl_torch"] = getattr(stl_torch, "__version__", "?")
    except ImportError:
        info["stl_torch"] = None
    return info


def name_regex(pattern):
    rx = re.compile(pattern)
    return lambda name, mod: bool(rx.search(name))


def progress(iterable, enabled, **kw):
    """tqdm on rank 0 (when enabled), the bare iterable elsewhere."""
    if not enabled:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, dynamic_ncols=True, mininterval=1.0, **kw)
