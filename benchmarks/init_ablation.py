"""Does a theory-backed init train better than random? Several seeds, same budget.

Trains the demo's patch transformer (examples/demo.py) on Fashion-MNIST from scratch with every
block layer STL (t=4, r=24), once per (init, seed), same steps, data order and hyper-parameters,
plus the dense model; reports test top-1 mean and spread per init. Writes JSON and a PNG.

  python benchmarks/init_ablation.py --steps 300 --seeds 0 1 2

Variants (``--variants``; how E and D are scaled and trained is part of an init scheme): ``base`` (STLinear's default: each product's E row and D column at unit norm,
``ed_norm=1``; one AdamW for everything), ``balanced`` (``ed_norm=None``: the decomposition's
balanced scale ||E_l|| = ||F_l|| = ||D_l||, the default before 2026-11-24), ``ed_norm<s>``
(norm s, e.g. ``ed_norm0.5``), ``ed_lr0.1`` (E and D at 0.1x the learning rate, no weight
decay), ``ed_frozen`` (E and D fixed at the init).
"""
import argparse
import json
import os
import statistics
import time

import torch
from torch import nn

import stl_torch
from stl_torch.cli import add_stl_args

from stl_recipes.images import FASHION_MNIST_DIR, load_idx_split
from stl_recipes.patch_transformer import PatchTransformer, accuracy, train

from results_file import RESULTS_DIR, result_stem



VARIANTS = ("base", "balanced", "ed_lr0.1", "ed_frozen", "ed_norm<s>")


def parse_variant(name):
    if name in VARIANTS[:-1] or (name.startswith("ed_norm") and float(name[7:]) > 0):
        return name
    raise argparse.ArgumentTypeError(f"unknown variant {name!r}; valid: {', '.join(VARIANTS)}")


def stl_kwargs(variant):
    """STLinear arguments of a variant: the scale of E and D."""
    if variant == "balanced":
        return {"ed_norm": None}
    if variant.startswith("ed_norm"):
        return {"ed_norm": float(variant[7:])}
    return {}


def param_groups(model, variant):
    """Optimiser groups of a variant (None: one group for everything)."""
    stl = [m for m in model.modules() if isinstance(m, stl_torch.STLinear)]
    eds = [p for m in stl for p in (m.E, m.D)]
    rest = [p for p in model.parameters() if all(p is not q for q in eds)]
    if variant == "ed_lr0.1":
        return [{"params": rest}, {"params": eds, "lr": 3e-4, "weight_decay": 0.0}]
    if variant == "ed_frozen":
        for p in eds:
            p.requires_grad_(False)
        return [{"params": rest}]
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=FASHION_MNIST_DIR)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--inits", nargs="+", default=["strassen", "fitted", "polynomial", "random"])
    add_stl_args(ap)
    ap.add_argument("--variants", nargs="+", default=["base"], type=parse_variant)
    ap.add_argument("--no-dense", action="store_true", help="skip the dense baseline")
    ap.add_argument("--tag", default="", help="suffix of the output files")
    ap.add_argument("--out", default=RESULTS_DIR, help="folder for init_ablation_fmnist<TAG>_<KIND>.json/.png")
    a = ap.parse_args()

    norm = lambda x: (x.float() / 255 - 0.2860) / 0.3530  # noqa: E731
    xtr, ytr = load_idx_split(a.data, "train")
    xte, yte = load_idx_split(a.data, "test")
    xtr, xte = norm(xtr), norm(xte)
    runs = []
    configs = ([] if a.no_dense else [("dense", "base")]) + [(i, v) for i in a.inits for v in a.variants]
    names = []
    for init, variant in configs:
        name = init if variant == "base" else f"{init}/{variant}"
        names.append(name)
        for seed in a.seeds:
            torch.manual_seed(seed)
            if init == "dense":
                model = PatchTransformer(nn.Linear)
            else:
                # "random" draws each layer from torch's RNG (seeded above); the fits take the seed
                model = PatchTransformer(lambda i, o: stl_torch.STLinear(
                    i, o, tile=a.tile, rank=a.rank, init=init, seed=None if init == "random" else seed,
                    **stl_kwargs(variant)))
            groups = param_groups(model, variant)
            print(f"[{name} seed {seed}]", flush=True)
            secs = train(model, xtr, ytr, a.steps, a.batch_size, seed, groups)
            runs.append({"init": name, "seed": seed, "top1": accuracy(model, xte, yte), "train_s": secs})
            print(f"  top-1 {runs[-1]['top1']:.4f}", flush=True)
    summary = {}
    for name in names:
        accs = [r["top1"] for r in runs if r["init"] == name]
        summary[name] = {"mean": statistics.mean(accs), "min": min(accs), "max": max(accs), "n": len(accs)}
    stem = result_stem("init_ablation", "fmnist" + a.tag, "cpu", a.out)
    meta = {"steps": a.steps, "batch_size": a.batch_size, "tile": a.tile, "rank": a.rank,
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads()}
    meta["variants"] = a.variants
    with open(stem + ".json", "w") as f:
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
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("test top-1")
    ax.set_title(f"Fashion-MNIST, {a.steps} steps, STL t={a.tile} r={a.rank}")
    fig.tight_layout()
    fig.savefig(stem + ".png", dpi=120)


if __name__ == "__main__":
    main()
