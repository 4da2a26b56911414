"""The CPU ISA level: chosen at import from what the CPU reports, visible in abi_info, forced lower
by STL_TORCH_CPU_ISA, never higher than the CPU supports. (The kernels of every supported level
run against float64 in test_kernels.py.)"""
import os
import platform
import subprocess
import sys

import pytest

import stl_torch

LEVELS = ["baseline", "avx2", "avx512", "avx512bf16", "amx"]
INFO = stl_torch._C.abi_info()
# the AVX levels are built on x86-64 only: elsewhere the build has the baseline alone
X86 = platform.machine().lower() in ("x86_64", "amd64")


def import_with(**env):
    # the timeout only guards against a hang: an emulated interpreter (dev/aarch64_tests.sh) on a
    # busy machine takes minutes to import torch
    r = subprocess.run([sys.executable, "-c", "import stl_torch; i = stl_torch._C.abi_info(); "
                        "print(i['cpu_isa'], i['cpu_isa_supported'], i['cpu_block_bytes'], i['cpu_bf16_gemm'])"],
                       env=dict(os.environ, **env), capture_output=True, text=True, timeout=900)
    return r.returncode, r.stdout.split(), r.stderr


def test_abi_info_reports_the_level():
    assert INFO["cpu_isa"] in LEVELS and INFO["cpu_isa_supported"] in LEVELS
    assert INFO["cpu_vector_bytes"] == {"baseline": 16, "avx2": 32, "avx512": 64, "avx512bf16": 64, "amx": 64}[INFO["cpu_isa"]]
    if os.environ.get("STL_TORCH_CPU_ISA") is None:
        assert INFO["cpu_isa"] == INFO["cpu_isa_supported"]  # the best one by default


def test_env_forces_a_lower_level():
    rc, out, err = import_with(STL_TORCH_CPU_ISA="baseline")
    assert rc == 0, err
    assert out[:2] == ["baseline", INFO["cpu_isa_supported"]]


@pytest.mark.skipif(INFO["cpu_isa_supported"] == LEVELS[-1], reason="the CPU supports every level")
def test_env_cannot_ask_for_more_than_the_cpu_has():
    higher = LEVELS[LEVELS.index(INFO["cpu_isa_supported"]) + 1]
    rc, _, err = import_with(STL_TORCH_CPU_ISA=higher)
    # a level this build lacks (every level above the baseline off x86-64) is refused as such
    want = (f"STL_TORCH_CPU_ISA={higher}, but this CPU supports at most" if X86
            else f"STL_TORCH_CPU_ISA={higher} is not a level of this build")
    assert rc != 0 and want in err, err[-500:]


@pytest.mark.parametrize("var,value,msg", [("STL_TORCH_CPU_ISA", "sse9", "not a level of this build"),
                                           ("STL_TORCH_CPU_BLOCK_BYTES", "12", "expected an integer from 1024"),
                                           ("STL_TORCH_CPU_BLOCK_BYTES", "1e6", "expected an integer from 1024"),
                                           ("STL_TORCH_CPU_BF16_GEMM", "yes", "expected 0 or 1")])
def test_bad_environment_is_a_clear_import_error(var, value, msg):
    rc, _, err = import_with(**{var: value})
    assert rc != 0 and "ImportError" in err and msg in err, err[-500:]


def test_bf16_gemm_override():
    """STL_TORCH_CPU_BF16_GEMM=0|1 decides, whatever the CPU has; abi_info() reports it."""
    for v in ("0", "1"):
        rc, out, err = import_with(STL_TORCH_CPU_BF16_GEMM=v)
        assert rc == 0 and out[3] == str(v == "1"), (out, err[-500:])


def test_block_bytes_override():
    rc, out, err = import_with(STL_TORCH_CPU_BLOCK_BYTES="65536")
    assert rc == 0 and out[2] == "65536", err
