"""Where a benchmark writes its result: one file per (benchmark, variant, machine kind), which a
rerun on the same kind of machine overwrites, so docs/results/ holds the current table of each.

  docs/results/<benchmark>_<variant>_<kind>.json (.md, .png)

kind: on the CPU the ISA level stl_torch's kernels run at (``_C.abi_info()["cpu_isa"]``:
amx, avx512bf16, avx512, avx2, baseline), with ``_amx`` when the CPU has AMX tiles that the level
does not use; on CUDA ``cuda-<gpu name>``.
"""
import os
import re

import torch

import stl_torch

RESULTS_DIR = os.path.join("docs", "results")


def _slug(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def machine_kind(device="cpu"):
    if str(device).startswith("cuda"):
        return "cuda-" + _slug(torch.cuda.get_device_name())
    kind = stl_torch._C.abi_info()["cpu_isa"]
    try:
        with open("/proc/cpuinfo") as f:
            if kind != "amx" and re.search(r"\bamx_tile\b", f.read()):
                kind += "_amx"
    except OSError:
        pass
    return kind


def result_stem(benchmark, variant, device="cpu", out=RESULTS_DIR):
    """out/<benchmark>_<variant>_<kind> (no extension); out is made if missing."""
    os.makedirs(out, exist_ok=True)
    return os.path.join(out, f"{benchmark}_{variant}_{machine_kind(device)}")
