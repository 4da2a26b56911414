"""STLinear: nn.Linear's contract, padding, exactness with Strassen, state_dict, from_linear."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stl_torch import STLConfig, STLinear
from stl_torch.tiling import tensor_error, encode_weight, stl_reference

from conftest import rel_err


def strassen():
    """Strassen's rule in (E, F, D) form, written out independently of stl_torch.init."""
    E = [[1, 0, 0, 1], [0, 0, 1, 1], [1, 0, 0, 0], [0, 0, 0, 1], [1, 1, 0, 0], [-1, 0, 1, 0], [0, 1, 0, -1]]
    Fw = [[1, 0, 0, 1], [1, 0, 0, 0], [0, 1, 0, -1], [-1, 0, 1, 0], [0, 0, 0, 1], [1, 1, 0, 0], [0, 0, 1, 1]]
    D = [[1, 0, 0, 1, -1, 0, 1], [0, 0, 1, 0, 1, 0, 0], [0, 1, 0, 1, 0, 0, 0], [1, -1, 1, 0, 0, 1, 0]]
    return (torch.tensor(v, dtype=torch.float64) for v in (E, Fw, D))


def kron_square(E, Fw, D):
    """t=4 from t=2: a 4x4 tile is a 2x2 block matrix of 2x2 blocks (index 2*outer + inner)."""
    def k_enc(M):  # M[l, a*2+c] -> M4[(l1,l2), (2a1+a2)*4 + 2c1+c2]
        m = M.reshape(7, 2, 2)
        return torch.einsum("pac,qbd->pqabcd", m, m).reshape(49, 4, 4).reshape(49, 16)
    d = D.reshape(2, 2, 7)
    D4 = torch.einsum("abp,cdq->acbdpq", d, d).reshape(16, 49)
    return k_enc(E), k_enc(Fw), D4


def test_explicit_strassen_is_exact():
    E, Fw, D = strassen()
    assert tensor_error(E, Fw, D, 2) < 1e-15
    assert tensor_error(*kron_square(E, Fw, D), 4) < 1e-15


@pytest.mark.parametrize("t,r", [(2, 7), (4, 49)])
def test_stlinear_equals_dense_with_exact_decomposition(t, r):
    E, Fw, D = strassen() if t == 2 else kron_square(*strassen())
    lin = nn.Linear(32, 24, dtype=torch.float64)
    m = STLinear(32, 24, tile=t, rank=r, init="random", dtype=torch.float64)
    with torch.no_grad():
        m.E.copy_(E)
        m.D.copy_(D)
        m.Wt.copy_(encode_weight(lin.weight, Fw, t))
        m.bias.copy_(lin.bias)
    x = torch.randn(5, 11, 32, dtype=torch.float64)
    assert rel_err(m(x), F.linear(x, lin.weight, lin.bias)) < 1e-14


@pytest.mark.parametrize("t,r", [(2, 7), (4, 49)])
def test_from_linear_strassen_init_is_exact(t, r):
    lin = nn.Linear(16, 8, dtype=torch.float64)
    m = STLinear.from_linear(lin, tile=t, rank=r, init="strassen")
    x = torch.randn(3, 8, 16, dtype=torch.float64)
    assert rel_err(m(x), lin(x)) < 1e-13


def test_leading_dims_and_per_sequence_padding():
    m = STLinear(16, 12, rank=10, init="random", dtype=torch.float64)
    x = torch.randn(2, 3, 7, 16, dtype=torch.float64)  # 7 tokens: one partial tile per sequence
    y = m(x)
    assert y.shape == (2, 3, 7, 12)
    for i in range(2):
        for j in range(3):
            ref = stl_reference(x[i, j], m.E, m.Wt, m.D, m.bias, tile=4)  # one sequence alone
            assert rel_err(y[i, j], ref) < 1e-13
    # a tile never spans two sequences: changing sequence (1, 2) leaves every other one alone
    x2 = x.clone()
    x2[1, 2] += 1
    y2 = m(x2)
    assert torch.equal(y2[0], y[0]) and torch.equal(y2[1, :2], y[1, :2])
    assert not torch.equal(y2[1, 2], y[1, 2])


def test_output_is_contiguous_like_nn_linear():
    """nn.Linear's output is contiguous, so code calls .view() on it: STL's must be too, also when
    padded rows were dropped (19 tokens) and for 2-D / 1-D inputs."""
    m = STLinear(64, 256)
    for x in (torch.randn(2, 19, 64), torch.randn(5, 64), torch.randn(64), torch.randn(3, 2, 6, 64),
              torch.randn(0, 7, 64)):
        y = m(x)
        assert y.is_contiguous() and y.shape == x.shape[:-1] + (256,)
        y.view(-1, 256)


