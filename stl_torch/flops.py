"""Multiply-add accounting for nn.Linear and STLinear layers (docs/operator.md, "Cost").

For one call on M rows (M = all leading dims of the input flattened):
  dense  nn.Linear(N -> P):  M*N*P
  STL (tile t, rank r):      r*M*N (encode) + r*M*N*P/t^3 (r batched GEMMs) + r*M*P (decode)
(encode: r*(M/t)*(N/t) outputs of t^2 terms each; decode: M*P outputs of r terms each)
A decode step with the product cache (stl_torch.decode: one token per sequence, at row j of its tile)
runs only the level-j products' share (``stl_step_macs``), per sequence:
  GEMM row  r_j*N*P/t^2   (r_j = the r/t products of level j, one row of their GEMM)
  encode    r_j*(j+1)*N   (from the tile's rows 0..j)
  decode    l_j*P         (one output row from the l_j products of level <= j)
r*N*P/t^3 + ... at t=4, r=24: 0.375x the dense layer's GEMM multiply-adds.
with M the *padded* row count the operator really processes (``STLinear.processed_rows``: the tiling
rule of ``stl_torch.tiling``, where a 2-D input's every row fills a tile, or the shifted layout of a
left-padded or decoding call). Biases and the padding copies are not counted. A layer called several
times (weight sharing, a loop) is counted once per call.
"""
from dataclasses import asdict, dataclass, field
from typing import List, Optional

import torch
from torch import nn

from ._call import call_model
from .nn import STLinear

__all__ = ["flops", "FlopReport", "LayerFlops", "linear_macs", "stl_macs", "stl_step_macs"]


def linear_macs(rows, in_features, out_features):
    """Dense multiply-adds of ``rows`` rows through an (in -> out) linear map."""
    return rows * in_features * out_features


def stl_macs(rows, in_features, out_features, tile, rank):
    """STL multiply-adds for ``rows`` rows (already padded to a multiple of ``tile``)."""
    t, r = tile, rank
    return r * rows * in_features + (r * rows * in_features * out_features) // t ** 3 \
        + r * rows * out_features


def stl_step_macs(positions, in_features, out_features, tile, rank):
    """STL multiply-adds of one product-cache decode step: one token per sequence, at row
    ``positions[b]`` of its tile (docs/llm.md, "Decode speed")."""
    t, r, N, P = tile, rank, in_features, out_features

    def first(k):  # the first product of level k (stl_torch.init.causal_levels): ceil(k*r/t)
        return (k * r + t - 1) // t
    total = 0
    for j in positions:
        j = int(j)
        rj, lj = first(j + 1) - first(j), first(j + 1)
        total += rj * (N // t) * (P // t) + rj * (j + 1) * N + lj * P
    return total


@dataclass
class LayerFlops:
    """One layer's forward cost, summed over its calls."""
    name: str
    kind: str                 # "Linear" or "STLinear"
    in_features: int
    out_features: int
    calls: int = 0
    rows: int = 0             # rows of input seen (unpadded)
    macs: int = 0             # what the layer really does
    dense_macs: int = 0       # the same calls through a dense nn.Linear
    tile: Optional[int] = None
    rank: Optional[int] = None

    @property
    def ratio(self):
        """dense / actual (> 1: fewer multiply-adds than dense)."""
        return self.dense_macs / self.macs if self.macs else float("nan")


@dataclass
class FlopReport:
    layers: List[LayerFlops] = field(default_factory=list)

    @property
    def total_macs(self):
        return sum(layer.macs for layer in self.layers)

    @property
    def dense_macs(self):
        return sum(layer.dense_macs for layer in self.layers)

    @property
    def ratio(self):
        return self.dense_macs / self.total_macs if self.total_macs else float("nan")

    def to_dict(self):
        return {"layers": [dict(asdict(layer), ratio=layer.ratio) for layer in self.layers],
                "total_macs": self.total_macs, "dense_macs": self.dense_macs, "ratio": self.ratio}

    def __str__(self):
        head = "| layer | kind | in -> out | calls | rows | MACs | dense MACs | dense/actual |"
        lines = [head, "|---|---|---|---:|---:|---:|---:|---:|"]
        for x in self.layers:
            kind = x.kind if x.tile is None else f"{x.kind} t={x.tile} r={x.rank}"
            lines.append(f"| {x.name or '(model)'} | {kind} | {x.in_features} -> {x.out_features} | "
                         f"{x.calls} | {x.rows} | {x.macs:,} | {x.dense_macs:,} | {x.ratio:.2f}x |")
        lines.append(f"| **total** | | | | | {self.total_macs:,} | {self.dense_macs:,} | "
                     f"{self.ratio:.2f}x |")
        return "\n".join(lines)


@torch.no_grad()
def flops(model: nn.Module, example_input, **kwargs) -> FlopReport:
    """Runs ``model(example_input)`` (a tuple is unpacked as positional args, a dict as keyword
    args; ``kwargs`` are passed through) once under no_grad with forward hooks on every
    nn.Linear and STLinear, and returns their per-layer and total multiply-adds, actual vs dense.
    Layers that are never called are listed with zero calls."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"flops: argument 'model' must be an nn.Module, got {type(model).__name__}")
    report = FlopReport()
    handles = []

    def hook(entry, mod):
        def fn(_mod, args, _out):
            shape = tuple(args[0].shape)
            rows = 1
            for s in shape[:-1]:
                rows *= s
            entry.calls += 1
            entry.rows += rows
            entry.dense_macs += linear_macs(rows, mod.in_features, mod.out_features)
            if isinstance(mod, STLinear):
                ctx = mod.tile_context
                step = ctx.step_macs(mod, shape) if ctx is not None else None
                entry.macs += step if step is not None else stl_macs(mod.processed_rows(shape), mod.in_features,
                                                                     mod.out_features, mod.tile, mod.rank)
            else:
                entry.macs += linear_macs(rows, mod.in_features, mod.out_features)
        return fn

    try:
        for name, mod in model.named_modules():
            if isinstance(mod, (nn.Linear, STLinear)):
                stl = isinstance(mod, STLinear)
                entry = LayerFlops(name, type(mod).__name__ if stl else "Linear", mod.in_features,
                                   mod.out_features, tile=mod.tile if stl else None,
                                   rank=mod.rank if stl else None)
                report.layers.append(entry)
                handles.append(mod.register_forward_hook(hook(entry, mod)))
        call_model(model, example_input, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return report
