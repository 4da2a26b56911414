"""Train a small LLaMA-architecture byte-level language model from scratch, dense or with causal STL
block projections, and compare held-out bits per byte against training tokens and training FLOPs.

Offline: the model is built from a transformers LlamaConfig (random init, no download) and trained
on the CPython documentation sources (Debian python3.11-doc) or any local corpus (--data, as in
examples/llama_finetune.py), tokenised as UTF-8 bytes (256 byte tokens + one end-of-document token),
so that the seven projections of every block, not the vocabulary head, hold the multiply-adds.
Whole documents are held out (a hash of their id); held-out bits per byte are measured on windows
spread evenly over the held-out token file.

Methods (--method):
  dense          the model as configured
  dense-narrow   dense, narrowed until its block projections cost the multiply-adds per token of
                 STL at --rank (--narrow width: hidden and MLP scaled together; mlp: the MLP only)
  stl24, stl32   causal STL (t=4, r=24 / 32) on every block projection, initialised by --init
                 (fitted or random E, D; Wt encodes the random dense weight); stl: r = --rank

  python examples/lm_scratch.py --method dense
  python examples/lm_scratch.py --method dense-narrow --rank 24
  python examples/lm_scratch.py --method stl24 --init fitted
  python examples/lm_scratch.py --method stl24 --init random
  python examples/lm_scratch.py --method stl24 --steps 20 --runs-dir /tmp/lm   # a short run
  python examples/lm_scratch.py --collect-only                                 # tabulate the runs

Each run writes RUNS/NAME/metrics.json (config, parameters, MACs from stl_torch.flops, rows of
tokens, training FLOPs, train loss, held-out bpb), metrics.csv, metrics.png and checkpoint.pt
(atomically at every evaluation; --resume continues from it). After every evaluation the runs
under RUNS are tabulated: RUNS/summary.md, summary.json and compare.png (held-out bpb against
tokens and against training FLOPs, one line per run).

Training FLOPs count 3 x the forward (backward = 2 x forward, the usual convention, for STL too):
the forward's linear layers as stl_torch.flops measures them (block projections and the tied
vocabulary head) plus attention's two T x T matmuls counted in full, 4 x layers x T x hidden per
token (PaLM's 12LHQT for training).
"""
import argparse
import glob
import json
import math
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never touch the network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import stl_torch  # noqa: E402
from stl_torch.cli import add_stl_args, stl_config_from_args  # noqa: E402
from stl_torch.flops import linear_macs, stl_macs  # noqa: E402
from . import dist as RD  # noqa: E402
from . import metrics as RM  # noqa: E402
from . import shards as SH  # noqa: E402
from . import text as RX  # noqa: E402
from . import training as RT  # noqa: E402
from .llama import DEFAULT_TARGETS, token_by_token_check  # noqa: E402

