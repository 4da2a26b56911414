"""Build stl_torch._C: C11 kernels + op registration through libtorch's stable C ABI.

The extension does not include or link torch at build time (the ABI is resolved at import),
so the build needs only a C compiler and one wheel serves torch 2.9+. CUDA kernels are added
by the GPU work (STL_TORCH_CUDA=1 forces them, =0 disables them).
"""
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# The kernels are built for the machine that builds them (pip builds from source). For a wheel
# meant for other machines set e.g. STL_TORCH_MARCH=x86-64-v3, or STL_TORCH_MARCH= for none.
MARCH = os.environ.get("STL_TORCH_MARCH", "native")

SOURCES = [
    "csrc/module.c",
    "csrc/ops.c",
    "csrc/torch_abi.c",
    "csrc/error.cpp",
    "csrc/cpu/tile_kernels.c",
    "csrc/cpu/parallel.c",
]


class BuildExt(build_ext):
    """Per-language flags: C11 for .c (with -fexceptions so C++ exceptions unwind through it)."""

    def build_extensions(self):
        cc = self.compiler
        orig = cc._compile

        def _compile(obj, src, ext, cc_args, extra_postargs, pp_opts):
            common = ["-O2", "-fexceptions", "-fvisibility=hidden", "-Wall", "-Wno-unused-function"]
            if MARCH:
                common.append(f"-march={MARCH}")
            if src.endswith(".cpp"):
                flags = common + ["-std=c++17"]
            else:
                # GNU C11: vector types for the micro-kernels, FMA contraction allowed
                flags = common + ["-std=gnu11", "-D_GNU_SOURCE"]
            return orig(obj, src, ext, cc_args, flags, pp_opts)

        cc._compile = _compile
        super().build_extensions()


ext = Extension(
    "stl_torch._C",
    sources=SOURCES,
    libraries=["stdc++", "dl", "pthread"],
    py_limited_api=True,
    define_macros=[("Py_LIMITED_API", "0x03090000")],
)

setup(
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExt},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
