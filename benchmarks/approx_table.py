"""How well each init approximates the dense product, data-free (docs/operator.md, "Initialisations").

For tile t and each rank r, per init: the tensor error ||T_hat - T|| / ||T|| of (E, F, D) and the
operator error ||STL(X, W) - X W^T|| / ||X W^T|| on Gaussian X (M x N) and W (P x N), with
Wt = encode_weight(W, F), computed by the float64 reference. Also the causal-mode error
(fitted with the causal masks) and the "keep r naive products" baseline sqrt(1 - r/t^3),
which is also the exact optimum in causal mode (see stl_torch.init.causal_levels).

  python benchmarks/approx_table.py            # t=4, r in {16,20,24,28,32,40,49}, M=N=P=256
  python benchmarks/approx_table.py --tile 2 --ranks 4 5 6 7 8

Prints a Markdown table and writes docs/results/approx_table_t{t}_<kind>.json (benchmarks/results_file.py).
"""
import argparse
import json
import math
import os
import platform
import time

import torch

from stl_torch.cli import add_stl_args
from stl_torch.init import INITS, make_init
from stl_torch.tiling import encode_weight, stl_reference, tensor_error

from results_file import RESULTS_DIR, result_stem


def operator_error(dec, t, x, W):
    y = stl_reference(x, dec.E, encode_weight(W, dec.F, t), dec.D, tile=t)
    ref = x @ W.t()
    return ((y - ref).norm() / ref.norm()).item()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_stl_args(ap, ("tile",))
    ap.add_argument("--ranks", type=int, nargs="+", default=[16, 20, 24, 28, 32, 40, 49])
    ap.add_argument("--size", type=int, default=256, help="M = N = P")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=RESULTS_DIR, help="folder for approx_table_t<T>_<KIND>.json")
    args = ap.parse_args()
    t = args.tile
    g = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.size, args.size, generator=g, dtype=torch.float64)
    W = torch.randn(args.size, args.size, generator=g, dtype=torch.float64)
    inits = [n for n in INITS if n != "strassen" or t & (t - 1) == 0]
    rows = []
    for r in args.ranks:
        row = {"rank": r, "naive_bound": math.sqrt(max(0.0, 1 - r / t ** 3))}
        for name in inits:
            t0 = time.perf_counter()
            dec = make_init(name, t, r)
            row[f"{name}_build_s"] = time.perf_counter() - t0
            row[f"{name}_tensor"] = tensor_error(*dec, t)
            row[f"{name}_output"] = operator_error(dec, t, x, W)
        dec = make_init("fitted", t, r, causal=True)
        row["fitted_causal_tensor"] = tensor_error(*dec, t)
        row["fitted_causal_output"] = operator_error(dec, t, x, W)
        rows.append(row)
        print(f"r={r} done", flush=True)

    cols = inits + ["fitted_causal"]
    head = ("| r | GEMM FLOPs vs dense | " + " | ".join(cols) + " | keep r naive |\n"
            "|---:|---:|" + "---:|" * (len(cols) + 1))
    lines = [f"Relative output error ||STL(X,W) - XW^T|| / ||XW^T|| on Gaussian X, W "
             f"({args.size}^3, float64), t={t}; tensor error in parentheses.", "", head]
    for row in rows:
        cells = [f"{row[c + '_output']:.3f} ({row[c + '_tensor']:.3f})" for c in cols]
        lines.append(f"| {row['rank']} | {t ** 3 / row['rank']:.2f}x fewer | " + " | ".join(cells)
                     + f" | {row['naive_bound']:.3f} |")
    table = "\n".join(lines)
    print(table)
    path = result_stem("approx_table", f"t{t}", "cpu", args.out) + ".json"
    with open(path, "w") as f:
        json.dump({"tile": t, "size": args.size, "seed": args.seed, "torch": torch.__version__,
                   "platform": platform.platform(), "rows": rows, "table": table}, f, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
