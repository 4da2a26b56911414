"""One STL layer (t=4, r=24) against dense F.linear, side by side in one run.

Rows, forward and forward+backward: dense F.linear; STL (stl_torch); the plain-PyTorch STL of
the paper (einsum encode, bmm, einsum decode), eager and torch.compile'd; the r batched GEMMs
alone (what STL's GEMM stage would cost with free encode/decode); on CUDA also 2:4 sparse
F.linear, and the unfused composition (torch.ops.stl_torch.stl_forward_unfused) when the build
runs a fused forward there. Every row of a shape is timed in interleaved rounds (A B C A B C ...:
a machine that slows down for a while slows all rows alike); each figure is the median.
Also the minor page faults per forward call (fresh pages for temporaries cost more than the
encode and decode themselves). Writes Markdown, JSON and a PNG; the table names the CPU model,
the ISA level the kernels use, the dtype, torch and the date.

  python benchmarks/bench_linear.py                          # CPU, float32, the default shapes
  python benchmarks/bench_linear.py --dtype bfloat16
  python benchmarks/bench_linear.py --device cuda            # bf16, the LLM and ViT shapes
"""
import argparse
import json
import resource
import sys
import time

import torch
import torch.nn.functional as F

import stl_torch
from stl_recipes.metrics import cpu_info

from layer_bench import CPU_SHAPES, add_common_args, dtype_and_shapes, timer, unfused_stl, write_outputs
from results_file import result_stem


def minor_faults(fn, calls=3):
    """Minor page faults per call of fn (CPU)."""
    fn()
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / calls


