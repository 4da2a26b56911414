"""How close does a converted pretrained LLM start, before any fine-tuning?

Converts the chosen projections of SmolLM2-135M (offline default, see examples/llama_finetune.py)
to causal STL four ways and measures held-out perplexity on CPython-docs text, next to the dense
model and to magnitude 2:4 sparsity on the same layers:

* ``data-free``: ``Wt = encode_weight(W, F)`` (the fitted init's F);
* ``lstsq``: sequential least-squares Wt on calibration activations;
* ``distill``: lstsq, then Adam on E, D and Wt per layer (layer-wise distillation).

Calibration rows come from training documents, perplexity from held-out documents. Writes
JSON (per-layer held-out errors too) and prints a Markdown table.

  python benchmarks/llm_conversion.py --calib-seqs 16 --eval-seqs 16 --seq-len 256
"""
import argparse
import contextlib
import copy
import json
import os
import time

import torch

import stl_torch
from stl_torch.cli import add_stl_args, stl_config_from_args
from stl_recipes import text as RX
from stl_recipes.dist import Dist
from stl_recipes.llama import DEFAULT_TARGETS, eval_ppl, load_model
from stl_recipes.metrics import name_regex
from stl_recipes.sparsity import apply_24_sparsity

from results_file import result_stem



def perplexity(model, chunks, micro=4):
    """Teacher-forced held-out perplexity, as the recipe measures it (one CPU process)."""
    return eval_ppl(model, chunks, Dist(), micro, contextlib.nullcontext)[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="as llama_finetune --model")
    ap.add_argument("--data", default=None, help="as llama_finetune --data")
    ap.add_argument("--targets", default=DEFAULT_TARGETS)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--calib-seqs", type=int, default=16)
    ap.add_argument("--eval-seqs", type=int, default=16)
    add_stl_args(ap, ("tile", "rank", "init"), init="fitted")
    ap.add_argument("--methods", nargs="+", default=["dense", "sparse24", "data-free", "lstsq", "distill"])
    ap.add_argument("--distill-steps", type=int, default=100)
    ap.add_argument("--rows-per-step", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON file (default: docs/results/llm_conversion_t<T>r<R>_<kind>.json)")
    a = ap.parse_args()

    torch.manual_seed(a.seed)
    dense, tok, src = load_model(a.model)
    dense.eval()
    docs = RX.read_documents(a.data or RX.default_text_dir(), None)
    train_docs, eval_docs = RX.split_documents(docs, 0.05, a.seed)
    train = RX.chunk(RX.tokenize_docs(tok, train_docs), a.seq_len)
    held = RX.chunk(RX.tokenize_docs(tok, eval_docs), a.seq_len)[: a.eval_seqs]
    g = torch.Generator().manual_seed(a.seed)
    calib_ids = train[torch.randperm(len(train), generator=g)[: a.calib_seqs], :-1]
    calib = [{"input_ids": calib_ids[i:i + 4], "use_cache": False} for i in range(0, len(calib_ids), 4)]
    include = name_regex(a.targets)
    rows = []
    for method in a.methods:
        t0 = time.time()
        model = copy.deepcopy(dense)
        report = None
        if method == "sparse24":
            apply_24_sparsity(model, include)
        elif method != "dense":
            kw = {} if method == "data-free" else dict(
                calibration_data=calib, progress=True, calibration=stl_torch.CalibrationConfig(
                    method=method, distill_steps=a.distill_steps, rows_per_step=a.rows_per_step,
                    max_rows=a.calib_seqs * a.seq_len))
            report = stl_torch.convert(model, stl_config_from_args(a, causal=True),
                                       lambda m, fqn: include(fqn, m), only_if_cheaper=False, **kw)
        conv_s = time.time() - t0
        ppl = perplexity(model, held)
        row = {"method": method, "held_out_ppl": ppl, "convert_s": conv_s}
        if report is not None:
            conv = report.converted
            row["macs_ratio"] = report.macs_before / report.macs_after
            errs = [x.err_calibrated for x in conv if x.err_calibrated is not None]
            if errs:
                row["mean_layer_err_data_free"] = sum(x.err_data_free for x in conv) / len(conv)
                row["mean_layer_err"] = sum(errs) / len(errs)
            row["layers"] = [{"name": x.name, "data_free": x.err_data_free, "lstsq": x.err_lstsq,
                              "distill": x.err_distill, "kept": x.err_calibrated} for x in conv]
        rows.append(row)
        print(f"{method}: held-out ppl {ppl:.2f} ({conv_s:.0f} s)"
              + (f", mean layer error {row['mean_layer_err']:.3f}" if "mean_layer_err" in row else ""),
              flush=True)
    meta = {"model": src, "seq_len": a.seq_len, "calib_seqs": a.calib_seqs, "eval_seqs": a.eval_seqs,
            "tile": a.tile, "rank": a.rank, "init": a.init, "distill_steps": a.distill_steps,
            "targets": a.targets, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    a.out = a.out or result_stem("llm_conversion", f"t{a.tile}r{a.rank}") + ".json"
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print("\n| method | held-out ppl | mean layer error (held-out rows) | convert s |\n|---|---:|---:|---:|")
    for r in rows:
        e = f"{r['mean_layer_err_data_free']:.3f} -> {r['mean_layer_err']:.3f}" if "mean_layer_err" in r else ""
        print(f"| {r['method']} | {r['held_out_ppl']:.2f} | {e} | {r['convert_s']:.0f} |")


if __name__ == "__main__":
    main()
