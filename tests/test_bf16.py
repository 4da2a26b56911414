"""The bfloat16 kernels of the avx512bf16 level (csrc/cpu/isa_avx512bf16.c): encode, decode and
the backward's correlations of 4x4 tiles on vdpbf16ps (encode and decode on AMX tiles at the amx
level, csrc/cpu/isa_amx.c; on an AMX CPU this file runs again at the avx512bf16 level), where a bfloat16 call's GEMMs run in
bfloat16. Against float64 rounded where the op rounds (test_kernels.composition), on shapes that
cut every chunk of the kernels short: M not a multiple of 4, N/t and P/t neither a multiple of the
16-tile (encode, decode) nor of the 8-tile (correlate) chunks, N/t odd (the correlation's last tile
pair is a single tile), r odd (decode's last product pair is one product), r = 64 (the most words
a call holds), a narrow layer (N/t = 3), parts of the correlation long enough to flush their
float32 sums more than once. test_kernels.py's own bfloat16 tests run them too; this
file adds the shapes and the zero-coefficient cases that the pairs of vdpbf16ps make special:
a zero coefficient in either half of a pair, or both."""
import os
import sys

import pytest
import torch

import stl_torch
from conftest import operands, rel_err
from test_kernels import composition, ulp_diff

fwd = torch.ops.stl_torch.stl_forward.default
bwd = torch.ops.stl_torch.stl_backward.default
INFO = stl_torch._C.abi_info()
ACTIVE = pytest.mark.skipif(INFO["cpu_isa"] not in ("avx512bf16", "amx") or not INFO["cpu_bf16_gemm"],
                            reason="the bfloat16 kernels run at the avx512bf16 and amx levels with bfloat16 GEMMs")


def _cpu_flags():
    try:
        return open("/proc/cpuinfo").read()
    except OSError:
        return ""


def _cpu_has_avx512_bf16():
    flags = _cpu_flags()
    return " avx512_bf16" in flags and " avx512bw" in flags and " avx512vl" in flags


# AMX-BF16 tiles (Intel Xeon 4th gen and later): the amx level, on Linux that grants their state
AMX = " amx_bf16" in _cpu_flags() and " amx_tile" in _cpu_flags() and sys.platform.startswith("linux")
BF = torch.bfloat16

SHAPES = {  # (M, N, P, r)
    "odd": (4 * 37 + 1, 4 * 35, 4 * 19, 25),      # N/t = 35 (odd, 2 chunks + 3), P/t = 19, r odd
    "wide_r": (4 * 20 + 2, 4 * 18, 4 * 33, 64),   # the most products of a 4x4 tile
    "narrow": (4 * 50 + 3, 4 * 3, 4 * 5, 5),      # fewer tiles than one chunk of each kernel
    "model": (4 * 64, 4 * 64, 4 * 128, 24),       # T2T-ViT-like, whole chunks
    # each correlation part (3 tile-rows of 131 tiles) flushes its float32 sums more than once
    "long": (4 * 192 - 1, 4 * 131, 4 * 21, 8),
}


