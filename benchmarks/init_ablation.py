"""Does a theory-backed init train better than random? (STL.md section 4: show it, several seeds.)

Trains the demo's patch transformer (examples/demo.py) on Fashion-MNIST from scratch with every
block layer STL (t=4, r=24), once per (init, seed), same steps, data order and hyper-parameters,
plus the dense model; reports test top-1 mean and spread per init. Writes JSON and a PNG.

  python benchmarks/init_ablation.py --steps 300 --seeds 0 1 2
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch
from torch import nn

import stl_torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "examples"))
from demo import PatchTransformer, accuracy, train  # noqa: E402
from recipe_data import FASHION_MNIST_DIR, load_idx_split  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=FASHION_MNIST_DIR)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--inits", nargs="+", default=["strassen", "fitted", "polynomial", "random"])
    ap.add_argument("--tile", type=int, default=4)
    ap.add_argument("--rank", type=int, default=24)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    a = ap.parse_args()

    norm = lambda x: (x.float() / 255 - 0.2860) / 0.3530  # noqa: E731
    xtr, ytr = load_idx_split(a.data, "train")
    xte, yte = load_idx_split(a.data, "test")
    xtr, xte = norm(xtr), norm(xte)
    runs = []
    for name in ["dense"] + a.inits:
        for seed in a.seeds:
            torch.manual_seed(seed)
            if name == "dense":
                model = PatchTransformer(nn.Linear)
            else:
                # "random" draws each layer from torch's RNG (seeded above); the fits take the seed
                model = PatchTransformer(lambda i, o: stl_torch.STLinear(
                    i, o, tile=a.tile, rank=a.rank, init=name, seed=None if name == "random" else seed))
            print(f"[{name} seed {seed}]", flush=True)
            secs = train(model, xtr, ytr, a.steps, a.batch_size, seed)
            runs.append({"init": name, "seed": seed, "top1": accuracy(model, xte, yte), "train_s": secs})
            print(f"  top-1 {runs[-1]['top1']:.4f}", flush=True)
    summary = {}
    for name in ["dense"] + a.inits:
        accs = [r["top1"] for r in runs if r["init"] == name]
        summary[name] = {"mean": statistics.mean(accs), "min": min(accs), "max": max(accs), "n": len(accs)}
    os.makedirs(a.out, exist_ok=True)
    meta = {"steps": a.steps, "batch_size": a.batch_size, "tile": a.tile, "rank": a.rank,
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads()}
    with open(os.path.join(a.out, "init_ablation.json"), "w") as f:
        json.dump({"meta": meta, "runs": runs, "summary": summary}, f, indent=1)
    print(f"\n{a.steps} steps, batch {a.batch_size}, seeds {a.seeds}, t={a.tile} r={a.rank}\n")
    print("| model | test top-1 mean | min | max | runs |\n|---|---:|---:|---:|---:|")
    for name, s in summary.items():
        label = name if name == "dense" else f"STL, init={name}"
        print(f"| {label} | {s['mean']:.4f} | {s['min']:.4f} | {s['max']:.4f} | {s['n']} |")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = list(summary)
    for i, name in enumerate(names):
        accs = [r["top1"] for r in runs if r["init"] == name]
        ax.scatter([i] * len(accs), accs, color="C0")
        ax.hlines(summary[name]["mean"], i - 0.3, i + 0.3, color="C1")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("test top-1")
    ax.set_title(f"Fashion-MNIST, {a.steps} steps, STL t={a.tile} r={a.rank}")
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, "init_ablation.png"), dpi=120)


if __name__ == "__main__":
    main()
