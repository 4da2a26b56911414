#!/usr/bin/env python
"""Collects the recipes' metrics.json files into one results table (Markdown + JSON).

  python examples/collect_results.py runs/gpu/t2t-* runs/gpu/llm-* --out runs/gpu/results

One table per recipe: the T2T-ViT runs (linear kind, init, params, linear FLOPs per image, final
and best test top-1, throughput) and the LLM runs (method, target-layer FLOPs per sequence,
base / converted / fine-tuned held-out perplexity, token-by-token check, tokens/s). Only numbers
that the runs measured are shown; a run still in progress is marked as such.
"""
import argparse
import glob
import json
import os


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def t2t_row(name, m):
    meta, hist = m["meta"], m["history"]
    a = meta["args"]
    last = hist[-1] if hist else {}
    return {
        "run": name,
        "linear": a["linear"] + (f" t={a['tile']} r={a['rank']}" if a["linear"] == "stl" else ""),
        "init": a["init"] if a["linear"] == "stl" else "-",
        "epochs": f"{last.get('epoch', 0)}/{a['epochs']}",
        "params (M)": _fmt(meta["params_total"] / 1e6, ".3f"),
        "linear MFLOPs/img": _fmt(meta["linear_flops_per_image"] / 1e6, ".1f"),
        "FLOP reduction": _fmt(meta["linear_flop_reduction"], ".2f") + "x",
        "final top-1": _fmt(last.get("test_top1"), ".4f"),
        "best top-1": _fmt(max((r["test_top1"] for r in hist), default=None), ".4f"),
        "final train loss": _fmt(last.get("train_loss"), ".4f"),
        "img/s (train)": _fmt(last.get("train_images_per_s"), ".0f"),
        "device": meta["env"].get("gpu", meta["env"]["device"]),
    }


def llm_row(name, m):
    meta, hist = m["meta"], m["history"]
    a = meta["args"]
    last = hist[-1] if hist else {}
    start = hist[0] if hist else {}
    tbt = meta.get("tbt", {}).get("end") or meta.get("tbt", {}).get("start") or {}
    method = a["method"]
    if method == "stl":
        method += f" t={a['tile']} r={a['rank']} {a['init']}" + ("" if a["causal"] else " NON-causal")
    rates = [r["train_tokens_per_s"] for r in hist if r.get("train_tokens_per_s")]
    return {
        "run": name,
        "method": method,
        "tokens": f"{last.get('tokens', 0) / 1e6:.3g}M/{a['tokens'] / 1e6:.3g}M",
        "target GFLOPs/seq": _fmt(meta["target_flops_per_seq"] / 1e9, ".2f"),
        "FLOP reduction": _fmt(meta["target_flop_reduction"], ".2f") + "x",
        "base ppl": _fmt(meta["base"]["eval_ppl"], ".2f"),
        "ppl after change": _fmt(start.get("eval_ppl"), ".2f"),
        "final ppl": _fmt(last.get("eval_ppl"), ".2f"),
        "tbt ppl (subset)": _fmt(tbt.get("tbt_ppl"), ".2f"),
        "tf ppl (subset)": _fmt(tbt.get("tf_ppl"), ".2f"),
        "max abs dlogp tbt-vs-tf": _fmt(tbt.get("max_abs_logprob_diff"), ".1e"),
        "tokens/s (train)": _fmt(sum(rates) / len(rates) if rates else None, ".0f"),
        "device": meta["env"].get("gpu", meta["env"]["device"]),
    }


def markdown(rows):
    if not rows:
        return ""
    keys = list(rows[0])
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    out += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run directories (or globs) holding metrics.json")
    p.add_argument("--out", default=None, help="write OUT.md and OUT.json")
    a = p.parse_args(argv)
    dirs = sorted({d for pat in a.runs for d in (glob.glob(pat) or [pat])})
    t2t, llm = [], []
    for d in dirs:
        f = os.path.join(d, "metrics.json")
        if not os.path.exists(f):
            continue
        with open(f) as fh:
            m = json.load(fh)
        name = os.path.basename(os.path.normpath(d))
        (t2t if m["meta"]["recipe"] == "t2t_vit" else llm).append(
            (t2t_row if m["meta"]["recipe"] == "t2t_vit" else llm_row)(name, m))
    text = ""
    if t2t:
        text += "## T2T-ViT (trained from scratch)\n\n" + markdown(t2t) + "\n\n"
    if llm:
        text += "## LLaMA fine-tuning\n\n" + markdown(llm) + "\n"
    print(text or "no metrics.json found")
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out + ".md", "w") as f:
            f.write(text)
        with open(a.out + ".json", "w") as f:
            json.dump({"t2t_vit": t2t, "llama": llm}, f, indent=1)


if __name__ == "__main__":
    main()
