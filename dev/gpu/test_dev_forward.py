"""A dev build's fused CUDA forward (dev/cuda, built into the CUDA backend's forward slot with
dev/cuda/build_candidate.sh v1|v2) against the float64 reference and against the unfused composition
(torch.ops.stl_torch.stl_forward_unfused) on the same GPU, on NaN-poisoned memory; the profiler
proves the fused kernel ran. Run by dev/gpu/check.sh; skipped unless the build fills the slot."""
import os
import sys

import pytest
import torch

import stl_torch
from stl_torch import stl_linear
from stl_torch.tiling import encode_activations, stl_reference

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests"))
from conftest import operands, rel_err  # noqa: E402
from test_cuda import CUDA_TOL, poison_cuda_cache, to  # noqa: E402

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or not stl_torch._C.abi_info()["fused_forward"].get("cuda"),
    reason="needs a GPU and a dev build with a fused forward (dev/cuda/build_candidate.sh v1|v2)")

fwd = torch.ops.stl_torch.stl_forward.default
unfused = torch.ops.stl_torch.stl_forward_unfused.default
FUSED_KERNELS = ("fused_forward_kernel", "fused_encode_kernel")


def kernels_run(fn):
    """Names of the CUDA kernels fn() launched."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return " ".join(e.name for e in prof.events())


FUSED_SHAPES = [  # (M, N, P, t, r), all supported by both fused kernels at bf16/fp16
    (37, 64, 48, 4, 24),      # odd M, partial tiles in I, J and K
    (5, 6, 10, 2, 7),         # t=2, tiny, N % 8 != 0
    (67, 64, 512, 4, 24),     # several blocks in I and J
    (9, 16, 16, 2, 17),       # t=2, r just above a group of 16 products
    (300, 136, 72, 4, 49),    # Strassen^2 rank, several K chunks
    (131, 260, 132, 4, 5),    # Nt=65: a nearly empty last K chunk
    (4099, 512, 256, 4, 24),  # many blocks
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", FUSED_SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_fused_forward(dtype, shape, bias):
    """The fused forward against the float64 reference and against the unfused composition,
    with and without Z."""
    M, N, P, t, r = shape
    x, E, Wt, D, b = (v.to("cuda", dtype) if v is not None else None for v in operands(M, N, P, t, r, bias=bias))
    b = b if bias else x.new_empty((0,))
    x64, E64, Wt64, D64 = (v.double().cpu() for v in (x, E, Wt, D))
    ref = stl_reference(x64, E64, Wt64, D64, b.double().cpu() if bias else None, tile=t)
    zref = torch.bmm(encode_activations(x64, E64, t), Wt64)
    tol = CUDA_TOL[dtype]
    y_u, z_u = unfused(x, E, Wt, D, b, t, True)
    for need_z in (False, True):
        poison_cuda_cache()
        out = {}
        ran = kernels_run(lambda: out.update(yz=fwd(x, E, Wt, D, b, t, need_z)))
        assert any(k in ran for k in FUSED_KERNELS), f"the fused kernel did not run: {ran[:400]}"
        y, z = out["yz"]
        assert y.shape == (M, P) and y.dtype == dtype and torch.isfinite(y).all(), "unwritten output elements"
        assert rel_err(y.cpu(), ref) < tol
        assert rel_err(y, y_u) < 2 * tol
        if need_z:
            assert z.shape == z_u.shape and torch.isfinite(z).all()
            assert rel_err(z.cpu(), zref) < tol
            assert rel_err(z, z_u) < 2 * tol
        else:
            assert z.numel() == 0


def test_fused_forward_trains_like_float64():
    """A training step through stl_linear: the fused forward's saved Z feeds the backward."""
    M, N, P, t, r = 67, 64, 512, 4, 24
    base = to(operands(M, N, P, t, r, requires_grad=True), "cuda", torch.bfloat16)
    g = torch.randn(M, P, device="cuda", dtype=torch.bfloat16)
    ins = [v.detach().clone().requires_grad_() for v in base]
    ref = [v.detach().double().cpu().requires_grad_() for v in base]
    y = stl_linear(*ins, tile=t)
    y.backward(g)
    yr = stl_reference(*ref, tile=t)
    yr.backward(g.double().cpu())
    for name, a, b in zip(("y", "x", "E", "Wt", "D", "bias"), [y] + [v.grad for v in ins], [yr] + [v.grad for v in ref]):
        assert torch.isfinite(a).all() and rel_err(a.cpu(), b) < 2 * CUDA_TOL[torch.bfloat16], name


def test_unsupported_calls_run_the_composition():
    """float32 (and t=8) are not handled by the fused kernels: the call runs unfused, same numbers."""
    for dtype, t in ((torch.float32, 4), (torch.bfloat16, 8)):
        x, E, Wt, D, b = to(operands(37, 64, 48, t, 24), "cuda", dtype)
        out = {}
        ran = kernels_run(lambda: out.update(y=fwd(x, E, Wt, D, b, t, False)[0]))
        assert not any(k in ran for k in FUSED_KERNELS)
        assert torch.equal(out["y"], unfused(x, E, Wt, D, b, t, False)[0])


