"""Distillation from the dense model (examples/stl_recipes/distill.py, llama_finetune.py --distill,
llm_compare.py --distill) on tiny random Llamas: the KL and hidden-state losses vanish when the
student is the teacher, are positive and fall while a converted student trains, ignore masked
positions exactly as the LM loss does, and the teacher stays frozen and outside the optimizer."""
import copy
import json

import pytest
import torch

from conftest import tiny_llama
from test_examples import LLAMA, LLAMA_TINY, ROOT, assert_outputs, assert_same_checkpoint, run, text_dir  # noqa: F401

import stl_torch
from stl_recipes import distill as RK
from stl_recipes import llama as RL
from stl_recipes import metrics as RM
from stl_recipes import sparsity as RS
from stl_recipes import training as RT

transformers = pytest.importorskip("transformers")
NO_AMP = RT.autocast_ctx(torch.device("cpu"), "none")


def convert(model, method):
    include = RM.name_regex(RL.DEFAULT_TARGETS)
    if method == "stl":
        stl_torch.convert(model, stl_torch.STLConfig(tile=4, rank=24, causal=True),
                          lambda m, fqn: include(fqn, m), only_if_cheaper=False)
    elif method == "sparse24":
        RS.apply_24_sparsity(model, include)
    return model


def batch(seed=0, b=3, n=13, vocab=64):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (b, n), generator=g)


def padded_mask(x):
    """Row 0 unpadded, row 1 right-padded (last 4), row 2 left-padded (first 5)."""
    m = torch.ones_like(x)
    m[1, -4:] = 0
    m[2, :5] = 0
    return m


def test_loss_is_zero_when_the_student_is_the_teacher():
    model = tiny_llama(0)
    teacher = RK.make_teacher(model)
    x = batch()
    for mask in (None, padded_mask(x)):
        for temp in (1.0, 2.0):
            loss, parts = RK.train_loss(model, x, NO_AMP, teacher, alpha=1.0, temperature=temp, hidden=1.0,
                                        attention_mask=mask)
            assert abs(parts["kd"]) < 1e-12 and abs(parts["hidden"]) < 1e-12, parts
            assert abs(loss.item()) < 1e-12 and parts["teacher_s"] > 0
    # alpha mixes: at alpha 0.25 the loss is 0.75 * LM (the KL is 0)
    loss, parts = RK.train_loss(model, x, NO_AMP, teacher, alpha=0.25)
    assert loss.item() == pytest.approx(0.75 * parts["lm"], rel=1e-12)
    # without a teacher the loss is the LM loss nll_sum computes
    s, c = RL.nll_sum(model, x, NO_AMP)
    loss, parts = RK.train_loss(model, x, NO_AMP)
    assert torch.equal(loss, s / c) and parts == {"lm": (s / c).item()}