METHODS = ("dense", "dense-narrow", "stl", "stl24", "stl32")
# settings that change the model, the data or the batches: a checkpoint resumes only under the same
MODEL_KEYS = ("data", "max_docs", "eval_frac", "split_seed", "seq_len", "hidden", "intermediate",
              "layers", "heads", "kv_heads", "method", "narrow", "tile", "rank", "init", "causal",
              "batch_size", "seed")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("model (LlamaConfig, random init)")
    g.add_argument("--hidden", type=int, default=256, help="hidden size")
    g.add_argument("--intermediate", type=int, default=768, help="MLP intermediate size")
    g.add_argument("--layers", type=int, default=6, help="decoder blocks")
    g.add_argument("--heads", type=int, default=4, help="attention heads")
    g.add_argument("--kv-heads", type=int, default=None, help="key/value heads (default: --heads)")
    g = p.add_argument_group("method")
    g.add_argument("--method", choices=METHODS, default="dense")
    g.add_argument("--narrow", choices=["mlp", "width"], default="width",
                   help="dense-narrow: shrink the MLP only, or hidden and MLP together")
    add_stl_args(g, ("tile", "rank", "init", "causal"), init="fitted", causal=True, help_text={
        "rank": "STL rank r for --method stl, and the rank whose multiply-adds dense-narrow matches "
                "(stl24 / stl32 set it)",
        "init": "STL E/D init (fitted, random, strassen, polynomial); Wt encodes the random dense weight"})
    g.add_argument("--ed-lr-mult", type=float, default=1.0, help="lr multiplier for STL's E, D")
    g = p.add_argument_group("data")
    g.add_argument("--data", default=None,
                   help="text / JSON-lines file, directory or glob (default: CPython docs, Debian "
                        "python3.11-doc)")
    g.add_argument("--max-docs", type=int, default=None, help="read at most N documents")
    g.add_argument("--eval-frac", type=float, default=0.05, help="fraction of whole documents held out")
    g.add_argument("--split-seed", type=int, default=0, help="seed of the held-out hash")
    g.add_argument("--seq-len", type=int, default=256, help="bytes per training sequence")
    g.add_argument("--token-cache", default=None,
                   help="token file cache dir (default: $STL_TORCH_CACHE/tokens or ~/.cache/stl-torch/tokens)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--tokens", type=float, default=3e6, help="training tokens (bytes)")
    g.add_argument("--steps", type=int, default=None, help="optimizer steps (overrides --tokens)")
    g.add_argument("--batch-size", type=int, default=16, help="sequences per step")
    RT.add_schedule_args(g, lr=1e-3, weight_decay=0.1)  # one learning rate for every method
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval-every", type=int, default=0, help="steps between evaluations (0: 12 per run)")
    g.add_argument("--eval-tokens", type=float, default=65536, help="held-out tokens per evaluation")
    g.add_argument("--tbt-len", type=int, default=64,
                   help="tokens of the end-of-run check that decoding token by token (KV and tile "
                        "caches) scores what the full forward scores (0: off)")
    g = p.add_argument_group("run")
    g.add_argument("--runs-dir", default=os.path.join("runs", "lm_scratch"),
                   help="runs live in RUNS/NAME; RUNS/summary.* and compare.png tabulate them all")
    g.add_argument("--name", default=None, help="run folder (default: method, rank, init, seed)")
    g.add_argument("--resume", action="store_true", help="continue from the run's checkpoint.pt")
    g.add_argument("--stop-after", type=int, default=None, metavar="N",
                   help="exit after N optimizer steps in this invocation (checkpoint first)")
    g.add_argument("--collect-only", action="store_true", help="only tabulate the runs under --runs-dir")
    g.add_argument("--seed", type=int, default=0, help="weights and data order")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    g.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    a = p.parse_args(argv)
    if a.method in ("stl24", "stl32"):
        a.rank = int(a.method[3:])
    a.kv_heads = a.kv_heads or a.heads
    a.name = a.name or run_label(a)
    return a


def run_label(a):
    if a.method == "dense":
        s = "dense"
    elif a.method == "dense-narrow":
        s = f"dense-narrow{a.rank}-{a.narrow}"
    else:
        s = f"stl{a.rank}-{a.init}" + ("" if a.causal else "-noncausal")
    return f"{s}-s{a.seed}"


