#!/usr/bin/env bash
# Compile-and-link check of the C extension for aarch64 with a cross compiler (the build needs no
# torch): every C and C++ source with the flags setup.py uses off x86-64, warnings as errors, then
# one shared object. It proves the portable build compiles; it does not run it.
#
#   apt-get install -y gcc-aarch64-linux-gnu g++-aarch64-linux-gnu
#   bash dev/aarch64_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYINC=$(python -c "import sysconfig; print(sysconfig.get_paths()['include'])")
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
common=(-O2 -fPIC -fexceptions -fvisibility=hidden -Wall -Wno-unused-function -Werror -Icsrc)
for f in csrc/*.c csrc/cpu/*.c; do
  opt=(); [[ $f == csrc/cpu/isa_*.c ]] && opt=(-O3)  # the kernels, as setup.py builds them (no x86 flags)
  aarch64-linux-gnu-gcc -c "${common[@]}" "${opt[@]}" -std=gnu11 -D_GNU_SOURCE -DPy_LIMITED_API=0x03090000 \
    -I"$PYINC" "$f" -o "$OUT/$(basename "$f").o"
done
for f in csrc/*.cpp; do
  aarch64-linux-gnu-g++ -c "${common[@]}" -std=c++17 "$f" -o "$OUT/$(basename "$f").o"
done
aarch64-linux-gnu-g++ -shared -o "$OUT/_C.abi3.so" "$OUT"/*.o -lpthread
file "$OUT/_C.abi3.so"
echo "aarch64: every source compiles (-Werror) and links"
