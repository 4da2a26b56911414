"""Tiles that follow each sequence: left padding and incremental decoding (docs/operator.md
section 9, docs/llm.md).

Two things need more than one ``STLinear`` call can see, so the model, not the layer, sets them up:

- **Where a sequence's tiles start.** In a left-padded batch, tiles must start at each row's first
  real token (found in the ``attention_mask``), so padding never joins a real token's tile.
- **What came before.** A decode step hands each layer only the newest tokens, but a causal tile's
  row a depends on rows 0..a of its tile: the layer must see the rows that opened the current
  partial tile, at most t-1 per sequence, like the state of a causal convolution.

Design. :func:`enable` (``convert()`` and ``stl_torch.from_pretrained`` call it) puts a forward
pre-hook and an always-called forward hook on the model (and on every Hugging Face
``PreTrainedModel`` inside it). For one model call the pre-hook reads the call's
``attention_mask``, ``cache`` / ``past_key_values`` and ``use_cache`` and hands every STL layer a
context; the hook takes it away when the call ends. The per-sequence state, a :class:`TileCache`,
lives on the transformers ``Cache`` object of the call: whatever generate() or a user loop does with
that cache (pass it to the next call, reorder it for beam search, expand or select its batch,
reset it) happens to the tile state too, because the cache's class is extended with those methods
(:class:`TileCacheMixin`). So ``generate()`` and a plain loop of
``out = model(ids, cache=out.cache)`` calls both decode exactly, with no extra API.

Without an attention mask and without a cache, a call runs exactly as a bare ``STLinear`` does.

Gradient checkpointing: a block that transformers checkpoints is recomputed in the backward pass, after
the model call; its checkpoint function is wrapped (:class:`_TiledCheckpoint`) so that the recompute gets
the call's context again.
"""
import inspect
import sys
import weakref

import torch
from torch import nn

from . import tiling
from .nn import STLinear, TileContext
from .step_op import decode_step

__all__ = ["enable", "disable", "TileCache", "TileCacheMixin", "tile_cache"]


class TileCache:
    """The tile state of one batch of sequences, for every STL layer of one model.

    length: positions processed so far (padding included). first: (B,) position of each row's
    first real token (-1: none yet). rows: per layer call, its last t-1 inputs (B, t-1, N).
    z: per layer call whose layer has a product cache (``STLinear.product_cache_ready``), the
    product cache (B, r, P/t): row l holds product l's GEMM row Z_l of the current tile once the
    tile has reached its level k_l (rows of higher levels are stale and rewritten before they are
    read). A decode step computes only the r/t products of the token's level and writes their
    rows in place; a call of several tokens refills it from its full-tile forward.
    spare: per layer call, the buffer a decode step writes its next ``rows`` into (the two swap after
    the call: no allocation per step, and a failed call leaves ``rows`` as it was)."""

    def __init__(self):
        self.length = 0
        self.first = None
        self.rows = {}
        self.z = {}
        self.spare = {}

    def _map(self, fn):
        if self.first is not None:
            self.first = fn(self.first)
        self.rows = {k: fn(v) for k, v in self.rows.items()}
        self.z = {k: fn(v) for k, v in self.z.items()}
        self.spare = {}

    def reorder(self, beam_idx):
        self._map(lambda v: v.index_select(0, beam_idx.to(v.device)))

    def repeat_interleave(self, repeats):
        self._map(lambda v: v.repeat_interleave(repeats, dim=0))

    def select(self, indices):
        self._map(lambda v: v[indices.to(v.device) if torch.is_tensor(indices) else indices])

    def check_crop(self, tokens_to_remove):
        if tokens_to_remove != 0 and self.length > 0:
            raise NotImplementedError(
                "stl_torch: cropping a cache (assisted / speculative decoding) is not supported with STL layers: "
                "the tile cache keeps only the current partial tile and cannot roll back")

    def reset(self):
        self.length, self.first, self.rows, self.z, self.spare = 0, None, {}, {}, {}


