"""Build stl_torch._C: C11 kernels + op registration through libtorch's stable C ABI.

The extension does not include or link torch at build time (the ABI is resolved at import),
so the build needs only a C compiler and one wheel serves torch 2.9+.

The CPU kernels are compiled once per instruction-set level (csrc/cpu/isa_*.c: a portable
baseline, AVX2+FMA, AVX-512 and AVX-512 with AVX512-BF16 on x86-64; the baseline alone elsewhere) and the best level the
CPU supports is chosen at import: a wheel built on one machine runs at full speed on another. Every
other file is compiled for the architecture's baseline. STL_TORCH_MARCH (unset by default) adds a
-march flag to all files, for a build meant only for the machine that builds it.

CUDA kernels (csrc/cuda/*.cu, compiled by nvcc and linked with the static CUDA runtime, so the
module needs no libcudart at import) are built when STL_TORCH_CUDA=1, or when STL_TORCH_CUDA is
unset/"auto" and both nvcc and a CUDA build of torch are found (pip's build isolation hides the
installed torch: build GPU installs with `pip install --no-build-isolation .`). STL_TORCH_CUDA=0
disables them. STL_TORCH_CUDA_ARCH lists the targets (default "sm_80,sm_90a"; PTX of the first is
embedded too, for newer GPUs). The CUDA backend's host side (csrc/cuda/backend.c) is C11 like the
rest. STL_TORCH_CUDA_FORWARD=<file.cu> (GPU check builds only) compiles that file too and puts the
forward it defines into the CUDA backend's forward slot (csrc/cuda/launchers.h).
"""
import glob
import os
import platform
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

MARCH = os.environ.get("STL_TORCH_MARCH", "")
X86 = platform.machine().lower() in ("x86_64", "amd64")
# per-level target flags of csrc/cpu/isa_*.c (the files compile to nothing off x86-64)
ISA_FLAGS = {
    "csrc/cpu/isa_baseline.c": [],
    "csrc/cpu/isa_avx2.c": ["-mavx2", "-mfma", "-mf16c", "-mbmi2"] if X86 else [],
    "csrc/cpu/isa_avx512.c": ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mfma", "-mf16c",
                              "-mbmi2"] if X86 else [],
    # AVX-512 + AVX512-BF16 (vdpbf16ps): the bfloat16 encode/decode (Zen 4, Cooper Lake, Sapphire Rapids)
    "csrc/cpu/isa_avx512bf16.c": ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx512bf16", "-mfma",
                                  "-mf16c", "-mbmi2"] if X86 else [],
    # the same + AMX tiles (tdpbf16ps): encode/decode as tile multiplies (Xeon 4th gen and later)
    "csrc/cpu/isa_amx.c": ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx512bf16", "-mfma",
                           "-mf16c", "-mbmi2", "-mamx-tile", "-mamx-bf16"] if X86 else [],
}
# the decode-step kernel (csrc/cpu/step_isa.inc) at the same levels, with the same flags
ISA_FLAGS.update({f"csrc/cpu/step_{lv}.c": ISA_FLAGS[f"csrc/cpu/isa_{lv}.c"] for lv in ("baseline", "avx2", "avx512", "avx512bf16", "amx")})

SOURCES = [
    "csrc/module.c",
    "csrc/op_call.c",
    "csrc/ops.c",
    "csrc/decode_step.c",
    "csrc/cpu/decode_step.c",
    "csrc/torch_abi.c",
    "csrc/parallel.c",
    "csrc/error.cpp",
    "csrc/cpu/backend.c",
    "csrc/cpu/dispatch.c",
    "csrc/cpu/workspace.c",
    *ISA_FLAGS,
]


# ---------------------------------------------------------------------------------------------
# CUDA (optional)

CUDA_SOURCES = sorted(glob.glob("csrc/cuda/*.cu"))
CUDA_HEADERS = sorted(glob.glob("csrc/cuda/*.cuh") + glob.glob("csrc/cuda/*.h")) + ["csrc/stl.h"]
CUDA_FORWARD = os.environ.get("STL_TORCH_CUDA_FORWARD", "").strip()
if CUDA_FORWARD and not os.path.isfile(CUDA_FORWARD):
    sys.exit(f"STL_TORCH_CUDA_FORWARD={CUDA_FORWARD!r}: no such file")


