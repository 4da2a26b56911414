"""The two configuration objects: ``STLConfig`` describes one STL layer, ``CalibrationConfig`` how
``convert()`` fits converted layers to real activations. Every limit is checked here, where the
object is made, so a bad value fails before any layer is built."""
import math
from dataclasses import dataclass, fields, replace
from typing import Optional

from . import _C
from .init import INITS

__all__ = ["STLConfig", "CalibrationConfig", "MAX_TILE", "MAX_RANK"]

# The kernels' limits, defined once in csrc/stl.h and checked by the C ops on every call.
MAX_TILE = _C.abi_info()["limits"]["max_tile"]
MAX_RANK = _C.abi_info()["limits"]["max_rank"]


def _positive_int(owner, name, v, hi=None):
    if isinstance(v, bool) or not isinstance(v, int) or v < 1 or (hi is not None and v > hi):
        rng = f"1 <= {name} <= {hi}" if hi is not None else f"{name} >= 1"
        raise ValueError(f"{owner}: '{name}' must be an integer with {rng}, got {v!r}")


def _positive_number(owner, name, v, optional=False):
    if optional and v is None:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        what = "None or a positive number" if optional else "a positive number"
        raise ValueError(f"{owner}: '{name}' must be {what}, got {v!r}")


@dataclass(frozen=True)
class STLConfig:
    """One STL layer (see docs/operator.md).

    tile: t, the tile side (1..16). rank: r, products per tile (1..t**3; t**3 products compute the
    dense product exactly, so more is never useful). init: the encoder/decoder initialisation
    (``"strassen"``, ``"fitted"``, ``"polynomial"``, ``"random"``); ``None`` picks ``"strassen"``
    for a layer trained from scratch and ``"fitted"`` (the closest start) for one converted from a
    dense layer. causal: no output row depends on a later row of its tile (decoder LLMs).
    seed: for ``"random"`` (``None``: drawn from torch's RNG) and the fitted inits (``None``: 0).
    ed_norm: norm of each product's E row and D column, ``Wt`` takes the scale (``None``: the
    decomposition's balanced scale); the operator is unchanged, only the optimiser's view of it.
    """
    tile: int = 4
    rank: int = 24
    init: Optional[str] = None
    causal: bool = False
    seed: Optional[int] = None
    ed_norm: Optional[float] = 1.0

    def __post_init__(self):
        _positive_int("STLConfig", "tile", self.tile, MAX_TILE)
        _positive_int("STLConfig", "rank", self.rank, self.tile ** 3)
        if self.init is not None and self.init not in INITS:
            raise ValueError(f"STLConfig: unknown init {self.init!r}; valid names: {', '.join(INITS)}")
        if not isinstance(self.causal, bool):
            raise ValueError(f"STLConfig: 'causal' must be a bool, got {self.causal!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or self.seed < 0):
            raise ValueError(f"STLConfig: 'seed' must be None or an integer >= 0, got {self.seed!r}")
        _positive_number("STLConfig", "ed_norm", self.ed_norm, optional=True)
        if self.init == "strassen" and self.tile & (self.tile - 1):
            raise ValueError(f"STLConfig: init='strassen' needs a power-of-2 tile, got tile={self.tile}")

    def resolved(self, converting):
        """This config with ``init`` made concrete (see the class docstring)."""
        if self.init is not None:
            return self
        init = "fitted" if converting else "strassen"
        if init == "strassen" and self.tile & (self.tile - 1):
            init = "fitted"
        return replace(self, init=init)

    def to_dict(self):
        return {f.name: getattr(self, f.name) for f in fields(self)}


CALIBRATIONS = ("lstsq", "distill")


@dataclass(frozen=True)
class CalibrationConfig:
    """How ``convert(..., calibration_data=...)`` fits each converted layer (stl_torch.calibrate).

    method: ``"lstsq"`` solves ``Wt`` by least squares with E, D at the init (ridge ``damp`` x the
    mean diagonal; layers with more than ``max_unknowns`` unknowns per output column, r*N/t, keep
    the data-free ``Wt``); ``"distill"`` then runs ``distill_steps`` Adam steps on E, D and ``Wt``
    (step ``distill_lr`` relative to each tensor's RMS, ``rows_per_step`` rows per step).
    At most ``max_rows`` rows per layer are used; every ``holdout``-th tile is held out, errors
    are measured there, and each layer keeps the best of data-free / lstsq / distilled on them.
    seed: the distillation's minibatch order.
    """
    method: str = "lstsq"
    damp: float = 1e-2
    max_unknowns: int = 12288
    distill_steps: int = 200
    distill_lr: float = 3e-3
    rows_per_step: int = 2048
    max_rows: int = 8192
    holdout: int = 10
    seed: int = 0

    def __post_init__(self):
        if self.method not in CALIBRATIONS:
            raise ValueError(f"CalibrationConfig: 'method' must be one of {CALIBRATIONS}, got {self.method!r}")
        for name in ("rows_per_step", "max_rows", "holdout"):
            _positive_int("CalibrationConfig", name, getattr(self, name))
        for name in ("max_unknowns", "distill_steps", "seed"):  # max_unknowns=0: no least squares
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"CalibrationConfig: '{name}' must be an integer >= 0, got {v!r}")
        _positive_number("CalibrationConfig", "distill_lr", self.distill_lr)
        _positive_number("CalibrationConfig", "damp", self.damp)

    def to_dict(self):
        return {f.name: getattr(self, f.name) for f in fields(self)}