@pytest.mark.parametrize("method", ["sparse24", "stl"])
def test_loss_positive_and_falls_while_training_the_teacher_stays_frozen(method):
    teacher_src = tiny_llama(1)
    with torch.no_grad():  # peaked next-token distributions (a random init's are near uniform)
        teacher_src.lm_head.weight.mul_(20)
    teacher = RK.make_teacher(teacher_src)
    student = convert(copy.deepcopy(teacher_src), method)
    frozen = {k: v.clone() for k, v in teacher.state_dict().items()}
    opt = RT.make_optimizer(RT.param_groups(student, lr=1e-3, weight_decay=0.0))
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt and not in_opt & {id(p) for p in teacher.parameters()}
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    x, mask = batch(2), padded_mask(batch(2))
    kds, hids = [], []
    for _ in range(6):
        student.train()
        loss, parts = RK.train_loss(student, x, NO_AMP, teacher, alpha=1.0, temperature=2.0, hidden=0.5,
                                    attention_mask=mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        RS.reapply_masks(student)
        kds.append(parts["kd"])
        hids.append(parts["hidden"])
    assert kds[0] > 1e-4 and hids[0] > 1e-4, (kds, hids)
    assert kds[-1] < 0.8 * kds[0] and hids[-1] < 0.8 * hids[0], (kds, hids)
    assert all(p.grad is None for p in teacher.parameters()) and not teacher.training
    assert all(torch.equal(v, frozen[k]) for k, v in teacher.state_dict().items())


def test_masked_positions_do_not_change_the_losses():
    x = batch(3)
    mask = padded_mask(x)
    scored = RL.scored_mask(mask)
    assert scored.shape == (3, 12) and int(scored.sum()) == 12 + 8 + 7
    assert RL.scored_mask(None) is None and torch.equal(RL.scored_mask(torch.ones_like(x)), torch.ones(3, 12).bool())
    g = torch.Generator().manual_seed(0)
    s_logits, t_logits = (torch.randn(3, 12, 64, generator=g, dtype=torch.float64) for _ in range(2))
    hs, ht = ([torch.randn(3, 12, 8, generator=g, dtype=torch.float64) for _ in range(3)] for _ in range(2))
    noise = lambda t: t + 5 * (~scored)[..., None] * torch.randn(t.shape, generator=g, dtype=t.dtype)  # noqa: E731
    kl, nll = RK.kl_sum(s_logits, t_logits, scored, 2.0), RL.logits_nll_sum(s_logits, x, scored)
    assert kl > 0
    assert torch.equal(RK.kl_sum(noise(s_logits), noise(t_logits), scored, 2.0), kl)
    assert RL.logits_nll_sum(noise(s_logits), x, scored) == nll
    h = RK.hidden_loss(hs, ht, scored)
    assert h > 0 and torch.equal(RK.hidden_loss([noise(t) for t in hs], [noise(t) for t in ht], scored), h)
    # an all-ones mask scores what no mask scores
    ones = torch.ones(3, 12, dtype=torch.bool)
    assert torch.allclose(RK.kl_sum(s_logits, t_logits, ones), RK.kl_sum(s_logits, t_logits))

    # end to end, with a causal STL student: other token ids at the padding leave every loss as it was
    teacher = RK.make_teacher(tiny_llama(4))
    student = convert(tiny_llama(4), "stl")
    y = torch.where(mask.bool(), x, (x + 7) % 64)
    a = RK.train_loss(student, x, NO_AMP, teacher, temperature=2.0, hidden=1.0, attention_mask=mask)[1]
    b = RK.train_loss(student, y, NO_AMP, teacher, temperature=2.0, hidden=1.0, attention_mask=mask)[1]
    assert a["kd"] > 0 and all(b[k] == pytest.approx(a[k], rel=1e-10, abs=1e-14) for k in ("lm", "kd", "hidden"))


def test_llama_finetune_distill_cli_records_costs_and_resumes(text_dir, tmp_path):  # noqa: F811
    """--distill on the tiny model (2:4 student, hidden-state loss on): the rows record the KL, the
    hidden-state loss and the teacher's time; stopped after step 2 of 4 and resumed, the run ends
    bit-identical to an unbroken one (the teacher is the loaded model again, not the checkpoint)."""
    common = [LLAMA, *LLAMA_TINY, "--data", text_dir, "--method", "sparse24", "--tokens", 4 * 4 * 32,
              "--eval-every", "2", "--distill", "--distill-hidden", "0.5", "--distill-temp", "2"]
    env = {"STL_TORCH_CACHE": str(tmp_path / "cache")}
    run([*common, "--out-dir", tmp_path / "full"], ROOT, env)
    run([*common, "--out-dir", tmp_path / "part", "--stop-after", "2"], ROOT, env)
    out = run([*common, "--out-dir", tmp_path / "part", "--resume"], ROOT, env)
    assert "at step 2/4" in out
    assert_same_checkpoint(tmp_path / "full", tmp_path / "part")
    m = assert_outputs(tmp_path / "part")
    assert m["meta"]["distill"] == {"alpha": 0.5, "temperature": 2.0, "hidden": 0.5,
                                    "teacher": "the loaded dense model, frozen"}
    for r in m["history"][1:]:
        assert r["train_kd_loss"] > 0 and r["train_hidden_loss"] > 0, r
        assert r["teacher_s_per_token"] > 0 and 0 < r["teacher_time_frac"] < 1, r
    ck = torch.load(tmp_path / "part" / "checkpoint.pt", map_location="cpu", weights_only=False)
    n_params = sum(len(g["params"]) for g in ck["optimizer"]["param_groups"])
    model, _, _ = RL.load_model(tiny=True)
    assert n_params == len(list(model.parameters()))  # the student's alone (tied lm_head counted once)
    with pytest.raises(AssertionError, match="different settings"):  # a plain run does not resume it
        run([*common[:-5], "--out-dir", tmp_path / "part", "--resume"], ROOT, env)


def test_llm_compare_distill_rows_beside_plain_ones(tmp_path):
    from stl_recipes import llm_compare as lc

    a = lc.parse_args(["--methods", "dense,STL r=24", "--out", str(tmp_path), "--distill", "--distill-hidden", "1"])
    args = [str(v) for v in lc.common(a, lc.METHODS["STL r=24"][0], "STL r=24")]
    assert args[args.index("--distill") + 1:][:6] == ["--distill-alpha", "0.5", "--distill-temp", "1.0",
                                                      "--distill-hidden", "1.0"]
    assert lc.label(a, "STL r=24") == "STL r=24, distill" and lc.slug("STL r=24, distill") == "stl-r24-distill"
    assert lc.variant("STL r=24, distill, lr 0.001") == "STL r=24, distill" and lc.variant("STL r=24") == "STL r=24"

    def fake_run(folder, lr, ppls, speed, distill=None, frac=None, env=None):
        d = tmp_path / "runs" / folder
        d.mkdir(parents=True)
        hist = [{"step": 12 * i, "tokens": 24576 * i, "eval_ppl": p, "train_tokens_per_s": speed,
                 **({"teacher_s_per_token": frac / speed, "teacher_time_frac": frac} if distill else {})}
                for i, p in enumerate(ppls)]
        meta = {"args": {"lr": lr, "seq_len": 256}, "base": {"eval_ppl": ppls[0]}, "total_steps": 12,
                "target_flops_per_seq": 2 * 256 * 1e8, "target_flops_per_seq_if_dense": 2 * 256 * 1e8,
                "target_flop_reduction": 1.0, "params_total": 1e6, "params_linear": 9e5,
                "env": env or {"cpu": "AMD EPYC", "threads": 2}, "distill": distill}
        (d / "metrics.json").write_text(json.dumps({"meta": meta, "history": hist}))

    kd = {"alpha": 0.5, "temperature": 1.0, "hidden": 0.0, "teacher": "the loaded dense model, frozen"}
    fake_run("dense", 1e-4, [18.0, 14.0], 120.0)
    fake_run("dense-distill", 1e-4, [18.0, 13.5], 80.0, kd, 0.3)
    fake_run("stl-r24-distill-lr0.0003", 3e-4, [3e4, 900.0], 60.0, kd, 0.25)
    fake_run("stl-r24-lr0.0003", 3e-4, [3e4, 990.0], 90.0, env={"cpu": "another"})  # no speed pairing
    chosen = {"STL r=24, distill": {"lr": 1e-3, "grid": {"0.0003": 950.0, "0.001": 800.0}}}
    a = lc.parse_args(["--methods", "dense,STL r=24", "--out", str(tmp_path), "--collect-only"])
    lc.collect(a, chosen)
    rows = json.loads((tmp_path / "llm_compare.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["dense", "dense, distill", "STL r=24, lr 0.0003",
                                           "STL r=24, distill, lr 0.0003"]
    assert rows[0]["distill"] is None and "distill_slowdown" not in rows[0]
    assert rows[1]["distill"] == kd and rows[1]["teacher_time_frac"] == 0.3
    assert rows[1]["plain_train_tokens_per_s"] == 120.0 and rows[1]["distill_slowdown"] == 1.5
    assert rows[2]["grid"] is None and rows[3]["grid"] == chosen["STL r=24, distill"]["grid"]
    assert "distill_slowdown" not in rows[3]  # its plain run ran on another machine
    md = (tmp_path / "llm_compare.md").read_text()
    assert "| teacher time |" in md and "| dense, distill | 0.0001 | 18.00 | 13.50 |" in md and " 30% |" in md
    assert "| STL r=24, distill | 0.0003: 950.00 | **0.001: 800.00** |" in md
