"""The CUDA kernels (csrc/cuda) against the CPU kernels and the float64 reference.

Every output and gradient is compared on fresh random inputs for bf16/fp16/fp32/fp64, odd M and
several (t, r) that reach every kernel variant (fast t=2/4/8 paths, runtime-t and generic
fallbacks, several reduction blocks). Before each run the caching allocator's free blocks are
filled with NaN, so an output element a kernel failed to write shows up as NaN. Also: the two
unfused op (stl_forward_unfused) against stl_forward, bitwise determinism, streams, misaligned
bases, opcheck, torch.compile, and
compute-sanitizer (memcheck/racecheck) on a small case. Skipped without a GPU or without the
CUDA build.
"""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

import stl_torch
from stl_torch import stl_linear
from stl_torch.tiling import stl_reference

from conftest import TOL, operands, rel_err

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or not stl_torch._C.abi_info()["cuda_kernels"],
    reason="needs a CUDA GPU and stl_torch built with its CUDA kernels (STL_TORCH_CUDA=1)")

fwd = torch.ops.stl_torch.stl_forward.default
bwd = torch.ops.stl_torch.stl_backward.default
CUDA_TOL = {**TOL, torch.float16: 5e-3}
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
SHAPES = [  # (M, N, P, t, r)
    (37, 64, 48, 4, 24),     # t=4 fast paths, partial last tile
    (5, 6, 10, 2, 7),        # t=2
    (3, 8, 4, 4, 16),        # fewer rows than one tile
    (9, 12, 20, 2, 3),       # r not a multiple of 4
    (7, 5, 3, 1, 2),         # t=1: generic encode/decode (skipped at bf16/fp16: see the test)
    (25, 8, 6, 1, 5),        # t=1 with more terms per reduction
    (11, 9, 6, 3, 5),        # t=3: generic encode/decode, runtime-t correlate
    (17, 24, 16, 8, 33),     # t=8 fast encode/decode
    (20, 16, 16, 8, 80),     # t=8, r=80: generic correlate
    (33, 32, 48, 16, 4),     # t=16
    (130, 96, 200, 4, 64),   # smaller staged chunks
    (41, 16, 12, 4, 49),     # Strassen^2 rank
    (4099, 128, 96, 4, 24),  # many tiles: grid-stride loops, many reduction blocks
]


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