def plain_stl(x, E, Wt, D, t):
    """The paper's plain-PyTorch formulation: einsum encode, bmm, einsum decode."""
    M, N = x.shape
    r, P = E.shape[0], Wt.shape[2] * t
    xe = torch.einsum("lac,iakc->lik", E.view(r, t, t), x.view(M // t, t, N // t, t))
    z = torch.bmm(xe, Wt)
    return torch.einsum("abl,lij->iajb", D.view(t, t, r), z).reshape(M, P)


def bench_shape(M, N, P, t, r, dtype, device, run, do_sparse):
    g = torch.Generator(device="cpu").manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=g).to(device=device, dtype=dtype)  # noqa: E731
    x, W = mk(M, N), mk(P, N) / N ** 0.5
    E, Wt, D = mk(r, t * t) / t, mk(r, N // t, P // t) / (N / t) ** 0.5, mk(t * t, r) / r ** 0.5
    params = [W, E, Wt, D]
    gy = mk(M, P)
    compiled = torch.compile(plain_stl)

    def fwd_bwd(f, *ins):
        def step():
            for v in ins:
                v.grad = None
            f().backward(gy)
        return step

    xe = mk(r, M // t, N // t)
    fwd = {"dense F.linear": lambda: F.linear(x, W),
           "STL (stl_torch)": lambda: stl_torch.stl_linear(x, E, Wt, D, None, t),
           "plain-PyTorch STL": lambda: plain_stl(x, E, Wt, D, t),
           "plain-PyTorch STL, compiled": lambda: compiled(x, E, Wt, D, t),
           "r batched GEMMs alone": lambda: torch.bmm(xe, Wt)}
    if stl_torch._C.abi_info()["fused_forward"].get(device, False) and device == "cuda":
        fwd["STL unfused composition"] = lambda: unfused_stl(x, E, Wt, D, t)
    if do_sparse:
        from torch.sparse import to_sparse_semi_structured
        mask = torch.tensor([1, 1, 0, 0], device=device, dtype=torch.bool).tile(P, N // 4)
        Ws = to_sparse_semi_structured(W * mask)
        fwd["2:4 sparse F.linear"] = lambda: F.linear(x, Ws)
    with torch.no_grad():
        rows = {k: {"fwd": v} for k, v in run(fwd).items()}
        if device == "cpu":
            for k in ("dense F.linear", "STL (stl_torch)", "plain-PyTorch STL"):
                rows[k]["page_faults_per_fwd"] = minor_faults(fwd[k])
    xg = x.clone().requires_grad_()
    for v in params:
        v.requires_grad_()
    both = run({"dense F.linear": fwd_bwd(lambda: F.linear(xg, W), xg, W),
                "STL (stl_torch)": fwd_bwd(lambda: stl_torch.stl_linear(xg, E, Wt, D, None, t), xg, E, Wt, D),
                "plain-PyTorch STL": fwd_bwd(lambda: plain_stl(xg, E, Wt, D, t), xg, E, Wt, D),
                "plain-PyTorch STL, compiled": fwd_bwd(lambda: compiled(xg, E, Wt, D, t), xg, E, Wt, D)})
    for k, v in both.items():
        rows[k]["fwd+bwd"] = v
    dense_macs = M * N * P
    gemm_macs = r * M * N * P // t ** 3
    stl_macs = r * M * N + gemm_macs + r * M * P  # encode + GEMMs + decode
    for name, row in rows.items():
        macs = dense_macs if "dense" in name or "2:4" in name else gemm_macs if "alone" in name else stl_macs
        row["fwd_gflops"] = 2 * macs / (row["fwd"] * 1e-3) / 1e9
        row["fwd_speedup_vs_dense"] = rows["dense F.linear"]["fwd"] / row["fwd"]
        if "fwd+bwd" in row:
            row["fwd+bwd_speedup_vs_dense"] = rows["dense F.linear"]["fwd+bwd"] / row["fwd+bwd"]
    return rows


def markdown(results, meta):
    gemm = ""
    if meta["device"] == "cpu" and meta["dtype"] == "bfloat16":
        gemm = " (GEMMs in bfloat16)" if meta["build"].get("cpu_bf16_gemm") else " (GEMMs in float32)"
    out = [f"{meta['device_name']} (kernels: {meta.get('cpu_isa_used', 'cuda')}), {meta['dtype']}{gemm}, torch {meta['torch']}, "
           f"t={meta['tile']}, r={meta['rank']}, {meta['threads']} threads, {meta['date']}", "",
           "| shape M×N→P | implementation | fwd ms | fwd × vs dense | fwd+bwd ms | fwd+bwd × vs dense |",
           "|---|---|---:|---:|---:|---:|"]
    for shape, rows in results.items():
        for name, r in rows.items():
            fb = r.get("fwd+bwd")
            out.append(f"| {shape} | {name} | {r['fwd']:.2f} | {r['fwd_speedup_vs_dense']:.2f} | "
                       + (f"{fb:.2f} | {r['fwd+bwd_speedup_vs_dense']:.2f} |" if fb else "– | – |"))
    return "\n".join(out)


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    shapes = list(results)
    names = list(dict.fromkeys(n for rows in results.values() for n in rows))
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 3.2 * len(shapes)), 4.2))
    w = 0.8 / len(names)
    for ax, mode in zip(axes, ("fwd", "fwd+bwd")):
        for i, n in enumerate(names):
            ax.bar([j + i * w for j in range(len(shapes))],
                   [results[s][n].get(f"{mode}_speedup_vs_dense", 0) if n in results[s] else 0 for s in shapes],
                   w, label=n)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks([j + 0.4 - w / 2 for j in range(len(shapes))], shapes, fontsize=7, rotation=15)
        ax.set_ylabel(f"{mode} speed-up vs dense F.linear (×)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def machine_meta(device):
    meta = {"torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "python": sys.version.split()[0],
            "build": stl_torch._C.abi_info(), "threads": torch.get_num_threads()}
    if device == "cuda":
        meta["device_name"] = torch.cuda.get_device_name()
    else:
        info = cpu_info()
        meta.update(info, device_name=f"{info['cpu']} ({info['machine']}, {info['logical_cpus']} logical CPUs, "
                                      f"ISA up to {info['cpu_isa_supported']})")
    return meta


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap)
    a = ap.parse_args()
    cuda = a.device == "cuda"
    dtype, shapes = dtype_and_shapes(a, cuda, CPU_SHAPES)
    run = timer(a.device, a.reps or (20 if cuda else 9), 5 if cuda else 2)
    meta = {"device": a.device, "dtype": str(dtype).replace("torch.", ""), "tile": a.tile, "rank": a.rank,
            **machine_meta(a.device)}
    results = {}
    for M, N, P in shapes:
        key = f"{M}×{N}→{P}"
        print(f"[bench] {key} ...", flush=True)
        results[key] = bench_shape(M, N, P, a.tile, a.rank, dtype, a.device, run, do_sparse=cuda)
        print(json.dumps({k: {m: round(v, 2) for m, v in r.items()} for k, r in results[key].items()}), flush=True)
    write_outputs(result_stem("bench_linear", meta["dtype"], a.device, a.out), meta, results, markdown, plot)


if __name__ == "__main__":
    main()
