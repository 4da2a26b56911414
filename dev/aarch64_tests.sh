#!/usr/bin/env bash
# Build the C extension for aarch64 and run its CPU kernel tests there, on an x86-64 Debian 12
# machine, with user-mode emulation (qemu-aarch64-static) and no binfmt_misc: an aarch64 Debian
# python3.11 is unpacked into a directory and run as `qemu-aarch64-static -L ROOT`, torch and the
# test tools come from PyPI's aarch64 wheels, and the extension is built by the repo's own
# setup.py (build_ext --inplace) run by that emulated python, which calls Debian's cross compiler
# (aarch64-linux-gnu-gcc, an x86-64 program that the emulated process executes natively).
# dev/aarch64_check.sh (every source with -Werror) runs first.
#
#   bash dev/aarch64_tests.sh [pytest args...]      (default: -q and the three CPU kernel test files)
#
# Env: REPO (the git checkout to test, default: the repo this script lies in), W (work dir,
# default /tmp/arm; everything it makes lies there), TORCH (torch version, default 2.9.1),
# REV (what to test, default HEAD: `git archive` of it, the checkout is only read),
# OMP_NUM_THREADS (default 2), PATCHES (patch files applied with `patch -p1` to the exported
# sources before the build: to try a fix). Needs root (apt-get) and the network for the first run
# only; later runs reuse $W/root and $W/site. On 2 cores the default test run takes ~10 minutes.
# torch: PyPI's aarch64 wheels after 2.10 are CUDA builds, so keep TORCH at 2.9.1 or 2.10.0.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=${REPO:-$(git -C "$HERE" rev-parse --show-toplevel)}
W=${W:-/tmp/arm}
TORCH=${TORCH:-2.9.1}
REV=${REV:-HEAD}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
if [ $# -eq 0 ]; then set -- -q tests/test_kernels.py tests/test_ops.py tests/test_isa.py; fi

ROOT=$W/root SITE=$W/site SRC=$W/src
PY=$W/bin/python3.11
log() { printf '\n== %s\n' "$*"; }
mkdir -p "$W"

# 1. host tools ------------------------------------------------------------------------------------
log "host tools"
if ! command -v qemu-aarch64-static >/dev/null || ! command -v aarch64-linux-gnu-gcc >/dev/null ||
   ! dpkg --print-foreign-architectures | grep -qx arm64; then
  dpkg --add-architecture arm64
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static gcc-aarch64-linux-gnu g++-aarch64-linux-gnu >/dev/null
fi
apt-cache show python3.11:arm64 >/dev/null 2>&1 || apt-get update -qq
qemu-aarch64-static --version | head -1
aarch64-linux-gnu-gcc --version | head -1

# 2. aarch64 Debian root: python3.11 and the shared libraries it (and torch) loads --------------
# (Debian 12's python3.11 bundles libmpdec; libpython3.11-dev brings the aarch64 headers)
DEBS="libc6 gcc-12-base libgcc-s1 libstdc++6 libgomp1 zlib1g libexpat1 libffi8 libssl3 libbz2-1.0
  liblzma5 libzstd1 libsqlite3-0 libuuid1 libncursesw6 libtinfo6 libreadline8 libdb5.3 libgdbm6
  libnsl2 libtirpc3 libcrypt1 libgssapi-krb5-2 libk5crypto3 libkeyutils1 libkrb5-3 libkrb5support0
  libcom-err2 libselinux1 libpcre2-8-0 libpython3.11-minimal libpython3.11-stdlib python3.11-minimal
  python3.11 libpython3.11-dev"
if [ ! -x "$ROOT/usr/bin/python3.11" ]; then
  log "aarch64 Debian packages -> $ROOT"
  mkdir -p "$W/debs" && rm -rf "$ROOT" && mkdir -p "$ROOT"
  (cd "$W/debs" && apt-get download $(for p in $DEBS; do echo "$p:arm64"; done) 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
  for d in "$W"/debs/*.deb; do dpkg -x "$d" "$ROOT"; done
fi
mkdir -p "$W/bin"
cat > "$PY" <<EOF
#!/bin/sh
# aarch64 python3.11 under emulation; argv[0] (so sys.executable) is this wrapper, so that the
# subprocesses a test starts with sys.executable are emulated too (there is no binfmt_misc)
exec qemu-aarch64-static -L "$ROOT" -0 "\$0" "$ROOT/usr/bin/python3.11" "\$@"
EOF
chmod +x "$PY"
dpkg-deb -f "$(ls "$W"/debs/python3.11-minimal_*.deb)" Package Version | paste -sd' '

# 3. aarch64 wheels from PyPI -> $SITE (torch's deps listed by hand: pip evaluates the environment
# markers of a foreign-platform download against this machine, and would ask for CUDA wheels) ----
if [ ! -d "$SITE/torch" ] || [ "$(cat "$SITE/.torch" 2>/dev/null)" != "$TORCH" ]; then
  log "aarch64 wheels (torch $TORCH) -> $SITE"
  rm -rf "$W/wheels" "$SITE" && mkdir -p "$W/wheels"
  PLAT=(--platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux_2_28_aarch64
        --only-binary=:all: --python-version 3.11 --implementation cp)
  pip download -q --no-deps --dest "$W/wheels" "${PLAT[@]}" --abi cp311 --abi abi3 --abi none \
    "torch==$TORCH" numpy pytest filelock typing_extensions sympy mpmath networkx jinja2 MarkupSafe \
    fsspec iniconfig packaging pluggy pygments "setuptools>=64" wheel 2>&1 | grep -v 'is ignored' || true
  pip install -q --no-deps --no-index --no-compile --target "$SITE" "${PLAT[@]}" --abi cp311 "$W"/wheels/*.whl \
    2>&1 | grep -v -e 'is ignored' -e "as the 'root' user" || true
  echo "$TORCH" > "$SITE/.torch"
fi
ls "$W/wheels"

# 4. the sources: a clean export of $REV (the checkout itself is only read) -------------------------
log "sources: $REPO $REV -> $SRC"
if git -C "$REPO" worktree list --porcelain | grep -qx "worktree $SRC"; then
  git -C "$REPO" worktree remove --force "$SRC"
fi
rm -rf "$SRC" && mkdir -p "$SRC"
git -C "$REPO" archive "$REV" | tar -x -C "$SRC"
git -C "$REPO" rev-parse "$REV"
for p in ${PATCHES:-}; do echo "patch: $p"; patch -d "$SRC" -p1 < "$p"; done
export PYTHONPATH=$SITE:$SRC

# 5. build ----------------------------------------------------------------------------------------
log "dev/aarch64_check.sh (cross compile, -Werror)"
(cd "$SRC" && nice -n 10 bash dev/aarch64_check.sh)
log "setup.py build_ext --inplace by the emulated aarch64 python (Debian's CC, CFLAGS and LDSHARED)"
# the compiler runs on the host: point it at the aarch64 Python headers (Debian's pyconfig.h
# includes <aarch64-linux-gnu/python3.11/pyconfig.h>). CPPFLAGS, not CFLAGS: setuptools appends
# CPPFLAGS to the interpreter's CFLAGS, while a CFLAGS variable would replace them.
(cd "$SRC" && STL_TORCH_CUDA=0 CPPFLAGS="-I$ROOT/usr/include/python3.11 -I$ROOT/usr/include" \
  nice -n 10 "$PY" setup.py build_ext --inplace > "$W/build.log" 2>&1) || { cat "$W/build.log"; exit 1; }
grep -E '^aarch64-linux-gnu-g(cc|\+\+) ' "$W/build.log" | sed -n '1p;$p'  # one compile, the link
file "$SRC"/stl_torch/_C*.so
aarch64-linux-gnu-readelf -d "$SRC"/stl_torch/_C*.so | grep NEEDED

# 6. import and test under emulation ----------------------------------------------------------------
log "import under emulation"
cd "$SRC"
nice -n 10 "$PY" -c "import platform, torch, numpy, stl_torch; print(platform.machine(), 'torch', torch.__version__, 'numpy', numpy.__version__); print(stl_torch._C.abi_info())"
log "pytest $* (OMP_NUM_THREADS=$OMP_NUM_THREADS)"
start=$(date +%s)
rc=0
nice -n 10 "$PY" -m pytest -p no:cacheprovider -rfEs --junitxml="$W/junit.xml" "$@" || rc=$?
echo "pytest exit $rc, wall $(( $(date +%s) - start )) s"
"$PY" - "$W/junit.xml" <<'EOF'
import collections, sys, xml.etree.ElementTree as ET
count, secs = collections.defaultdict(collections.Counter), collections.Counter()
for tc in ET.parse(sys.argv[1]).iter("testcase"):
    f = tc.get("classname", "").split(".")[-1]
    k = ("failed" if tc.find("failure") is not None or tc.find("error") is not None
         else "skipped" if tc.find("skipped") is not None else "passed")
    count[f][k] += 1
    secs[f] += float(tc.get("time", 0))
for f, c in count.items():
    print(f"{f}: {c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped ({secs[f]:.0f} s)")
EOF
exit $rc