# ----------------------------------------------------------------------------- model
def projection_shapes(hidden, inter, heads, kv_heads):
    """(in, out) of a block's seven projections: q, k, v, o, gate, up, down."""
    kv = kv_heads * (hidden // heads)
    return [(hidden, hidden), (hidden, kv), (hidden, kv), (hidden, hidden),
            (hidden, inter), (hidden, inter), (inter, hidden)]


def projection_macs(hidden, inter, heads, kv_heads, layers, tile=4, rank=None):
    """Block-projection multiply-adds per token, dense (rank None) or STL (stl_torch.flops' formulas)."""
    def one(n, p):
        return linear_macs(1, n, p) if rank is None else stl_macs(tile, n, p, tile, rank) / tile
    return layers * sum(one(n, p) for n, p in projection_shapes(hidden, inter, heads, kv_heads))


def model_shape(a):
    """(hidden, intermediate) of the model to build, and the dense-narrow target when there is one.
    dense-narrow picks the shape whose dense projections cost closest to STL's at --rank: the MLP
    in steps of 8 (--narrow mlp), or hidden in steps of 2 x heads (even RoPE head dims) with the
    MLP scaled alike (--narrow width)."""
    if a.method != "dense-narrow":
        return a.hidden, a.intermediate, None
    macs = lambda h, i: projection_macs(h, i, a.heads, a.kv_heads, a.layers)  # noqa: E731
    target = projection_macs(a.hidden, a.intermediate, a.heads, a.kv_heads, a.layers, a.tile, a.rank)
    if a.narrow == "mlp":
        cands = [(a.hidden, i) for i in range(8, a.intermediate + 1, 8)]
    else:
        step = 2 * a.heads
        cands = [(h, max(8, round(h * a.intermediate / a.hidden / 8) * 8))
                 for h in range(step, a.hidden + 1, step)]
    h, i = min(cands, key=lambda c: abs(macs(*c) - target))
    if abs(macs(h, i) - target) > 0.1 * target:
        raise SystemExit(f"--narrow {a.narrow}: no narrower shape within 10% of STL r={a.rank}'s "
                         f"{target:,.0f} projection MACs/token (closest {macs(h, i):,.0f}; STL saves "
                         f"multiply-adds only on wide enough layers)")
    return h, i, target


def build_model(a, hidden, inter):
    """A random-init LlamaForCausalLM (tied byte embeddings), converted to causal STL for stl*."""
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=RX.ByteTokenizer.vocab_size, hidden_size=hidden, intermediate_size=inter,
                      num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
                      head_dim=hidden // a.heads, max_position_embeddings=a.seq_len,
                      tie_word_embeddings=True, bos_token_id=None,
                      eos_token_id=RX.ByteTokenizer.eos_token_id, pad_token_id=None)
    torch.manual_seed(a.seed)
    model = LlamaForCausalLM(cfg)
    report = None
    if a.method.startswith("stl"):
        include = RM.name_regex(DEFAULT_TARGETS)
        # only_if_cheaper=False: every block projection, as the comparison asks (at these widths
        # each is cheaper anyway); the vocabulary head is the tied embedding and stays dense
        report = stl_torch.convert(model, stl_config_from_args(a), lambda m, fqn: include(fqn, m),
                                   only_if_cheaper=False)
    return model, report


def cost(model, a, hidden, device):
    """Parameters and per-token multiply-adds / FLOPs of one seq_len forward, from stl_torch.flops."""
    include = RM.name_regex(DEFAULT_TARGETS)
    fl = RM.linear_flops(model, {"input_ids": torch.zeros(1, a.seq_len, dtype=torch.long, device=device),
                                 "use_cache": False}, select=lambda name: include(name, None))
    T = a.seq_len
    attn = 2 * 2 * T * T * hidden * a.layers / T  # QK^T and AV, full T x T, per token
    fwd = fl["linear_flops"] / T + attn
    proj_params = sum(p.numel() for n, m in model.named_modules() if include(n, m)
                      for p in m.parameters(recurse=False))
    return {**RM.param_counts(model), "params_projections": proj_params,
            "proj_macs_per_token": fl["selected_flops"] / 2 / T,
            "proj_macs_per_token_if_dense": fl["selected_flops_if_dense"] / 2 / T,
            "linear_macs_per_token": fl["linear_flops"] / 2 / T,
            "attention_flops_per_token": attn, "forward_flops_per_token": fwd,
            "train_flops_per_token": 3 * fwd, "flops_per_layer": fl["per_layer"],
            "stl_torch_flops": fl["stl_torch_flops"]}


