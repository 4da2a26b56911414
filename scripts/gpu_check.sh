#!/usr/bin/env bash
# One call on the GPU machine (repo root, no network, CUDA torch preinstalled): build the CUDA
# kernels, run the CUDA + op tests, run the CUDA benchmark, copy logs and results to $OUT, print a
# summary. Every step runs even if an earlier one failed (the benchmark needs only the build);
# the exit status is non-zero if any step failed.
#
#   bash scripts/gpu_check.sh                 # build + test + bench + stages
#   bash scripts/gpu_check.sh build test      # a subset of the steps, in this order
#
# Knobs (env): PYTHON (python3), STL_TORCH_CUDA_ARCH (sm_90a here: one target builds faster; the
# package default is sm_80,sm_90a), BUDGET (570 s: the whole script, so that one device call of
# 600 s ends with the summary and $OUT filled; each step gets at most what is left of it),
# TEST_TIMEOUT (300 s), BENCH_TIMEOUT (300 s), STAGES_TIMEOUT (150 s), STAGES_ARGS, BENCH_ARGS (extra arguments for
# benchmarks/bench_linear.py, e.g. "--shapes 8192x8192x8192 --reps 10"), PYTEST_ARGS (extra
# pytest arguments, e.g. "-k 'not sanitizer'"). The build stays in the tree (ignored files are
# kept on a warm machine), so a later call can run just `bench`.
# The build is `setup.py build_ext --inplace --force` (no pip, no network); the equivalent
# install is `STL_TORCH_CUDA=1 pip install --no-build-isolation --no-deps -e .`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export STL_TORCH_CUDA=1
export STL_TORCH_CUDA_ARCH=${STL_TORCH_CUDA_ARCH:-sm_90a}
export PYTHONUNBUFFERED=1
export PATH="$PATH:/usr/local/cuda/bin"
LOGS=runs/gpu_check
mkdir -p "$LOGS"
STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && STEPS=(build test bench stages)

BUDGET=${BUDGET:-570}
ts() { date -u +%H:%M:%S; }
# seconds a step may take: its own limit, but never past the script's budget (15 s kept for the end)
limit() {
  local left=$((BUDGET - SECONDS - 15))
  [ "$left" -lt 1 ] && left=1
  [ "$1" -lt "$left" ] && echo "$1" || echo "$left"
}
say() { echo "[$(ts)] $*"; }
SUMMARY=()
FAILED=0

# run_step NAME TIMEOUT LOG CMD...: run with a time limit, tee to the log, record the outcome
run_step() {
  local name=$1 limit=$2 log=$3
  shift 3
  say "=== $name: $*"
  local t0=$SECONDS rc=0
  set +e
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  set -e
  local dt=$((SECONDS - t0)) status=ok
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status="TIMEOUT (${limit}s)"; elif [ "$rc" -ne 0 ]; then status="FAILED (rc=$rc)"; fi
  [ "$status" = ok ] || FAILED=1
  SUMMARY+=("| $name | $status | $dt |")
  say "=== $name: $status in ${dt}s"
  return 0
}

say "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv || true
"$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda, "| gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else None)' || true
nvcc --version | tail -2 || true
command -v compute-sanitizer >/dev/null && echo "compute-sanitizer: $(command -v compute-sanitizer)" || echo "compute-sanitizer: not on PATH"

for step in "${STEPS[@]}"; do
  case "$step" in
    build)
      run_step build "$(limit 240)" "$LOGS/build.log" "$PY" setup.py build_ext --inplace --force
      run_step import "$(limit 60)" "$LOGS/import.log" "$PY" -c '
import torch, stl_torch
info = stl_torch._C.abi_info()
cuda_impl = torch._C._dispatch_has_kernel_for_dispatch_key("stl_torch::stl_forward", "CUDA")
print("abi_info:", info, "| CUDA kernel registered:", cuda_impl)
assert info["cuda_kernels"] and info["cuda_stream"] and cuda_impl, "CUDA kernels not built or not registered"
x = torch.randn(37, 64, device="cuda")
E, Wt, D = torch.randn(24, 16, device="cuda"), torch.randn(24, 16, 12, device="cuda"), torch.randn(16, 24, device="cuda")
y = stl_torch.stl_linear(x, E, Wt, D, None, 4)
torch.cuda.synchronize()
print("smoke test: y", tuple(y.shape), "finite:", bool(torch.isfinite(y).all()))
xb, Eb, Wb, Db = (v.bfloat16() for v in (x, E, Wt, D))
want = stl_torch.stl_linear(xb, Eb, Wb, Db, None, 4).double()
for path in info["forward_paths"][1:]:  # the fused kernels, bf16
    stl_torch._C.set_forward_path(path)
    y = stl_torch.stl_linear(xb, Eb, Wb, Db, None, 4).double()
    torch.cuda.synchronize()
    print(f"smoke test {path}: ran {stl_torch._C.last_forward_path()}, relative difference to unfused",
          f"{((y - want).norm() / want.norm()).item():.2e}")
stl_torch._C.set_forward_path("unfused")
'
      ;;
    test)
      # shellcheck disable=SC2086
      run_step test "$(limit "${TEST_TIMEOUT:-300}")" "$LOGS/pytest.log" "$PY" -m pytest -q -rfEs -p no:cacheprovider \
        tests/test_cuda.py tests/test_ops.py tests/test_forward_path.py ${PYTEST_ARGS:-}
      ;;
    bench)
      # shellcheck disable=SC2086
      run_step bench "$(limit "${BENCH_TIMEOUT:-300}")" "$LOGS/bench.log" "$PY" benchmarks/bench_linear.py --device cuda ${BENCH_ARGS:-}
      ;;
    stages)
      # where the time goes: per-stage kernel times against their FLOP/byte floors
      # shellcheck disable=SC2086
      run_step stages "$(limit "${STAGES_TIMEOUT:-150}")" "$LOGS/stages.log" "$PY" benchmarks/stages.py --device cuda ${STAGES_ARGS:-}
      ;;
    *)
      say "unknown step '$step' (build, test, bench, stages)"
      FAILED=1
      ;;
  esac
done

{
  echo "## gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "| step | status | seconds |"
  echo "|---|---|---:|"
  printf '%s\n' "${SUMMARY[@]}"
  echo
  grep -E "^[0-9]+ (passed|failed)|passed|failed" "$LOGS/pytest.log" 2>/dev/null | tail -1 || true
  for f in benchmarks/results/bench_linear_cuda.md benchmarks/results/stages_cuda.md; do
    if [ -f "$f" ]; then echo; cat "$f"; fi
  done
} >"$LOGS/summary.md"

if [ -n "${OUT:-}" ]; then
  for f in "$LOGS"/build.log "$LOGS"/import.log "$LOGS"/pytest.log "$LOGS"/bench.log "$LOGS"/summary.md \
           benchmarks/results/bench_linear_cuda.json benchmarks/results/bench_linear_cuda.md \
           benchmarks/results/bench_linear_cuda.png "$LOGS"/stages.log benchmarks/results/stages_cuda.json \
           benchmarks/results/stages_cuda.md benchmarks/results/stages_cuda.png; do
    if [ -f "$f" ]; then cp "$f" "$OUT/"; fi
  done
  say "copied logs and results to \$OUT"
fi

echo
cat "$LOGS/summary.md"
exit $FAILED
