"""The CPU kernels on shapes that run every blocking path, against float64, at every ISA level
this CPU supports.

The kernels stream chunks of STL_KB = 64 tiles, split reductions into at most 64 fixed parts,
block the correlations' products by 4 and their tile elements by vector pairs, and process the
rows in blocks sized to the cache. The shapes below exceed each of those sizes without being a
multiple of it (ceil(M/t) = 134 > 64 parts, N/t = 70 and P/t = 67 > 64 tiles, r = 25 = 4*6 + 1),
with a partial last tile and the gradient through Z; and N/t = 260 past the GEMM's k passes of 256. `test_every_isa_level` reruns this file at
each lower ISA level and with blocks small enough that a call runs as many blocks, in
subprocesses (the level and block size are chosen once, at import).

Tolerances are measured: float32/float64 relative errors are a small factor above the worst case
seen; bfloat16/float16 are compared with a float64 reference rounded the way the op rounds (its
inputs are 16-bit, it computes in float32 and rounds each output once), element by element in
units of the last place, so a wrong rounding mode or a lost term shows.
"""
import os
import subprocess
import sys

import pytest
import torch

import stl_torch
from stl_torch.tiling import decode, encode_activations, pad_rows, stl_reference

from conftest import operands, rel_err

fwd = torch.ops.stl_torch.stl_forward.default
bwd = torch.ops.stl_torch.stl_backward.default

SHAPES = {  # (M, N, P, t, r)
    "t4": (4 * 133 + 3, 4 * 70, 4 * 67, 4, 25),
    "t2": (2 * 131 + 1, 2 * 66, 2 * 130, 2, 7),
    "t8": (8 * 70 + 5, 8 * 9, 8 * 66, 8, 33),
    "t3": (3 * 600 + 2, 3 * 5, 3 * 66, 3, 10),
    "wideK": (4 * 13 + 1, 4 * 260, 4 * 67, 4, 5),  # N/t = 260 > the GEMM's 256-deep k passes
    # a small Wt and temporaries (4,000 bytes per tile-row) past four block budgets of even the
    # largest default (4 MiB): the backward runs in blocks at the default block size, the last one
    # partial
    "tall": (4 * 4300 + 3, 4 * 9, 4 * 11, 4, 25),
    # a narrow layer (T2T-ViT's 64-wide ones): N/t = 16 is a whole number of vectors short of a
    # chunk (encode writes in place), P/t = 37 a partial one (3 vectors at 16 lanes, 2 GEMM strips)
    "narrow": (4 * 700 + 2, 4 * 16, 4 * 37, 4, 24),
}
# relative error in the Frobenius norm against float64 (worst measured here: float64 3.3e-15,
# float32 2.7e-7)
TOL = {torch.float64: 2e-14, torch.float32: 1.5e-6}
# dWt of "tall" sums 17,203 rows (MKL's float32 GEMM, as dense's own weight gradient does): up to
# 1.2e-6 measured over six seeds, the same with the backward in one block or in blocks
TOL_SCALE = {"tall": 2}
# 16-bit: elements may differ from the correctly rounded float64 result by at most 1 ulp, most are equal
ULP = {torch.bfloat16: 7, torch.float16: 10}  # mantissa bits


def ulp_diff(got, want, dtype):
    """(got - want) in units of the last place of want (both already rounded to dtype)."""
    w = want.double()
    e = torch.floor(torch.log2(w.abs().clamp_min(torch.finfo(dtype).tiny)))
    return (got.double() - w) / torch.exp2(e - ULP[dtype])


def reference(ins, t, g, gz):
    """Float64 outputs and gradients of the op, Z included (for a loss that also uses Z)."""
    ref = [v.detach().double().requires_grad_() for v in ins]
    x, E, Wt, D, b = ref
    z = torch.bmm(encode_activations(x, E, t), Wt)
    y = stl_reference(x, E, Wt, D, b, tile=t)
    torch.autograd.backward([y, z], [g.double(), gz.double()])
    return y.detach(), z.detach(), [v.grad for v in ref]


