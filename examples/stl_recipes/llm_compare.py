"""Fine-tune one pretrained LLM several ways on the same data, tokens and schedule, and compare
held-out perplexity against training tokens: dense, 2:4 sparsity (magnitude and Wanda masks, fixed),
causal STL at two ranks (calibrated conversion). Built on examples/llama_finetune.py, which each
run calls in a subprocess (so every run is resumable on its own, and a killed comparison continues
where it stopped when started again).

  1. learning-rate grid: every method at each learning rate of its grid, a short run (--grid-tokens)
     evaluated on a small held-out set; the best final perplexity picks the rate.
  2. the comparison: every method at its rate for --tokens, held-out perplexity every
     --eval-every-tokens on --eval-tokens tokens, token-by-token (through the KV and tile caches)
     at the start and the end.
  3. results: RESULTS/llm_compare.json (everything), .md (the table), .png (perplexity vs tokens).

  python examples/llm_compare.py --out runs/llm_compare --results docs/results/llm_finetune
  python examples/llm_compare.py --tokens 2e6 --batch-size 32 --seq-len 512 ...   # on a GPU

Runs made on another machine join the table with --collect-only --merge EARLIER/llm_compare.json
(each row keeps the env it ran in).

--distill runs every method (grid and comparison) against the dense model as a frozen teacher
(llama_finetune --distill, stl_recipes/distill.py): its runs and rows are "METHOD, distill", with
their own grid, beside the plain ones under the same --out, so one table holds both. A distilled
row records the teacher's forward time per token and share of the step, and the plain run's
tokens/s when that run is in the table.

Conversions are made once per method and reused by the grid and the comparison
(llama_finetune --conversion-cache). Other llama_finetune arguments go after `--`.
"""
import argparse
import glob
import json
import math
import os
import subprocess
import sys
import time

from .distill import DEFAULT_ALPHA, DEFAULT_TEMPERATURE

# name: (llama_finetune arguments, learning-rate grid)
METHODS = {
    "dense": (["--method", "dense"], [3e-5, 1e-4, 3e-4]),
    "2:4 magnitude": (["--method", "sparse24", "--sparse-scores", "magnitude"], [1e-4, 3e-4, 1e-3]),
    "2:4 Wanda": (["--method", "sparse24", "--sparse-scores", "wanda"], [1e-4, 3e-4, 1e-3]),
    "STL r=24": (["--method", "stl", "--rank", "24", "--tile", "4", "--init", "fitted"], [1e-4, 3e-4, 1e-3]),
    "STL r=32": (["--method", "stl", "--rank", "32", "--tile", "4", "--init", "fitted"], [1e-4, 3e-4, 1e-3]),
}


DISTILL = ", distill"  # the label suffix of distilled runs
MACHINE_KEYS = ("device", "gpu", "cpu", "cpu_isa_used", "threads", "world_size")  # rows' env: speeds compare


def slug(name):
    return name.lower().replace(":", "").replace("=", "").replace(",", "").replace(" ", "-")


