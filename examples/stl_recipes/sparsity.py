"""2:4 structured sparsity on nn.Linear layers: the baseline STL is compared with. Scores are the
weight magnitudes |W|, or (calibrated, as Wanda does: Sun et al., "A Simple and Effective Pruning
Approach for Large Language Models", 2023) |W_ij| * ||X_j||, the weight times the norm of its input
feature over calibration tokens.

The masks are fixed ``weight_mask`` buffers and the pruned weights are kept at exactly zero
(``reapply_masks`` after each optimiser step); the layers still run dense, so 2:4's saving is a
count of multiply-adds (``linear_flops`` counts a masked layer at its density), not a speed.
"""
import torch
from torch import nn

from stl_torch._call import call_model

__all__ = ["mask_24", "apply_24_sparsity", "reapply_masks", "input_norms"]


def mask_24(weight: torch.Tensor, input_norm=None) -> torch.Tensor:
    """2:4 mask: in every group of 4 consecutive input weights of a row keep the 2 with the largest
    score (the layout sparse tensor cores accelerate); score |w|, or |w| * input_norm[column]."""
    p, n = weight.shape
    if n % 4:
        raise ValueError(f"2:4 sparsity needs in_features % 4 == 0, got {n}")
    score = weight.detach().abs()
    if input_norm is not None:
        score = score * input_norm.to(score)[None, :]
    g = score.reshape(p, n // 4, 4)
    keep = g.topk(2, dim=-1).indices
    mask = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, keep, True)
    return mask.reshape(p, n)


@torch.no_grad()
def input_norms(model, layers, batches):
    """{name: ||X_j||_2 per input feature j} of the given nn.Linear layers over ``batches`` of model
    inputs (tensors, tuples of args or dicts of kwargs), in one pass of the unpruned model."""
    sq = {}

    def hook(name):
        def fn(_mod, args, _out):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            sq[name] = sq.get(name, 0) + x.square().sum(0)
        return fn

    mods = dict(model.named_modules())
    handles = [mods[n].register_forward_hook(hook(n)) for n in layers]
    try:
        for b in batches:
            call_model(model, b)
    finally:
        for h in handles:
            h.remove()
    return {n: v.sqrt() for n, v in sq.items()}


def apply_24_sparsity(model, include, calibration_data=None):
    """Registers a fixed ``weight_mask`` buffer on each selected nn.Linear and zeroes the pruned
    weights: magnitude scores, or Wanda scores when ``calibration_data`` (model inputs) is given.
    Call ``reapply_masks`` after every optimizer step to keep them at zero."""
    chosen = [name for name, mod in model.named_modules()
              if isinstance(mod, nn.Linear) and mod.in_features % 4 == 0 and include(name, mod)]
    norms = input_norms(model, chosen, calibration_data) if calibration_data is not None else {}
    names = []
    for name, mod in model.named_modules():
        if name in chosen:
            mask = mask_24(mod.weight, norms.get(name))
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
