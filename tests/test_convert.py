"""stl_torch.convert: in-place swap of nn.Linear layers, report, filters, calibration."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stl_torch import CalibrationConfig, ConversionReport, STLConfig, STLinear, convert

from conftest import rel_err, tiny_llama


class Attention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).reshape(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = Attention(d, heads)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """timm-style ViT: linear patch embedding, class token, pre-norm blocks, 10-class head."""

    def __init__(self, patch_dim=12, d=16, depth=2, heads=2, classes=10):
        super().__init__()
        self.patch_embed = nn.Linear(patch_dim, d)
        self.cls_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.blocks = nn.Sequential(*[Block(d, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, patches):  # (B, tokens, patch_dim)
        x = self.patch_embed(patches)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.head(self.norm(self.blocks(x))[:, 0])


def vit(seed=0):
    torch.manual_seed(seed)
    return TinyViT().double().eval()


def test_vit_exact_strassen_conversion():
    model = vit()
    x = torch.randn(3, 6, 12, dtype=torch.float64)  # 7 tokens with the class token: padded tiles
    ref = model(x)
    report = convert(model, STLConfig(tile=2, rank=7, init="strassen"), only_if_cheaper=False)
    assert isinstance(report, ConversionReport)
    assert len(report.converted) == 10 and not report.skipped  # 1 + 2*(2+2) + head
    assert not any(type(m) is nn.Linear for m in model.modules())
    assert rel_err(model(x), ref) < 1e-10


def test_report_counts_and_skips():
    model = vit()
    dense_params = sum(p.numel() for p in model.parameters())
    report = convert(model, STLConfig(tile=4, rank=24), only_if_cheaper=False)
    head = next(x for x in report.layers if x.name == "head")
    assert not head.converted and head.reason == "out_features=10 not divisible by tile=4"
    assert isinstance(model.head, nn.Linear) and isinstance(model.blocks[0].mlp[0], STLinear)
    fc1 = next(x for x in report.layers if x.name == "blocks.0.mlp.0")
    # hand-computed: N=16, P=64, t=4, r=24
    assert fc1.params_before == 16 * 64 + 64
    assert fc1.params_after == 24 * 4 * 16 + 2 * 24 * 16 + 64
    assert fc1.macs_before == 1024
    assert fc1.macs_after == 24 * 16 + 24 * 16 * 64 / 64 + 24 * 64  # per row: encode 384 + GEMMs 384 + decode 1536
    assert report.params_before == dense_params
    assert report.params_after == sum(p.numel() for p in model.parameters())
    assert report.params_after - report.params_before == sum(
        x.params_after - x.params_before for x in report.layers)
    assert report.macs_before == sum(x.macs_before for x in report.layers)
    text = str(report)
    assert "9 of 10 nn.Linear layers converted" in text
    assert "skipped: out_features=10 not divisible by tile=4" in text
    assert set(report.to_dict()) >= {"config", "layers", "params_before", "params_after"}


def test_filters():
    m1 = vit()
    r1 = convert(m1, STLConfig(tile=4, rank=8, init="random"), filter=["blocks.*.mlp.*"], only_if_cheaper=False)
    assert sorted(x.name for x in r1.converted) == ["blocks.0.mlp.0", "blocks.0.mlp.2",
                                                    "blocks.1.mlp.0", "blocks.1.mlp.2"]
    assert all(x.reason == "excluded by filter" for x in r1.skipped)
    m2 = vit()
    r2 = convert(m2, STLConfig(tile=4, rank=8, init="random"),
                 filter=lambda mod, fqn: mod.out_features == 48, only_if_cheaper=False)
    assert sorted(x.name for x in r2.converted) == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]
    with pytest.raises(ValueError, match="'filter'"):
        convert(vit(), filter=3, only_if_cheaper=False)
    with pytest.raises(ValueError, match="'model'"):
        convert(nn.Linear(4, 4), only_if_cheaper=False)
    with pytest.raises(ValueError, match="unknown init 'nope'"):
        STLConfig(init="nope")
    with pytest.raises(ValueError, match="'rank'"):
        STLConfig(rank=0)


def test_report_counts_layers_without_bias():
    model = nn.Sequential(nn.Linear(32, 64, bias=False), nn.GELU(), nn.Linear(64, 32))
    report = convert(model, STLConfig(tile=4, rank=8, init="random"), only_if_cheaper=False)
    nob, wb = report.layers
    assert nob.params_before == 32 * 64 and nob.params_after == 8 * 8 * 16 + 2 * 8 * 16
    assert wb.params_before == 64 * 32 + 32 and wb.params_after == 8 * 16 * 8 + 2 * 8 * 16 + 32
    assert report.params_before == 32 * 64 + 64 * 32 + 32
    assert report.params_after == sum(p.numel() for p in model.parameters())


def test_only_if_cheaper_skips_layers_where_stl_costs_more():
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 1024), nn.Linear(1024, 1024))
    report = convert(model, STLConfig(tile=4, rank=24, init="random"))
    # per token: 64->64 costs 24*(64+64) + 24*64*64/64 = 4,608 > 4,096 dense; the wider ones pay
    assert [x.name for x in report.converted] == ["1", "2"]
    (skipped,) = report.skipped
    assert skipped.name == "0" and "4,608 multiply-adds per token, dense 4,096" in skipped.reason
    assert isinstance(model[0], nn.Linear) and isinstance(model[2], STLinear)


def test_tied_shared_and_multihead_attention_layers():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(16, 8)
            self.out = nn.Linear(8, 16, bias=False)
            self.out.weight = self.emb.weight  # tied
            self.shared = nn.Linear(8, 8)
            self.again = self.shared           # same module under two names
            self.mha = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, ids):
            x = self.again(self.shared(self.emb(ids)))
            x = self.mha(x, x, x, need_weights=False)[0]
            return self.out(x)

    torch.manual_seed(0)
    net = Net().double()
    ids = torch.randint(0, 16, (2, 5))
    ref = net(ids)
    report = convert(net, STLConfig(tile=2, rank=7, init="strassen"), only_if_cheaper=False)
    reasons = {x.name: x.reason for x in report.skipped}
    assert reasons == {"out": "weight tied to emb.weight",
                       "mha.out_proj": "inside nn.MultiheadAttention (weight read directly)"}
    assert isinstance(net.shared, STLinear) and net.again is net.shared
    assert rel_err(net(ids), ref) < 1e-10


def test_calibration_beats_data_free():
    """Least-squares Wt on correlated activations: lower error on its data and on held-out data.

    (The gain is small here: with E, D fixed, each (K, J) tile map is confined to the span of the
    r maps D_l E_l^T, so only the data's tile subspace can be exploited; see README numbers.)
    """
    def data(seed, n=8):
        g = torch.Generator().manual_seed(seed)
        basis = torch.randn(4, 32, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
        return [torch.randn(4, 16, 4, generator=g, dtype=torch.float64) @ basis for _ in range(n)]

    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 16)).double()

    def one_layer():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(32, 32)).double()

    cfg = STLConfig(tile=4, rank=24, init="fitted")
    held_out = torch.cat(data(1))
    ref = model()(held_out)
    free, cal = model(), model()
    convert(free, cfg, only_if_cheaper=False)
    report = convert(cal, cfg, calibration_data=data(0), calibration=CalibrationConfig(damp=1e-4), only_if_cheaper=False)
    assert len(report.converted) == 2
    for x in report.converted:
        assert x.err_calibrated < x.err_data_free, x
    assert "calibration error" in str(report)
    # end to end on held-out rows (one layer: the layers are fitted on the *dense* model's
    # activations, so with several layers the per-layer gains need not add up)
    ref, free, cal = one_layer()(held_out), one_layer(), one_layer()
    convert(free, cfg, only_if_cheaper=False)
    convert(cal, cfg, calibration_data=data(0), calibration=CalibrationConfig(damp=1e-4), only_if_cheaper=False)
    assert rel_err(cal(held_out), ref) < rel_err(free(held_out), ref)


def test_data_free_causal_conversion_says_to_calibrate():
    """Right after a data-free causal convert a pretrained LLM generates nonsense: the report says
    to calibrate and fine-tune; a calibrated or non-causal conversion does not."""
    def data():
        g = torch.Generator().manual_seed(0)
        return [torch.randn(2, 8, 32, generator=g, dtype=torch.float64) for _ in range(2)]

    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 16)).double()

    causal = STLConfig(tile=4, rank=24, causal=True)
    assert "until it is calibrated" in str(convert(model(), causal, only_if_cheaper=False))
    assert "until it is calibrated" not in str(convert(model(), causal, calibration_data=data(),
                                                        only_if_cheaper=False))
    assert "until it is calibrated" not in str(convert(model(), STLConfig(tile=4, rank=24), only_if_cheaper=False))


def test_calibration_keeps_an_exact_conversion_exact():
    model = vit()
    x = torch.randn(2, 6, 12, dtype=torch.float64)
    ref = model(x)
    report = convert(model, STLConfig(tile=2, rank=7, init="strassen"), calibration_data=[x], only_if_cheaper=False)
    assert all(x.err_data_free < 1e-6 for x in report.converted)
    assert rel_err(model(x), ref) < 1e-10


def test_llama_exact_and_fitted_conversion(capsys):
    ids = torch.randint(0, 64, (2, 7))
    model = tiny_llama()
    with torch.no_grad():
        ref = model(ids).logits
        report = convert(model, STLConfig(tile=2, rank=7, init="strassen"), only_if_cheaper=False)
        assert len(report.converted) == 14 and [x.name for x in report.skipped] == ["lm_head"]
        assert rel_err(model(ids).logits, ref) < 1e-10
        errs = {}
        for init in ("fitted", "random"):
            m = tiny_llama()
            convert(m, STLConfig(tile=4, rank=24, init=init), filter=["model.layers.*"], only_if_cheaper=False)
            errs[init] = rel_err(m(ids).logits, ref)
    with capsys.disabled():
        print(f"\ntiny Llama, t=4 r=24, logits relative error: fitted {errs['fitted']:.3f}, "
              f"random {errs['random']:.3f}")
    assert errs["fitted"] > 1e-3  # an approximation at r=24 ...
    assert errs["fitted"] < 0.8 * errs["random"]  # ... much closer than an unstructured one


def test_calibration_groups_follow_execution_order():
    """Sequential calibration captures, per pass, the next layers that share one input tensor
    (q/k/v, then o, then gate/up, then down) and stops the forward there."""
    from stl_torch.calibrate import capture_next_group
    model = tiny_llama()
    ids = torch.randint(0, 64, (2, 8))
    pending = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and "layers" in n}
    seen = []
    for _ in range(4):
        caps = capture_next_group(model, pending, [ids, ids], 4, 10_000)
        seen.append(sorted(n.split(".")[-1] for n in caps))
        for n, x in caps.items():
            assert x.shape == (32, pending[n].in_features)  # both batches, 2 x 8 rows each
            del pending[n]
    assert seen == [["k_proj", "q_proj", "v_proj"], ["o_proj"], ["gate_proj", "up_proj"], ["down_proj"]]
    assert all(n.startswith("model.layers.1.") for n in pending)


def test_calibration_groups_are_not_fooled_by_reused_memory():
    """A layer whose input sits where the group's first input was (freed and reallocated, or overwritten in
    place) is not in that group: it must see the first layer converted."""
    from stl_torch.calibrate import capture_next_group

    class Chain(nn.Module):
        def __init__(self, in_place):
            super().__init__()
            self.fc1, self.fc2, self.in_place = nn.Linear(1024, 1024), nn.Linear(1024, 1024), in_place

        def forward(self, x):
            if self.in_place:
                h = x + 1
                return self.fc2(h.copy_(self.fc1(h)))
            return self.fc2(self.fc1(x + 1) + 1)  # fc1's input is freed before fc2's: often the same memory

    x = torch.randn(4, 7, 1024, dtype=torch.float64)
    for in_place in (True, False):
        model = Chain(in_place).double()
        for _ in range(10):
            assert list(capture_next_group(model, {"fc1": model.fc1, "fc2": model.fc2}, [x], 4, 10_000)) == ["fc1"]


def test_distill_calibration_fits_encoders_where_lstsq_cannot():
    """calibration="distill" trains E, D and Wt: better than data-free on held-out tiles, also
    where least squares is off (max_unknowns=0), and the kept error is the best of the three."""
    torch.manual_seed(0)
    basis = torch.randn(6, 32, dtype=torch.float64)
    data = [torch.randn(4, 16, 6, dtype=torch.float64) @ basis for _ in range(8)]
    held = torch.randn(4, 16, 6, dtype=torch.float64) @ basis

    def model():
        torch.manual_seed(1)
        return nn.Sequential(nn.Linear(32, 32)).double()

    ref = model()(held)
    cfg = STLConfig(tile=4, rank=24, init="fitted", causal=True)
    for max_unknowns in (0, 10_000):
        free, cal = model(), model()
        convert(free, cfg, only_if_cheaper=False)
        rep = convert(cal, cfg, calibration_data=data, calibration=CalibrationConfig(
            method="distill", distill_steps=150, max_unknowns=max_unknowns, rows_per_step=128), only_if_cheaper=False)
        x = rep.converted[0]
        assert (x.err_lstsq is None) == (max_unknowns == 0)
        assert x.err_distill is not None
        assert x.err_calibrated == min(e for e in (x.err_data_free, x.err_lstsq, x.err_distill)
                                       if e is not None)
        assert x.err_distill < 0.9 * x.err_data_free, x
        assert rel_err(cal(held), ref) < 0.9 * rel_err(free(held), ref)
        # the distilled E, D stay causal: a later token of a tile never reaches an earlier one
        x = torch.randn(1, 8, 32, dtype=torch.float64)
        x2 = x.clone()
        x2[0, 3] += 1.0
        with torch.no_grad():
            d = (cal(x2) - cal(x))[0].abs().amax(-1)
        assert d[:3].max() == 0 and d[3] > 0


@pytest.mark.parametrize("kw, msg", [
    (dict(method="gptq"), "'method' must be one of"),
    (dict(distill_steps=-1), "'distill_steps' must be an integer >= 0"),
    (dict(max_rows=0), "'max_rows' must be an integer with max_rows >= 1"),
    (dict(distill_lr=0.0), "'distill_lr' must be a positive number"),
])
def test_calibration_options_are_checked(kw, msg):
    with pytest.raises(ValueError, match=msg):
        CalibrationConfig(**kw)
    model = nn.Sequential(nn.Linear(8, 8))
    with pytest.raises(ValueError, match="'calibration' must be a CalibrationConfig"):
        convert(model, STLConfig(tile=4, rank=8), calibration_data=[torch.randn(4, 8)], calibration="lstsq")
    assert isinstance(model[0], nn.Linear)  # nothing converted


class Pooled(nn.Module):
    """Token layers (3-D inputs) and a head on the pooled vector (2-D input: no token axis)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(128, 256), nn.Linear(256, 128)
        self.head = nn.Linear(128, 256)

    def forward(self, x):
        return self.head(self.fc2(torch.relu(self.fc1(x))).mean(1))