def label(a, name):
    """The run label (and grid key) of method ``name`` in this invocation."""
    return name + (DISTILL if a.distill else "")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ", ".join(METHODS))
    p.add_argument("--tokens", type=float, default=150_000, help="training tokens per method")
    p.add_argument("--grid-tokens", type=float, default=16_384, help="training tokens of a grid run (0: no grid)")
    p.add_argument("--grid-eval-tokens", type=float, default=4096)
    p.add_argument("--eval-every-tokens", type=float, default=25_000)
    p.add_argument("--eval-tokens", type=float, default=16_384)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--calibrate-seqs", type=int, default=8, help="calibration sequences (STL, Wanda)")
    p.add_argument("--calibration", default="lstsq", choices=["lstsq", "distill"])
    p.add_argument("--distill", action="store_true",
                   help="distil every run from the dense model (llama_finetune --distill); rows 'METHOD, distill'")
    p.add_argument("--distill-alpha", type=float, default=DEFAULT_ALPHA, help="KL weight (1 - alpha: LM loss)")
    p.add_argument("--distill-temp", type=float, default=DEFAULT_TEMPERATURE, help="KL temperature")
    p.add_argument("--distill-hidden", type=float, default=0.0, metavar="W", help="per-block hidden-state loss weight")
    p.add_argument("--tbt-seqs", type=int, default=2)
    p.add_argument("--tbt-len", type=int, default=128)
    p.add_argument("--out", default=os.path.join("runs", "llm_compare"))
    p.add_argument("--results", default=None, help="folder for the JSON/Markdown/PNG (default: --out)")
    p.add_argument("--collect-only", action="store_true", help="only tabulate finished runs")
    p.add_argument("--grid-only", action="store_true",
                   help="run the learning-rate grid (step 1) and tabulate, without the comparison runs")
    p.add_argument("--merge", default=None, metavar="JSON",
                   help="an earlier llm_compare.json whose rows are kept for runs not found under --out "
                        "(runs made elsewhere: each row keeps its own env, machine and time)")
    p.add_argument("--lr", action="append", default=[], metavar="METHOD=LR",
                   help="run METHOD at LR instead of the grid's choice; its run folder gets an -lr suffix, so "
                        "runs of one method at several rates sit side by side (repeatable)")
    p.add_argument("extra", nargs="*", help="more llama_finetune arguments (after --)")
    a = p.parse_args(argv)
    a.methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    bad = [m for m in a.methods if m not in METHODS]
    if bad:
        p.error(f"unknown methods {bad}; choose from {list(METHODS)}")
    a.results = a.results or a.out
    a.lr_override = {}
    for item in a.lr:
        name, _, lr = item.rpartition("=")
        if name not in METHODS:
            p.error(f"--lr {item!r}: expected METHOD=LR with METHOD one of {list(METHODS)}")
        try:
            a.lr_override[name] = float(lr)
        except ValueError:
            p.error(f"--lr {item!r}: {lr!r} is not a number")
    return a


def run_recipe(a, args, log):
    """llama_finetune (the script a.recipe) in a subprocess (resumes an interrupted run), its output
    appended to log."""
    cmd = [sys.executable, a.recipe, *map(str, args), "--resume", "--no-progress"]
    print("$ " + " ".join(cmd), flush=True)
    with open(log, "a") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        sys.exit(f"run failed (exit {r.returncode}); see {log}")


def metrics(out):
    with open(os.path.join(out, "metrics.json")) as f:
        return json.load(f)


def common(a, method_args, name):
    conv = os.path.join(a.out, "conversions", slug(name) + ".pt")
    extra = ["--calibrate-seqs", a.calibrate_seqs] if any(k in name for k in ("STL", "Wanda")) else []
    if a.distill:
        extra += ["--distill", "--distill-alpha", a.distill_alpha, "--distill-temp", a.distill_temp,
                  "--distill-hidden", a.distill_hidden]
    return [*method_args, *extra, "--calibration", a.calibration, "--seq-len", a.seq_len,
            "--batch-size", a.batch_size, "--conversion-cache", conv, *a.extra]


def grid(a):
    chosen = {}
    for name in a.methods:
        margs, lrs = METHODS[name]
        key = label(a, name)
        finals = {}
        for lr in lrs:
            out = os.path.join(a.out, "grid", f"{slug(key)}-lr{lr:g}")
            run_recipe(a, [*common(a, margs, name), "--lr", lr, "--tokens", a.grid_tokens,
                        "--eval-tokens", a.grid_eval_tokens, "--eval-every", 10 ** 9, "--tbt-seqs", 0,
                        "--warmup-frac", 0.1, "--out-dir", out], os.path.join(a.out, "log.txt"))
            finals[lr] = metrics(out)["history"][-1]["eval_ppl"]
        best = min(finals, key=lambda k: finals[k] if math.isfinite(finals[k]) else math.inf)
        chosen[key] = {"lr": best, "grid": {f"{k:g}": v for k, v in finals.items()}}
        print(f"[grid] {key}: final held-out ppl by lr {chosen[key]['grid']} -> lr {best:g}", flush=True)
    return chosen


