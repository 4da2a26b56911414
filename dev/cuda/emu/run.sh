#!/usr/bin/env bash
# Build the CUDA kernels (csrc/cuda: the mainline tile primitives; dev/cuda: the fused forward
# candidates) for the host emulator (emu.h) and check them against a float64 reference: no GPU,
# no nvcc needed, just g++ (C++17, _Float16). Usage: run.sh [--quick] [--asan]
# (--asan: AddressSanitizer with exact-size buffers, so out-of-bounds reads fail as well)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
out="${TMPDIR:-/tmp}/stl_cuda_emu"
mkdir -p "$out"
flags=(-std=c++17 -O1 -g -DSTL_CUDA_EMU -DSTL_WITH_CUDA -Wno-unknown-pragmas -fno-strict-aliasing
       -I"$here" -I"$root/csrc/cuda")
args=()
for a in "$@"; do
  if [ "$a" = --asan ]; then flags+=(-fsanitize=address,undefined -fno-sanitize-recover=undefined); export ASAN_OPTIONS=detect_stack_use_after_return=0; else args+=("$a"); fi
done
g++ "${flags[@]}" -x c++ "$root/csrc/cuda/tile_kernels.cu" "$root/csrc/cuda/runtime.cu" \
  "$here/../fused_v1_gemm_decode.cu" "$here/../fused_v2_encode_gemm_decode.cu" \
  "$here/emu.cpp" "$here/emu_check.cpp" \
  -o "$out/emu_check"
"$out/emu_check" "${args[@]+"${args[@]}"}"
