"""STLinear: a drop-in replacement for nn.Linear computed by the STL operator."""
import math
from dataclasses import fields, replace

import torch
from torch import nn

from . import init as stl_init
from . import tiling
from .config import STLConfig
from .ops import _forward, stl_linear


def _config(config, overrides, converting):
    """The layer's STLConfig: ``config`` (or the defaults) with keyword ``overrides`` applied."""
    if config is not None and not isinstance(config, STLConfig):
        raise ValueError(f"STLinear: argument 'config' must be an STLConfig, got {type(config).__name__}")
    cfg = config or STLConfig()
    if overrides:
        try:
            cfg = replace(cfg, **overrides)
        except TypeError as e:
            valid = ", ".join(f.name for f in fields(STLConfig))
            raise TypeError(f"STLinear: {e} (valid keywords: {valid})") from None
    return cfg.resolved(converting)


class TileContext:
    """How an :class:`STLinear` lays out its rows when something outside one call decides where its tiles
    start (left padding) and what came before (incremental decoding): the one interface between the
    layer and ``stl_torch.decode``, which implements it. The dependency points one way: ``nn`` defines
    this interface and knows nothing of decode; decode sets a context on every STL layer of a model
    for the span of one model call (:meth:`STLinear.set_tile_context`), and clears it afterwards.

    While a context is set, ``STLinear.forward(x)`` returns ``ctx.run(layer, x)`` and
    ``STLinear.processed_rows(shape)`` returns ``ctx.processed_rows(layer, shape)``. An implementation
    computes through the layer's public operator methods (:meth:`STLinear.rows_forward`,
    :meth:`STLinear.rows_forward_with_z`, :meth:`STLinear.product_cache_ready`)."""

    def run(self, layer, x):
        """The layer's output for input ``x`` (the checked ``forward`` argument)."""
        raise NotImplementedError

    def processed_rows(self, layer, shape):
        """Rows the operator runs for an input of ``shape``, padding included (``stl_torch.flops``)."""
        raise NotImplementedError

    def step_macs(self, layer, shape):
        """Multiply-adds of the layer's last call, when it ran a product-cache decode step (``stl_torch.flops``);
        None when it ran the operator on :meth:`processed_rows` rows."""
        return None


