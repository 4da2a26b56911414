"""Where one STL layer's time goes, stage by stage, against the floor of each stage.

For each shape it profiles (torch.profiler) the STL op (and, forward only, its unfused
composition when the build runs a fused forward on this device), forward alone and
forward+backward, plus dense F.linear, and sums the device time of the kernels
by stage: encode, the r batched GEMMs (cuBLAS), decode, the backward's reductions (dD, dE, db),
the fused kernels, and torch's own copies/fills. Next to each stage it prints the floor computed
from the stage's work (docs/operator.md, "Cost" and "Gradients"):
  GEMM stages:    FLOPs / the tensor-core rate cuBLAS reaches on a dense 8192^3 GEMM in this run
  all the others: bytes they must move / the copy bandwidth measured in this run
(encode, decode and the reductions do 2r FLOPs per element they read: below the ridge point of
an H100's CUDA cores, so bytes bound them). It also gives the floor of the whole operator for
two designs: unfused (every stage at its floor, intermediates through global memory) and fully
fused (only X, Wt and Y move; the GEMM FLOPs bound it), each as a speed-up limit vs the dense
time measured beside it.

On the CPU the stages are not separable in a profile (the C op runs encode, decode, reductions
and its BLAS calls itself): there the table gives the whole op's time against the same floors.

  python benchmarks/stages.py --device cuda           # bf16, the benchmark's shapes
  python benchmarks/stages.py --shapes 512x512x512    # CPU, float32
"""
import argparse
import os
import time

import torch
import torch.nn.functional as F
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

import stl_torch

from layer_bench import CPU_SHAPES, add_common_args, dtype_and_shapes, timer, unfused_stl, write_outputs
from results_file import result_stem

# kernel name fragments -> stage (CUDA); the first match wins, unmatched kernels are GEMMs (cuBLAS
# names its kernels after the architecture and tiling: sm90_xmma_*, nvjet_*, cutlass_*)
KERNEL_STAGES = [("fused_encode_kernel", "fused encode+GEMM+decode"), ("fused_forward_kernel", "fused GEMM+decode"),
                 ("encode_", "encode"), ("decode_", "decode"), ("correlate_", "reductions"),
                 ("colsum_partial", "reductions"), ("reduce_partials", "reductions"),
                 ("elementwise", "torch copies/fills"), ("Memset", "torch copies/fills"),
                 ("Memcpy", "torch copies/fills"), ("fill", "torch copies/fills")]


def classify(name, table, default):
    return next((stage for frag, stage in table if frag in name), default)


def stage_times(fn, device, reps):
    """{stage: mean µs of kernel time per call} over ``reps`` profiled calls of the warmed-up
    ``fn`` ({} on the CPU)."""
    if device != "cuda":
        return {}
    try:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(reps):
                fn()
            torch.cuda.synchronize()
    except RuntimeError as e:  # no CUPTI: keep the timed totals and floors
        print(f"[stages] profiler failed ({e}): no per-kernel split", flush=True)
        return {}
    out = {}
    for e in prof.events():
        if e.device_type == DeviceType.CUDA:
            stage = classify(e.name, KERNEL_STAGES, "GEMM")
            out[stage] = out.get(stage, 0.0) + e.time_range.elapsed_us() / reps
    return out


def stage_work(M, N, P, t, r, b, path, backward):
    """{stage: (tensor-core FLOPs, bytes)} of the work each stage must do (docs/operator.md)."""
    s = r / (t * t)                 # encoded size / plain size (Xe vs X, Z vs Y, Wt vs W)
    gemm = 2 * r * M * N * P / t ** 3
    gemm_io = b * s * (M * N + N * P + M * P)  # one batched GEMM reads Xe and Wt, writes Z
    w = {"encode": (0, b * M * N * (1 + s)), "GEMM": (gemm, gemm_io), "decode": (0, b * M * P * (s + 1))}
    if path == "fused":             # GEMM+decode in one kernel, Z still written (autograd keeps it)
        w["fused GEMM+decode"] = (gemm, gemm_io + b * M * P)
        del w["GEMM"], w["decode"]
    elif path == "fused_encode":    # X, Wt in; Y (and Z when kept) out
        w = {"fused encode+GEMM+decode": (gemm, b * (M * N + s * N * P + M * P + (s * M * P if backward else 0)))}
    if backward:                    # encode X again and G; 2 GEMMs; decode dX; dD, dE, db
        enc = w.get("encode", (0, 0))[1]
        w["encode"] = (0, enc + b * M * N * (1 + s) + b * M * P * (1 + s))
        gf, gb = w.get("GEMM", (0, 0))
        w["GEMM"] = (gf + 2 * gemm, gb + 2 * gemm_io)
        w["decode"] = (0, w.get("decode", (0, 0))[1] + b * M * N * (1 + s))
        w["reductions"] = (0, b * (M * P * (1 + s) + M * N * (1 + s) + M * P))
    return w


