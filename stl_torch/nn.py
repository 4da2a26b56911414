"""STLinear: a drop-in replacement for nn.Linear computed by the STL operator."""
import math
from dataclasses import replace

import torch
from torch import nn

from . import init as stl_init
from . import tiling
from .config import STLConfig
from .ops import stl_linear


def _config(config, overrides, converting):
    """The layer's STLConfig: ``config`` (or the defaults) with keyword ``overrides`` applied."""
    if config is not None and not isinstance(config, STLConfig):
        raise ValueError(f"STLinear: argument 'config' must be an STLConfig, got {type(config).__name__}")
    cfg = config or STLConfig()
    if overrides:
        try:
            cfg = replace(cfg, **overrides)
        except TypeError as e:
            raise TypeError(f"STLinear: {e} (valid keywords: tile, rank, init, causal, seed, ed_norm)") from None
    return cfg.resolved(converting)


class STLinear(nn.Module):
    """y = STL(x; E, Wt, D) + bias, same call and forward contract as ``nn.Linear``.

    The layer is described by one ``STLConfig`` (tile, rank, init, causal, seed, ed_norm), given
    as ``config=`` and/or as keywords (``STLinear(512, 512, rank=16)``); see ``STLConfig``.

    ``x`` may have any leading dims ``(*, in_features)``; rows are tiled by the rule of
    ``stl_torch.tiling``: for inputs with 3 or more dims the second-to-last dim is the token dim,
    tiles group ``tile`` consecutive tokens of one sequence, and a token count not divisible by
    ``tile`` is zero-padded per sequence, so a tile never spans two sequences. A 2-D input
    ``(M, in_features)`` is tiled along its rows.

    With ``causal=True`` E and D are masked by row (see ``stl_torch.init.causal_masks``) so that
    no output row depends on a later row of its tile.
    """

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None, *,
                 config=None, **overrides):
        super().__init__()
        self.config = cfg = _config(config, overrides, converting=False)
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"STLinear: '{name}' must be a positive integer, got {v!r}")
            if v % cfg.tile:
                raise ValueError(f"STLinear: {name}={v} is not divisible by tile={cfg.tile}")
        self.in_features, self.out_features = in_features, out_features
        fk = {"device": device, "dtype": dtype}
        t, r = cfg.tile, cfg.rank
        self.E = nn.Parameter(torch.empty(r, t * t, **fk))
        self.Wt = nn.Parameter(torch.empty(r, in_features // t, out_features // t, **fk))
        self.D = nn.Parameter(torch.empty(t * t, r, **fk))
        self.bias = nn.Parameter(torch.empty(out_features, **fk)) if bias else None
        if cfg.causal:
            mE, mD = stl_init.causal_masks(t, r)
            self.register_buffer("mask_E", mE.to(device=device, dtype=self.E.dtype))
            self.register_buffer("mask_D", mD.to(device=device, dtype=self.E.dtype))
        else:
            self.mask_E = self.mask_D = None
        self.reset_parameters()

    tile = property(lambda self: self.config.tile)
    rank = property(lambda self: self.config.rank)
    init = property(lambda self: self.config.init)
    causal = property(lambda self: self.config.causal)
    ed_norm = property(lambda self: self.config.ed_norm)

    @torch.no_grad()
    def reset_parameters(self, weight=None):
        """(Re)initialise from ``init``; ``Wt`` encodes ``weight`` (P x N) or a fresh
        nn.Linear-style random dense weight, so the layer starts as close to that dense
        map as the rank allows."""
        seed = self.config.seed
        if seed is None and self.init == "random":
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
        dec = stl_init.make_init(self.init, self.tile, self.rank, causal=self.causal, seed=seed)
        if weight is None:
            weight = torch.empty(self.out_features, self.in_features, dtype=torch.float64,
                                 device=self.E.device)
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        E, F, D = dec
        if self.ed_norm is not None:
            se = E.norm(dim=1).clamp_min(1e-300) / self.ed_norm  # per product l
            sd = D.norm(dim=0).clamp_min(1e-300) / self.ed_norm
            E, D, F = E / se[:, None], D / sd[None, :], F * (se * sd)[:, None]
        wt = tiling.encode_weight(weight.to(torch.float64), F.to(weight.device), self.tile)
        self.E.copy_(E)
        self.D.copy_(D)
        self.Wt.copy_(wt)
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_linear(cls, linear: nn.Linear, config=None, **overrides):
        """An STLinear whose ``Wt`` encodes ``linear.weight`` (so it starts as close to ``linear``
        as the rank allows) and which copies its bias. ``init`` defaults to ``"fitted"``."""
        cfg = _config(config, overrides, converting=True)
        m = cls(linear.in_features, linear.out_features, linear.bias is not None,
                device=linear.weight.device, dtype=linear.weight.dtype, config=cfg)
        with torch.no_grad():
            m.reset_parameters(weight=linear.weight.detach())
            if linear.bias is not None:
                m.bias.copy_(linear.bias)
        return m

    def effective_encoders(self):
        """(E, D) as the operator sees them (masked when causal)."""
        if self.causal:
            return self.E * self.mask_E, self.D * self.mask_D
        return self.E, self.D

    def forward(self, x):
        if x.shape[-1] != self.in_features:
            raise ValueError(f"STLinear: input last dim is {x.shape[-1]}, expected "
                             f"in_features={self.in_features}")
        E, D = self.effective_encoders()
        y = stl_linear(tiling.to_tiles(x, self.tile), E, self.Wt, D, self.bias, self.tile)
        return tiling.from_tiles(y, x.shape, self.tile)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, tile={self.tile}, rank={self.rank}, "
                f"init={self.init!r}, causal={self.causal}, ed_norm={self.ed_norm}")
