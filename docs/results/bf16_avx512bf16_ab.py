"""min CPU time of one thread (time.thread_time): robust to time-sharing on a loaded VM."""
import sys, time, torch, stl_torch
torch.set_num_threads(int(sys.argv[3]) if len(sys.argv)>3 else 1)
clock = time.thread_time if torch.get_num_threads()==1 else time.perf_counter
op=torch.ops.stl_torch; bf=torch.bfloat16; t,r=4,24
M,N,P=map(int,sys.argv[1].split('x')); calls=int(sys.argv[2])
g=torch.Generator().manual_seed(0)
x=torch.randn(M,N,generator=g).to(bf); E=(torch.randn(r,16,generator=g)*0.3).to(bf)
Wt=(torch.randn(r,N//t,P//t,generator=g)*0.05).to(bf); D=(torch.randn(16,r,generator=g)*0.3).to(bf)
b=torch.randn(P,generator=g).to(bf); W=(torch.randn(P,N,generator=g)*0.02).to(bf); gy=torch.randn(M,P,generator=g).to(bf)
e0=torch.empty(0,dtype=bf)
with torch.no_grad():
    _, z = op.stl_forward(x,E,Wt,D,b,t,True)
fns={"dense_f":lambda: torch.nn.functional.linear(x,W,b),
     "stl_f":lambda: op.stl_forward(x,E,Wt,D,b,t,False),
     "dense_b":lambda: (gy@W, gy.t()@x, gy.sum(0)),
     "stl_b":lambda: op.stl_backward(gy,e0,x,E,Wt,D,z if z.numel() else e0,True,t)}
best={k:1e9 for k in fns}
for f in fns.values(): f()
for _ in range(calls):
    for k,f in fns.items():
        a=clock(); f(); best[k]=min(best[k],clock()-a)
print(f"{stl_torch.__file__.split('/')[2]:8s} {stl_torch._C.abi_info()['cpu_isa']:10s} {sys.argv[1]:15s} fwd STL {best['stl_f']*1e3:7.2f} dense {best['dense_f']*1e3:7.2f} x{best['dense_f']/best['stl_f']:.2f} | bwd STL {best['stl_b']*1e3:7.2f} dense {best['dense_b']*1e3:7.2f} | f+b x{(best['dense_f']+best['dense_b'])/(best['stl_f']+best['stl_b']):.2f}", flush=True)