class TileCacheMixin:
    """Mixed into the class of a transformers ``Cache`` that carries a :class:`TileCache`
    (``cache.stl_tiles``): the batch edits generate() makes also apply to the tile state."""

    def reorder_cache(self, beam_idx):
        super().reorder_cache(beam_idx)
        self.stl_tiles.reorder(beam_idx)

    def batch_repeat_interleave(self, repeats):
        super().batch_repeat_interleave(repeats)
        self.stl_tiles.repeat_interleave(repeats)

    def batch_select_indices(self, indices):
        super().batch_select_indices(indices)
        self.stl_tiles.select(indices)

    def crop(self, tokens_to_remove):
        self.stl_tiles.check_crop(tokens_to_remove)
        super().crop(tokens_to_remove)

    def reset(self):
        super().reset()
        self.stl_tiles.reset()


_WITH_TILES = {}


def _attach(cache, tiles):
    """Give a transformers cache a tile state: its class gains :class:`TileCacheMixin` (same name)."""
    cls = type(cache)
    if not isinstance(cache, TileCacheMixin):
        if cls not in _WITH_TILES:
            _WITH_TILES[cls] = type(cls.__name__, (TileCacheMixin, cls), {"__module__": cls.__module__,
                                                                          "__qualname__": cls.__qualname__})
        cache.__class__ = _WITH_TILES[cls]
    cache.stl_tiles = tiles
    return cache


def tile_cache(cache):
    """The :class:`TileCache` a transformers cache carries, or None."""
    return getattr(cache, "stl_tiles", None)


def _is_hf_cache(v):
    tf = sys.modules.get("transformers.cache_utils")
    return tf is not None and isinstance(v, tf.Cache)


def _find_cache(output):
    if isinstance(output, dict):  # transformers' ModelOutput is an OrderedDict
        values = output.values()
    elif isinstance(output, (tuple, list)):
        values = output
    else:
        return None
    return next((v for v in values if _is_hf_cache(v)), None)


def _seq_length(cache):
    try:
        return int(cache.get_seq_length())
    except Exception:  # caches without a sequence length (linear attention only): nothing to check
        return None


_POSITIONAL = {}


