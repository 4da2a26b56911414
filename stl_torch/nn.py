"""STLinear: a drop-in replacement for nn.Linear computed by the STL operator."""
import math

import torch
import torch.nn.functional as Fn
from torch import nn

from . import init as stl_init
from .ops import stl_linear


def check_ed_norm(v, what):
    """``ed_norm`` is None or a positive real number (not a bool, not NaN)."""
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0):
        raise ValueError(f"{what} must be None or a positive number, got {v!r}")


class STLinear(nn.Module):
    """y = STL(x; E, Wt, D) + bias, same call and forward contract as ``nn.Linear``.

    ``x`` may have any leading dims ``(*, in_features)``. For inputs with 3 or more dims the
    second-to-last dim is the token dim: tiles group ``tile`` consecutive tokens of one sequence,
    and a token count not divisible by ``tile`` is zero-padded per sequence, so a tile never
    spans two sequences. A 2-D input ``(M, in_features)`` is tiled along its rows.

    With ``causal=True`` E and D are masked by row (see ``stl_torch.init.causal_masks``) so that
    no output row depends on a later row of its tile.

    ``seed``: the theory-backed inits are deterministic (``None`` = seed 0, fits are cached);
    ``init="random"`` with ``seed=None`` draws its seed from torch's global RNG, like
    ``nn.init``, so layers differ and ``torch.manual_seed`` reproduces them.

    ``ed_norm``: each product's E row and D column are rescaled to this norm and ``Wt`` takes the
    scale (the operator is unchanged; only the optimiser's view of it changes). ``None`` keeps
    the decomposition's balanced scale (||E_l|| = ||F_l|| = ||D_l||). Default 1.0: from scratch
    it trains the theory-backed inits markedly better (Strassen +0.05 top-1 in
    benchmarks/init_ablation.py; README "Does a theory-backed init train better than random?").
    """

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None, *,
                 tile=4, rank=24, init="strassen", causal=False, seed=None, ed_norm=1.0):
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if v % tile:
                raise ValueError(f"STLinear: {name}={v} is not divisible by tile={tile}")
        check_ed_norm(ed_norm, "STLinear: ed_norm")
        self.ed_norm = ed_norm
        self.in_features, self.out_features = in_features, out_features
        self.tile, self.rank, self.init, self.causal = tile, rank, init, causal
        fk = {"device": device, "dtype": dtype}
        t, r = tile, rank
        self.E = nn.Parameter(torch.empty(r, t * t, **fk))
        self.Wt = nn.Parameter(torch.empty(r, in_features // t, out_features // t, **fk))
        self.D = nn.Parameter(torch.empty(t * t, r, **fk))
        self.bias = nn.Parameter(torch.empty(out_features, **fk)) if bias else None
        if causal:
            mE, mD = stl_init.causal_masks(t, r)
            self.register_buffer("mask_E", mE.to(device=device, dtype=self.E.dtype))
            self.register_buffer("mask_D", mD.to(device=device, dtype=self.E.dtype))
        else:
            self.mask_E = self.mask_D = None
        self._seed = seed
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, weight=None):
        """(Re)initialise from ``init``; ``Wt`` encodes ``weight`` (P x N) or a fresh
        nn.Linear-style random dense weight, so the layer starts as close to that dense
        map as the rank allows."""
        seed = self._seed
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
        wt = stl_init.encode_weight(weight.to(torch.float64), F.to(weight.device), self.tile)
        self.E.copy_(E)
        self.D.copy_(D)
        self.Wt.copy_(wt)
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, tile=4, rank=24, init="fitted", causal=False,
                    seed=None, ed_norm=1.0):
        """An STLinear whose ``Wt`` encodes ``linear.weight`` and which copies its bias."""
        m = cls(linear.in_features, linear.out_features, linear.bias is not None,
                device=linear.weight.device, dtype=linear.weight.dtype, tile=tile, rank=rank,
                init=init, causal=causal, seed=seed, ed_norm=ed_norm)
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
        lead = x.shape[:-1]
        if x.dim() >= 3 and x.shape[-2] % self.tile:
            # pad the token dim per sequence so a tile never spans two sequences
            pad = (-x.shape[-2]) % self.tile
            xp = Fn.pad(x, (0, 0, 0, pad))
            y = stl_linear(xp.reshape(-1, self.in_features), E, self.Wt, D, self.bias, self.tile)
            y = y.reshape(*xp.shape[:-1], self.out_features)
            return y[..., : x.shape[-2], :]
        y = stl_linear(x.reshape(-1, self.in_features), E, self.Wt, D, self.bias, self.tile)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, tile={self.tile}, rank={self.rank}, "
                f"init={self.init!r}, causal={self.causal}, ed_norm={self.ed_norm}")
