"""Magnitude 2:4 structured sparsity on nn.Linear layers: the baseline STL is compared with.

The masks are fixed ``weight_mask`` buffers and the pruned weights are kept at exactly zero
(``reapply_masks`` after each optimiser step); the layers still run dense, so 2:4's saving is a
count of multiply-adds (``linear_flops`` counts a masked layer at its density), not a speed.
"""
import torch
from torch import nn

__all__ = ["mask_24", "apply_24_sparsity", "reapply_masks"]


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
