"""Iso-FLOP baselines for vision: at the multiply-adds of STL, is a narrower or a low-rank dense
model as good?

Trains each method for the same steps, batch, data order and optimiser on Fashion-MNIST, once per
seed, and reports linear-layer multiply-adds per image (stl_torch.flops), parameters, test top-1
per seed and mean/min/max over seeds, and the wall-clock per training step measured in the run.

Models (--model): ``patch``, the demo's patch transformer (examples/demo.py: dim 256, MLP 512, 2
blocks; the demo's loop: AdamW lr 3e-3, one-cycle); ``t2t-vit-7``, T2T-ViT-7 at 28 px built by the
recipe (examples/t2t_vit_train.py's model, its --stl-layers conversion and its parameter groups
at lr 1e-3), trained by the same loop without augmentation.

Methods (--methods):
  dense         the model as built
  dense-narrow  dense, with the embedding and MLP narrowed together (--narrow width) or the MLP
                only (--narrow mlp) until its linear layers cost STL r=--match-rank's
                multiply-adds per image (closest shape in steps of 8)
  lowrank       every layer that STL converts becomes nn.Linear(in, k) -> nn.Linear(k, out), k
                per layer so that its multiply-adds equal STL r=--match-rank's on that layer;
                started from the truncated SVD of the dense init, as convert() starts STL from it
  stl<r>        stl_torch.convert (t=--tile, rank r, --init) on the demo's layers (the patch
                transformer's block layers) or the recipe's (T2T-ViT: --stl-layers)

Writes docs/results/iso_flop_vision_<model>_<kind>.json and .png (top-1 against multiply-adds per
image, one marker per method, bars min to max over seeds) after every (method, seed) cell; a rerun
skips the cells already in the JSON (same settings required).

  python benchmarks/iso_flop_vision.py                          # patch transformer, 5 methods x 3 seeds
  python benchmarks/iso_flop_vision.py --model t2t-vit-7 --steps 300
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
from stl_torch.cli import add_stl_args, stl_config_from_args
from stl_recipes import metrics as RM
from stl_recipes import t2t_vit_recipe as T2T
from stl_recipes import training as RT
from stl_recipes.images import FASHION_MNIST_DIR, load_idx_split
from stl_recipes.patch_transformer import PatchTransformer, accuracy, train
from stl_recipes.t2t_vit import stl_filter

from results_file import RESULTS_DIR, result_stem

MODELS = ("patch", "t2t-vit-7")
BASE = {"patch": (256, 512), "t2t-vit-7": (256, 512)}  # (embedding, MLP hidden) as published
# settings a saved cell was trained under: a rerun adds cells only under the same ones
CONFIG_KEYS = ("model", "data", "steps", "batch_size", "tile", "init", "match_rank", "narrow",
               "stl_layers")


def method_rank(method):
    return int(method[3:]) if method.startswith("stl") and method[3:].isdigit() else None


def parse_methods(text):
    ms = text.split(",")
    bad = [m for m in ms if m not in ("dense", "dense-narrow", "lowrank") and method_rank(m) is None]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown methods {bad}; valid: dense, dense-narrow, lowrank, stl<r>")
    return ms


def build(a, method, seed, shape=None, ranks=None):
    """The model of ``method``, initialised from ``seed``. ``shape``: (embedding, MLP) of a
    narrowed dense model; ``ranks``: {layer: k} of the low-rank one."""
    d, m = shape or BASE[a.model]
    r = method_rank(method)
    torch.manual_seed(seed)
    if a.model == "patch":
        model = PatchTransformer(nn.Linear, dim=d, mlp=m)
        if r is not None:  # the layers the demo builds as STLinear
            stl_torch.convert(model, stl_config_from_args(a, rank=r), lambda mod, fqn: fqn.startswith("blocks."),
                              only_if_cheaper=False)
    else:
        args = T2T.parse_args(["--img-size", "28", "--embed-dim", str(d), "--mlp-ratio", str(m / d),
                               "--linear", "dense" if r is None else "stl", "--rank", str(r or a.match_rank),
                               "--tile", str(a.tile), "--init", a.init, "--stl-layers", a.stl_layers])
        model, _, _ = T2T.build_model(args, 1, 10)
    for name, k in (ranks or {}).items():
        parent, _, child = name.rpartition(".")
        holder = model.get_submodule(parent)
        setattr(holder, child, low_rank(getattr(holder, child), k))
    return model


def low_rank(lin, k):
    """nn.Linear(in, k) -> nn.Linear(k, out), the product the best rank-k approximation of
    ``lin``'s weight; components past its rank start with zero output weights (alive, adding 0)."""
    down, up = nn.Linear(lin.in_features, k, bias=False), nn.Linear(k, lin.out_features, bias=lin.bias is not None)
    with torch.no_grad():
        U, S, Vh = torch.linalg.svd(lin.weight, full_matrices=False)
        j, s = min(k, len(S)), S[:k].sqrt()
        down.weight[:j] = s[:, None] * Vh[:j]
        up.weight.zero_()
        up.weight[:, :j] = U[:, :j] * s
        if lin.bias is not None:
            up.bias.copy_(lin.bias)
    return nn.Sequential(down, up)