def test_example_input_skips_layers_that_only_see_2d_inputs():
    x = torch.randn(2, 8, 128)
    reason = "2-D input (batch, features): STL would compute it row by row, costing more than dense"
    for kw in ({"example_input": x}, {"calibration_data": [x]}):
        torch.manual_seed(0)
        model = Pooled()
        report = convert(model, STLConfig(tile=4, rank=24), **kw)
        assert {x.name: x.reason for x in report.skipped} == {"head": reason}
        assert isinstance(model.head, nn.Linear) and isinstance(model.fc1, STLinear)
    torch.manual_seed(0)
    model = Pooled()  # without an example the head cannot be told apart: converted
    assert not convert(model, STLConfig(tile=4, rank=24)).skipped and isinstance(model.head, STLinear)


def test_output_embedding_is_skipped():
    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.out = nn.Linear(64, 64), nn.Linear(64, 128)

        def get_output_embeddings(self):
            return self.out

        def forward(self, x):
            return self.out(self.body(x))

    model = LM()
    report = convert(model, STLConfig(tile=4, rank=8, init="random"), only_if_cheaper=False)
    assert {x.name: x.reason for x in report.skipped} == {
        "out": "output embedding (read through .weight by resize_token_embeddings/tie_weights)"}
    assert isinstance(model.body, STLinear) and isinstance(model.out, nn.Linear)
    llama = tiny_llama()  # untied lm_head: transformers reads llama.lm_head.weight
    report = convert(llama, STLConfig(tile=4, rank=24), only_if_cheaper=False)
    assert [x.name for x in report.skipped] == ["lm_head"] and llama.get_output_embeddings().weight is not None


