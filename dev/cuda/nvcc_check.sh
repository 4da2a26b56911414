#!/usr/bin/env bash
# Compiles every CUDA source (csrc/cuda and the dev/cuda candidates, each candidate also through the
# forward slot) for sm_80 and sm_90a with warnings on, and the CUDA backend's host side
# (csrc/cuda/backend.c, C11) with and without the slot, warnings as errors; prints nothing but
# failures and a summary. Needs nvcc, not a GPU. Usage: dev/cuda/nvcc_check.sh [archs, default "sm_80 sm_90a"]
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
  build "forward_slot_v$v" -DSTL_DEV_FORWARD=$v -DSTL_CUDA_FORWARD_SLOT "$root/dev/cuda/forward_slot.cu"
done
for slot in "" -DSTL_CUDA_FORWARD_SLOT; do
  n=$((n + 1))
  if ! "${CC:-gcc}" -c -std=gnu11 -O2 -Wall -Wextra -Werror -fPIC -DSTL_WITH_CUDA $slot \
      "$root/csrc/cuda/backend.c" -o "$out/backend.o" 2>"$out/log"; then
    echo "FAIL csrc/cuda/backend.c ($slot):"; cat "$out/log"; fail=$((fail + 1))
  fi
done
echo "nvcc_check: $n compilations, $fail with errors or warnings"
[ "$fail" -eq 0 ]