@pytest.mark.parametrize("name", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_every_path_against_float64(name, dtype):
    M, N, P, t, r = SHAPES[name]
    tol = TOL[dtype] * TOL_SCALE.get(name, 1)
    ins = operands(M, N, P, t, r, dtype, seed=hash(name) % 1000)
    g = torch.randn(M, P, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    y, z = fwd(*ins, t, True)
    gz = torch.randn(z.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(dtype)
    grads = bwd(g, gz, ins[0], ins[1], ins[2], ins[3], z, True, t)
    y_ref, z_ref, g_ref = reference(ins, t, g, gz)
    assert rel_err(y, y_ref) < tol and rel_err(z, z_ref) < tol
    for n, a, b in zip(("x", "E", "Wt", "D", "bias"), grads, g_ref):
        assert a.dtype == dtype and rel_err(a, b) < tol, (n, rel_err(a, b))
    # the same gradients when Z was not kept (recomputed per block)
    no_z = bwd(g, torch.empty(0, dtype=dtype), ins[0], ins[1], ins[2], ins[3], torch.empty(0, dtype=dtype), True, t)
    g_ref_noz = reference(ins, t, g, torch.zeros_like(gz))[2]
    for n, a, b in zip(("x", "E", "Wt", "D", "bias"), no_z, g_ref_noz):
        assert rel_err(a, b) < tol, (n, rel_err(a, b))
    # the composition of the primitives (stl_forward_unfused) agrees with the fused forward
    u = torch.ops.stl_torch.stl_forward_unfused(*ins, t, False)[0]
    assert rel_err(u, y_ref) < tol


BF16_GEMM = stl_torch._C.abi_info()["cpu_bf16_gemm"]


@pytest.mark.parametrize("name", ["t4", "t2"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16bit_rounds_like_the_reference(name, dtype):
    if dtype == torch.bfloat16 and BF16_GEMM:
        pytest.skip("bfloat16 multiplies in bfloat16 here: test_bf16_gemms_round_like_the_composition")
    M, N, P, t, r = SHAPES[name]
    ins = operands(M, N, P, t, r, dtype, seed=7)
    g = torch.randn(M, P, generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(dtype)
    y, z = fwd(*ins, t, True)
    grads = bwd(g, torch.empty(0, dtype=dtype), ins[0], ins[1], ins[2], ins[3], z, True, t)
    y_ref, z_ref, g_ref = reference(ins, t, g, torch.zeros(z.shape))
    # sum of |terms| of each element: float32 accumulation error is relative to it, not to the result
    y_s, z_s, g_s = reference([v.abs() for v in ins], t, g.abs(), torch.zeros(z.shape))
    # dD is correlated with the Z the op kept (rounded to dtype), as the op does
    gp = torch.nn.functional.pad(g.double(), (0, 0, 0, (-M) % t)).reshape(-1, t, P // t, t)
    D_grad = torch.einsum("iajb,lij->abl", gp, z.double()).reshape(t * t, r)
    D_s = torch.einsum("iajb,lij->abl", gp.abs(), z.double().abs()).reshape(t * t, r)
    outs = {"y": (y, y_ref, y_s), "z": (z, z_ref, z_s), "x": (grads[0], g_ref[0], g_s[0]),
            "E": (grads[1], g_ref[1], g_s[1]), "Wt": (grads[2], g_ref[2], g_s[2]), "D": (grads[3], D_grad, D_s),
            "bias": (grads[4], g_ref[4], g_s[4])}
    for n, (got, want, scale) in outs.items():
        d = ulp_diff(got, want.to(dtype), dtype)
        # one ulp of rounding, or a float32 accumulation error far below the terms' size
        off = (d.abs() > 1) & ((got.double() - want).abs() > 2.0 ** -18 * scale)
        assert not off.any(), (n, d.abs().max().item())
        assert (d == 0).double().mean() > 0.99, (n, (d == 0).double().mean().item())  # measured: >= 0.999
        assert abs(d.mean().item()) < 0.01, (n, d.mean().item())      # and no bias (round to nearest even)


def composition(ins, t, g, rounded=True):
    """Outputs and gradients (dL/dZ = 0) of the op with bfloat16 GEMMs, in float64, rounded to
    bfloat16 where the op rounds: Xe, Z, Gz and dXe (the GEMMs' operands and results); the outputs
    are rounded by the caller. rounded=False gives the sums of |terms| (with |inputs|)."""
    q = (lambda v: v.to(torch.bfloat16).double()) if rounded else (lambda v: v)
    x, E, Wt, D, b = (v.double() for v in ins)
    g = g.double()
    M, N, P, r = x.shape[0], x.shape[1], g.shape[1], E.shape[0]
    xe = q(encode_activations(x, E, t))
    z = q(torch.bmm(xe, Wt))
    gz = q(encode_activations(g, D.t(), t))
    dxe = q(torch.bmm(gz, Wt.transpose(1, 2)))
    xt, gt = pad_rows(x, t).reshape(-1, t, N // t, t), pad_rows(g, t).reshape(-1, t, P // t, t)
    grads = [decode(dxe, E.t(), t, M), torch.einsum("lik,iakc->lac", dxe, xt).reshape(r, t * t),
             torch.bmm(xe.transpose(1, 2), gz), torch.einsum("lij,iajb->abl", z, gt).reshape(t * t, r), g.sum(0)]
    return decode(z, D, t, M) + b, z, grads


@pytest.mark.skipif(not BF16_GEMM, reason="bfloat16 multiplies in float32 here (run with STL_TORCH_CPU_BF16_GEMM=1 "
                                          "by test_bf16_gemms_on_any_cpu)")
@pytest.mark.parametrize("name", ["t4", "t2", "t8", "tall"])
def test_bf16_gemms_round_like_the_composition(name):
    """With bfloat16 GEMMs the op rounds Xe, Z, Gz and dXe to bfloat16, as the plain composition
    (einsum, bmm, einsum in bfloat16) does, and each output once. Against float64 rounded at the
    same points: elements equal or 1 ulp apart, except the rare ones where the float32 sum inside a
    GEMM rounded an intermediate the other way (measured: at most 0.012% of an output, each within
    2^-11 of its sum of |terms|), and no bias. dWt summed over several blocks (more temporaries than
    64 block budgets) is rounded once per block before the float32 sum: checked in the norm."""
    dtype = torch.bfloat16
    M, N, P, t, r = SHAPES[name]
    ins = operands(M, N, P, t, r, dtype, seed=7)
    g = torch.randn(M, P, generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(dtype)
    y, z = fwd(*ins, t, True)
    kept = bwd(g, torch.empty(0, dtype=dtype), *ins[:4], z, True, t)
    recomputed = bwd(g, torch.empty(0, dtype=dtype), *ins[:4], torch.empty(0, dtype=dtype), True, t)
    y_ref, z_ref, g_ref = composition(ins, t, g)
    y_s, z_s, g_s = composition([v.abs() for v in ins], t, g.abs(), rounded=False)
    Mt = -(-M // t)
    blocks = r * 2 * (N // t + P // t) * 2 * Mt > 64 * stl_torch._C.abi_info()["cpu_block_bytes"]
    names = ("x", "E", "Wt", "D", "bias")
    outs = [("y", y, y_ref, y_s), ("z", z, z_ref, z_s)]
    outs += [(n, a, b, s) for grads in (kept, recomputed) for n, a, b, s in zip(names, grads, g_ref, g_s)]
    for n, got, want, scale in outs:
        assert got.dtype == dtype, n
        if n == "Wt" and blocks:
            # measured 2.3-2.4e-3 over 8 seeds in 5 blocks; 1.7e-3 in one block (its own rounding)
            assert rel_err(got, want) < 3e-3, (n, rel_err(got, want))
            continue
        d = ulp_diff(got, want.to(dtype), dtype)
        off = (d.abs() > 1) & ((got.double() - want).abs() > 2.0 ** -18 * scale)
        assert off.double().mean() < 1e-3, (n, off.double().mean().item())
        assert not ((got.double() - want).abs() > 2.0 ** -9 * scale).any(), n
        assert (d == 0).double().mean() > 0.99, (n, (d == 0).double().mean().item())  # measured: >= 0.993
        assert abs(d.mean().item()) < 0.02, (n, d.mean().item())  # measured: <= 0.0099


def rerun_in_subprocess(files, env, k=None):
    """Runs test files of this folder with pytest in a fresh interpreter with `env` added (the ISA
    level, block size and bfloat16 GEMMs are chosen once, at import); returns the output's tail
    after asserting that it ran and passed."""
    here = os.path.dirname(os.path.abspath(__file__))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *(["-k", k] if k else []),
                        *(os.path.join(here, f) for f in files)],
                       env=dict(os.environ, **env), capture_output=True, text=True, timeout=900)
    tail = (r.stdout + r.stderr)[-3000:]
    assert r.returncode == 0 and " passed" in tail and "failed" not in tail, (env, tail)
    return tail


@pytest.mark.skipif(os.environ.get("STL_TORCH_CPU_BF16_GEMM") is not None, reason="already a forced run")
def test_bf16_gemms_on_any_cpu():
    """The 16-bit tests and the causal non-finite ones again in a subprocess with bfloat16 GEMMs
    switched the other way (on where this CPU lacks AVX512-BF16: torch's bfloat16 GEMM is then
    slow, but rounds the same), and with them on and blocks small enough that the backward's dWt
    is summed over several blocks."""
    runs = [{"STL_TORCH_CPU_BF16_GEMM": "0" if BF16_GEMM else "1"},
            {"STL_TORCH_CPU_BF16_GEMM": "1", "STL_TORCH_CPU_BLOCK_BYTES": str(32 << 10)}]
    for env in runs:
        tail = rerun_in_subprocess(["test_kernels.py", "test_causal.py"], env, k="(16bit or bf16 or non_finite) and not every_isa")
        # 4 x 16bit_rounds (2 skipped with bfloat16 GEMMs), 16bit_conversions, 4 x bf16_gemms_round
        # (skipped without), 10 x test_causal's non-finite tests
        want = "17 passed" if env["STL_TORCH_CPU_BF16_GEMM"] == "1" else "15 passed"
        assert want in tail, (env, tail)


def test_zero_coefficients_are_skipped_not_multiplied():
    """A term whose E or D entry is exactly 0 is not computed: 0 * inf or 0 * NaN never appears."""
    M, N, P, t, r = 8, 8, 8, 4, 3
    x, E, Wt, D, b = operands(M, N, P, t, r)
    E[:, 5] = 0  # no product reads x[1, 1] (row 1, column 1 of tile (0, 0))
    x[1, 1] = float("inf")
    y, _ = fwd(x, E, Wt, D, b, t, False)
    assert torch.isfinite(y).all()
    D[0, :] = 0  # output (0, 0) of every tile uses no product
    E[:, 5] = 1
    y, _ = fwd(x, E, Wt, D, b, t, False)
    assert torch.isfinite(y[0, 0]) and not torch.isfinite(y[0, 1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_zero_coefficient_is_skipped_in_every_row(dtype):
    """The kernels combine several products (encode) or tile outputs (decode) at once; a zero entry
    in any one row of such a group skips that row's term and no other's. Encode: only E[l, 5] is 0,
    x[1, 1] is inf, so product l alone stays finite in tile-row 0. Decode: product l's column 0 is
    inf, only D[j, l] is 0, so output j of tile (0, 0) alone stays finite."""
    M, N, P, t, r = 8, 8, 8, 4, 9
    inf = float("inf")
    for l in range(r):
        x, E, Wt, D, b = operands(M, N, P, t, r, dtype=dtype, seed=l)
        E[l, 5], x[1, 1] = 0, inf
        _, z = fwd(x, E, Wt, D, b, t, True)
        assert torch.isfinite(z[:, 0]).all(-1).tolist() == [k == l for k in range(r)], l
    for j in range(t * t):
        l = j % r
        x, E, Wt, D, b = operands(M, N, P, t, r, dtype=dtype, seed=j)
        Wt[l, :, 0], D[j, l] = inf, 0
        y, _ = fwd(x, E, Wt, D, b, t, False)
        assert torch.isfinite(y[:t, :t]).flatten().tolist() == [k == j for k in range(t * t)], j


def test_16bit_conversions_match_torch():
    """The kernels' own 16-bit <-> float32 conversions against torch's, subnormals, overflow, inf and
    NaN included: with t=1 and rank 1 the op computes y = (x * w) in float32 (exact: both factors
    have at most 11 significant bits) and rounds it once, which must equal torch's rounding."""
    v = torch.cat([torch.randn(3000) * s for s in (1e-7, 1e-5, 1e-3, 1.0, 1e3, 3e4)]
                  + [torch.tensor([0.0, -0.0, 65504.0, 1e5, -1e5, float("inf"), -float("inf"), float("nan")])])
    for dtype in (torch.bfloat16, torch.float16):
        x = v.to(dtype)[:, None]
        one, nob = torch.ones(1, 1, dtype=dtype), torch.empty(0, dtype=dtype)
        for w in (1.0, 1.0 + 2.0 ** -5, 0.3, 3.7, 17.0):
            wt = torch.full((1, 1, 1), w).to(dtype)
            y, _ = fwd(x, one, wt, one, nob, 1, False)
            want = (x.float() * wt.float()[0]).to(dtype)
            same = (y == want) | (y.isnan() & want.isnan())
            assert same.all(), (dtype, w, x[~same][:5], y[~same][:5], want[~same][:5])


LEVELS = ["baseline", "avx2", "avx512", "avx512bf16", "amx"]


def _levels_below():
    best = stl_torch._C.abi_info()["cpu_isa_supported"]
    return LEVELS[: LEVELS.index(best) + 1] if best in LEVELS else ["baseline"]


# (level, block bytes): every level this CPU has at the default block size (the t4, t2, t8 shapes
# fused in one block); the best level also with 256 KiB blocks (t4 and t2 through MKL, the backward
# in blocks) and with 32 KiB blocks (the float32 t3 shape fused in 4 row blocks, the last one
# partial; the MKL forward and the backward in several blocks)
CONFIGS = [("baseline", None), ("avx2", None), ("avx512", None), ("avx512bf16", None), ("amx", None), ("best", 256 << 10),
           ("best", 32 << 10)]


@pytest.mark.skipif(os.environ.get("STL_TORCH_CPU_ISA") is not None, reason="already a per-level run")
@pytest.mark.parametrize("level,block_bytes", CONFIGS)
def test_every_isa_level(level, block_bytes):
    """This file and test_ops.py again in a subprocess at `level` (skipped when the CPU lacks it),
    with the default block size or small blocks. A block holds Xe (and Z) of
    budget / (r * N/t * 4) tile-rows; the fused forward runs when Wt <= budget / 2; the backward
    splits at one budget when Wt <= budget / 2 and its temporaries exceed four budgets, and
    otherwise like the MKL forward at 64 * budget."""
    best = stl_torch._C.abi_info()["cpu_isa_supported"]
    level = best if level == "best" else level
    if level not in _levels_below():
        pytest.skip(f"this CPU does not support {level} (best: {best})")
    if level == stl_torch._C.abi_info()["cpu_isa"] and block_bytes is None:
        pytest.skip("that is this process")
    env = {"STL_TORCH_CPU_ISA": level}
    if block_bytes:
        env["STL_TORCH_CPU_BLOCK_BYTES"] = str(block_bytes)
    rerun_in_subprocess(["test_kernels.py", "test_ops.py"], env)


@pytest.mark.skipif(os.environ.get("STL_TORCH_CPU_BLOCK_BYTES") is not None,
                    reason="with small blocks a call's workspace is bounded by the block, whatever its size")
def test_workspace_grows_for_a_larger_call():
    """The cached workspace is reused only when it is big enough: a call needing more bytes than
    any cached buffer holds gets a larger one (a smaller one would be overrun), also once every
    cache slot is taken (the fifth growing call), and empty_cache() frees them all."""
    stl_torch._C.empty_cache()
    assert stl_torch._C.workspace_bytes() == 0
    sizes = [0]
    for m in (2000, 3000, 4000, 5000, 6000):  # each call needs more bytes than any before it
        x, E, Wt, D, b = operands(m, 64, 64, 4, 24, torch.float32)
        y, _ = fwd(x, E, Wt, D, b, 4, False)
        assert rel_err(y, stl_reference(*(v.double() for v in (x, E, Wt, D, b)), tile=4)) < TOL[torch.float32]
        sizes.append(stl_torch._C.workspace_bytes())
    assert all(b > a for a, b in zip(sizes, sizes[1:])), sizes
    stl_torch._C.empty_cache()
    assert stl_torch._C.workspace_bytes() == 0