class STLinear(nn.Module):
    """y = STL(x; E, Wt, D) + bias, same call and forward contract as ``nn.Linear``.

    The layer is described by one ``STLConfig`` (tile, rank, init, causal, seed, ed_norm), given
    as ``config=`` and/or as keywords (``STLinear(512, 512, rank=16)``); see ``STLConfig``.

    ``x`` may have any leading dims ``(*, in_features)``; rows are tiled by the rule of
    ``stl_torch.tiling``: for inputs with 3 or more dims the second-to-last dim is the token dim,
    tiles group ``tile`` consecutive tokens of one sequence, and a token count not divisible by
    ``tile`` is zero-padded per sequence, so a tile never spans two sequences. A 2-D input
    ``(B, in_features)`` has no token axis: each row is computed alone (padded to one tile), so
    samples never mix, at ``tile`` times the rows' cost. The output is always contiguous.

    With ``causal=True`` E and D are masked by row (buffers ``mask_E``, ``mask_D``; see
    ``stl_torch.init.causal_masks``) so that no output row depends on a later row of its tile.
    Inside a model whose tile cache is enabled (``stl_torch.decode``, done by ``convert()``), tiles
    start at each sequence's first real token and a decode step continues its partial tile.

    There is no dense ``weight``: the weight lives in encoded form, ``Wt`` (rank, in/tile,
    out/tile). Reading ``layer.weight`` raises an AttributeError that says so (``hasattr`` is
    False); :meth:`dense_weight` gives the equivalent matrix when the layer has one.

    Built on the meta device (``device="meta"``, or under ``torch.device("meta")``), the layer
    skips its initialisation; ``to_empty()`` then :meth:`reset_parameters` (or loading a state
    dict) makes it usable.
    """
    _stl_ctx = None  # the TileContext of the model forward in progress (set_tile_context)

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
        if cfg.causal:  # recomputed by reset_parameters (after to_empty, the values are garbage)
            self.register_buffer("mask_E", torch.empty(r, t * t, **fk))
            self.register_buffer("mask_D", torch.empty(t * t, r, **fk))
        else:
            self.mask_E = self.mask_D = None
        if not self.E.is_meta:  # a meta layer is a skeleton: weights come from to_empty + reset or a load
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
        map as the rank allows. The causal masks are recomputed too. A no-op on the meta device."""
        if self.E.is_meta:
            return
        if self.causal:
            mE, mD = stl_init.causal_masks(self.tile, self.rank)
            self.mask_E.copy_(mE)
            self.mask_D.copy_(mD)
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
        # built on meta and materialised: the init runs once, on linear's weight, not also on a random one
        m = cls(linear.in_features, linear.out_features, linear.bias is not None,
                device="meta", dtype=linear.weight.dtype, config=cfg)
        if not linear.weight.is_meta:
            m = m.to_empty(device=linear.weight.device)
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
        if not torch.is_tensor(x) or x.dim() == 0:
            what = "a 0-D tensor" if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"STLinear: input must be a tensor of shape (*, in_features={self.in_features}), got {what}")
        if x.shape[-1] != self.in_features:
            raise ValueError(f"STLinear: input last dim is {x.shape[-1]}, expected "
                             f"in_features={self.in_features}")
        if self._stl_ctx is not None:  # inside a model forward with a TileContext (stl_torch.decode)
            return self._stl_ctx.run(self, x)
        return tiling.from_tiles(self.rows_forward(tiling.to_tiles(x, self.tile)), x.shape, self.tile)

    def rows_forward(self, rows):
        """The operator on 2-D ``rows`` (M, in_features), tiled in order: t consecutive rows form a tile."""
        E, D = self.effective_encoders()
        return stl_linear(rows, E, self.Wt, D, self.bias, self.tile)

    def rows_forward_with_z(self, rows):
        """(y, Z) of :meth:`rows_forward`, no autograd: Z (rank, rows/tile, out/tile) are the r
        products' GEMM rows per tile, which the decode product cache keeps (``stl_torch.decode``)."""
        E, D = self.effective_encoders()
        bias = self.bias if self.bias is not None else rows.new_empty((0,))
        return _forward(rows.contiguous(), E.contiguous(), self.Wt.contiguous(), D.contiguous(), bias.contiguous(),
                        self.tile, True)

    def product_cache_ready(self):
        """Whether a decode step may compute only the products of the new token's level (the product
        cache of ``stl_torch.decode``): a causal layer of tile > 1 whose masks are those of
        ``stl_torch.init.causal_masks`` (checked once per change of the mask buffers)."""
        bufs = self._buffers  # not through Module.__getattr__: a decode step asks for every layer
        mask_E, mask_D = bufs.get("mask_E"), bufs.get("mask_D")
        if mask_E is None or mask_D is None or self.tile == 1 or not self.causal:
            return False
        key = (mask_E._version, mask_D._version, mask_E.data_ptr(), mask_D.data_ptr())
        if self.__dict__.get("_pc_key") != key:
            mE, mD = stl_init.causal_masks(self.tile, self.rank)
            ok = (torch.equal(mask_E.detach().cpu().double(), mE)
                  and torch.equal(mask_D.detach().cpu().double(), mD))
            self.__dict__["_pc_key"], self.__dict__["_pc_ok"] = key, ok
        return self.__dict__["_pc_ok"]

    def set_tile_context(self, ctx):
        """Route this layer's calls through ``ctx`` (a :class:`TileContext`), or back to the plain tiling
        rule with ``None``. ``stl_torch.decode`` sets it for one model call."""
        if ctx is not None and not isinstance(ctx, TileContext):
            raise TypeError(f"STLinear.set_tile_context: expected a TileContext or None, got {type(ctx).__name__}")
        self._stl_ctx = ctx

    @property
    def tile_context(self):
        """The :class:`TileContext` in effect, or None."""
        return self._stl_ctx

    def processed_rows(self, shape):
        """Rows the operator runs for an input of ``shape``, padding included (what
        ``stl_torch.flops`` counts): the tiling rule, or the tile context's layout when active."""
        if self._stl_ctx is not None:
            return self._stl_ctx.processed_rows(self, shape)
        return tiling.padded_rows(shape, self.tile)

    def __getattr__(self, name):
        if name == "weight" and "weight" not in self.__dict__.get("_parameters", {}):
            raise AttributeError(
                "STLinear has no dense 'weight': STL keeps its weight in encoded form, 'Wt' of shape "
                "(rank, in_features/tile, out_features/tile), and mixes the rows of a tile, so in general no "
                "(out_features, in_features) matrix computes the same function. Use layer.dense_weight() for "
                "the equivalent matrix of an exact decomposition, or keep layers that are read through "
                "'.weight' dense (convert's filter).")
        return super().__getattr__(name)

    @torch.no_grad()
    def dense_weight(self, tol=1e-5):
        """The (out_features, in_features) matrix W with ``layer(x) == x @ W.T + bias``, when the layer
        has one: only an exact decomposition (e.g. ``init="strassen"`` with tile=2, rank=7 or tile=4,
        rank=49, before training changes it) acts on each row alone. Otherwise raises ValueError
        with the relative deviation from the closest row-wise map (above ``tol``).

        How: row a' of an input tile reaches row a of the output tile through the (N, P) block
        ``B[a', a][t*K+c, t*J+b] = sum_l E[l, a'*t+c] D[a*t+b, l] Wt[l, K, J]``; the layer is dense
        exactly when every off-diagonal block is 0 and the t diagonal blocks are equal (= W^T).
        Costs t^2 * rank * in * out multiply-adds, in float64."""
        t, r = self.tile, self.rank
        E, D = self.effective_encoders()
        E3, D3, Wt = E.double().reshape(r, t, t), D.double().reshape(t, t, r), self.Wt.double()
        N, P = self.in_features, self.out_features

        def block(a_in, a_out):
            return torch.einsum("lc,bl,lkj->kcjb", E3[:, a_in], D3[a_out], Wt).reshape(N, P)

        diag = [block(a, a) for a in range(t)]
        W = sum(diag) / t
        dev = sum((d - W).square().sum() for d in diag)
        dev = dev + sum(block(i, o).square().sum() for i in range(t) for o in range(t) if i != o)
        rel = (dev.sqrt() / (W.norm() * t ** 0.5).clamp_min(1e-300)).item()
        if not rel <= tol:
            raise ValueError(f"STLinear.dense_weight: this layer is not a dense linear map (relative deviation "
                             f"{rel:.3g} > tol={tol:g}): STL mixes the {t} rows of a tile unless its "
                             "decomposition is exact")
        return W.t().to(self.Wt.dtype).contiguous()

    def __prepare_scriptable__(self):
        # torch.jit.script calls this first; without it, it fails deep inside with "Expected a single
        # top-level function". The op is a custom op with Python autograd: compile and export work.
        raise RuntimeError("STLinear does not support torch.jit.script; use torch.compile or torch.export "
                           "(torch.jit.trace works for a fixed input shape)")

    def extra_repr(self):
        cfg = ", ".join(f"{k}={v!r}" for k, v in self.config.to_dict().items() if k != "seed")
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, {cfg}"