def test_conversion_is_recorded_in_the_hf_config():
    llama = tiny_llama()
    cfg = STLConfig(tile=4, rank=24, causal=True)
    convert(llama, cfg, filter=["*.mlp.*"], only_if_cheaper=False)
    convert(llama, STLConfig(tile=2, rank=7, init="strassen"), filter=["*.self_attn.*"], only_if_cheaper=False)
    rec = llama.config.stl_torch
    assert rec["root"] == "LlamaForCausalLM" and len(rec["layers"]) == 14
    assert rec["configs"][rec["layers"]["model.layers.0.mlp.up_proj"]] == cfg.resolved(True).to_dict()
    assert rec["configs"][rec["layers"]["model.layers.1.self_attn.q_proj"]]["tile"] == 2
    assert "stl_torch" in llama.config.to_dict()  # what save_pretrained writes into config.json


def test_plan_leaves_the_model_untouched_and_apply_carries_it_out():
    from stl_torch import apply_conversion, plan_conversion
    model = vit(1)
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    before = model(x)
    plan = plan_conversion(model, STLConfig(tile=2, rank=7, init="strassen"), only_if_cheaper=False)
    assert not plan.applied and "a plan: the model is unchanged" in str(plan)
    assert not any(isinstance(m, STLinear) for m in model.modules())
    assert {x.name for x in plan.converted} == {"patch_embed", "head"} | {
        f"blocks.{i}.{n}" for i in range(2) for n in ("attn.qkv", "attn.proj", "mlp.0", "mlp.2")}
    report = apply_conversion(model, plan)
    assert report is plan and report.applied and "converted" in str(report)
    assert all(isinstance(model.get_submodule(x.name), STLinear) for x in report.converted)
    assert rel_err(model(x), before) < 1e-10  # exact decomposition
    with pytest.raises(ValueError, match="unapplied ConversionReport"):
        apply_conversion(model, plan)