@pytest.mark.skipif(not _cpu_has_avx512_bf16(), reason="the CPU has no AVX512-BF16")
def test_the_level_is_chosen_and_can_be_forced_off():
    """Chosen by default where /proc/cpuinfo reports avx512_bf16 (amx above it where it also
    reports AMX-BF16 tiles); STL_TORCH_CPU_ISA=avx512 forces the plain AVX-512 level."""
    import subprocess
    best = "amx" if AMX else "avx512bf16"
    assert INFO["cpu_isa_supported"] == best
    if os.environ.get("STL_TORCH_CPU_ISA") is None:
        assert INFO["cpu_isa"] == best
    r = subprocess.run([sys.executable, "-c", "import stl_torch; print(stl_torch._C.abi_info()['cpu_isa'])"],
                       env=dict(os.environ, STL_TORCH_CPU_ISA="avx512"), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0 and r.stdout.split()[-1] == "avx512", r.stderr[-500:]


@ACTIVE
@pytest.mark.parametrize("name", SHAPES)
@pytest.mark.parametrize("with_gz", [False, True])
def test_rounds_like_the_composition(name, with_gz):
    """Every output and gradient against float64 rounded at the op's points: elements equal or 1 ulp
    apart except where float32 sums round an intermediate the other way (rare, and small against
    the sum of |terms|). A lost or misplaced term (a wrong lane, pair or tile order) fails at once."""
    M, N, P, r = SHAPES[name]
    t = 4
    ins = operands(M, N, P, t, r, BF, seed=11)
    g = torch.randn(M, P, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(BF)
    y, z = fwd(*ins, t, True)
    gz = torch.randn(z.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64).to(BF) if with_gz \
        else torch.empty(0, dtype=BF)
    grads = bwd(g, gz, *ins[:4], z, True, t)
    if with_gz:  # dL/dZ enters Gz before its rounding: the composition's Gz = round(encode(G, D^T) + gz)
        y_ref, z_ref, g_ref = _composition_gz(ins, t, g, gz)
        y_s, z_s, g_s = _composition_gz([v.abs() for v in ins], t, g.abs(), gz.abs(), rounded=False)
    else:
        y_ref, z_ref, g_ref = composition(ins, t, g)
        y_s, z_s, g_s = composition([v.abs() for v in ins], t, g.abs(), rounded=False)
    outs = [("y", y, y_ref, y_s), ("z", z, z_ref, z_s)]
    outs += [(n, a, b, s) for n, a, b, s in zip(("x", "E", "Wt", "D", "bias"), grads, g_ref, g_s)]
    for n, got, want, scale in outs:
        assert got.dtype == BF and got.shape == want.shape, n
        d = ulp_diff(got, want.to(BF), BF)
        off = (d.abs() > 1) & ((got.double() - want).abs() > 2.0 ** -18 * scale)
        assert off.double().mean() < 2e-3, (n, off.double().mean().item())
        assert not ((got.double() - want).abs() > 2.0 ** -9 * scale).any(), n
        assert (d == 0).double().mean() > 0.98, (n, (d == 0).double().mean().item())
        assert rel_err(got, want) < 3e-3, (n, rel_err(got, want))


def _composition_gz(ins, t, g, gz, rounded=True):
    """composition() with dL/dZ = gz: Gz = encode(G, D^T) + gz, rounded once."""
    from stl_torch.tiling import decode, encode_activations, pad_rows
    q = (lambda v: v.to(BF).double()) if rounded else (lambda v: v)
    x, E, Wt, D, b = (v.double() for v in ins)
    g, gz = g.double(), gz.double()
    M, N, P, r = x.shape[0], x.shape[1], g.shape[1], E.shape[0]
    xe = q(encode_activations(x, E, t))
    z = q(torch.bmm(xe, Wt))
    gzz = q(encode_activations(g, D.t(), t) + gz)
    dxe = q(torch.bmm(gzz, Wt.transpose(1, 2)))
    xt, gt = pad_rows(x, t).reshape(-1, t, N // t, t), pad_rows(g, t).reshape(-1, t, P // t, t)
    grads = [decode(dxe, E.t(), t, M), torch.einsum("lik,iakc->lac", dxe, xt).reshape(r, t * t),
             torch.bmm(xe.transpose(1, 2), gzz), torch.einsum("lij,iajb->abl", z, gt).reshape(t * t, r), g.sum(0)]
    return decode(z, D, t, M) + b, z, grads


@ACTIVE
@pytest.mark.parametrize("r", [9, 24])
def test_a_zero_in_either_half_of_a_pair_is_skipped(r):
    """vdpbf16ps multiplies pairs: tile elements (2h, 2h+1) in the encode, products (2q, 2q+1) in the
    decode. A zero coefficient in one half must mask that half's value (inf there), not the other;
    a pair of two zeros is skipped. Encode: E[l, j] = 0 for j = 5 (odd half) or 4 (even half), or
    both; x at element j of tile (0, 0) is inf: product l alone stays finite. Decode: D[j, l] = 0,
    products l (and its pair partner, for both) have inf at tile column 0: output j of tile (0, 0)
    alone stays finite."""
    M, N, P, t = 8, 8, 8, 4
    inf = float("inf")
    for l in range(r):
        for zeros in ([5], [4], [4, 5]):
            x, E, Wt, D, b = operands(M, N, P, t, r, dtype=BF, seed=l)
            for j in zeros:
                E[l, j] = 0
                x[j // t, j % t] = inf
            _, z = fwd(x, E, Wt, D, b, t, True)
            assert torch.isfinite(z[:, 0]).all(-1).tolist() == [k == l for k in range(r)], (l, zeros)
    for j in range(t * t):
        for both in (False, True):
            l = j % r
            ls = [l, l ^ 1] if both and (l ^ 1) < r else [l]
            x, E, Wt, D, b = operands(M, N, P, t, r, dtype=BF, seed=j)
            for k in ls:
                Wt[k, :, 0], D[j, k] = inf, 0
            y, _ = fwd(x, E, Wt, D, b, t, False)
            assert torch.isfinite(y[:t, :t]).flatten().tolist() == [k == j for k in range(t * t)], (j, ls)


@ACTIVE
def test_causal_gradients_stay_finite():
    """The backward's encode of G (coefficients D^T) and decode of dX (E^T) skip zero terms too:
    with lower-triangular tile masks a NaN in a later row's gradient never reaches earlier inputs."""
    M, N, P, t, r = 8, 16, 16, 4, 24
    x, E, Wt, D, b = operands(M, N, P, t, r, dtype=BF, seed=3)
    rows = torch.arange(t * t) // t
    # output row a reads only input rows <= a: E[l, j] nonzero for one input row per product,
    # D[j, l] zero when product l's input row is after j's output row
    src = torch.arange(r) % t
    E = torch.where(rows[None, :] == src[:, None], E, torch.zeros((), dtype=BF))
    D = torch.where(src[None, :] <= rows[:, None], D, torch.zeros((), dtype=BF))
    g = torch.randn(M, P, dtype=torch.float64).to(BF)
    g[1] = float("nan")  # output row 1 of tile-row 0
    _, z = fwd(x, E, Wt, D, b, t, True)
    dx = bwd(g, torch.empty(0, dtype=BF), x, E, Wt, D, z, True, t)[0]
    assert torch.isfinite(dx[2:]).all() and not torch.isfinite(dx[:2]).all()


@ACTIVE
@pytest.mark.parametrize("seed", [0, 1])
def test_non_finite_chunks_among_finite_ones(seed):
    """The amx level multiplies a chunk of 16 tiles on the tile unit only when its inputs are all
    finite (0 * inf must be skipped, not NaN), else on vdpbf16ps, in a pipeline two chunks deep:
    with infs in a few scattered chunks of a many-chunk layer whose D and E have zeros, every
    output equals the float64 composition in which zero coefficients skip their terms (finite
    values within bfloat16 rounding, the same non-finite pattern). N/t and P/t are even: torch's
    bfloat16 GEMM (oneDNN, as dense F.linear) carries an inf of one row into the row before it
    when its inner dimension is odd, on AMX CPUs at least."""
    M, N, P, t, r = 4 * 23 + 2, 4 * 36, 4 * 44, 4, 24
    x, E, Wt, D, b = operands(M, N, P, t, r, dtype=BF, seed=seed)
    g = torch.Generator().manual_seed(seed)
    E = torch.where(torch.rand(E.shape, generator=g) < 0.2, torch.zeros((), dtype=BF), E)
    D = torch.where(torch.rand(D.shape, generator=g) < 0.2, torch.zeros((), dtype=BF), D)
    rows = torch.randint(M, (3,), generator=g)
    cols = torch.randint(N, (3,), generator=g)
    x[rows, cols] = float("inf")  # encode: inf in three chunks of x
    Wt[torch.randint(r, (2,), generator=g), :, torch.randint(P // t, (2,), generator=g)] = float("inf")
    y, z = fwd(x, E, Wt, D, b, t, True)
    # float64 reference with zero coefficients' terms skipped: encode per product, then decode
    xd, Ed, Wd, Dd = x.double(), E.double(), Wt.double(), D.double()
    Mt = (M + t - 1) // t
    xp = torch.zeros(Mt * t, N, dtype=torch.float64)
    xp[:M] = xd
    tiles = xp.reshape(Mt, t, N // t, t).permute(0, 2, 1, 3).reshape(Mt, N // t, t * t)
    def skip_zero(coef, vals):  # sum_k coef[k] * vals[..., k] with coef == 0 terms skipped
        return torch.where(coef == 0, torch.zeros(()), coef * vals).sum(-1)
    xe = torch.stack([skip_zero(Ed[l], tiles) for l in range(r)])  # r, Mt, Nt
    xe = xe.to(BF).double()  # the kernel rounds Xe to bfloat16 for the bfloat16 GEMMs
    zr = torch.bmm(xe, Wd).to(BF).double()  # r, Mt, Pt
    assert torch.equal(torch.isfinite(z.double()), torch.isfinite(zr))
    zt = zr.permute(1, 2, 0)  # Mt, Pt, r
    yt = torch.stack([skip_zero(Dd[j], zt) for j in range(t * t)], -1)  # Mt, Pt, t*t
    yr = yt.reshape(Mt, P // t, t, t).permute(0, 2, 1, 3).reshape(Mt * t, P)[:M] + b.double()
    fin = torch.isfinite(yr)
    assert not fin.all() and fin.any()
    assert torch.equal(torch.isfinite(y.double()), fin)
    assert rel_err(y.double()[fin], yr[fin]) < 2e-2


@pytest.mark.skipif(INFO["cpu_isa"] != "amx" or os.environ.get("STL_TORCH_CPU_ISA") is not None,
                    reason="runs the avx512bf16 level's kernels where the amx level is the default")
def test_the_avx512bf16_level_too():
    from test_kernels import rerun_in_subprocess
    rerun_in_subprocess(["test_bf16.py"], {"STL_TORCH_CPU_ISA": "avx512bf16"})


@pytest.mark.skipif(not INFO["cpu_bf16_gemm"], reason="the r GEMMs run in float32 here")
@pytest.mark.parametrize("seed", [0, 1])
def test_inner_dimension_off_32_keeps_rows_apart(seed):
    """torch's CPU bfloat16 GEMM carries an inf of one row of A into the previous row of C when its
    inner dimension is above 32 and not a multiple of 32 (oneDNN on an AMX Xeon; dense F.linear
    alike): STL's forward (inner N/t) and dX (inner P/t) GEMMs pad it, so an inf in one token
    reaches only its own tile's outputs and, backwards, only its own tile's input gradients.
    N/t = P/t = 37; 40 tile-rows (oneDNN leaked with 20 rows of A or more, not with 12 or 16)."""
    M, N, P, t, r = 4 * 40, 4 * 37, 4 * 37, 4, 24
    x, E, Wt, D, b = operands(M, N, P, t, r, dtype=BF, seed=seed)
    row = 4 * 9 + 1  # a row of tile-row 9
    x[row, 90] = float("inf")
    y, z = fwd(x, E, Wt, D, b, t, True)
    bad = ~torch.isfinite(y.double()).all(1)
    assert bad[4 * 9:4 * 10].any() and not bad[:4 * 9].any() and not bad[4 * 10:].any(), bad.nonzero().flatten()
    x[row, 90] = 1.0
    y, z = fwd(x, E, Wt, D, b, t, True)
    for col in (0, 3, 90):  # the leaked element was the next row's first in some layouts
        g = torch.randn(M, P, dtype=torch.float64).to(BF)
        g[row, col] = float("inf")
        dx = bwd(g, torch.empty(0, dtype=BF), x, E, Wt, D, z, True, t)[0]
        bad = ~torch.isfinite(dx.double()).all(1)
        assert bad[4 * 9:4 * 10].any() and not bad[:4 * 9].any() and not bad[4 * 10:].any(), (col, bad.nonzero().flatten())
