"""fwd+bwd through autograd (stl_linear: Z kept or recomputed as the module does) vs dense F.linear,
min CPU time of one thread (time.thread_time), bfloat16."""
import sys, time, torch, stl_torch
from stl_torch.ops import stl_linear
torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
clock = time.thread_time if torch.get_num_threads() == 1 else time.perf_counter
bf = torch.bfloat16; t, r = 4, 24
M, N, P = map(int, sys.argv[1].split('x')); calls = int(sys.argv[2])
g = torch.Generator().manual_seed(0)
def rnd(*s, sc=1.0): return (torch.randn(*s, generator=g) * sc).to(bf).requires_grad_()
x = rnd(M, N); E = rnd(r, 16, sc=0.3); Wt = rnd(r, N // t, P // t, sc=0.05); D = rnd(16, r, sc=0.3); b = rnd(P); W = rnd(P, N, sc=0.02)
def step(f):
    y = f(); y.backward(torch.ones_like(y))
fns = {"stl": lambda: step(lambda: stl_linear(x, E, Wt, D, b, tile=t)),
       "dense": lambda: step(lambda: torch.nn.functional.linear(x, W, b))}
best = {k: 1e9 for k in fns}
for f in fns.values(): f()
for _ in range(calls):
    for k, f in fns.items():
        a = clock(); f(); best[k] = min(best[k], clock() - a)
print(f"{stl_torch.__file__.split('/')[2]:8s} {stl_torch._C.abi_info()['cpu_isa']:10s} {sys.argv[1]:15s} autograd fwd+bwd STL {best['stl']*1e3:8.2f} dense {best['dense']*1e3:8.2f} x{best['dense']/best['stl']:.2f}", flush=True)
