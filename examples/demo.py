"""stl-torch in a few minutes, on real data (Fashion-MNIST from the Debian package), on the CPU.

1. Train a small patch transformer twice from scratch, dense nn.Linear vs STLinear (t=4, r=24),
   same steps and seed; print test accuracy, linear-layer multiply-adds and wall time.
2. Convert the trained dense model with stl_torch.convert (data-free fit) and report how far the
   converted model starts from the dense one.

  python examples/demo.py [--steps 300] [--data /usr/share/datasets/fashion-mnist]
"""
import argparse

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
    a = ap.parse_args()

    xtr, ytr = load_idx_split(a.data, "train")
    xte, yte = load_idx_split(a.data, "test")
    norm = lambda x: (x.float() / 255 - 0.2860) / 0.3530  # noqa: E731
    xtr, xte = norm(xtr), norm(xte)
    example = xte[:1]

    cfg = stl_config_from_args(a)
    results = {}
    for name, linear in (
            ("dense", nn.Linear),
            ("STL", lambda i, o: stl_torch.STLinear(i, o, config=cfg))):
        torch.manual_seed(a.seed)
        model = PatchTransformer(linear)
        print(f"[{name}] training {a.steps} steps, batch {a.batch_size}")
        secs = train(model, xtr, ytr, a.steps, a.batch_size, a.seed)
        rep = stl_torch.flops(model, example)
        results[name] = (accuracy(model, xte, yte), rep.total_macs, rep.dense_macs,
                         sum(p.numel() for p in model.parameters()), secs, model)

    print("\n| model | test top-1 | linear MACs / image | MACs vs dense | params | train s |")
    print("|---|---:|---:|---:|---:|---:|")
    dense_macs = results["dense"][1]
    for name, (acc, macs, _, params, secs, _) in results.items():
        print(f"| {name} | {acc:.4f} | {macs:,} | {dense_macs / macs:.2f}x fewer | {params:,} | {secs:.1f} |")

    # 2. conversion of the trained dense model (fine-tuning starts from here)
    dense = results["dense"][5]
    with torch.no_grad():
        ref = dense(xte[:500])
        converted = PatchTransformer(nn.Linear)
        converted.load_state_dict(dense.state_dict())
        report = stl_torch.convert(converted, stl_config_from_args(a, init="fitted"))
        out = converted(xte[:500])
    print(f"\nconvert(): {report.converted and len(report.converted)} layers converted, "
          f"{len(report.skipped)} skipped; logits rel. difference "
          f"{((out - ref).norm() / ref.norm()).item():.3f}, top-1 {accuracy(converted, xte, yte):.4f} "
          f"before any fine-tuning (dense {results['dense'][0]:.4f})")


if __name__ == "__main__":
    main()