def floors(work, tc_flops_per_s, bytes_per_s):
    """{stage: floor µs}: max(FLOPs at the tensor-core rate, bytes at the bandwidth)."""
    return {k: max(f / tc_flops_per_s, by / bytes_per_s) * 1e6 for k, (f, by) in work.items()}


def machine_rates(device, dtype, run):
    """(tensor-core FLOP/s of a dense 8192^3 matmul, copy bytes/s of a 1 GiB tensor), measured now."""
    n = 8192 if device == "cuda" else 1024
    a, w = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    src = torch.empty(2 ** 30 // 2 if device == "cuda" else 2 ** 26, device=device, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    ms = run({"mm": lambda: torch.mm(a, w), "copy": lambda: dst.copy_(src)})
    return 2 * n ** 3 / (ms["mm"] * 1e-3), 2 * src.numel() * src.element_size() / (ms["copy"] * 1e-3)


def bench_shape(M, N, P, t, r, dtype, device, run, reps, rates):
    g = torch.Generator(device="cpu").manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=g).to(device=device, dtype=dtype)  # noqa: E731
    x, W, gy = mk(M, N).requires_grad_(), mk(P, N) / N ** 0.5, mk(M, P)
    E, Wt, D = mk(r, t * t) / t, mk(r, N // t, P // t) / (N / t) ** 0.5, mk(t * t, r) / r ** 0.5
    b = x.element_size()
    # the op runs its device's fused forward when the build has one (dev/: "fused_encode" design)
    op_path = "fused_encode" if stl_torch._C.abi_info()["fused_forward"].get(device) else "unfused"
    for v in (W, E, Wt, D):
        v.requires_grad_()
    out = {}

    def backward(f, *ins):  # grads set to None first, as in training: no accumulation kernels
        def step():
            for v in ins:
                v.grad = None
            f().backward(gy)
        return step

    for mode in ("fwd", "fwd+bwd"):
        bwd = mode == "fwd+bwd"
        calls = {"dense": backward(lambda: F.linear(x, W), x, W) if bwd else lambda: F.linear(x, W)}
        f = lambda: stl_torch.stl_linear(x, E, Wt, D, None, t)  # noqa: E731
        calls[op_path] = backward(f, x, E, Wt, D) if bwd else f
        if op_path != "unfused" and not bwd:
            calls["unfused"] = lambda: unfused_stl(x.detach(), E.detach(), Wt.detach(), D.detach(), t)
        with torch.set_grad_enabled(bwd):
            wall = run(calls)  # ms, CUDA events / perf_counter, interleaved
            for name, fn in calls.items():
                st = stage_times(fn, device, reps)
                row = {"wall_us": wall[name] * 1e3, "stages_us": st, "kernels_us": sum(st.values())}
                if name != "dense":
                    work = stage_work(M, N, P, t, r, b, name, bwd)
                    fl = floors(work, *rates)
                    row["floor_us"] = fl
                    row["speedup_vs_dense"] = wall["dense"] / wall[name]
                    row["limit_vs_dense_at_floors"] = wall["dense"] * 1e3 / sum(fl.values())
                out[f"{mode} {name}"] = row
        # the fully fused design: X, Wt, Y (and for training also G, dX, dWt) move once
        gemm = 2 * r * M * N * P / t ** 3 * (3 if bwd else 1)
        io = b * (M * N + r / t ** 2 * N * P + M * P) * (2 if bwd else 1)
        fused_floor = max(gemm / rates[0], io / rates[1]) * 1e6
        out[f"{mode} fully fused floor"] = {"floor_us": {"total": fused_floor},
                                             "limit_vs_dense_at_floors": wall["dense"] * 1e3 / fused_floor}
    return out


def model_table(shapes, t, r, b, tc, bw):
    """Floors only, no measurement: for assumed rates ``tc`` (tensor-core FLOP/s) and ``bw``
    (bytes/s), each design's time at its floors and its speed-up limit over dense at its floor
    (max of FLOPs at ``tc`` and X, W, Y bytes at ``bw``, per GEMM)."""
    out = [f"Model, not a measurement: t={t}, r={r}, {b}-byte elements, GEMMs at {tc / 1e12:.0f} TFLOP/s, "
           f"bytes at {bw / 1e9:.0f} GB/s; dense at its floor too.", "",
           "| shape M×N→P | mode | dense µs | unfused: encode / GEMM / decode / reductions µs | "
           "unfused limit | fused GEMM+decode limit | fused encode+GEMM+decode limit |", "|---|---|---:|---|---:|---:|---:|"]
    for M, N, P in shapes:
        for bwd in (False, True):
            gemms = 3 if bwd else 1  # dense: Y = X W^T; backward dX = G W, dW = G^T X: 3 GEMMs of one size
            dense = gemms * max(2 * M * N * P / tc, b * (M * N + N * P + M * P) / bw) * 1e6
            fl = {p: floors(stage_work(M, N, P, t, r, b, p, bwd), tc, bw) for p in ("unfused", "fused", "fused_encode")}
            lim = {p: dense / sum(f.values()) for p, f in fl.items()}
            un = fl["unfused"]
            parts = " / ".join(f"{un[k]:.0f}" for k in ("encode", "GEMM", "decode", "reductions") if k in un)
            out.append(f"| {M}×{N}→{P} | {'fwd+bwd' if bwd else 'fwd'} | {dense:.0f} | {parts} | "
                       f"{lim['unfused']:.2f} | {lim['fused']:.2f} | {lim['fused_encode']:.2f} |")
    return "\n".join(out)


def markdown(results, meta):
    tc, bw = meta["tensor_core_tflops"], meta["copy_gbps"]
    out = [f"{meta['device_name']}, {meta['dtype']}, torch {meta['torch']}, t={meta['tile']}, r={meta['rank']}, "
           f"{meta['date']}. Floors: GEMM FLOPs at {tc:.3g} TFLOP/s (dense 8192³ matmul, this run), "
           f"everything else bytes at {bw:.3g} GB/s (1 GiB copy, this run).", ""]
    for shape, rows in results.items():
        out += [f"**{shape}**", "", "| mode, path | stage | measured µs | floor µs | measured / floor |",
                "|---|---|---:|---:|---:|"]
        for name, row in rows.items():
            st, fl = row.get("stages_us", {}), row.get("floor_us", {})
            for stage in list(dict.fromkeys(list(st) + list(fl))):
                m, f = st.get(stage), fl.get(stage)
                out.append(f"| {name} | {stage} | {'' if m is None else f'{m:.1f}'} | "
                           f"{'' if f is None else f'{f:.1f}'} | {f'{m / f:.1f}' if m and f else ''} |")
            if "wall_us" in row:
                lim = row.get("limit_vs_dense_at_floors")
                ks = f"; kernels sum {row['kernels_us']:.1f}" if row["stages_us"] else ""
                out.append(f"| {name} | **whole op** (timed{ks}) | "
                           f"**{row['wall_us']:.1f}** | {f'{sum(fl.values()):.1f}' if fl else ''} | "
                           + (f"× vs dense {row['speedup_vs_dense']:.2f} (at floors ≤ {lim:.2f}) |" if lim else "|"))
            else:
                out.append(f"| {name} | speed-up limit vs dense | | | ≤ {row['limit_vs_dense_at_floors']:.2f} |")
        out.append("")
    return "\n".join(out)


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    shapes = list(results)
    fig, axes = plt.subplots(1, len(shapes), figsize=(4.5 * len(shapes), 4.2), squeeze=False)
    for ax, shape in zip(axes[0], shapes):
        rows = {k: v for k, v in results[shape].items() if "wall_us" in v}
        split = {k: v["stages_us"] or {"whole op (not split)": v["wall_us"]} for k, v in rows.items()}
        stages = list(dict.fromkeys(s for st in split.values() for s in st))
        bottom = [0.0] * len(rows)
        for s in stages:
            h = [st.get(s, 0.0) for st in split.values()]
            ax.bar(range(len(rows)), h, bottom=bottom, label=s)
            bottom = [a + c for a, c in zip(bottom, h)]
        for i, v in enumerate(rows.values()):
            if "floor_us" in v:
                ax.plot([i - 0.4, i + 0.4], [sum(v["floor_us"].values())] * 2, "k--", lw=1)
        ax.set_xticks(range(len(rows)), list(rows), rotation=60, ha="right", fontsize=7)
        ax.set_title(shape, fontsize=9)
        ax.set_ylabel("µs per call (dashes: floor)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap)
    ap.add_argument("--model", default=None, metavar="TFLOPS,GBPS",
                    help="print the floors for assumed rates (e.g. 700,3000) and exit: nothing is run")
    a = ap.parse_args()
    cuda = a.device == "cuda"
    dtype, shapes = dtype_and_shapes(a, cuda or bool(a.model), CPU_SHAPES[:2])
    if a.model:
        tc, bw = (float(v) for v in a.model.split(","))
        print(model_table(shapes, a.tile, a.rank, torch.finfo(dtype).bits // 8, tc * 1e12, bw * 1e9))
        return
    reps = a.reps or (10 if cuda else 3)
    run = timer(a.device, reps, 3 if cuda else 1)
    rates = machine_rates(a.device, dtype, run)
    meta = {"device_name": torch.cuda.get_device_name() if cuda else "CPU", "dtype": str(dtype).replace("torch.", ""),
            "torch": torch.__version__, "tile": a.tile, "rank": a.rank, "date": time.strftime("%Y-%m-%d"),
            "tensor_core_tflops": rates[0] / 1e12, "copy_gbps": rates[1] / 1e9, "reps": reps}
    results = {}
    for M, N, P in shapes:
        key = f"{M}×{N}→{P}"
        print(f"[stages] {key} ...", flush=True)
        results[key] = bench_shape(M, N, P, a.tile, a.rank, dtype, a.device, run, reps, rates)
    write_outputs(result_stem("stages", meta["dtype"], a.device, a.out), meta, results, markdown, plot)


if __name__ == "__main__":
    main()