def poison_cuda_cache():
    """Make every free block of the caching allocator NaN (0xFF bytes in every float format), so
    the next allocations (the ops' outputs and temporaries) start out as NaN."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    small = [torch.full((1 << 20,), 255, dtype=torch.uint8, device="cuda") for _ in range(16)]
    large = [torch.full((64 << 20,), 255, dtype=torch.uint8, device="cuda") for _ in range(2)]
    del small, large  # blocks go back to the cache, still full of 0xFF


def to(vals, device, dtype=None):
    return [None if v is None else v.detach().to(device=device, dtype=dtype or v.dtype).requires_grad_(v.requires_grad)
            for v in vals]


def grads(vals):
    return [None if v is None else v.grad for v in vals]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_forward_and_grads_match_cpu_and_reference(dtype, shape, bias):
    M, N, P, t, r = shape
    low = dtype in (torch.bfloat16, torch.float16)
    if low and t == 1 and M * N < 100:
        pytest.skip("t=1: dE, dD are a few single sums; at 8-11 bit precision their cancellation makes a "
                    "relative error meaningless (about 2% of draws exceed the tolerance, on the CPU too)")
    base = operands(M, N, P, t, r, torch.float64, bias)  # fresh random draw (conftest seeds per call)
    ins = to([v.requires_grad_() if v is not None else None for v in base], "cuda", dtype)
    g64 = torch.randn(M, P, dtype=torch.float64)
    g = g64.to("cuda", dtype)
    poison_cuda_cache()
    y = stl_linear(*ins, tile=t)
    y.backward(g)
    torch.cuda.synchronize()
    assert y.dtype == dtype and y.device.type == "cuda" and y.shape == (M, P)
    assert torch.isfinite(y).all(), "unwritten (NaN-poisoned) output elements"
    # float64 reference from the same (rounded) inputs
    ref_ins = to([v.detach().double().cpu().requires_grad_() if v is not None else None for v in ins], "cpu")
    ref = stl_reference(*ref_ins, tile=t)
    ref.backward(g.double().cpu())
    tol = CUDA_TOL[dtype]
    assert rel_err(y.cpu(), ref) < tol
    names = ("x", "E", "Wt", "D", "bias")
    # t=1 at low precision: dE, dD are r single sums each; cancellation needs a looser bound
    # (an indexing bug still gives an O(1) error)
    tols = {n: 10 * tol if low and t == 1 and n in ("E", "D") else tol for n in names}
    for name, a, b in zip(names, grads(ins), grads(ref_ins)):
        if b is None:
            continue
        assert a is not None and a.dtype == dtype and a.device.type == "cuda", name
        assert torch.isfinite(a).all(), f"grad {name}: unwritten (NaN-poisoned) elements"
        assert rel_err(a.cpu(), b) < tols[name], name
    # the CPU kernels on the same inputs (the CPU has no float16)
    if dtype != torch.float16:
        cpu_ins = to([v.detach().cpu().requires_grad_() if v is not None else None for v in ins], "cpu")
        yc = stl_linear(*cpu_ins, tile=t)
        yc.backward(g.cpu())
        assert rel_err(y.cpu(), yc) < 2 * tol
        for name, a, b in zip(names, grads(ins), grads(cpu_ins)):
            if b is not None:
                assert rel_err(a.cpu(), b) < 2 * tols[name], name


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(37, 64, 48, 4, 24), (11, 9, 6, 3, 5), (20, 16, 16, 8, 80)])
def test_backward_op_with_grad_z_matches_cpu(dtype, shape):
    """stl_backward called directly (grad_z given, z given or recomputed): all five outputs."""
    M, N, P, t, r = shape
    x, E, Wt, D, b = (v.to(dtype).double() for v in operands(M, N, P, t, r, torch.float64))  # representable
    empty = torch.empty(0, dtype=torch.float64)
    _, z64 = fwd(x, E, Wt, D, b, t, True)
    g = torch.randn(M, P, dtype=torch.float64).to(dtype).double()
    gz = torch.randn_like(z64).to(dtype).double()
    z64 = z64.to(dtype).double()
    for zz in (z64, empty):
        want = bwd(g, gz, x, E, Wt, D, zz, True, t)  # float64 CPU kernels on the same values
        dev = [v.to("cuda", dtype) for v in (g, gz, x, E, Wt, D, zz)]
        poison_cuda_cache()
        got = bwd(*dev, True, t)
        torch.cuda.synchronize()
        for name, a, w in zip(("dx", "dE", "dWt", "dD", "db"), got, want):
            assert a.dtype == dtype and a.is_cuda, name
            assert torch.isfinite(a).all(), name
            assert rel_err(a.cpu(), w) < CUDA_TOL[dtype], name


@pytest.mark.parametrize("dtype", DTYPES)
def test_deterministic(dtype):
    """Same inputs, same bits: the reductions (dE, dD, db) use a fixed split and order."""
    ins = to(operands(4099, 128, 96, 4, 24, torch.float64, requires_grad=True), "cuda", dtype)
    g = torch.randn(4099, 96, device="cuda", dtype=dtype)
    outs = []
    for _ in range(2):
        for v in ins:
            v.grad = None
        poison_cuda_cache()
        y = stl_linear(*ins, tile=4)
        y.backward(g)
        outs.append([y.detach().clone()] + [v.grad.clone() for v in ins])
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_side_stream_and_misaligned_bases():
    """Work is queued on torch's current stream; bases that are not 16-byte aligned (storage
    offsets) take the scalar-load paths and give the same numbers."""
    M, N, P, t, r = 37, 64, 48, 4, 24
    x, E, Wt, D, b = to(operands(M, N, P, t, r, torch.float64), "cuda", torch.float32)
    want = stl_linear(x, E, Wt, D, b, tile=t)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        got = stl_linear(x, E, Wt, D, b, tile=t)
    torch.cuda.current_stream().wait_stream(s)
    assert torch.equal(got, want)

    def shifted(v):  # same values, data pointer 4 bytes past an aligned one
        buf = torch.empty(v.numel() + 1, device="cuda", dtype=v.dtype)
        out = buf[1:].view(v.shape)
        out.copy_(v)
        assert out.is_contiguous() and out.data_ptr() % 16 != 0
        return out

    got = stl_linear(*(shifted(v) for v in (x, E, Wt, D, b)), tile=t)
    assert rel_err(got, want) < 1e-6


def test_nan_propagates_only_within_its_tile():
    x, E, Wt, D, b = to(operands(8, 8, 8, 4, 6), "cuda", torch.float32)
    x[1, 3] = float("nan")
    y = stl_linear(x, E, Wt, D, b, tile=4)
    assert torch.isnan(y[:4]).all()
    assert torch.isfinite(y[4:]).all()


def test_zero_rows():
    x, E, Wt, D, b = to(operands(0, 8, 12, 4, 6, requires_grad=True), "cuda")
    y = stl_linear(x, E, Wt, D, b, tile=4)
    assert y.shape == (0, 12) and y.is_cuda
    y.sum().backward()
    assert x.grad.shape == (0, 8)
    for v in (E, D, Wt, b):
        assert torch.count_nonzero(v.grad) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(dtype):
    x, E, Wt, D, b = to(operands(9, 8, 12, 2, 5), "cuda", dtype)
    empty = b[:0]
    for args in ((x, E, Wt, D, b, 2, True), (x, E, Wt, D, empty, 2, False)):
        torch.library.opcheck(fwd, args)
    g = torch.randn(9, 12, device="cuda", dtype=dtype)
    _, z = fwd(x, E, Wt, D, empty, 2, True)
    for gz, zz, has_bias in ((empty, z, True), (torch.randn_like(z), z, False), (empty, empty, True)):
        torch.library.opcheck(bwd, (g, gz, x, E, Wt, D, zz, has_bias, 2))


def test_compile_fullgraph_matches_eager():
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = stl_torch.STLinear(16, 32, rank=12, init="random", dtype=torch.float64, device="cuda")
            self.fc2 = stl_torch.STLinear(32, 16, rank=12, init="random", bias=False, dtype=torch.float64,
                                          device="cuda")
            self.norm = nn.LayerNorm(16, dtype=torch.float64, device="cuda")

        def forward(self, x):
            return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(x))))

    torch._dynamo.reset()
    model = Block()
    x = torch.randn(2, 7, 16, dtype=torch.float64, device="cuda")
    ref = model(x)
    ref.square().mean().backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(x)
    out.square().mean().backward()
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for p, g in zip(model.parameters(), ref_grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-10)


SANITIZER_SCRIPT = textwrap.dedent("""
    import torch, stl_torch
    fwd = torch.ops.stl_torch.stl_forward.default
    bwd = torch.ops.stl_torch.stl_backward.default
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        for M, N, P, t, r in ((37, 64, 48, 4, 24), (5, 6, 10, 2, 7), (11, 9, 6, 3, 5), (17, 24, 16, 8, 33),
                              (20, 16, 16, 8, 80), (300, 32, 16, 4, 49)):
            mk = lambda *s: torch.randn(*s, device="cuda").to(dtype)
            x, E, Wt, D, b = mk(M, N), mk(r, t * t), mk(r, N // t, P // t), mk(t * t, r), mk(P)
            y, z = fwd(x, E, Wt, D, b, t, True)
            out = bwd(mk(M, P), mk(*z.shape), x, E, Wt, D, z, True, t)
            fwd(x, E, Wt, D, b, t, False)  # the fused forward slot, when this build fills it
            torch.ops.stl_torch.stl_forward_unfused(x, E, Wt, D, b, t, False)
            torch.cuda.synchronize()
    print("sanitizer script done")
""")


def _sanitizer():
    for p in (shutil.which("compute-sanitizer"), "/usr/local/cuda/bin/compute-sanitizer"):
        if p and os.path.exists(p):
            return p
    return None


OUR_KERNELS = ("encode_tiles", "encode_generic", "decode_tiles", "decode_generic", "correlate_staged",
               "correlate_generic", "colsum_partial", "reduce_partials", "fused_forward", "fused_encode_kernel")  # last two: dev builds


@pytest.mark.parametrize("tool", ["memcheck", "racecheck"])
def test_compute_sanitizer_clean(tool, tmp_path):
    """memcheck: no error anywhere in a small fwd+bwd of every dtype and kernel variant (caching
    allocator off, so every tensor is its own allocation and any overrun is seen). racecheck: no
    shared-memory hazard reported in one of our kernels (torch's own kernels are not judged)."""
    exe = _sanitizer()
    if exe is None:
        pytest.skip("compute-sanitizer not found")
    script = tmp_path / "sanitize_me.py"
    script.write_text(SANITIZER_SCRIPT)
    env = dict(os.environ, PYTORCH_NO_CUDA_MEMORY_CACHING="1")
    cmd = [exe, "--tool", tool, "--print-limit", "50"]
    if tool == "memcheck":
        cmd += ["--error-exitcode", "97"]
    cmd += [sys.executable, str(script)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(stl_torch.__file__))))
    log = res.stdout + res.stderr
    if "Device not supported" in log:  # seen under a sandboxed GPU runtime
        pytest.skip("compute-sanitizer cannot attach to this GPU here: " + log.strip().splitlines()[0][:200])
    assert "sanitizer script done" in log, log[-6000:]
    if tool == "memcheck":
        assert res.returncode == 0 and "ERROR SUMMARY: 0 errors" in log, log[-6000:]
    else:
        ours = [ln for ln in log.splitlines() if any(k in ln for k in OUR_KERNELS)]
        assert not ours, "\n".join(ours[:40])
