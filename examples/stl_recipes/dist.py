"""Process setup for the recipes: torchrun's environment, DDP helpers, seeding."""
import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["Dist", "setup_distributed", "cleanup_distributed", "barrier", "all_reduce_sum", "unwrap",
           "seed_everything", "param_checksum"]


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


def param_checksum(model):
    """sha256 over every parameter's bytes, in name order (replicas in sync <=> equal)."""
    h = hashlib.sha256()
    for name, p in sorted(unwrap(model).named_parameters()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
