#!/usr/bin/env python
"""Measures the recipes' data pipelines on this machine (numbers in docs/recipes.md).

  # text: a ~1 GB .jsonl.zst shard made from the CPython docs (python3.11-doc), then tokenised
  python benchmarks/data_pipeline.py corpus /tmp/cpython-1g.jsonl.zst --bytes 1e9
  python benchmarks/data_pipeline.py tokenize /tmp/cpython-1g.jsonl.zst --tokenizer bytes --cache /tmp/tok
  python benchmarks/data_pipeline.py tokenize /tmp/cpython-1g.jsonl.zst --tokenizer smollm2 --max-docs 20000
  # images: a JPEG ImageFolder from Fashion-MNIST (upscaled RGB), then decode + augment rates
  python benchmarks/data_pipeline.py imagefolder /tmp/fmnist-jpeg --train 2000 --val 200 --size 224
  python benchmarks/data_pipeline.py imagefolder /tmp/fmnist-jpeg-500 --train 300 --val 10 --size 375 --width 500
  python benchmarks/data_pipeline.py loader /tmp/fmnist-jpeg --preset t2t-vit-7-imagenet --workers 0 1 2
  python benchmarks/data_pipeline.py step --img-size 224 --batch-size 32 --steps 3 --linear dense stl

Every command prints one JSON object (and appends it to --log when given). Peak memory is
getrusage's ru_maxrss of this process and, separately, of its finished children (workers).
"""
import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = next(ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name"))
        return f"{name}, {os.cpu_count()} cores"
    except Exception:
        return platform.processor() or "unknown"


def cpu_s(who=resource.RUSAGE_SELF):
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def peak_mb():
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(self_kb / 1024, 1), round(child_kb / 1024, 1)


class TreeMemory:
    """Samples the summed RSS and PSS of this process and its children (tokenizer workers) every
    0.2 s: the memory a worker pool really takes (ru_maxrss is per process)."""

    def __init__(self):
        import threading
        self.peak_rss = self.peak_pss = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        import psutil
        me = psutil.Process()
        while not self._stop.is_set():
            rss = pss = 0
            for p in [me] + me.children(recursive=True):
                try:
                    m = p.memory_full_info()
                    rss, pss = rss + m.rss, pss + getattr(m, "pss", m.rss)
                except psutil.Error:
                    pass
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self._stop.wait(0.2)

    def stop(self):
        self._stop.set()
        self._t.join()
        return round(self.peak_rss / 2**20, 1), round(self.peak_pss / 2**20, 1)


def emit(a, rec):
    rec = {"cmd": a.cmd, "cpu": cpu_model(), "date": time.strftime("%Y-%m-%d %H:%M"),
           "nice": os.nice(0), **rec}
    s = json.dumps(rec)
    print(s, flush=True)
    if a.log:
        with open(a.log, "a") as f:
            f.write(s + "\n")


# ----------------------------------------------------------------------------- text
def cmd_corpus(a):
    from stl_recipes import text as RX
    src = a.src or RX.default_text_dir()
    docs = [t for _, t in RX.iter_documents(src)]
    rng = random.Random(a.seed)
    target = int(float(a.bytes))
    state = {"size": 0, "reps": 0}

    def gen():
        while state["size"] < target:
            order = list(range(len(docs)))
            rng.shuffle(order)
            state["reps"] += 1
            for i in order:
                if state["size"] >= target:
                    return
                state["size"] += len(docs[i].encode("utf-8")) + 12
                yield docs[i]
    t0 = time.time()
    n, size = RX.write_jsonl(a.out, gen())
    emit(a, {"out": a.out, "docs": n, "uncompressed_bytes": size, "reps": state["reps"],
             "compressed_bytes": os.path.getsize(a.out), "seconds": round(time.time() - t0, 1),
             "source": src})


def load_tokenizer(name):
    from stl_recipes import text as RX
    if name == "bytes":
        return RX.ByteTokenizer()
    from transformers import AutoTokenizer

    from stl_recipes import llama as RL
    if name == "smollm2":
        d = RL.default_model_dir()
        return RX.HFTokenizer(AutoTokenizer.from_pretrained(d, gguf_file=RL.SMOLLM2_GGUF))
    return RX.HFTokenizer(AutoTokenizer.from_pretrained(name))


def cmd_tokenize(a):
    from stl_recipes import shards as SH
    t0 = time.time()
    tok = load_tokenizer(a.tokenizer)
    t_tok = time.time() - t0
    cache = a.cache or os.path.join("/tmp", "stl-bench-tokens")
    mem = TreeMemory()
    c_self, c_child = cpu_s(), cpu_s(resource.RUSAGE_CHILDREN)
    t1 = time.time()
    tf = SH.prepare_token_files(a.data, tok, cache, eval_frac=a.eval_frac, max_docs=a.max_docs,
                                workers=a.workers, threads=not a.no_threads,
                                progress=not a.no_progress)
    first = time.time() - t1
    tree_rss, tree_pss = mem.stop()
    cpu = cpu_s() - c_self + cpu_s(resource.RUSAGE_CHILDREN) - c_child
    m = tf.manifest
    rec = {"data": a.data, "tokenizer": a.tokenizer, "workers": a.workers,
           "threads": not a.no_threads, "max_docs": a.max_docs, "cache_hit": tf.cache_hit,
           "tokenizer_load_s": round(t_tok, 2), "prepare_s": round(first, 2),
           "train_tokens": m["train_tokens"], "eval_tokens": m["eval_tokens"],
           "train_docs": m["train_docs"], "eval_docs": m["eval_docs"], "dtype": m["dtype"],
           "text_bytes": m["text_bytes"], "input_bytes": m["input_bytes"],
           "build_seconds": m["build_seconds"],
           "tokens_per_s": m["tokens_per_s"],
           "text_mb_per_s": round(m["text_bytes"] / 1e6 / max(m["build_seconds"], 1e-9), 2),
           "bytes_per_token": round(m["text_bytes"] / max(1, m["train_tokens"] + m["eval_tokens"]), 3),
           "token_file_bytes": sum(os.path.getsize(p) for p in tf.paths),
           "peak_tree_rss_mb": tree_rss, "peak_tree_pss_mb": tree_pss,
           "cpu_s": round(cpu, 1), "load_avg": os.getloadavg(),
           "tokens_per_cpu_s": round((m["train_tokens"] + m["eval_tokens"]) / max(cpu, 1e-9))}
    if a.second_run:  # the cached start-up, in a fresh process (what a second run pays)
        cmd = [sys.executable, __file__, "startup", a.data, "--tokenizer", a.tokenizer,
               "--cache", cache, "--eval-frac", str(a.eval_frac)]
        if a.max_docs:
            cmd += ["--max-docs", str(a.max_docs)]
        t0 = time.time()
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rec["second_run"] = json.loads(out.strip().splitlines()[-1])
        rec["second_run"]["process_s"] = round(time.time() - t0, 2)  # python + imports + all
    rec["peak_rss_mb"], rec["peak_rss_children_mb"] = peak_mb()
    emit(a, rec)


def cmd_startup(a):
    """Cache hit path only: tokenizer identity, file stat, manifest, memmaps, first batch."""
    from stl_recipes import shards as SH
    t_load = time.time()
    tok = load_tokenizer(a.tokenizer)
    t0 = time.time()
    tf = SH.prepare_token_files(a.data, tok, a.cache, eval_frac=a.eval_frac, max_docs=a.max_docs,
                                progress=False)
    w = SH.TokenWindows(tf.train, 512, 4)
    w.batch(0)
    SH.eval_windows(tf.eval, 512, 2e5)
    print(json.dumps({"cache_hit": tf.cache_hit, "startup_s": round(time.time() - t0, 3),
                      "tokenizer_load_s": round(t0 - t_load, 2),
                      "peak_rss_mb": peak_mb()[0]}))


# ----------------------------------------------------------------------------- images
def cmd_imagefolder(a):
    import numpy as np
    from PIL import Image

    from stl_recipes import images as D
    x, y = D.load_idx_split(a.idx, "train")
    rng = np.random.default_rng(a.seed)
    t0 = time.time()
    n_done = 0
    for split, n in (("train", a.train), ("val", a.val)):
        idx = rng.choice(len(y), n, replace=False)
        for j, i in enumerate(idx):
            d = os.path.join(a.out, split, f"class{int(y[i]):02d}")
            os.makedirs(d, exist_ok=True)
            g = Image.fromarray(x[i].numpy()).resize((a.width or a.size, a.size), Image.BICUBIC)
            tint = rng.uniform(0.6, 1.0, 3)
            rgb = (np.asarray(g, dtype=np.float32)[..., None] * tint).astype(np.uint8)
            Image.fromarray(rgb).save(os.path.join(d, f"{j:06d}.jpg"), quality=90)
            n_done += 1
    emit(a, {"out": a.out, "images": n_done, "size": [a.width or a.size, a.size],
             "seconds": round(time.time() - t0, 1)})


def cmd_loader(a):
    import torch

    from stl_recipes import images as D
    from stl_recipes import t2t_vit_recipe as T
    args = T.parse_args(["--data-dir", a.data, "--preset", a.preset, "--aug-impl", "builtin",
                         "--no-progress", "--img-size", str(a.img_size)])
    torch.set_num_threads(1)
    train = D.ImageFolder(os.path.join(a.data, "train"), args.img_size, True, 0,
                          transform=T.train_transform(args))
    plain = D.ImageFolder(os.path.join(a.data, "train"), args.img_size, True, 0)
    n = min(a.images, len(train))
    res = {"preset": a.preset, "img_size": args.img_size, "images": n,
           "transform": repr(train.transform), "per_worker": {}}
    for name, ds in (("decode_only", None), ("plain_rrc_flip", plain), ("preset", train)):
        t0, c0 = time.time(), cpu_s()
        for i in range(n):
            if ds is None:  # JPEG decode + RGB convert only
                from PIL import Image
                with Image.open(train.samples[i][0]) as im:
                    im.convert("RGB").load()
            else:
                ds[i]
        res[f"main_process_{name}_images_per_s"] = round(n / (time.time() - t0), 1)
        res[f"main_process_{name}_images_per_cpu_s"] = round(n / (cpu_s() - c0), 1)
    for w in a.workers:
        if w == 0:
            continue
        sub = torch.utils.data.Subset(train, range(n))
        loader = torch.utils.data.DataLoader(sub, batch_size=32, num_workers=w,
                                             persistent_workers=False)
        t0, c0 = time.time(), cpu_s(resource.RUSAGE_CHILDREN)
        it = iter(loader)
        first = next(it)
        t1 = time.time()
        cnt = len(first[1])
        for x, y in it:
            cnt += len(y)
        dt = time.time() - t1
        del it
        res["per_worker"][w] = {"images_per_s": round((cnt - len(first[1])) / max(dt, 1e-9), 1),
                                "startup_s": round(t1 - t0, 2),
                                "worker_cpu_s": round(cpu_s(resource.RUSAGE_CHILDREN) - c0, 1)}
    res["load_avg"] = os.getloadavg()
    emit(a, res)


def cmd_step(a):
    import torch

    from stl_recipes import augment as AU
    from stl_recipes import t2t_vit_recipe as T
    from stl_recipes import training as RT
    res = {"img_size": a.img_size, "batch_size": a.batch_size, "threads": torch.get_num_threads(),
           "steps": a.steps, "linear": {}}
    for lin in a.linear:
        args = T.parse_args(["--preset", "t2t-vit-7-imagenet", "--linear", lin, "--img-size",
                             str(a.img_size), "--no-progress"])
        torch.manual_seed(0)
        model, conv, _ = T.build_model(args, 3, 1000)
        params = sum(p.numel() for p in model.parameters())
        opt = RT.make_optimizer(RT.param_groups(model, lr=1e-3, weight_decay=0.05))
        mix = AU.Mixup(0.8, 1.0, 0.5, 0.1, 1000)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(a.batch_size, 3, a.img_size, a.img_size)
        y = torch.randint(0, 1000, (a.batch_size,))
        times = []
        model.train()
        cpu = []
        for s in range(a.steps + 1):
            t0, c0 = time.time(), time.process_time()
            xm, ym = mix(x.clone(), y, g)
            loss = AU.soft_target_cross_entropy(model(xm), ym)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            times.append(time.time() - t0)
            cpu.append(time.process_time() - c0)
        st = sorted(times[1:])
        sc = sorted(cpu[1:])
        res["linear"][lin] = {"params": params, "stl_layers": len(conv),
                              "step_s_median": round(st[len(st) // 2], 3),
                              "step_s_all": [round(t, 3) for t in times],
                              "images_per_s": round(a.batch_size / st[len(st) // 2], 2),
                              "step_cpu_s_median": round(sc[len(sc) // 2], 3)}
    res["load_avg"] = os.getloadavg()
    res["peak_rss_mb"] = peak_mb()[0]
    emit(a, res)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--log", default=None, help="append the JSON record to this file")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("corpus")
    c.add_argument("out")
    c.add_argument("--bytes", default="1e9")
    c.add_argument("--src", default=None, help="default: the CPython docs")
    c.add_argument("--seed", type=int, default=0)
    c = sub.add_parser("tokenize")
    c.add_argument("data")
    c.add_argument("--tokenizer", default="bytes", help="bytes, smollm2, or a tokenizer dir")
    c.add_argument("--cache", default=None)
    c.add_argument("--eval-frac", type=float, default=0.05)
    c.add_argument("--max-docs", type=int, default=None)
    c.add_argument("--workers", type=int, default=0)
    c.add_argument("--no-threads", action="store_true")
    c.add_argument("--no-progress", action="store_true")
    c.add_argument("--second-run", action="store_true", help="then time a cached start-up")
    c = sub.add_parser("startup")
    c.add_argument("data")
    c.add_argument("--tokenizer", default="bytes")
    c.add_argument("--cache", required=True)
    c.add_argument("--eval-frac", type=float, default=0.05)
    c.add_argument("--max-docs", type=int, default=None)
    c = sub.add_parser("imagefolder")
    c.add_argument("out")
    c.add_argument("--idx", default="/usr/share/datasets/fashion-mnist")
    c.add_argument("--train", type=int, default=2000)
    c.add_argument("--val", type=int, default=200)
    c.add_argument("--size", type=int, default=224, help="height (and width unless --width)")
    c.add_argument("--width", type=int, default=None)
    c.add_argument("--seed", type=int, default=0)
    c = sub.add_parser("loader")
    c.add_argument("data")
    c.add_argument("--preset", default="t2t-vit-7-imagenet")
    c.add_argument("--img-size", type=int, default=224)
    c.add_argument("--images", type=int, default=256)
    c.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    c = sub.add_parser("step")
    c.add_argument("--img-size", type=int, default=224)
    c.add_argument("--batch-size", type=int, default=32)
    c.add_argument("--steps", type=int, default=3)
    c.add_argument("--linear", nargs="+", default=["dense", "stl"])
    a = p.parse_args()
    {"corpus": cmd_corpus, "tokenize": cmd_tokenize, "startup": cmd_startup,
     "imagefolder": cmd_imagefolder, "loader": cmd_loader, "step": cmd_step}[a.cmd](a)


if __name__ == "__main__":
    main()
