"""The CUDA tile kernels' source, run on the CPU by the host emulator in dev/cuda/emu (threads as
coroutines, shared memory, warp shuffles, mma fragments) against a float64 reference. CI has no
GPU: this is what checks the CUDA index arithmetic, bounds and barriers there."""
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ (C++17) to build the emulator")
def test_cuda_kernels_under_host_emulator(tmp_path):
    r = subprocess.run(["bash", os.path.join(ROOT, "dev", "cuda", "emu", "run.sh"), "--quick"],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "TMPDIR": str(tmp_path)})
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "0 failures" in out.splitlines()[-1], out[-4000:]