class ReadsWeight(nn.Module):
    """timm eva-style attention: the qkv bias is assembled by hand, the weight read directly."""

    def __init__(self, d=16):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(3 * d))
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        return self.proj(F.linear(x, self.qkv.weight, self.q_bias).chunk(3, -1)[0])


def test_layers_whose_parent_reads_weight_stay_dense():
    model = ReadsWeight()
    report = convert(model, STLConfig(tile=4, rank=24), only_if_cheaper=False)
    assert {x.name: x.reason for x in report.skipped} == {
        "qkv": "ReadsWeight reads self.qkv.weight (STLinear has no dense weight)"}
    assert isinstance(model.proj, STLinear)
    model(torch.randn(2, 8, 16))  # runs: nothing converted reads .weight


def test_example_input_trial_restores_the_dense_model_when_the_converted_one_fails():
    class Indirect(nn.Module):  # reads the weight in a way no source scan sees
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 16)

        def forward(self, x):
            return F.linear(x, getattr(self.fc, "wei" + "ght"))

    model = Indirect()
    with pytest.raises(RuntimeError, match="fails on example_input.*dense layers were restored"):
        convert(model, STLConfig(tile=4, rank=24), only_if_cheaper=False, example_input=torch.randn(2, 8, 16))
    assert type(model.fc) is nn.Linear
    model(torch.randn(2, 8, 16))
    report = convert(model, STLConfig(tile=4, rank=24), only_if_cheaper=False)  # without an example: converted
    assert report.converted and isinstance(model.fc, STLinear)