def test_2d_input_rows_never_mix():
    """A 2-D input (B, C) has no token axis: each row is its own sequence, padded to one tile, so a
    sample's output never depends on its batch-mates (docs/operator.md section 7)."""
    m = STLinear(8, 12, rank=6, init="random", dtype=torch.float64)
    x = torch.randn(4, 8, dtype=torch.float64)
    y = m(x)
    for i in range(4):  # each row as one sequence of one token (the operator zero-pads its tile)
        assert rel_err(y[i], stl_reference(x[i:i + 1], m.E, m.Wt, m.D, m.bias, tile=4)[0]) < 1e-14
        alone = m(x[i:i + 1])
        assert (alone[0] - y[i]).abs().max() <= 1e-15
    x2 = x.clone()
    x2[1] = torch.randn(8, dtype=torch.float64) * 100
    y2 = m(x2)
    assert torch.equal(y2[0], y[0]) and torch.equal(y2[2:], y[2:]) and not torch.equal(y2[1], y[1])
    v = x[2]  # 1-D: one row
    assert m(v).shape == (12,) and (m(v) - y[2]).abs().max() <= 1e-15
    assert m(torch.zeros(0, 8, dtype=torch.float64)).shape == (0, 12)


def test_meta_device_then_to_empty_and_reset_parameters():
    """A layer built on the meta device skips its init; to_empty + reset_parameters must rebuild the
    causal masks (buffers), not leave to_empty's garbage in them."""
    torch.manual_seed(0)
    m = STLinear(64, 64, causal=True, device="meta")
    assert m.E.is_meta and m.mask_E.is_meta
    m = m.to_empty(device="cpu")
    with torch.no_grad():  # what uninitialised memory may hold
        m.mask_E.fill_(float("nan"))
        m.mask_D.fill_(7.0)
    m.reset_parameters()
    from stl_torch.init import causal_masks
    mE, mD = causal_masks(4, 24)
    assert torch.equal(m.mask_E, mE.float()) and torch.equal(m.mask_D, mD.float())
    x = torch.randn(2, 8, 64)
    y = m(x)
    assert torch.isfinite(y).all()
    x2 = x.clone()
    x2[:, 5:] += 1
    assert torch.equal(m(x2)[:, :5], y[:, :5])  # causal: later tokens change nothing before them
    # the meta skeleton + load_state_dict path (how checkpoints are loaded without an init)
    ref = STLinear(64, 64, causal=True, init="random")
    n = nn.Module.to_empty(STLinear(64, 64, causal=True, device="meta"), device="cpu")
    n.load_state_dict(ref.state_dict())
    assert torch.equal(n(x), ref(x))


@pytest.mark.parametrize("kw,name", [
    ({"tile": 0}, "tile"), ({"tile": -4}, "tile"), ({"tile": 2.0}, "tile"), ({"tile": 32}, "tile"),
    ({"tile": True}, "tile"), ({"tile": 2, "rank": 9}, "rank"), ({"rank": 65}, "rank"), ({"rank": 0}, "rank"),
    ({"in_features": 8.0}, "in_features"), ({"in_features": 0}, "in_features"), ({"out_features": -8}, "out_features"),
    ({"out_features": "8"}, "out_features"),
])
def test_constructor_validation_names_the_argument(kw, name):
    args = {"in_features": 8, "out_features": 8}
    args.update(kw)
    with pytest.raises(ValueError, match=f"'{name}'"):
        STLinear(args.pop("in_features"), args.pop("out_features"), **args)
    if name in ("tile", "rank"):
        cfg = {k: v for k, v in kw.items() if k in ("tile", "rank")}
        with pytest.raises(ValueError, match=f"'{name}'"):
            STLConfig(**cfg)


def test_weight_is_a_clear_attribute_error_and_module_machinery_works():
    m = STLinear(16, 8, rank=6, init="random")
    with pytest.raises(AttributeError, match=r"no dense 'weight'.*'Wt'.*dense_weight\(\)"):
        m.weight
    assert not hasattr(m, "weight")
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        m.nope  # any other missing attribute: nn.Module's usual error
    assert set(m.state_dict()) == {"E", "Wt", "D", "bias"}
    assert [n for n, _ in m.named_parameters()] == ["E", "Wt", "D", "bias"]
    assert "in_features=16" in repr(m) and m.E.shape == (6, 16)
    assert isinstance(copy.deepcopy(m), STLinear)


@pytest.mark.parametrize("t,r", [(2, 7), (4, 49)])
def test_dense_weight_of_an_exact_layer(t, r):
    lin = nn.Linear(16, 8, dtype=torch.float64)
    m = STLinear.from_linear(lin, tile=t, rank=r, init="strassen")
    W = m.dense_weight()
    assert W.shape == (8, 16) and (W - lin.weight).abs().max() < 1e-12
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    assert rel_err(m(x), F.linear(x, W, m.bias)) < 1e-13


def test_dense_weight_refuses_a_layer_that_mixes_rows():
    m = STLinear.from_linear(nn.Linear(16, 8), tile=4, rank=24, init="fitted")
    with pytest.raises(ValueError, match=r"not a dense linear map \(relative deviation 0\.[0-9]+"):
        m.dense_weight()


