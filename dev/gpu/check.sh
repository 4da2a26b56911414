#!/usr/bin/env bash
# The GPU check, in one command, from the repo root of a machine with a CUDA GPU, nvcc and a CUDA
# build of torch (no network needed): build the CUDA kernels (or use a prebuilt extension), run
# the CUDA tests, benchmark STL against cuBLAS dense, plain-PyTorch STL (eager and compiled) and
# 2:4, and profile where the time goes. Everything it writes goes to one folder. Every step runs
# even if an earlier one failed; the exit status is non-zero if any did. Designed to finish within
# 8 minutes on an H100/H200.
#
#   bash dev/gpu/check.sh [RESULTS_DIR]             # default results dir: runs/gpu_check
#
# Environment:
#   PREBUILT=1                 use the stl_torch/_C*.so already in the tree (built elsewhere with
#                              STL_TORCH_CUDA=1 python setup.py build_ext --inplace)
#   CANDIDATE=v1|v2            build a fused forward candidate from dev/cuda into the CUDA
#                              backend's forward slot (dev/cuda/build_candidate.sh); its tests (dev/gpu/test_dev_forward.py) run
#                              and the benchmark times it beside the unfused composition
#   STL_TORCH_CUDA_ARCH        build targets (default here: sm_90a; the package default is sm_80,sm_90a)
#   BUDGET                     seconds for the whole check (default 480); each step gets at most
#                              what is left, so the summary is always written
#   PYTHON, PYTEST_ARGS, BENCH_ARGS, STAGES_ARGS
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
RES=${1:-runs/gpu_check}
mkdir -p "$RES"
export STL_TORCH_CUDA=1 STL_TORCH_CUDA_ARCH=${STL_TORCH_CUDA_ARCH:-sm_90a} PYTHONUNBUFFERED=1
export PATH="$PATH:/usr/local/cuda/bin"
BUDGET=${BUDGET:-480}
SUMMARY=()
FAILED=0
say() { echo "[$(date -u +%H:%M:%S)] $*"; }
limit() { local left=$((BUDGET - SECONDS - 10)); [ "$left" -lt 1 ] && left=1; [ "$1" -lt "$left" ] && echo "$1" || echo "$left"; }

# step NAME SECONDS CMD...: run with a time limit, log to RES/NAME.log, record the outcome
step() {
  local name=$1 lim; lim=$(limit "$2"); shift 2
  say "=== $name (limit ${lim}s): $*"
  local t0=$SECONDS
  timeout --kill-after=10 "$lim" "$@" 2>&1 | tee "$RES/$name.log"
  local rc=${PIPESTATUS[0]} status=ok
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status="TIMEOUT (${lim}s)"; elif [ "$rc" -ne 0 ]; then status="FAILED (rc=$rc)"; fi
  [ "$status" = ok ] || FAILED=1
  SUMMARY+=("| $name | $status | $((SECONDS - t0)) |")
}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  "$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda)'
  nvcc --version | tail -1
} >"$RES/machine.txt" 2>&1
cat "$RES/machine.txt"

if [ "${PREBUILT:-0}" != 1 ] && [ -n "${CANDIDATE:-}" ]; then
  step build 240 env PYTHON="$PY" bash dev/cuda/build_candidate.sh "$CANDIDATE"
elif [ "${PREBUILT:-0}" != 1 ]; then
  step build 240 "$PY" setup.py build_ext --inplace --force
fi
step smoke 60 "$PY" -c '
import torch, stl_torch
info = stl_torch._C.abi_info()
print("build:", info)
assert info["cuda_kernels"] and info["cuda_stream"], "CUDA kernels not built or not registered"
x = torch.randn(37, 64, device="cuda")
E, Wt, D = torch.randn(24, 16, device="cuda"), torch.randn(24, 16, 12, device="cuda"), torch.randn(16, 24, device="cuda")
y = stl_torch.stl_linear(x, E, Wt, D, None, 4)
torch.cuda.synchronize()
assert torch.isfinite(y).all()
print("smoke: ok", tuple(y.shape))'
DEV_TESTS=()
[ -n "${CANDIDATE:-}" ] && DEV_TESTS=(dev/gpu/test_dev_forward.py)
# shellcheck disable=SC2086
step test 200 "$PY" -m pytest -q -rfEs -p no:cacheprovider tests/test_cuda.py tests/test_ops.py "${DEV_TESTS[@]}" ${PYTEST_ARGS:-}
# shellcheck disable=SC2086
step bench 150 "$PY" benchmarks/bench_linear.py --device cuda --out "$RES" ${BENCH_ARGS:-}
# shellcheck disable=SC2086
step stages 90 "$PY" benchmarks/stages.py --device cuda --out "$RES" ${STAGES_ARGS:-}

{
  echo "## GPU check $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  cat "$RES/machine.txt"
  echo
  echo "| step | status | seconds |"
  echo "|---|---|---:|"
  printf '%s\n' "${SUMMARY[@]}"
  echo
  tail -1 "$RES/test.log" 2>/dev/null
} >"$RES/summary.md"
cat "$RES/summary.md"
exit $FAILED
