#!/usr/bin/env bash
# Builds the extension in place with a fused forward candidate in the CUDA backend's forward slot,
# for a GPU check only (dev/gpu/check.sh): v1 = fused_v1_gemm_decode.cu, v2 =
# fused_v2_encode_gemm_decode.cu, both through forward_slot.cu. The product build (setup.py) knows
# nothing of dev/: it only honours STL_TORCH_CUDA_FORWARD=<file.cu>, and nvcc reads the version
# from NVCC_APPEND_FLAGS. Usage: dev/cuda/build_candidate.sh v1|v2 [extra setup.py build_ext args]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
case "${1:-}" in
  v1) v=1 ;;
  v2) v=2 ;;
  *) echo "usage: $0 v1|v2" >&2; exit 2 ;;
esac
shift
cd "$root"
STL_TORCH_CUDA="${STL_TORCH_CUDA:-1}" STL_TORCH_CUDA_FORWARD=dev/cuda/forward_slot.cu \
  NVCC_APPEND_FLAGS="${NVCC_APPEND_FLAGS:-} -DSTL_DEV_FORWARD=$v" \
  "${PYTHON:-python}" setup.py build_ext --inplace --force "$@"