def example(a):
    return torch.zeros(1, 28, 28) if a.model == "patch" else torch.zeros(1, 1, 28, 28)


def plans(a):
    """Per method: the build arguments and the cost of its model (multiply-adds per image from
    stl_torch.flops, parameters). dense-narrow and lowrank are fitted to STL r=--match-rank."""
    ref = stl_torch.flops(build(a, f"stl{a.match_rank}", 0), example(a))
    target = ref.total_macs
    out = {}
    for method in a.methods:
        kw = {}
        if method == "dense-narrow":
            d0, m0 = BASE[a.model]
            cands = ([(d, max(8, round(d * m0 / d0 / 8) * 8)) for d in range(8, d0 + 1, 8)] if a.narrow == "width"
                     else [(d0, m) for m in range(8, m0 + 1, 8)])
            macs = {c: stl_torch.flops(build(a, "dense", 0, shape=c), example(a)).total_macs for c in cands}
            kw["shape"] = min(cands, key=lambda c: abs(macs[c] - target))
            if abs(macs[kw["shape"]] - target) > 0.1 * target:
                raise SystemExit(f"--narrow {a.narrow}: no shape within 10% of STL r={a.match_rank}'s {target:,} "
                                 f"MACs/image (closest {macs[kw['shape']]:,})")
        elif method == "lowrank":  # k * (in + out) per row = STL's cost per (unpadded) row of that layer
            kw["ranks"] = {e.name: max(1, round(e.macs / (e.rows * (e.in_features + e.out_features))))
                           for e in ref.layers if e.tile is not None}
        model = build(a, method, 0, **kw)
        macs = stl_torch.flops(model, example(a)).total_macs
        out[method] = {"build": kw, "macs_per_image": macs, "macs_vs_target": macs / target,
                       "params": RM.param_counts(model)["params_total"]}
    return out


def param_groups(a, model):
    if a.model == "patch":
        return None  # train()'s default: one group, lr 3e-3, as the demo
    return RT.param_groups(model, lr=1e-3, weight_decay=0.05, no_decay_names=("cls_token", "pos_embed"))


def summarise(runs, plan):
    out = {}
    for method, p in plan.items():
        rs = [r for r in runs if r["method"] == method]
        if rs:
            accs = [r["top1"] for r in rs]
            out[method] = {"macs_per_image": p["macs_per_image"], "params": p["params"],
                           "top1_mean": statistics.mean(accs), "top1_min": min(accs), "top1_max": max(accs),
                           "seeds": [r["seed"] for r in rs], "step_ms": statistics.mean(r["step_ms"] for r in rs)}
    return out


