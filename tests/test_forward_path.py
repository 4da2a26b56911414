"""The run-time choice of the forward path (_C.set_forward_path, STL_TORCH_FUSED): the API, its
errors and its initial value. Runs everywhere; the fused kernels' numbers are checked in
tests/test_cuda.py (GPU) and tests/test_cuda_emu.py (host emulator)."""
import os
import subprocess
import sys

import pytest
import torch

import stl_torch
from stl_torch import stl_linear

from conftest import operands

C = stl_torch._C
CUDA_BUILD = C.abi_info()["cuda_kernels"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(stl_torch.__file__)))


@pytest.fixture(autouse=True)
def _restore_path():
    old = C.get_forward_path()
    yield
    C.set_forward_path(old)


def test_paths_offered_by_this_build():
    paths = C.abi_info()["forward_paths"]
    assert paths == (("unfused", "fused", "fused_encode") if CUDA_BUILD else ("unfused",))


def test_set_get_round_trip_and_bad_names():
    for p in C.abi_info()["forward_paths"]:
        C.set_forward_path(p)
        assert C.get_forward_path() == p
    with pytest.raises(ValueError, match="unknown or unavailable path 'fusion'"):
        C.set_forward_path("fusion")
    with pytest.raises(TypeError):
        C.set_forward_path(1)
    if not CUDA_BUILD:
        with pytest.raises(ValueError, match="no CUDA kernels"):
            C.set_forward_path("fused_encode")
    assert C.get_forward_path() == C.abi_info()["forward_paths"][-1]  # failed calls changed nothing


def test_cpu_always_runs_unfused():
    x, E, Wt, D, b = operands(9, 8, 12, 4, 6)
    want = stl_linear(x, E, Wt, D, b, tile=4)
    for p in C.abi_info()["forward_paths"]:
        C.set_forward_path(p)
        assert torch.equal(stl_linear(x, E, Wt, D, b, tile=4), want)
        assert C.last_forward_path() == "unfused"


@pytest.mark.parametrize("env,want", [(None, "unfused"), ("0", "unfused"), ("1", "fused"), ("fused", "fused"),
                                      ("encode", "fused_encode"), ("fused_encode", "fused_encode"),
                                      ("2", "fused_encode"), ("yes", "unfused")])
def test_initial_path_from_env(env, want):
    environ = {k: v for k, v in os.environ.items() if k != "STL_TORCH_FUSED"}
    if env is not None:
        environ["STL_TORCH_FUSED"] = env
    res = subprocess.run([sys.executable, "-c", "import stl_torch; print(stl_torch._C.get_forward_path())"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT, env=environ)
    assert res.returncode == 0, res.stderr[-3000:]
    # a build without CUDA kernels offers only the unfused path, whatever the environment says
    assert res.stdout.split()[-1] == (want if CUDA_BUILD else "unfused")
