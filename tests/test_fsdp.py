"""FSDP2 (torch.distributed.fsdp.fully_shard) shards STL layers like any other: 2 gloo processes
on the CPU give the loss and the gradients of one process on the whole batch."""
import os
import socket
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from stl_torch import STLinear

pytestmark = pytest.mark.skipif(not dist.is_available() or sys.platform == "win32",
                                reason="needs torch.distributed with gloo")


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(STLinear(16, 32, rank=12, causal=True, init="random", dtype=torch.float64), nn.GELU(),
                         STLinear(32, 16, rank=12, init="random", dtype=torch.float64))


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 7, 16, generator=g, dtype=torch.float64), torch.randn(4, 7, 16, generator=g,
                                                                               dtype=torch.float64)


def loss_fn(model, x, y):
    return (model(x) - y).square().mean()


def _worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        model = make_model()
        mesh = init_device_mesh("cpu", (world,))
        for m in model:
            if isinstance(m, STLinear):
                fully_shard(m, mesh=mesh)
        fully_shard(model, mesh=mesh)
        x, y = batch()
        per = x.shape[0] // world
        loss = loss_fn(model, x[rank * per:(rank + 1) * per], y[rank * per:(rank + 1) * per])
        loss.backward()  # FSDP2 averages the gradients over the ranks: the mean loss of the whole batch
        total = loss.detach().clone()
        dist.all_reduce(total)
        grads = {n: p.grad.full_tensor() for n, p in model.named_parameters()}
        sharded = {n: tuple(p.to_local().shape) for n, p in model.named_parameters()}
        if rank == 0:
            torch.save({"loss": total / world, "grads": grads, "sharded": sharded}, out)
        # both ranks leave together: a rank tearing gloo down while the other still works (rank 0
        # saving) was seen to abort one process ("terminate called without an active exception")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_fsdp2_fully_shard_matches_one_process(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(2, port, str(out)), nprocs=2, join=True)
    got = torch.load(out)
    model = make_model()
    x, y = batch()
    ref = loss_fn(model, x, y)
    ref.backward()
    assert abs(got["loss"].item() - ref.item()) < 1e-12
    for n, p in model.named_parameters():
        assert (got["grads"][n] - p.grad).abs().max() < 1e-12, n
    assert got["sharded"]["0.Wt"] == (6, 4, 8)  # dim 0 (rank 12) split over the 2 processes
