"""What bench_linear.py and stages.py share: the shapes they time, the interleaved timer, the
op's unfused composition, their common flags, and writing a result's JSON, Markdown and PNG."""
import json
import os
import statistics
import time

import torch

from stl_torch.cli import add_stl_args

from results_file import RESULTS_DIR

# (M, N, P): a square layer at two sizes, the SmolLM2-135M MLP (up, down; 32 x 256 tokens), the
# T2T-ViT-7 MLP (32 images x 196 tokens), TinyLlama-1.1B's MLP up (2 x 2048 tokens), and a 64-wide
# layer of T2T-ViT-7's token-to-token stage (32 images x 3136 tokens), where STL does 1.12x the
# multiply-adds of dense (encode and decode cost r(N+P) per row, as much as the products here)
CPU_SHAPES = [(512, 512, 512), (2048, 2048, 2048), (8192, 576, 1536), (8192, 1536, 576), (6272, 256, 512),
              (4096, 2048, 5632), (100352, 64, 64)]
CUDA_SHAPES = [(8192, 8192, 8192), (16384, 2048, 5632), (16384, 5632, 2048), (16384, 2048, 2048),
               (25216, 256, 512)]


def timer(device, reps, warmup):
    """run({name: fn}) -> {name: median ms}, interleaved rounds."""
    def once(fn):
        if device == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            return a.elapsed_time(b)
        s = time.perf_counter()
        fn()
        return (time.perf_counter() - s) * 1e3

    def run(fns):
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        if device == "cuda":
            torch.cuda.synchronize()
        ts = {k: [] for k in fns}
        for _ in range(reps):
            for k, fn in fns.items():
                ts[k].append(once(fn))
        return {k: statistics.median(v) for k, v in ts.items()}
    return run


def unfused_stl(x, E, Wt, D, t):
    """The op's unfused composition: encode kernel, torch's batched GEMM, decode kernel."""
    return torch.ops.stl_torch.stl_forward_unfused(x, E, Wt, D, x.new_empty(0), t, False)[0]


def add_common_args(ap):
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (CUDA default)")
    add_stl_args(ap)
    ap.add_argument("--reps", type=int, default=None, help="timed rounds per shape")
    ap.add_argument("--shapes", default=None, help="MxNxP,...: e.g. 512x512x512,16384x2048x5632")
    ap.add_argument("--out", default=RESULTS_DIR,
                    help="folder for the JSON, Markdown and PNG (NAME_DTYPE_KIND.*: a rerun overwrites its own)")


def dtype_and_shapes(a, cuda, cpu_shapes):
    """The --dtype and --shapes to use: bf16 and the CUDA shapes on CUDA, float32 and
    ``cpu_shapes`` on the CPU, unless given."""
    dtype = getattr(torch, a.dtype or ("bfloat16" if cuda else "float32"))
    shapes = ([tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")] if a.shapes
              else CUDA_SHAPES if cuda else cpu_shapes)
    return dtype, shapes


def write_outputs(stem, meta, results, markdown_fn, plot_fn):
    """stem.json (meta + results), stem.md (the table, also printed) and stem.png."""
    os.makedirs(os.path.dirname(stem), exist_ok=True)
    with open(stem + ".json", "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    md = markdown_fn(results, meta)
    with open(stem + ".md", "w") as f:
        f.write(md + "\n")
    plot_fn(results, stem + ".png")
    print(md)
    print(f"\nwrote {stem}.json/.md/.png")
