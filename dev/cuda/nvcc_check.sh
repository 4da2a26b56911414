#!/usr/bin/env bash
# Compiles every CUDA source (csrc/cuda and the dev/cuda candidates, each candidate also through the
# forward slot) for sm_80 and sm_90a with warnings on; prints nothing but failures and a summary.
# Needs nvcc, not a GPU. Usage: dev/cuda/nvcc_check.sh [archs, default "sm_80 sm_90a"]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
nvcc="${NVCC:-nvcc}"
archs="${1:-sm_80 sm_90a}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
fail=0 n=0
build() { # name, extra flags..., source
  local name="$1"; shift
  for a in $archs; do
    n=$((n + 1))
    if ! "$nvcc" -c -O3 -std=c++17 --expt-relaxed-constexpr -DSTL_WITH_CUDA -I"$root/csrc/cuda" \
        -arch="$a" -Xcompiler -Wall,-fPIC "$@" -o "$out/$name.$a.o" 2>"$out/log"; then
      echo "FAIL $name ($a):"; cat "$out/log"; fail=$((fail + 1))
    elif [ -s "$out/log" ]; then
      echo "WARN $name ($a):"; cat "$out/log"; fail=$((fail + 1))
    fi
  done
}
for f in "$root"/csrc/cuda/*.cu "$root"/dev/cuda/fused_v*.cu; do build "$(basename "$f" .cu)" "$f"; done
for v in 1 2; do
  build "tile_kernels_slot_v$v" -DSTL_DEV_FORWARD=$v "$root/csrc/cuda/tile_kernels.cu"
  build "forward_slot_v$v" -DSTL_DEV_FORWARD=$v "$root/dev/cuda/forward_slot.cu"
done
echo "nvcc_check: $n compilations, $fail with errors or warnings"
[ "$fail" -eq 0 ]