def test_constructor_contract():
    m = STLinear(16, 8, bias=False, dtype=torch.float64, tile=2, rank=5, init="random")
    assert m.bias is None and m.E.shape == (5, 4) and m.Wt.shape == (5, 8, 4) and m.D.shape == (4, 5)
    assert all(p.dtype == torch.float64 for p in m.parameters())
    assert m.in_features == 16 and m.out_features == 8
    r = repr(m)
    assert "in_features=16" in r and "tile=2" in r and "rank=5" in r and "bias=False" in r
    b = STLinear(8, 8, dtype=torch.bfloat16, rank=4, init="random")
    assert b(torch.randn(4, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16


@pytest.mark.parametrize("causal", [False, True])
def test_state_dict_round_trip(causal):
    a = STLinear(16, 8, rank=12, init="fitted", causal=causal)
    b = STLinear(16, 8, rank=12, init="random", causal=causal)
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 5, 16)
    assert torch.equal(a(x), b(x))
    assert set(a.state_dict()) == ({"E", "Wt", "D", "bias"} | ({"mask_E", "mask_D"} if causal else set()))


def test_every_parameter_gets_a_gradient():
    m = STLinear(16, 8, rank=12)
    m(torch.randn(2, 6, 16)).square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name


def test_fresh_layer_output_scale_is_like_nn_linear():
    torch.manual_seed(0)
    x = torch.randn(64, 256)
    dense = nn.Linear(256, 256)(x).std().item()
    for init in ("strassen", "fitted", "random"):
        s = STLinear(256, 256, init=init)(x).std().item()
        assert dense / 4 < s < dense * 4, (init, s, dense)


def test_autocast_bf16_casts_like_linear():
    m = STLinear(16, 8, rank=12)
    x = torch.randn(2, 8, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert y.dtype == torch.bfloat16
    ref = stl_reference(x.detach().reshape(-1, 16).bfloat16(), m.E.bfloat16(), m.Wt.bfloat16(),
                        m.D.bfloat16(), m.bias.bfloat16(), tile=4)
    assert rel_err(y.reshape(-1, 8), ref) < 2.5e-2
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and m.E.grad.dtype == torch.float32


def test_random_init_differs_per_layer_and_follows_manual_seed():
    torch.manual_seed(3)
    a, b = STLinear(16, 8, rank=6, init="random"), STLinear(16, 8, rank=6, init="random")
    assert not torch.equal(a.E, b.E)
    torch.manual_seed(3)
    a2 = STLinear(16, 8, rank=6, init="random")
    assert torch.equal(a.E, a2.E) and torch.equal(a.D, a2.D) and torch.equal(a.Wt, a2.Wt)
    # theory-backed inits are one fixed decomposition, whatever the global RNG
    s1, s2 = STLinear(16, 8, rank=6, init="fitted"), STLinear(16, 8, rank=6, init="fitted")
    assert torch.equal(s1.E, s2.E) and torch.equal(s1.D, s2.D)


@pytest.mark.parametrize("init", ["strassen", "fitted", "random"])
def test_ed_norm_rescales_encoders_not_the_operator(init):
    """ed_norm moves scale between (E, D) and Wt: same layer output, E rows / D columns at the norm."""
    x = torch.randn(3, 8, 16, dtype=torch.float64)
    outs = {}
    for ed_norm in (None, 1.0, 0.5):
        torch.manual_seed(0)
        m = STLinear(16, 12, tile=4, rank=24, init=init, seed=3, ed_norm=ed_norm, dtype=torch.float64)
        outs[ed_norm] = m(x)
        if ed_norm is not None:
            assert torch.allclose(m.E.norm(dim=1), torch.full((24,), ed_norm, dtype=torch.float64))
            assert torch.allclose(m.D.norm(dim=0), torch.full((24,), ed_norm, dtype=torch.float64))
    assert rel_err(outs[1.0], outs[None]) < 1e-12 and rel_err(outs[0.5], outs[None]) < 1e-12
    assert "ed_norm=1.0" in repr(STLinear(16, 12))


@pytest.mark.parametrize("bad", [0, -1.0, "1", True, float("nan")])
def test_ed_norm_is_checked(bad):
    with pytest.raises(ValueError, match="'ed_norm' must be None or a positive number"):
        STLinear(16, 12, ed_norm=bad)


def test_jit_script_is_refused_clearly():
    """torch.jit.script failed deep inside ("Expected a single top-level function"): now a clear
    RuntimeError naming what works instead, for the layer and for a model that holds one."""
    for m in (STLinear(16, 16, rank=8), nn.Sequential(nn.Linear(16, 16), STLinear(16, 16, rank=8))):
        with pytest.raises(RuntimeError, match="does not support torch.jit.script; use torch.compile or torch.export"):
            torch.jit.script(m)