def _find_nvcc():
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
        return os.path.join(home, "bin", "nvcc")
    return shutil.which("nvcc") or (
        "/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)


def _torch_has_cuda():
    try:
        import torch
    except Exception as e:  # noqa: BLE001 (build isolation, or no torch at all)
        return False, f"torch is not importable here ({type(e).__name__})"
    if not getattr(torch.version, "cuda", None):
        return False, f"torch {torch.__version__} is a CPU build"
    return True, f"torch {torch.__version__} (CUDA {torch.version.cuda})"


def _cuda_config():
    """None (no CUDA build) or (nvcc, cudart_static directory)."""
    mode = os.environ.get("STL_TORCH_CUDA", "auto").strip().lower()
    if mode in ("0", "off", "false", "no"):
        return None
    force = mode in ("1", "on", "true", "yes")
    nvcc = _find_nvcc()
    if not nvcc:
        if force:
            sys.exit("STL_TORCH_CUDA=1 but nvcc was not found (set CUDA_HOME or put nvcc on PATH)")
        print("stl_torch: nvcc not found, building without CUDA kernels", file=sys.stderr)
        return None
    if not force:
        ok, why = _torch_has_cuda()
        if not ok:
            print(f"stl_torch: {why}, building without CUDA kernels (STL_TORCH_CUDA=1 forces them)",
                  file=sys.stderr)
            return None
    homes = [os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))]
    try:  # nvcc may be a wrapper script: ask it where its toolkit is
        dry = subprocess.run([nvcc, "--dryrun", "-E", "-x", "cu", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True).stderr
        homes += [ln.split("=", 1)[1].strip() for ln in dry.splitlines() if ln.startswith("#$ TOP=")]
    except OSError:
        pass
    homes.append("/usr/local/cuda")
    libdirs = []
    for home in homes:
        libdirs += [os.path.join(home, "lib64"), os.path.join(home, "lib")] + sorted(
            glob.glob(os.path.join(home, "targets", "*", "lib")))
    for d in libdirs:
        if os.path.exists(os.path.join(d, "libcudart_static.a")):
            return nvcc, os.path.normpath(d)
    sys.exit(f"stl_torch: libcudart_static.a not found (looked in {libdirs})")


def _gencode_flags(archs):
    """"sm_80,sm_90a" -> machine code for each, plus PTX of the first (JIT on newer GPUs)."""
    flags = []
    names = [a.strip() for a in archs.split(",") if a.strip()]
    for a in names:
        num = a.split("_", 1)[1]
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
    if names and not names[0].endswith("a"):
        num = names[0].split("_", 1)[1]
        flags.append(f"-gencode=arch=compute_{num},code=compute_{num}")
    return flags


CUDA = _cuda_config()
CUDA_ARCH = os.environ.get("STL_TORCH_CUDA_ARCH", "sm_80,sm_90a")


def _compile_cuda(build_temp):
    """nvcc each csrc/cuda/*.cu to an object (in parallel); returns the object paths."""
    nvcc, _ = CUDA
    os.makedirs(os.path.join(build_temp, "cuda"), exist_ok=True)
    flags = ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-DSTL_WITH_CUDA", "-Icsrc/cuda",
             "-Xcompiler", "-fPIC,-fvisibility=hidden,-Wall"] + _gencode_flags(CUDA_ARCH)
    sources = list(CUDA_SOURCES)
    if CUDA_FORWARD:
        flags.append("-DSTL_CUDA_FORWARD_SLOT")
        sources.append(CUDA_FORWARD)
    jobs, objs = [], []
    for src in sources:
        obj = os.path.join(build_temp, "cuda", os.path.basename(src)[:-3] + ".o")
        cmd = [nvcc, "-c", src, "-o", obj] + flags
        print(" ".join(cmd), flush=True)
        jobs.append((cmd, subprocess.Popen(cmd)))
        objs.append(obj)
    failed = [" ".join(c) for c, p in jobs if p.wait() != 0]
    if failed:
        sys.exit("nvcc failed:\n  " + "\n  ".join(failed))
    return objs


class BuildExt(build_ext):
    """Per-language flags: C11 for .c (with -fexceptions so C++ exceptions unwind through it)."""

    def build_extensions(self):
        cc = self.compiler
        orig = cc._compile

        def _compile(obj, src, ext, cc_args, extra_postargs, pp_opts):
            common = ["-O2", "-fexceptions", "-fvisibility=hidden", "-Wall", "-Wno-unused-function"]
            if MARCH:
                common.append(f"-march={MARCH}")
            rel = os.path.relpath(src).replace(os.sep, "/")
            if rel in ISA_FLAGS:  # the kernels: -O3 (unrolled, vectorised loops) and the level's target
                common += ["-O3"] + ISA_FLAGS[rel]
            if src.endswith(".cpp"):
                flags = common + ["-std=c++17"]
            else:
                # GNU C11: vector types for the micro-kernels, FMA contraction allowed
                flags = common + ["-std=gnu11", "-D_GNU_SOURCE"]
            return orig(obj, src, ext, cc_args, flags, pp_opts)

        cc._compile = _compile
        if CUDA:
            for e in self.extensions:
                e.extra_objects = _compile_cuda(self.build_temp) + list(e.extra_objects or [])
        super().build_extensions()


ext = Extension(
    "stl_torch._C",
    sources=SOURCES,
    # the headers and the kernel bodies the sources include: an edit of one rebuilds the extension
    # isa_amx.c includes isa_avx512bf16.c
    depends=sorted(glob.glob("csrc/*.h") + glob.glob("csrc/cpu/*.h") + glob.glob("csrc/cpu/*.inc")) + ["csrc/cpu/isa_avx512bf16.c"],
    libraries=["stdc++", "dl", "pthread"],
    py_limited_api=True,
    define_macros=[("Py_LIMITED_API", "0x03090000")],
)
if CUDA:
    # static CUDA runtime, its symbols kept private to this module (torch's libcudart stays its own)
    ext.define_macros.append(("STL_WITH_CUDA", "1"))
    ext.sources.append("csrc/cuda/backend.c")
    if CUDA_FORWARD:
        ext.define_macros.append(("STL_CUDA_FORWARD_SLOT", "1"))
    ext.library_dirs = [CUDA[1]]
    ext.libraries = ["cudart_static", "rt"] + ext.libraries
    ext.extra_link_args = ["-Wl,--exclude-libs,ALL"]
    ext.depends += CUDA_SOURCES + CUDA_HEADERS

setup(
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExt},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
