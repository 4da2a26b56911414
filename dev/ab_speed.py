#!/usr/bin/env python
"""A/B of two builds of the CPU kernels on a noisy machine: the fastest of N calls, builds alternated.

benchmarks/bench_linear.py gives medians of interleaved rounds, which is the right figure on a
quiet machine. On a shared VM whose speed drifts by tens of percent from minute to minute, a
kernel change of 10% drowns in it; the fastest call of each process, with the two builds run
alternately several times, is what survives interference (it can only add time). One process
per measurement, because a process loads one build:

  cp -r stl_torch /tmp/a/                   # build A (e.g. main), then rebuild with the change:
  cp -r stl_torch /tmp/b/
  for i in 1 2 3 4; do for v in a b; do
    PYTHONPATH=/tmp/$v python dev/ab_speed.py --threads 1 --shape 6272x256x512; done; done

Prints the fastest forward+backward (autograd, the op as STLinear runs it) of STL and of dense
F.linear, interleaved call by call, and their ratio; --forward-only and --backward-only time the
raw ops (stl_forward without autograd, stl_backward) against dense's forward and its two backward
GEMMs; --dtype bfloat16 times both in bfloat16.
"""
import argparse
import time

import torch

import stl_torch
from stl_torch.ops import stl_linear


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="6272x256x512", help="MxNxP")
    ap.add_argument("--tile", type=int, default=4)
    ap.add_argument("--rank", type=int, default=24)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--forward-only", action="store_true")
    ap.add_argument("--backward-only", action="store_true")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float64"])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    M, N, P = (int(v) for v in a.shape.split("x"))
    t, r, dt = a.tile, a.rank, getattr(torch, a.dtype)
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(dt).requires_grad_()
    E, Wt, D = rand(r, t * t), rand(r, N // t, P // t), rand(t * t, r)
    b, W, x = rand(P), rand(P, N), rand(M, N)
    if a.forward_only:
        fns = {"STL": lambda: torch.ops.stl_torch.stl_forward(x, E, Wt, D, b, t, False),
               "dense": lambda: torch.nn.functional.linear(x, W, b)}
    elif a.backward_only:
        with torch.no_grad():
            _, z = torch.ops.stl_torch.stl_forward(x, E, Wt, D, b, t, True)
            gy, none = torch.randn(M, P, generator=g).to(dt), torch.empty(0, dtype=dt)
        fns = {"STL": lambda: torch.ops.stl_torch.stl_backward(gy, none, x, E, Wt, D, z, True, t),
               "dense": lambda: (gy @ W, gy.t() @ x, gy.sum(0))}
    else:
        def step(f):
            y = f()
            y.backward(torch.ones_like(y))
        fns = {"STL": lambda: step(lambda: stl_linear(x, E, Wt, D, b, tile=t)),
               "dense": lambda: step(lambda: torch.nn.functional.linear(x, W, b))}
    grad = torch.no_grad() if a.forward_only or a.backward_only else torch.enable_grad()
    with grad:
        run(fns, a)


def run(fns, a):
    for f in fns.values():
        f()
    best = {k: float("inf") for k in fns}
    for _ in range(a.calls):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            best[k] = min(best[k], time.perf_counter() - t0)
    info = stl_torch._C.abi_info()
    what = "forward" if a.forward_only else "backward" if a.backward_only else "fwd+bwd"
    print(f"{stl_torch.__file__.rsplit('/', 2)[0]} ({info['cpu_isa']}, {a.threads} thread(s)) {a.shape} {a.dtype} {what}: "
          f"STL {best['STL'] * 1e3:.2f} ms, dense {best['dense'] * 1e3:.2f} ms, dense/STL {best['dense'] / best['STL']:.3f}")


if __name__ == "__main__":
    main()
