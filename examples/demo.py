"""stl-torch in a few minutes, on real data (Fashion-MNIST from the Debian package), on the CPU.

1. Train a small patch transformer twice from scratch, dense nn.Linear (the baseline) vs
   STLinear (t=4, r=24), same steps and seed; print test accuracy, linear-layer multiply-adds and
   wall time.
2. Convert the trained dense model with stl_torch.convert (data-free fit) and report how far the
   converted model starts from the dense one.

Writes the table as JSON and the training-loss curves as PNG to --out (default runs/demo).

  python examples/demo.py [--steps 300] [--data /usr/share/datasets/fashion-mnist] [--out runs/demo]
"""
import argparse
import datetime
import json
import os
import platform

import torch
from torch import nn

import stl_torch
from stl_torch.cli import add_stl_args, stl_config_from_args
from stl_recipes.images import FASHION_MNIST_DIR, load_idx_split
from stl_recipes.patch_transformer import PatchTransformer, accuracy, train


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=FASHION_MNIST_DIR)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=128)
    add_stl_args(ap, ("tile", "rank", "init"), init="strassen")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/demo", help="folder for demo.json and demo.png")
    a = ap.parse_args()

    xtr, ytr = load_idx_split(a.data, "train")
    xte, yte = load_idx_split(a.data, "test")
    norm = lambda x: (x.float() / 255 - 0.2860) / 0.3530  # noqa: E731
    xtr, xte = norm(xtr), norm(xte)
    example = xte[:1]

    cfg = stl_config_from_args(a)
    results, curves = {}, {}
    for name, linear in (
            ("dense", nn.Linear),
            ("STL", lambda i, o: stl_torch.STLinear(i, o, config=cfg))):
        torch.manual_seed(a.seed)
        model = PatchTransformer(linear)
        print(f"[{name}] training {a.steps} steps, batch {a.batch_size}")
        curves[name] = []
        secs = train(model, xtr, ytr, a.steps, a.batch_size, a.seed, losses=curves[name])
        rep = stl_torch.flops(model, example)
        results[name] = (accuracy(model, xte, yte), rep.total_macs, rep.dense_macs,
                         sum(p.numel() for p in model.parameters()), secs, model)

    dense_macs, dense_secs = results["dense"][1], results["dense"][4]
    rows = [{"model": name, "baseline": name == "dense", "test_top1": acc, "linear_macs_per_image": macs,
             "macs_vs_dense": dense_macs / macs, "params": params, "train_s": secs,
             "step_speed_vs_dense": dense_secs / secs}
            for name, (acc, macs, _, params, secs, _) in results.items()]
    print("\n| model | test top-1 | linear MACs / image | MACs vs dense | params | train s | speed vs dense |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        vs = "baseline" if r["baseline"] else f"{r['macs_vs_dense']:.2f}x fewer"
        sp = "baseline" if r["baseline"] else f"{r['step_speed_vs_dense']:.2f}x"
        label = "dense (baseline)" if r["baseline"] else r["model"]
        print(f"| {label} | {r['test_top1']:.4f} | {r['linear_macs_per_image']:,} | {vs} | {r['params']:,} | "
              f"{r['train_s']:.1f} | {sp} |")

    # 2. conversion of the trained dense model (fine-tuning starts from here)
    dense = results["dense"][5]
    with torch.no_grad():
        ref = dense(xte[:500])
        converted = PatchTransformer(nn.Linear)
        converted.load_state_dict(dense.state_dict())
        report = stl_torch.convert(converted, stl_config_from_args(a, init="fitted"))
        out = converted(xte[:500])
    conv = {"converted": len(report.converted), "skipped": len(report.skipped),
            "logits_rel_diff": ((out - ref).norm() / ref.norm()).item(), "test_top1": accuracy(converted, xte, yte)}
    print(f"\nconvert(): {conv['converted']} layers converted, {conv['skipped']} skipped; logits rel. difference "
          f"{conv['logits_rel_diff']:.3f}, top-1 {conv['test_top1']:.4f} before any fine-tuning "
          f"(dense {results['dense'][0]:.4f})")
    write(a, rows, conv, curves)


def write(a, rows, conv, curves):
    os.makedirs(a.out, exist_ok=True)
    meta = {"command": "python examples/demo.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in
                                                              vars(a).items() if k != "out"),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                       f"kernels: {stl_torch._C.abi_info()['cpu_isa']}",
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "date": datetime.date.today().isoformat()}
    with open(os.path.join(a.out, "demo.json"), "w") as f:
        json.dump({**meta, "rows": rows, "convert": conv, "loss_curves": curves}, f, indent=1)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"wrote {a.out}/demo.json (matplotlib not installed: no PNG)")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, ys in curves.items():
        k = max(1, len(ys) // 50)  # a running mean over ~2% of the steps
        sm = [sum(ys[max(0, i - k + 1):i + 1]) / len(ys[max(0, i - k + 1):i + 1]) for i in range(len(ys))]
        ax.plot(sm, label=f"{name}{' (baseline)' if name == 'dense' else ''}")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("Fashion-MNIST patch transformer: dense vs STL")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, "demo.png"), dpi=120)
    print(f"wrote {a.out}/demo.json and {a.out}/demo.png")


if __name__ == "__main__":
    main()