def test_mapping_inputs_such_as_batch_encoding_are_accepted():
    from collections import UserDict

    from stl_torch import flops

    class Encoding(UserDict):  # what a tokenizer returns: a Mapping, not a dict
        pass

    class Kw(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(128, 256)

        def forward(self, input_ids, attention_mask=None):
            return self.fc(input_ids)

    batch = Encoding(input_ids=torch.randn(2, 8, 128), attention_mask=torch.ones(2, 8))
    model = Kw()
    report = convert(model, STLConfig(tile=4, rank=24), calibration_data=[batch])
    assert report.converted and report.layers[0].err_calibrated is not None
    assert flops(model, batch).total_macs > 0


def test_padded_calibration_batches_need_token_shaped_layer_inputs():
    """With a padded attention_mask, calibration leaves each row's padding out; a layer whose input is not
    (batch, tokens, features) of the call cannot tell its padding rows apart: a ValueError names it, and
    the model is left as it was."""
    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(128, 256)

        def forward(self, input_ids, attention_mask=None):
            return self.fc(input_ids.reshape(1, -1, input_ids.shape[-1]))

    model = Flat()
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[0, :3] = 0
    with pytest.raises(ValueError, match=r"padded attention_mask of shape \(2, 8\), but layer 'fc' gets an input "
                                         r"of shape \(1, 16, 128\)"):
        convert(model, STLConfig(tile=4, rank=24),
                calibration_data=[{"input_ids": torch.randn(2, 8, 128), "attention_mask": mask}])
    assert type(model.fc) is nn.Linear and not model._forward_pre_hooks


def test_classifier_head_is_kept_dense_and_report_agrees_with_flops():
    from stl_torch import flops

    class Classifier(Pooled):
        def get_classifier(self):
            return self.head

    torch.manual_seed(0)
    model = Classifier()
    report = convert(model, STLConfig(tile=4, rank=24))
    assert [x.name for x in report.skipped] == ["head"] and "classifier head" in report.skipped[0].reason
    x = torch.randn(2, 8, 128)
    f = flops(model, x)
    for entry in report.layers:  # per-token MACs of the report = the counted MACs / tokens
        row = next(r for r in f.layers if r.name == entry.name)
        tokens = 2 if entry.name == "head" else 16
        assert row.macs / tokens == pytest.approx(entry.macs_after), entry.name


def test_a_filter_that_matches_nothing_warns():
    with pytest.warns(UserWarning, match="matched none of the model's"):
        report = convert(vit(), STLConfig(tile=2, rank=7), filter=["*.nonexistent.*"])
    assert not report.converted
    with pytest.warns(UserWarning, match="looks like a regular expression"), \
            pytest.warns(UserWarning, match="matched none"):
        convert(vit(), STLConfig(tile=2, rank=7), filter=[r"blocks\.\d+\.(mlp|attn)"])
