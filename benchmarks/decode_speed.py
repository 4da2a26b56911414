"""Decode speed of a causal STL LLM against the dense one: generate() tokens/s on SmolLM2-135M.

Every projection of SmolLM2-135M (210 layers; the tied lm_head stays dense) becomes causal STL
(t=4, r=24, data-free fitted init), and both models run greedy ``generate()`` with the KV cache
(and the STL tile cache, stl_torch.decode) on the same prompts, batch 1 and batch 8. A logits
processor timestamps every step of generate(): the first is the prompt's forward (prefill), each
later one a decode step; decode tokens/s = batch / median step time.

Why STL decodes slower than dense: a decode step hands each layer one token per sequence, but a
causal tile is recomputed for it: up to t rows, with the remaining rows zero (docs/operator.md
section 9). The GEMM stage then costs r*N*P/t^2 = 1.5x the dense layer's multiply-adds per token
at t=4, r=24 (plus encode and decode, t*r*(N+P)), and reads Wt, 1.5x the dense weight's bytes,
where a dense decode step is bound by reading the weights. The t^3/r saving applies to prefill
and training, whose tiles are full.

  python benchmarks/decode_speed.py --threads 1 --out docs/results/decode_speed_cpu_1thread.json
"""
import argparse
import copy
import datetime
import json
import os
import platform
import time

import torch

import stl_torch
from stl_torch.cli import add_stl_args, stl_config_from_args
from stl_recipes.llama import load_model

from results_file import result_stem

PROMPT = ("The Python Tutorial. Python is an easy to learn, powerful programming language. It has efficient "
          "high-level data structures and a simple but effective approach to object-oriented programming.")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class Clock:
    """A logits processor that only records when generate() reaches it: once per new token."""

    def __init__(self):
        self.times = []

    def __call__(self, input_ids, scores):
        self.times.append(time.perf_counter())
        return scores


@torch.no_grad()
def time_generate(model, ids, new_tokens, repeats):
    """(prefill seconds, median decode-step seconds) of greedy generate() making ``new_tokens`` tokens:
    the first step is the prompt's forward, every later one a decode step; best prefill and the
    median step over ``repeats`` runs (the median resists a busy machine's hiccups)."""
    from transformers import LogitsProcessorList
    prefill, steps = float("inf"), []
    for _ in range(repeats):
        clock = Clock()
        t0 = time.perf_counter()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
                             logits_processor=LogitsProcessorList([clock]))
        assert out.shape[1] == ids.shape[1] + new_tokens and len(clock.times) == new_tokens
        prefill = min(prefill, clock.times[0] - t0)
        steps += [b - a for a, b in zip(clock.times, clock.times[1:])]
    return prefill, sorted(steps)[len(steps) // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="as llama_finetune --model (default: SmolLM2-135M)")
    ap.add_argument("--tiny", action="store_true", help="a tiny random Llama (a smoke test of the script)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    add_stl_args(ap)
    ap.add_argument("--out", default=None,
                    help="JSON file (default: docs/results/decode_speed_{float32,tiny}_<kind>.json)")
    a = ap.parse_args()

    if a.threads:
        torch.set_num_threads(a.threads)
    dense, tok, src = load_model(a.model, tiny=a.tiny)
    dense.eval()
    stl = copy.deepcopy(dense)
    report = stl_torch.convert(stl, stl_config_from_args(a, causal=True))
    prompt = torch.tensor(tok.encode_batch([PROMPT])[0])[None]
    rows = []
    for b in a.batches:
        ids = prompt.repeat(b, 1)
        ids[:, -1] = torch.arange(b) + 100  # distinct sequences
        for name, model in (("dense", dense), ("stl", stl)):
            time_generate(model, ids, 3, 1)  # warm-up
            prefill, step = time_generate(model, ids, a.new_tokens, a.repeats)
            row = {"model": name, "batch": b, "prompt_tokens": ids.shape[1], "prefill_s": prefill,
                   "decode_step_ms": 1000 * step, "decode_tokens_per_s": b / step}
            rows.append(row)
            print(f"{name:5s} batch {b}: prefill {prefill:.3f} s, decode {row['decode_step_ms']:.1f} ms/step, "
                  f"{row['decode_tokens_per_s']:.1f} tokens/s", flush=True)
    by = {(r["model"], r["batch"]): r for r in rows}
    lines = ["| batch | dense tokens/s | STL tokens/s | STL / dense | dense prefill s | STL prefill s |",
             "|---:|---:|---:|---:|---:|---:|"]
    for b in a.batches:
        d, s = by[("dense", b)], by[("stl", b)]
        lines.append(f"| {b} | {d['decode_tokens_per_s']:.1f} | {s['decode_tokens_per_s']:.1f} | "
                     f"{s['decode_tokens_per_s'] / d['decode_tokens_per_s']:.2f}x | {d['prefill_s']:.3f} | "
                     f"{s['prefill_s']:.3f} |")
    table = "\n".join(lines)
    print(table)
    result = {"benchmark": "decode_speed", "model": src, "converted_layers": len(report.converted),
              "tile": a.tile, "rank": a.rank, "new_tokens": a.new_tokens, "repeats": a.repeats,
              "cpu": cpu_model(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
              "load_average_1_5_15": os.getloadavg(),  # other work on the machine slows every number
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "torch": torch.__version__, "stl_torch": stl_torch.__version__,
              "stl_torch_build": stl_torch._C.abi_info(), "rows": rows, "table": table}
    a.out = a.out or result_stem("decode_speed", "tiny" if a.tiny else "float32") + ".json"
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