def plot(path, summary, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for i, (method, s) in enumerate(summary.items()):
        err = [[s["top1_mean"] - s["top1_min"]], [s["top1_max"] - s["top1_mean"]]]
        ax.errorbar([s["macs_per_image"] / 1e6], [s["top1_mean"]], yerr=err, fmt="osD^v<>"[i % 7],
                    capsize=4, label=f"{method} ({s['params'] / 1e6:.2f}M params)")
    ax.set_xlabel("linear-layer multiply-adds per image (millions)")
    ax.set_ylabel("test top-1 (mean, min-max over seeds)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=MODELS, default="patch")
    ap.add_argument("--methods", type=parse_methods, default="dense,dense-narrow,lowrank,stl24,stl16",
                    help="comma-separated: dense, dense-narrow, lowrank, stl<r>")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated")
    ap.add_argument("--data", default=FASHION_MNIST_DIR)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=128)
    add_stl_args(ap, ("tile", "init"), init="strassen")
    ap.add_argument("--match-rank", type=int, default=24,
                    help="the STL rank whose multiply-adds dense-narrow and lowrank match")
    ap.add_argument("--narrow", choices=["width", "mlp"], default="width",
                    help="dense-narrow: embedding and MLP together, or the MLP only")
    ap.add_argument("--stl-layers", choices=["all", "saving"], default="all",
                    help="t2t-vit-7: the recipe's --stl-layers (all: every layer but the head)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--quiet-machine", action="store_true",
                    help="label the step times as measured with nothing else running (default: shared machine)")
    ap.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    ap.add_argument("--out", default=RESULTS_DIR, help="folder for iso_flop_vision_<model>_<kind>.json/.png")
    a = ap.parse_args(argv)
    seeds = [int(s) for s in a.seeds.split(",")]
    torch.set_num_threads(a.threads)

    stem = result_stem("iso_flop_vision", a.model, "cpu", a.out)
    config = {k: getattr(a, k) for k in CONFIG_KEYS}
    runs = []
    if os.path.exists(stem + ".json"):
        with open(stem + ".json") as f:
            saved = json.load(f)
        RT.check_resume_args(saved["config"], config, CONFIG_KEYS)
        runs = saved["runs"]
    plan = plans(a)
    for method, p in plan.items():
        print(f"{method}: {p['macs_per_image']:,} MACs/image ({p['macs_vs_target']:.3f}x STL r={a.match_rank}'s), "
              f"{p['params']:,} params" + (f", {p['build']}" if p["build"] else ""), flush=True)

    norm = lambda x: (x.float() / 255 - 0.2860) / 0.3530  # noqa: E731  (the demo's normalisation)
    xtr, ytr = load_idx_split(a.data, "train")
    xte, yte = load_idx_split(a.data, "test")
    xtr, xte = norm(xtr), norm(xte)
    if a.model != "patch":
        xtr, xte = xtr[:, None], xte[:, None]
    load = "quiet machine" if a.quiet_machine else "shared machine"

    def write():
        summary = summarise(runs, plan)
        meta = {"command": "python benchmarks/iso_flop_vision.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, **RM.cpu_info()}
        RT.atomic_write_text(stem + ".json", json.dumps(
            {"config": config, "meta": meta, "methods": plan, "runs": runs, "summary": summary}, indent=1))
        plot(stem + ".png", summary, f"{a.model}, Fashion-MNIST, {a.steps} steps x {a.batch_size}, "
                                     f"narrow/lowrank at STL r={a.match_rank}'s MACs")
        return summary

    for seed in seeds:  # seed-major: a series cut short still has every method
        for method in a.methods:
            if any(r["method"] == method and r["seed"] == seed for r in runs):
                print(f"[{method} seed {seed}] in {stem}.json: skipped", flush=True)
                continue
            model = build(a, method, seed, **plan[method]["build"])
            secs = train(model, xtr, ytr, a.steps, a.batch_size, seed, param_groups(a, model),
                         progress=None if a.no_progress else f"{method} seed {seed}")
            runs.append({"method": method, "seed": seed, "top1": accuracy(model, xte, yte), "train_s": secs,
                         "step_ms": 1000 * secs / a.steps, "threads": a.threads, "timing": load})
            print(f"[{method} seed {seed}] top-1 {runs[-1]['top1']:.4f}, {runs[-1]['step_ms']:.0f} ms/step", flush=True)
            write()
    summary = write()
    print(f"\n{a.model}, {a.steps} steps x batch {a.batch_size}, {a.threads} thread(s), step times: {load}\n")
    print("| method | MACs / image | params | test top-1 mean [min, max] | seeds | step ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for method, s in summary.items():
        print(f"| {method} | {s['macs_per_image']:,} | {s['params']:,} | {s['top1_mean']:.4f} "
              f"[{s['top1_min']:.4f}, {s['top1_max']:.4f}] | {len(s['seeds'])} | {s['step_ms']:.0f} |")
    print(f"\nwrote {stem}.json and {stem}.png")
    return summary


if __name__ == "__main__":
    main()
