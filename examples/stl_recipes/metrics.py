"""What the recipes record: metrics rows (JSON + CSV + PNG, rewritten after every row), the run's
environment, parameter counts, linear-layer FLOPs (through ``stl_torch.flops``), progress bars."""
import csv
import json
import os
import platform
import re
import sys
import time

import torch
from torch import nn

from stl_torch.flops import flops
from stl_torch.nn import STLinear
from .training import atomic_write_text

__all__ = ["Metrics", "plot_metrics", "env_info", "cpu_info", "progress", "report_to_json", "param_counts",
           "linear_flops", "name_regex"]


class Metrics:
    """Keeps the run's metadata and per-epoch (or per-eval) rows; rewrites metrics.json,
    metrics.csv and the PNG after every row (rank 0 only), so a killed run keeps what finished.
    The history lives in the checkpoint too, so a resumed run continues the same files."""

    def __init__(self, out_dir, meta, enabled=True, plot=None):
        self.out_dir, self.meta, self.enabled, self.plot_spec = out_dir, meta, enabled, plot
        self.history = []
        if enabled:
            os.makedirs(out_dir, exist_ok=True)

    def log(self, row):
        self.history.append(row)
        self.write()

    def write(self):
        if not self.enabled:
            return
        atomic_write_text(os.path.join(self.out_dir, "metrics.json"),
                           json.dumps({"meta": self.meta, "history": self.history}, indent=1,
                                      default=str))
        keys = []
        for r in self.history:
            keys += [k for k in r if k not in keys]
        path = os.path.join(self.out_dir, "metrics.csv")
        with open(path + ".tmp", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(self.history)
        os.replace(path + ".tmp", path)
        if self.plot_spec and self.history:
            try:
                plot_metrics(self.history, os.path.join(self.out_dir, "metrics.png"),
                             **self.plot_spec)
            except Exception as e:  # a plotting problem must not stop training
                print(f"warning: plot failed: {e!r}", file=sys.stderr)


def plot_metrics(history, path, x, panels, title="", logy=()):
    """panels: list of (key, label); one subplot each, y against history[*][x]; keys in
    ``logy`` get a log y axis (perplexities)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6))
    axes = [axes] if len(panels) == 1 else axes
    for ax, (key, label) in zip(axes, panels):
        pts = [(r[x], r[key]) for r in history if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", ms=3)
        if key in logy and pts:
            ax.set_yscale("log")
        ax.set_xlabel(x)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=110)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)


def cpu_info():
    """The CPU as benchmarks must name it: model, ISA level the CPU supports, the level stl_torch's
    kernels use, cores torch uses."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    from stl_torch import _C
    info = _C.abi_info()
    return {"cpu": model, "machine": platform.machine(), "cpu_isa_supported": info["cpu_isa_supported"],
            "cpu_isa_used": info["cpu_isa"], "threads": torch.get_num_threads(),
            "logical_cpus": os.cpu_count()}


def env_info(d):
    info = {"torch": torch.__version__, "device": str(d.device), "world_size": d.world,
            "python": sys.version.split()[0], "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    if d.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(d.device)
    from stl_torch import __version__, _C
    info["stl_torch"] = __version__
    info["stl_torch_build"] = _C.abi_info()
    if d.device.type == "cpu":
        info.update(cpu_info())
    return info


def name_regex(pattern):
    rx = re.compile(pattern)
    return lambda name, mod: bool(rx.search(name))


def progress(iterable, enabled, **kw):
    """tqdm on rank 0 (when enabled), the bare iterable elsewhere."""
    if not enabled:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, dynamic_ncols=True, mininterval=1.0, **kw)


def report_to_json(report):
    """JSON view of a stl_torch report (ConversionReport / FlopReport) plus its table."""
    if report is None:
        return None
    return {"table": str(report), "data": json.loads(json.dumps(report.to_dict(), default=str))}


def param_counts(model):
    """Unique parameters of the model, and those inside its linear layers (dense or STL)."""
    seen, total, lin = set(), 0, 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    for m in model.modules():
        if isinstance(m, (nn.Linear, STLinear)):
            lin += sum(p.numel() for p in m.parameters(recurse=False))
    return {"params_total": total, "params_linear": lin}


def linear_flops(model, example_input, select=None):
    """Linear-layer FLOPs (2 x multiply-adds) of one forward on ``example_input``, from
    ``stl_torch.flops``; a 2:4-masked layer (``weight_mask``) counts at its mask density. Totals for
    all linear layers and for the ``select(name)`` ones (e.g. the converted projections), plus the
    per-layer rows."""
    report = flops(model, example_input)
    mods = dict(model.named_modules())
    rows = []
    for e in report.layers:
        mask = getattr(mods[e.name], "weight_mask", None)
        macs = e.macs * (mask.float().mean().item() if mask is not None else 1.0)
        kind = "stl" if e.tile is not None else "sparse24" if mask is not None else "dense"
        rows.append({"layer": e.name, "kind": kind, "flops": 2 * macs, "dense_flops": 2 * e.dense_macs})

    def total(rs):
        fl, dense = sum(r["flops"] for r in rs), sum(r["dense_flops"] for r in rs)
        return fl, dense, (dense / fl if fl else 1.0)
    fl, dense, red = total(rows)
    sel = [r for r in rows if select is None or select(r["layer"])]
    sfl, sdense, sred = total(sel)
    return {"linear_flops": fl, "linear_flops_if_dense": dense, "linear_flop_reduction": red,
            "selected_flops": sfl, "selected_flops_if_dense": sdense, "selected_flop_reduction": sred,
            "per_layer": rows, "stl_torch_flops": report_to_json(report)}