def compare(a, chosen):
    step_tokens = a.batch_size * a.seq_len
    every = max(1, round(a.eval_every_tokens / step_tokens))
    for name in a.methods:
        margs, lrs = METHODS[name]
        lr = chosen.get(label(a, name), {}).get("lr", lrs[len(lrs) // 2])
        folder = slug(label(a, name))
        if name in a.lr_override:
            lr = a.lr_override[name]
            folder += f"-lr{lr:g}"
        run_recipe(a, [*common(a, margs, name), "--lr", lr, "--tokens", a.tokens, "--eval-every", every,
                    "--eval-tokens", a.eval_tokens, "--tbt-seqs", a.tbt_seqs, "--tbt-len", a.tbt_len,
                    "--out-dir", os.path.join(a.out, "runs", folder)], os.path.join(a.out, "log.txt"))


def collect(a, chosen):
    rows, curves = [], {}
    runs = []  # (label, variant, folder): each method's run, then its runs at --lr rates; plain, then distilled
    for name in a.methods:
        for variant in (name, name + DISTILL):
            base = os.path.join(a.out, "runs", slug(variant))
            runs.append((variant, variant, base))
            runs += [(None, variant, p) for p in sorted(glob.glob(base + "-lr*"))]
    for lab, variant, path in runs:
        if not os.path.exists(os.path.join(path, "metrics.json")):
            continue
        m = metrics(path)
        meta, hist = m["meta"], m["history"]
        name = lab or f"{variant}, lr {meta['args']['lr']:g}"
        curves[name] = [(r["tokens"], r["eval_ppl"]) for r in hist]
        speeds = [r["train_tokens_per_s"] for r in hist if r.get("train_tokens_per_s")]
        rows.append({
            "method": name, "lr": meta["args"]["lr"], "grid": chosen.get(variant, {}).get("grid"),
            "ppl_by_tokens": {str(t): p for t, p in curves[name]},
            "base_ppl": meta["base"]["eval_ppl"], "final_ppl": hist[-1]["eval_ppl"],
            "tokens": hist[-1]["tokens"], "done": hist[-1]["step"] >= meta["total_steps"],
            "converted_macs_per_token": meta["target_flops_per_seq"] / 2 / meta["args"]["seq_len"],
            "converted_macs_per_token_dense": meta["target_flops_per_seq_if_dense"] / 2 / meta["args"]["seq_len"],
            "converted_flop_reduction": meta["target_flop_reduction"],
            "params_total": meta["params_total"], "params_linear": meta["params_linear"],
            "train_tokens_per_s": sorted(speeds)[len(speeds) // 2] if speeds else None,
            "tbt": meta.get("tbt", {}), "env": meta["env"], "distill": meta.get("distill"),
            "teacher_s_per_token": median(r.get("teacher_s_per_token") for r in hist),
            "teacher_time_frac": median(r.get("teacher_time_frac") for r in hist)})
    if a.merge:
        rows = merged(a, rows, curves, chosen)
    pair_distill_costs(rows)
    os.makedirs(a.results, exist_ok=True)
    with open(os.path.join(a.results, "llm_compare.json"), "w") as f:
        json.dump({"date": time.strftime("%Y-%m-%d"), "settings": {k: v for k, v in vars(a).items()
                                                                   if k not in ("collect_only", "grid_only", "recipe")},
                   "grid": chosen, "rows": rows}, f, indent=1)
    budgets = sorted({t for c in curves.values() for t, _ in c})
    kd = any(r.get("distill") for r in rows)  # a column for the teacher's share of the step time
    lines = ["| method | lr | " + " | ".join(f"ppl @ {t / 1000:g}k" for t in budgets)
             + " | converted-layer MACs/token (× fewer) | params | train tokens/s |"
             + (" teacher time |" if kd else ""),
             "|---|---:|" + "---:|" * len(budgets) + "---:|---:|---:|" + ("---:|" if kd else "")]
    for r in rows:
        ppl = [r["ppl_by_tokens"].get(str(t)) for t in budgets]
        frac = r.get("teacher_time_frac")
        lines.append(f"| {r['method']} | {r['lr']:g} | " + " | ".join("–" if p is None else f"{p:.2f}" for p in ppl)
                     + f" | {r['converted_macs_per_token'] / 1e6:.1f}M ({r['converted_flop_reduction']:.2f}×) | "
                       f"{r['params_total'] / 1e6:.1f}M | {r['train_tokens_per_s'] or 0:.0f} |"
                     + ((f" {100 * frac:.0f}% |" if frac is not None else " – |") if kd else ""))
    lines += grid_table(a, chosen)
    with open(os.path.join(a.results, "llm_compare.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, c in curves.items():
        ax.plot([t / 1000 for t, _ in c], [p for _, p in c], marker="o", ms=3, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("training tokens (thousands)")
    ax.set_ylabel("held-out perplexity")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(a.results, "llm_compare.png"), dpi=120)


def grid_table(a, chosen):
    """The learning-rate grid as Markdown lines: held-out perplexity after the grid's short run at
    each rate of a method's grid, the chosen rate in bold (nothing when no grid ran)."""
    rank = {m: i for i, m in enumerate(METHODS)}
    names = sorted((k for k in chosen if base_method(k) in METHODS), key=lambda k: (rank[base_method(k)], k))
    if not names:
        return []
    ncols = max(len(METHODS[base_method(m)][1]) for m in names)
    lines = ["", f"Learning-rate grid: held-out perplexity after {a.grid_tokens / 1000:g}k training tokens "
                 f"(evaluated on {a.grid_eval_tokens / 1000:g}k tokens); the chosen rate in bold.", "",
             "| method | " + " | ".join(f"lr {i + 1}" for i in range(ncols)) + " |", "|---|" + "---:|" * ncols]
    for m in names:
        cells = []
        for lr, ppl in chosen[m]["grid"].items():
            cell = f"{lr}: {ppl:.2f}"
            cells.append(f"**{cell}**" if float(lr) == chosen[m]["lr"] else cell)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def base_method(label):
    """The METHODS key a row's label starts with ("STL r=24, lr 0.0003" -> "STL r=24")."""
    return max((m for m in METHODS if label == m or label.startswith(m + ",")), key=len, default=label)


def variant(label):
    """The run variant (and grid key) of a row's label: "STL r=24, distill, lr 0.001" -> "STL r=24, distill"."""
    b = base_method(label)
    return b + DISTILL if label.startswith(b + DISTILL) else b


def median(values):
    v = sorted(x for x in values if x is not None)
    return v[len(v) // 2] if v else None


def pair_distill_costs(rows):
    """Each distilled row gets the tokens/s of the plain run of the same label, when the table has
    one that ran on the same kind of machine, and the ratio: the measured cost of --distill."""
    machine = lambda r: tuple((r.get("env") or {}).get(k) for k in MACHINE_KEYS)  # noqa: E731
    plain = {r["method"]: r for r in rows if not r.get("distill")}
    for r in rows:
        p = plain.get(r["method"].replace(DISTILL, "", 1)) if r.get("distill") else None
        if p and p.get("train_tokens_per_s") and r.get("train_tokens_per_s") and machine(p) == machine(r):
            r["plain_train_tokens_per_s"] = p["train_tokens_per_s"]
            r["distill_slowdown"] = round(p["train_tokens_per_s"] / r["train_tokens_per_s"], 3)


def merged(a, rows, curves, chosen):
    """rows plus the earlier rows of --merge whose label no run here has, in METHODS order; each
    earlier row gets its method's grid when one ran here."""
    with open(a.merge) as f:
        earlier = json.load(f)
    have = {r["method"] for r in rows}
    for r in earlier["rows"]:
        if r["method"] in have:
            continue
        r = dict(r, merged_from=a.merge)  # its env names the machine and time it ran on
        r["grid"] = chosen.get(variant(r["method"]), {}).get("grid") or r.get("grid")
        rows.append(r)
        curves[r["method"]] = sorted((int(t), p) for t, p in r["ppl_by_tokens"].items())
    rank = {m: i for i, m in enumerate(METHODS)}

    def place(r):  # a method's own run first, then its runs at other rates; plain before distilled
        base, var = base_method(r["method"]), variant(r["method"])
        return rank.get(base, len(rank)), var != base, r["method"] != var
    rows.sort(key=place)
    for name in [r["method"] for r in rows]:  # the plot's legend in the table's order
        curves[name] = curves.pop(name)
    return rows


def main(argv=None, recipe=None):
    """recipe: the path of examples/llama_finetune.py, which every run calls."""
    a = parse_args(argv)
    a.recipe = recipe
    os.makedirs(a.out, exist_ok=True)
    chosen_path = os.path.join(a.out, "grid.json")
    chosen = json.load(open(chosen_path)) if os.path.exists(chosen_path) else {}
    if not a.collect_only:
        if a.grid_tokens > 0 and any(label(a, m) not in chosen for m in a.methods):
            chosen.update(grid(a))
            with open(chosen_path, "w") as f:
                json.dump(chosen, f, indent=1)
        if not a.grid_only:
            compare(a, chosen)
    collect(a, chosen)
