"""The demo's small patch transformer for 28x28 images, and its training loop (examples/demo.py,
benchmarks/init_ablation.py)."""
import time

import torch
import torch.nn.functional as F
from torch import nn

from . import metrics as RM

__all__ = ["PatchTransformer", "accuracy", "train"]


class PatchTransformer(nn.Module):
    """28x28 image -> 49 tokens of 4x4 patches -> 2 pre-norm blocks -> mean-pool -> 10 classes.
    The block layers are built by ``linear`` (nn.Linear or STLinear). The 16-wide patch embedding
    and the 10-class head stay dense: STL's encode/decode cost r*(N+P) per row, which only pays
    off on wide layers (stl_torch.flops shows it)."""

    def __init__(self, linear, dim=256, heads=4, depth=2, mlp=512):
        super().__init__()
        self.patch = nn.Linear(16, dim)
        self.pos = nn.Parameter(torch.randn(49, dim) * 0.02)
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            self.blocks.append(nn.ModuleDict(dict(
                n1=nn.LayerNorm(dim), qkv=linear(dim, 3 * dim), proj=linear(dim, dim),
                n2=nn.LayerNorm(dim), fc1=linear(dim, mlp), fc2=linear(mlp, dim))))
        self.heads, self.norm, self.head = heads, nn.LayerNorm(dim), nn.Linear(dim, 10)

    def forward(self, img):
        b = img.shape[0]
        x = img.view(b, 7, 4, 7, 4).permute(0, 1, 3, 2, 4).reshape(b, 49, 16)
        x = self.patch(x) + self.pos
        for blk in self.blocks:
            q, k, v = blk["qkv"](blk["n1"](x)).view(b, 49, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, 49, -1)
            x = x + blk["proj"](a)
            x = x + blk["fc2"](F.gelu(blk["fc1"](blk["n2"](x))))
        return self.head(self.norm(x).mean(1))


def accuracy(model, x, y, bs=1000):
    model.eval()
    with torch.no_grad():
        hits = sum((model(x[i:i + bs]).argmax(1) == y[i:i + bs]).sum().item() for i in range(0, len(y), bs))
    model.train()
    return hits / len(y)


def train(model, xs, ys, steps, bs, seed, param_groups=None, losses=None, progress=None):
    """AdamW + one-cycle; ``param_groups`` (optional) overrides ``model.parameters()``, e.g. to
    give STL's E and D their own learning rate (benchmarks/init_ablation.py). ``losses`` (a list,
    optional) receives every step's training loss. ``progress`` (a description, optional): a tqdm
    bar instead of the printout every 100 steps."""
    g = torch.Generator().manual_seed(seed)
    groups = list(model.parameters()) if param_groups is None else param_groups
    opt = torch.optim.AdamW(groups, lr=3e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups],
                                                total_steps=steps, pct_start=0.1)
    bar = RM.progress(range(steps), progress is not None, desc=progress, leave=False)
    t0 = time.perf_counter()
    for step in bar:
        idx = torch.randint(len(ys), (bs,), generator=g)
        loss = F.cross_entropy(model(xs[idx]), ys[idx], label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if losses is not None:
            losses.append(loss.item())
        if progress is not None:  # refresh=False: the bar redraws at its own interval, not per step
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        elif step % 100 == 0 or step == steps - 1:
            print(f"  step {step:4d}  loss {loss.item():.3f}", flush=True)
    return time.perf_counter() - t0
