#!/usr/bin/env bash
# Build the CUDA tile kernels for the host emulator (emu.h) and check them against a float64
# reference: no GPU, no nvcc needed, just g++ (C++17, _Float16). Usage: run.sh [--quick] [--asan]
# (--asan: AddressSanitizer with exact-size buffers, so out-of-bounds reads fail as well)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${TMPDIR:-/tmp}/stl_cuda_emu"
mkdir -p "$out"
flags=(-std=c++17 -O1 -g -DSTL_CUDA_EMU -DSTL_WITH_CUDA -Wno-unknown-pragmas -fno-strict-aliasing)
args=()
for a in "$@"; do
  if [ "$a" = --asan ]; then flags+=(-fsanitize=address,undefined -fno-sanitize-recover=undefined); export ASAN_OPTIONS=detect_stack_use_after_return=0; else args+=("$a"); fi
done
g++ "${flags[@]}" -x c++ "$here/../tile_kernels.cu" "$here/../fused_forward.cu" "$here/../fused_encode_forward.cu" \
  "$here/../runtime.cu" \
  "$here/emu.cpp" "$here/emu_check.cpp" \
  -o "$out/emu_check"
"$out/emu_check" "${args[@]+"${args[@]}"}"