def _call_args(module, args, kwargs):
    """The call's arguments by name (positional ones through the forward's signature)."""
    cls = type(module)
    if cls not in _POSITIONAL:
        try:
            params = inspect.signature(module.forward).parameters.values()
            _POSITIONAL[cls] = [p.name for p in params
                                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        except (TypeError, ValueError):
            _POSITIONAL[cls] = []
    named = dict(zip(_POSITIONAL[cls], args))
    named.update(kwargs)
    if "input_ids" not in named and "inputs_embeds" not in named and args and torch.is_tensor(args[0]):
        named["input_ids"] = args[0]  # a plain model called as model(tokens)
    return named


class _Context(TileContext):
    """One model call: where each row's current tile opened, and the tile state to read and update."""

    def __init__(self, tiles, cache, B, S, first, record, layers):
        self.tiles, self.cache, self.B, self.S, self.first = tiles, cache, B, S, first
        self.start, self.record, self.layers = tiles.length, record, layers  # layers: [(fqn, STLinear)]
        self.names = {id(m): fqn for fqn, m in layers}
        self.calls, self.new_rows, self.new_z, self._shift, self._pos = {}, {}, {}, {}, {}
        self.old_rows, self.stepped = {}, {}  # rows a step replaced (the next spares)
        self.no_grad = not torch.is_grad_enabled()
        self.continuing = self.start > 0
        self.ready = {}  # id(layer) -> product_cache_ready(), asked once per call by prepare()

    @torch.compiler.disable  # host values by design: eager even where a compiled module call traces the hook
    def prepare(self):
        """Everything a layer's run needs that reads host values (shifts, positions, mask checks) or
        allocates the step's buffers, done here in the pre-hook, once per call: a compiled forward
        (``model.forward = torch.compile(model.forward)``) then traces only tensor ops and the step op,
        with no graph break (``Tensor.item``, ``data_ptr``) and no guard on a value that changes from
        step to step (the cache's length, each row's position in its tile)."""
        for t in {m.tile for _, m in self.layers}:
            self.shift(t)
            if self.continuing:
                self.pos(t)
        if not (self.record and self.no_grad):
            return
        for _, m in self.layers:
            self.ready[id(m)] = m.product_cache_ready()
        if not (self.continuing and self.S == 1):
            return
        tiles = self.tiles
        for key, z in tiles.z.items():
            hist = tiles.rows.get(key)
            if hist is None:
                continue
            if not z.is_contiguous():
                tiles.z[key] = z.contiguous()
            if not hist.is_contiguous():
                tiles.rows[key] = hist = hist.contiguous()
            out = tiles.spare.get(key)
            if out is None or out.shape != hist.shape or out.dtype != hist.dtype:
                tiles.spare[key] = torch.empty_like(hist)

    def replay(self):
        """A context to run this call's layers again later, as activation checkpointing's recompute does:
        the same layout, the tile rows from before this call, nothing recorded."""
        before = TileCache()
        before.length, before.rows = self.start, dict(self.tiles.rows)
        return _Context(before, None, self.B, self.S, self.first, False, self.layers)

    def pos(self, t):
        """(B,) int64: each sequence's row in its current tile at this call's first token."""
        if t not in self._pos:
            sh = self.shift(t)[0]
            self._pos[t] = (torch.full((self.B,), sh, dtype=torch.long) if isinstance(sh, int)
                            else sh.to("cpu", torch.long).contiguous())
        return self._pos[t]

    def _step(self, layer, x, key, hist):
        """One token per sequence, product cache filled: only the token's level's products
        (csrc/decode_step.c), the next tile rows written into the spare buffer (:meth:`prepare` made
        z, hist and the spare contiguous and matching). None when this call cannot take that path."""
        z = self.tiles.z.get(key)
        if z is None or hist is None or self.S != 1 or not self.ready.get(id(layer)) or x.device.type != "cpu":
            return None
        p = layer._parameters  # not through Module.__getattr__: this runs for every layer of every step
        Wt = p["Wt"]
        if x.dtype != Wt.dtype:
            return None
        b = p.get("bias")
        if b is None:
            b = x.new_empty((0,))
        out = self.tiles.spare[key]
        t = layer.tile
        y = decode_step(x.reshape(self.B, -1).contiguous(), hist, p["E"], Wt, p["D"], b, z, self._pos[t], t, out)
        self.new_z[key] = z  # written in place: the level's rows only, so a failed call can simply rerun
        self.new_rows[key], self.old_rows[key] = out, hist
        return y.reshape(self.B, 1, -1)

    def _forward_rows(self, layer, rows, key, last_tile):
        """The full-tile operator on laid-out ``rows``; with a product cache (and no autograd), also
        keep each sequence's Z rows of the tile its last token is in (``last_tile``: (B,) global
        tile index, or a callable giving it)."""
        if not (self.record and self.no_grad and self.ready.get(id(layer)) and rows.dtype == layer.Wt.dtype):
            return layer.rows_forward(rows)
        y, z = layer.rows_forward_with_z(rows)
        self.new_z[key] = z[:, last_tile].transpose(0, 1).contiguous()  # (B, r, P/t)
        return y

    def shift(self, t):
        """(shift, all zero): rows of each sequence's current tile that precede this call's first row;
        an int when every sequence has the same (no padding: the common case, laid out by slicing),
        else a (B,) tensor."""
        if t not in self._shift:
            sh = torch.where(self.first < 0, 0, (self.start - self.first).remainder(t))
            lo, hi = (int(v) for v in sh.aminmax()) if sh.numel() else (0, 0)
            self._shift[t] = (lo if lo == hi else sh, hi == 0)
        return self._shift[t]

    def _fits(self, x):
        return x.dim() == 3 and x.shape[0] == self.B and x.shape[1] == self.S

    def run(self, layer, x):
        n = self.calls.get(id(layer), 0)  # dicts keyed by id(layer), not by the module: what a compiled
        self.calls[id(layer)] = n + 1     # forward reads from them must not lead dynamo to other modules' state
        name = self.names.get(id(layer), "?")
        key = name if n == 0 else f"{name}#{n}"  # a layer called twice per forward keeps two states
        t = layer.tile
        if t == 1:  # tiles of one row: nothing to share, nothing to keep
            return tiling.from_tiles(layer.rows_forward(tiling.to_tiles(x, t)), x.shape, t)
        if not self._fits(x):
            if not self.continuing and self.shift(t)[1]:  # nothing to shift or continue: the plain rule is exact
                return tiling.from_tiles(layer.rows_forward(tiling.to_tiles(x, t)), x.shape, t)
            raise RuntimeError(
                f"stl_torch: STLinear '{name}' got an input of shape {tuple(x.shape)}, but the model call is a batch "
                f"of {self.B} sequences of {self.S} tokens: the tile cache and left padding need (batch, tokens, "
                "features) inputs")
        hist = self.tiles.rows.get(key)
        if self.continuing and hist is None:
            raise RuntimeError(f"stl_torch: STLinear '{key}' has no tile state from the earlier calls of this cache "
                               "(it did not run on their tokens), so it cannot continue their tiles")
        y = self._step(layer, x, key, hist) if self.continuing else None
        self.stepped[id(layer)] = y is not None
        if y is not None:
            return y
        S, dev = self.S, x.device
        shift, aligned = self.shift(t)  # read only off the step path: its value changes from step to step
        if aligned:  # every sequence starts a new tile here
            nt = -(-S // t)
            last = torch.arange(self.B, device=dev) * nt + (S - 1) // t
            y = tiling.from_tiles(self._forward_rows(layer, tiling.to_tiles(x, t), key, last), x.shape, t)
        else:
            rows, L = tiling.to_shifted_tiles(x, t, shift, hist)
            last = torch.arange(self.B, device=dev) * (L // t) + (shift + S - 1) // t
            y = tiling.from_shifted_tiles(self._forward_rows(layer, rows, key, last), shift, self.S, self.B)
        if self.record:  # the last t-1 inputs: every later call's partial tile starts among them
            self.new_z.setdefault(key, None)  # no product cache from this call: drop a stale one
            k = t - 1
            if x.shape[1] >= k:
                tail = x[:, x.shape[1] - k:]
            else:
                prev = hist if hist is not None else x.new_zeros(self.B, k, x.shape[2])
                tail = torch.cat([prev, x], dim=1)[:, -k:]
            self.new_rows[key] = tail.detach().clone()  # a copy: do not keep the whole activation alive
        return y

    def step_macs(self, layer, shape):
        if not self.stepped.get(id(layer)):
            return None
        from .flops import stl_step_macs
        return stl_step_macs(self.pos(layer.tile).tolist(), layer.in_features, layer.out_features, layer.tile,
                             layer.rank)

    def processed_rows(self, layer, shape):
        t = layer.tile
        if t > 1 and len(shape) == 3 and shape[0] == self.B and shape[1] == self.S and not self.shift(t)[1]:
            sh = self.shift(t)[0]
            return self.B * (-(-(self.S + (sh if isinstance(sh, int) else t - 1)) // t) * t)
        return tiling.padded_rows(shape, t)


def _stl_layers(module):
    return [(fqn, m) for fqn, m in module.named_modules() if isinstance(m, STLinear)]


class _TiledCheckpoint:
    """The checkpoint function of a block that transformers checkpoints (its ``_gradient_checkpointing_func``),
    wrapped: the backward pass recomputes the block outside the model call, where no context tells its STL
    layers where each row's tiles start (left padding) or what came before, so the recompute gets a
    replay of the first run's context (:meth:`_Context.replay`), kept alive by the autograd graph."""

    def __init__(self, inner, block):
        self.inner, self.block = inner, block

    def __call__(self, function, *args, **kwargs):
        layers = [m for m in self.block.modules() if isinstance(m, STLinear)]
        ctx = layers[0]._stl_ctx if layers else None
        if not isinstance(ctx, _Context):
            return self.inner(function, *args, **kwargs)
        replay = ctx.replay()

        def run(*a, **kw):
            if layers[0]._stl_ctx is not None:  # the first run, inside the model call
                return function(*a, **kw)
            replay.calls = {}
            for m in layers:
                m.__dict__["_stl_ctx"] = replay
            try:
                return function(*a, **kw)
            finally:
                for m in layers:
                    m.__dict__["_stl_ctx"] = None

        return self.inner(run, *args, **kwargs)


def _wrap_checkpointing(module, laid_out):
    """Give every block of ``module`` that transformers checkpoints a :class:`_TiledCheckpoint`. Found by
    the flag transformers sets on each checkpointed layer, not through its (deprecated, warning) model
    properties; done per call, since checkpointing may be enabled after :func:`enable`. A checkpointed
    block without a checkpoint function to wrap raises when ``laid_out()`` (the call has a layout its
    recompute would miss)."""
    for m in module.modules():
        if getattr(m, "gradient_checkpointing", False) is not True:
            continue
        f = getattr(m, "_gradient_checkpointing_func", None)
        if callable(f) and not isinstance(f, _TiledCheckpoint):
            m._gradient_checkpointing_func = _TiledCheckpoint(f, m)
        elif not callable(f) and laid_out():
            raise RuntimeError(
                f"stl_torch: {type(m).__name__} is checkpointed without a _gradient_checkpointing_func that "
                "stl_torch can wrap, so its recompute would not see where each row's tiles start: pad on the right "
                "(or not at all) when training with gradient checkpointing, or turn checkpointing off.")


_LAYERS_OF_CACHE = weakref.WeakKeyDictionary()  # hooked module -> (its last TileCache, its STL layers)


def _pre_hook(module, args, kwargs):
    first_layer = module.__dict__.get("_stl_first")  # set by enable()
    if first_layer is not None and first_layer._stl_ctx is not None:
        return None  # an enclosing model's call set the context (checked first: no global state is read, so a
        #              compiled forward that calls this inner model traces nothing else of the hook)
    a = _call_args(module, args, kwargs)
    cache = a.get("cache")
    if cache is None:
        cache = a.get("past_key_values")
    cache = cache if _is_hf_cache(cache) else None
    tiles = tile_cache(cache) if cache is not None else None
    # a call that continues a cache reuses the layer list found by the last call on that cache (no walk
    # over the modules per decode step: a model's structure does not change in the middle of a generation)
    held = _LAYERS_OF_CACHE.get(module)
    if tiles is not None and tiles.length > 0 and held is not None and held[0]() is tiles:
        layers = held[1]
    else:
        layers = _stl_layers(module)
        if tiles is not None:
            _LAYERS_OF_CACHE[module] = (weakref.ref(tiles), layers)
    if not layers or layers[0][1]._stl_ctx is not None:
        return None  # no STL layer, or an enclosing model's call already set the context
    tokens = a.get("input_ids")
    if tokens is None:
        tokens = a.get("inputs_embeds")
    if not torch.is_tensor(tokens) or tokens.dim() < 2:
        return None
    B, S = tokens.shape[0], tokens.shape[1]
    mask = a.get("attention_mask")
    use_cache = a.get("use_cache")
    if use_cache is None:
        use_cache = bool(getattr(getattr(module, "config", None), "use_cache", False))
    record = cache is not None or bool(use_cache)
    if mask is None and cache is None and not record:
        return None  # a plain call: every layer runs the plain tiling rule

    if cache is not None and tiles is None:
        held = _seq_length(cache)
        if held:
            raise RuntimeError(f"stl_torch: the cache passed to {type(module).__name__} holds {held} tokens but no STL "
                               "tile state: it was filled by a model call without stl_torch's tile cache, so the STL "
                               "layers cannot continue its tiles. Start from an empty cache.")
        tiles = TileCache()
        _attach(cache, tiles)
    if tiles is None:
        tiles = TileCache()
    start = tiles.length
    if cache is not None:
        held = _seq_length(cache)
        if held is not None and held != start:
            raise RuntimeError(f"stl_torch: the cache holds {held} tokens but its STL tile state {start}: it was "
                               "changed in a way the tile state did not follow (crop?)")
    if start > 0:
        for fqn, m in layers:
            if not m.causal and m.tile > 1:
                raise RuntimeError(
                    f"stl_torch: STLinear '{fqn}' is not causal, so it cannot decode incrementally: a step that "
                    "continues a cache would need later tokens of its tile. Convert with STLConfig(causal=True), or "
                    "run without a cache (generate(..., use_cache=False)).")
        if tiles.first is not None and tiles.first.shape[0] != B:
            raise RuntimeError(f"stl_torch: the cache's tile state holds {tiles.first.shape[0]} sequences but this "
                               f"call has {B}: change a cache's batch through its methods (reorder_cache, "
                               "batch_select_indices, batch_repeat_interleave)")

    dev = tokens.device
    first = tiles.first if tiles.first is not None else torch.full((B,), -1, dtype=torch.long, device=dev)
    if mask is not None:
        if not torch.is_tensor(mask) or mask.dim() != 2:
            what = f"{mask.dim()}-D" if torch.is_tensor(mask) else type(mask).__name__
            raise ValueError(f"stl_torch: STL layers need a 2-D attention_mask (batch, tokens) to find each row's "
                             f"first real token, got {what} (static caches, which pass 4-D masks, are not supported)")
        if mask.shape[0] != B or mask.shape[1] not in (S, start + S):
            raise ValueError(f"stl_torch: attention_mask has shape {tuple(mask.shape)}; expected ({B}, {start + S}) "
                             f"(past and new tokens) or ({B}, {S})")
        real = mask[:, mask.shape[1] - S:] != 0
        has, pos = real.any(1), real.int().argmax(1)  # argmax: the first real token of the row
    else:
        has = torch.ones(B, dtype=torch.bool, device=dev)
        pos = torch.zeros(B, dtype=torch.long, device=dev)
    first = torch.where((first < 0) & has.to(first.device), start + pos.to(first.device), first)
    if module.training and torch.is_grad_enabled() and (mask is not None or start > 0):
        _wrap_checkpointing(module, lambda: start > 0 or bool((first > 0).any()))

    _LAYERS_OF_CACHE[module] = (weakref.ref(tiles), layers)
    ctx = _Context(tiles, cache, B, S, first, record, layers)
    ctx.prepare()
    for _, m in layers:
        m.__dict__["_stl_ctx"] = ctx  # STLinear.set_tile_context without its check: every layer, every step
    module.__dict__["_stl_ctx_owned"] = ctx
    return None


@torch.compiler.disable  # storage identities: host logic
def _own_storage(state):
    """Give every kept tensor of ``state`` a storage of its own. Eager calls already copy (``clone``), but a
    compiled forward may hand back views of one buffer (inductor drops a clone it deems redundant, and q, k
    and v of a block keep the same rows): a later compiled step would then see aliased inputs that the
    next step does not have, and a view keeps the whole activation alive."""
    seen = set()
    for key, v in state.items():
        if v is None:
            continue
        st = v.untyped_storage()
        if st.data_ptr() in seen or st.nbytes() != v.numel() * v.element_size() or not v.is_contiguous():
            v = state[key] = v.clone(memory_format=torch.contiguous_format)
        seen.add(v.untyped_storage().data_ptr())


def _post_hook(module, args, output):
    ctx = module.__dict__.pop("_stl_ctx_owned", None)
    if ctx is None:
        return None
    for _, m in ctx.layers:
        m.__dict__["_stl_ctx"] = None
    if output is None or not ctx.record:  # the call raised, or keeps no state
        return None
    tiles = ctx.tiles
    if ctx.S > 1 or not ctx.continuing:
        _own_storage(ctx.new_rows)
        _own_storage(ctx.new_z)
    tiles.rows.update(ctx.new_rows)
    tiles.spare.update(ctx.old_rows)  # the rows a step replaced: the buffer its next step writes into
    for key, z in ctx.new_z.items():
        if z is None:
            tiles.z.pop(key, None)
        else:
            tiles.z[key] = z
    tiles.first, tiles.length = ctx.first, ctx.start + ctx.S
    if ctx.cache is None:  # the model made its own cache (use_cache=True): the tile state goes with it
        cache = _find_cache(output)
        if cache is not None:
            _attach(cache, tiles)
    return None


def _is_pretrained(m):
    return any(c.__name__ == "PreTrainedModel" for c in type(m).__mro__)


def _hooked_modules(model):
    """``model`` and every Hugging Face ``PreTrainedModel`` inside it: where a model call starts."""
    return [model] + [m for m in model.modules() if m is not model and _is_pretrained(m)]


def _remove_hooks(model, fns):
    for m in model.modules():
        for hooks in (m._forward_pre_hooks, m._forward_hooks):
            for k in [k for k, h in hooks.items() if h in fns]:
                del hooks[k]
                m._forward_pre_hooks_with_kwargs.pop(k, None)
                m._forward_hooks_always_called.pop(k, None)


def _is_enabled(model):
    return any(h is _pre_hook for h in model._forward_pre_hooks.values())


def enable(model: nn.Module) -> nn.Module:
    """Make ``model``'s STL layers follow each sequence: tiles start at each row's first real token
    (``attention_mask``), and calls that pass a transformers cache continue their tiles (incremental
    decoding). Hooks ``model`` and every Hugging Face ``PreTrainedModel`` inside it; idempotent.
    ``convert()`` and ``stl_torch.from_pretrained`` call it. Returns ``model``."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"enable: argument 'model' must be an nn.Module, got {type(model).__name__}")
    _remove_hooks(model, (_refuse_pre_hook,))
    for m in _hooked_modules(model):
        m.__dict__["_stl_first"] = next((s for s in m.modules() if isinstance(s, STLinear)), None)
        if not any(h is _pre_hook for h in m._forward_pre_hooks.values()):
            m.register_forward_pre_hook(_pre_hook, with_kwargs=True)
            m.register_forward_hook(_post_hook, always_call=True)
    return model


def _refuse_pre_hook(module, args, kwargs):
    """After :func:`disable`: a call the plain per-call tiling would get wrong raises instead of
    silently differing from the dense-equivalent result (a cache to continue, or left padding)."""
    layers = [fqn for fqn, m in _stl_layers(module) if m.tile > 1]
    if not layers:
        return None
    a = _call_args(module, args, kwargs)
    cache = a.get("cache")
    if cache is None:
        cache = a.get("past_key_values")
    held = _seq_length(cache) if _is_hf_cache(cache) else None
    if held:
        raise RuntimeError(
            f"stl_torch: stl_torch.decode.disable() removed the tile cache of {type(module).__name__}, but this call "
            f"continues a cache of {held} tokens: STL layers (e.g. '{layers[0]}') would tile the new tokens without "
            "the rows that opened their tiles and compute different outputs. Call stl_torch.decode.enable(model) "
            "before generating with the cache, or generate with use_cache=False.")
    mask = a.get("attention_mask")
    if torch.is_tensor(mask) and mask.dim() == 2 and mask.shape[1] > 0:
        real = mask != 0
        if bool((real.any(1) & ~real[:, 0]).any()):
            raise RuntimeError(
                f"stl_torch: stl_torch.decode.disable() removed the tile layout of {type(module).__name__}, but this "
                "call's attention_mask is left-padded: STL layers would put padding into real tokens' tiles. Call "
                "stl_torch.decode.enable(model), or pad on the right.")
    return None


def disable(model: nn.Module) -> nn.Module:
    """Undo :func:`enable`: STL layers tile each call on its own again, as a bare ``STLinear`` does.
    What that would compute differently from the enabled model is refused with a ``RuntimeError``
    (a call that continues a filled cache, a left-padded ``attention_mask``), never silently run;
    plain calls (no cache to continue, no left padding) are unchanged."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"disable: argument 'model' must be an nn.Module, got {type(model).__name__}")
    _remove_hooks(model, (_pre_hook, _post_hook, _refuse_pre_hook))
    for m in _hooked_modules(model):
        m.register_forward_pre_hook(_refuse_pre_hook, with_kwargs=True)
    return model