# ----------------------------------------------------------------------------- data, evaluation
def held_out_windows(tokens, seq_len, max_tokens):
    """(n, seq_len + 1) held-out windows at evenly spaced offsets over the whole held-out file, so
    that a small evaluation still samples every held-out document, not just the first few."""
    avail = (len(tokens) - 1) // seq_len
    if avail < 1:
        raise ValueError(f"only {len(tokens)} held-out tokens: fewer than one sequence of {seq_len}")
    n = min(avail, max(1, int(max_tokens) // seq_len))
    starts = torch.linspace(0, len(tokens) - seq_len - 1, n).long().tolist()
    return torch.stack([torch.from_numpy(tokens[s:s + seq_len + 1].astype("int64")) for s in starts])


def nll(model, x, amp):
    """(sum of next-token NLL in nats, tokens scored, byte tokens scored) over the batch x."""
    with amp():
        logits = model(input_ids=x[:, :-1], use_cache=False).logits
    y = x[:, 1:]
    s = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum")
    return s, y.numel(), int((y != RX.ByteTokenizer.eos_token_id).sum())


@torch.no_grad()
def evaluate(model, windows, batch, device, amp):
    """(held-out loss in nats per token, bits per byte). The end-of-document token's loss is charged
    to the bytes: bpb = total NLL / ln 2 / bytes, the usual byte-level accounting."""
    model.eval()
    tot = n = nbytes = 0
    for i in range(0, len(windows), batch):
        s, c, b = nll(model, windows[i:i + batch].to(device), amp)
        tot, n, nbytes = tot + s.item(), n + c, nbytes + b
    return tot / n, tot / math.log(2) / max(nbytes, 1)


# ----------------------------------------------------------------------------- comparison
def collect(runs_dir):
    """Tabulates every run under runs_dir: summary.md / .json and compare.png (held-out bpb against
    tokens and against training FLOPs). Returns the rows."""
    rows, curves = [], {}
    for path in sorted(glob.glob(os.path.join(runs_dir, "*", "metrics.json"))):
        with open(path) as f:
            m = json.load(f)
        meta, hist = m["meta"], m["history"]
        if meta.get("recipe") != "lm_scratch" or not hist:
            continue
        name = os.path.basename(os.path.dirname(path))
        c = meta["cost"]
        curves[name] = [(r["tokens"], r["train_flops"], r["eval_bpb"]) for r in hist]
        speeds = sorted(r["train_tokens_per_s"] for r in hist if r.get("train_tokens_per_s"))
        last = hist[-1]
        rows.append({
            "run": name, "method": meta["args"]["method"], "rank": meta["args"]["rank"],
            "init": meta["args"]["init"], "seed": meta["args"]["seed"],
            "hidden": meta["hidden"], "intermediate": meta["intermediate"],
            "params_total": c["params_total"], "params_projections": c["params_projections"],
            "proj_macs_per_token": c["proj_macs_per_token"],
            "proj_macs_vs_dense": c["proj_macs_per_token"] / meta["base_proj_macs_per_token"],
            "train_flops_per_token": c["train_flops_per_token"],
            "steps": last["step"], "total_steps": meta["total_steps"], "done": last["step"] >= meta["total_steps"],
            "tokens": last["tokens"], "train_flops": last["train_flops"], "train_loss": last.get("train_loss"),
            "eval_bpb": last["eval_bpb"], "best_eval_bpb": min(r["eval_bpb"] for r in hist),
            "train_tokens_per_s": speeds[len(speeds) // 2] if speeds else None})
    if not rows:
        return rows
    with open(os.path.join(runs_dir, "summary.json"), "w") as f:
        json.dump({"date": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": rows}, f, indent=1)
    lines = ["| run | hidden / MLP | params (projections) | projection MACs/token (vs dense) | train FLOPs/token "
             "| steps | tokens | train FLOPs | train loss | held-out bpb | tokens/s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        tl = "–" if r["train_loss"] is None else f"{r['train_loss']:.3f}"
        lines.append(
            f"| {r['run']} | {r['hidden']} / {r['intermediate']} | {r['params_total'] / 1e6:.2f}M "
            f"({r['params_projections'] / 1e6:.2f}M) | {r['proj_macs_per_token'] / 1e6:.2f}M "
            f"({r['proj_macs_vs_dense']:.2f}x) | {r['train_flops_per_token'] / 1e6:.1f}M "
            f"| {r['steps']}/{r['total_steps']} | {r['tokens'] / 1e6:.3f}M | {r['train_flops']:.3g} | {tl} "
            f"| {r['eval_bpb']:.3f} | {r['train_tokens_per_s'] or 0:.0f} |")
    with open(os.path.join(runs_dir, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, c in curves.items():
        for ax, xi in zip(axes, (0, 1)):
            ax.plot([p[xi] for p in c], [p[2] for p in c], marker="o", ms=3, label=name)
    for ax, xl in zip(axes, ("training tokens (bytes)", "training FLOPs")):
        ax.set_xlabel(xl)
        ax.set_ylabel("held-out bits per byte")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(runs_dir, ".compare.tmp.png"), dpi=110)
    plt.close(fig)
    os.replace(os.path.join(runs_dir, ".compare.tmp.png"), os.path.join(runs_dir, "compare.png"))
    return rows


# ----------------------------------------------------------------------------- main
def main(argv=None):
    a = parse_args(argv)
    if a.collect_only:
        rows = collect(a.runs_dir)
        if not rows:
            raise SystemExit(f"no lm_scratch runs under {a.runs_dir}")
        print(open(os.path.join(a.runs_dir, "summary.md")).read(), end="")
        return rows
    if a.threads:
        torch.set_num_threads(a.threads)
    d = RD.setup_distributed(a.device)
    if d.enabled:
        raise SystemExit("lm_scratch runs in one process (one device); start it with python, not torchrun")
    if d.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    out = os.path.join(a.runs_dir, a.name)
    progress = not a.no_progress

    data_src = a.data or RX.default_text_dir()
    if data_src is None:
        raise SystemExit("no --data and no CPython docs (apt-get install -y python3.11-doc)")
    try:
        toks = SH.prepare_token_files(data_src, RX.ByteTokenizer(), a.token_cache, eval_frac=a.eval_frac,
                                      split_seed=a.split_seed, max_docs=a.max_docs, progress=progress, log=print)
        eval_x = held_out_windows(toks.eval, a.seq_len, a.eval_tokens)
        windows = SH.TokenWindows(toks.train, a.seq_len, a.batch_size, seed=a.seed)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"--data {data_src}: {e}") from None

    hidden, inter, target = model_shape(a)
    model, report = build_model(a, hidden, inter)
    model.to(d.device)
    a.amp = RT.resolve_amp(model, d.device, a.amp)
    amp = RT.autocast_ctx(d.device, a.amp)
    c = cost(model, a, hidden, d.device)
    tokens_per_step = a.batch_size * a.seq_len
    total_steps = a.steps or max(1, math.ceil(a.tokens / tokens_per_step))
    eval_every = a.eval_every or max(1, math.ceil(total_steps / 12))

    ckpt_path = os.path.join(out, "checkpoint.pt")
    ck = RT.load_checkpoint(ckpt_path) if a.resume and os.path.exists(ckpt_path) else None
    if ck:
        RT.check_resume_args(ck["args"], vars(a), MODEL_KEYS)
    elif a.resume:
        print(f"--resume: no checkpoint at {ckpt_path}, starting fresh", flush=True)
    meta = ck["meta"] if ck else {
        "recipe": "lm_scratch", "args": vars(a), "env": RM.env_info(d), "data": data_src,
        "tokenizer": "bytes (256 + end of document)", "train_docs": toks.manifest["train_docs"],
        "eval_docs": toks.manifest["eval_docs"], "train_tokens_available": len(toks.train),
        "eval_tokens_available": len(toks.eval), "eval_tokens_used": eval_x[:, 1:].numel(),
        "hidden": hidden, "intermediate": inter, "narrow_target_proj_macs_per_token": target,
        "base_proj_macs_per_token": projection_macs(a.hidden, a.intermediate, a.heads, a.kv_heads, a.layers),
        "tokens_per_step": tokens_per_step, "total_steps": total_steps, "eval_every": eval_every,
        "cost": c, "convert_report": RM.report_to_json(report), "tbt": None}

    groups = RT.param_groups(model, lr=a.lr, weight_decay=a.weight_decay, ed_lr_mult=a.ed_lr_mult)
    opt = RT.make_optimizer(groups, betas=(0.9, 0.95), device=d.device)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, RT.warmup_cosine(total_steps, int(a.warmup_frac * total_steps), a.min_lr_ratio))
    metrics = RM.Metrics(out, meta, plot={
        "x": "tokens", "panels": [("train_loss", "train loss (nats/token)"), ("eval_bpb", "held-out bits per byte")],
        "title": f"{a.name}: hidden {hidden}, MLP {inter}, {a.layers} layers"})
    start = 0
    if ck:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        start, metrics.history = ck["step"], ck["history"]
        print(f"resumed from {ckpt_path} at step {start}/{total_steps}", flush=True)

    def save(step):
        RT.atomic_torch_save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                             "scheduler": sched.state_dict(), "step": step, "meta": meta,
                             "history": metrics.history, "args": vars(a)}, ckpt_path)

    def record(row):
        metrics.log(row)
        save(row["step"])
        try:
            collect(a.runs_dir)
        except Exception as e:  # the comparison (other runs' files too) must not stop this run
            print(f"warning: tabulating {a.runs_dir} failed: {e!r}", file=sys.stderr)

    if start == 0:
        print(f"{a.name}: hidden {hidden}, MLP {inter}, {a.layers} layers, {c['params_total'] / 1e6:.2f}M params; "
              f"projection MACs/token {c['proj_macs_per_token'] / 1e6:.2f}M "
              f"({c['proj_macs_per_token'] / meta['base_proj_macs_per_token']:.2f}x the dense model's), "
              f"training {c['train_flops_per_token'] / 1e6:.1f} MFLOP/token; {total_steps} steps x "
              f"{tokens_per_step} tokens; held-out {eval_x[:, 1:].numel()} tokens of "
              f"{meta['eval_docs']} whole documents; {d.device}, {torch.get_num_threads()} threads", flush=True)
        loss, bpb = evaluate(model, eval_x, a.batch_size, d.device, amp)
        record({"step": 0, "tokens": 0, "train_flops": 0.0, "train_loss": None, "eval_loss": loss,
                "eval_bpb": bpb, "lr": sched.get_last_lr()[0]})

    interval = [0.0, 0, 0.0]  # loss sum, steps, seconds
    bar = RM.progress(range(start, total_steps), progress, initial=start, total=total_steps, desc=a.name)
    ran = 0
    for step in bar:
        torch.manual_seed(a.seed * 7919 + step * 104729)  # a resumed step draws what an unbroken one does
        x = windows.batch(step)[0].to(d.device)
        t0 = time.time()
        model.train()
        s, n, _ = nll(model, x, amp)
        loss = s / n
        loss.backward()
        if a.clip_grad > 0:
            nn.utils.clip_grad_norm_(model.parameters(), a.clip_grad)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss = loss.item()
        if d.device.type == "cuda":
            torch.cuda.synchronize()
        interval = [interval[0] + loss, interval[1] + 1, interval[2] + time.time() - t0]
        if not math.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss at step {step + 1}")
        ran += 1
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{sched.get_last_lr()[0]:.2e}")
        last = step + 1 == total_steps
        stopping = a.stop_after is not None and ran >= a.stop_after and not last
        if (step + 1) % eval_every == 0 or last or stopping:
            ev_loss, bpb = evaluate(model, eval_x, a.batch_size, d.device, amp)
            tokens = (step + 1) * tokens_per_step
            row = {"step": step + 1, "tokens": tokens, "train_flops": tokens * c["train_flops_per_token"],
                   "train_loss": interval[0] / interval[1], "eval_loss": ev_loss, "eval_bpb": bpb,
                   "lr": sched.get_last_lr()[0],
                   "train_tokens_per_s": round(interval[1] * tokens_per_step / interval[2], 1)}
            interval = [0.0, 0, 0.0]
            if last and a.tbt_len > 0:  # causal STL: decoding token by token scores what training scored
                meta["tbt"] = token_by_token_check(model, [eval_x[0, :a.tbt_len + 1]], d.device)
            (bar.write if hasattr(bar, "write") else print)(
                " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
            record(row)
        if stopping:
            print(f"--stop-after {a.stop_after}: stopping at step {step + 1}; continue with --resume", flush=True)
            break
    if hasattr(bar, "close"):
        bar.close()
    if meta["tbt"]:
        t = meta["tbt"]
        print(f"token-by-token check ({t['mode']}, {t['tokens']} tokens): max |dlogp| "
              f"{t['max_abs_logprob_diff']:.2e} vs the full forward", flush=True)
    sys.stdout.flush()
    return metrics.history, meta
