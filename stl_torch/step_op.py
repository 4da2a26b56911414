"""Python side of ``torch.ops.stl_torch.stl_decode_step`` (csrc/decode_step.c): its fake kernel and a
reference in float64. The op is one causal decode step with the product cache (docs/llm.md, "Decode
speed"): per sequence, the r/t products of the token's level are encoded from the rows of its tile,
multiplied by their r/t blocks of Wt (their GEMM row is written into ``zcache`` in place), and output
row ``pos`` is decoded from the cached Z rows of every product of level <= pos.

    stl_decode_step(x (B, N), rows (B, t-1, N), E (r, t*t), Wt (r, N/t, P/t), D (t*t, r),
                    bias (P,) or empty, zcache (B, r, P/t) [mutated], pos (B,) int64, tile,
                    rows_out (B, t-1, N) or empty [mutated]) -> y (B, P)

``rows_out`` receives the last t-1 inputs after the step (``rows`` shifted by one row, ``x`` appended;
it may be ``rows`` itself): the tile state's next rows without a ``torch.cat``.

E and D are the raw parameters: only their causal support (``stl_torch.init.causal_masks``) is read.
CPU only for now.
"""
import torch

from .config import MAX_TILE

from .init import causal_levels

__all__ = ["decode_step", "decode_step_reference"]

_op = torch.ops.stl_torch.stl_decode_step.default
_FLOATS = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _check(x, rows, E, Wt, D, bias, zcache, pos, tile, rows_out):
    op = "stl_decode_step"
    torch._check(1 <= tile <= MAX_TILE, lambda: f"{op}: argument 'tile' is {tile}; expected 1 <= tile <= {MAX_TILE}")
    torch._check(x.dtype in _FLOATS, lambda: f"{op}: argument 'x' has dtype {x.dtype}; expected a float dtype")
    torch._check(x.dim() == 2, lambda: f"{op}: argument 'x' must be 2-D (B, N): one new token per sequence")
    B, N = x.shape
    torch._check(N > 0 and N % tile == 0, lambda: f"{op}: argument 'x' has N={N} columns; expected a positive "
                 f"multiple of tile={tile}")
    torch._check(E.dim() == 2 and E.shape[1] == tile * tile,
                 lambda: f"{op}: argument 'E' has shape {tuple(E.shape)}; expected (rank, tile*tile) = (r, {tile * tile})")
    r = E.shape[0]
    torch._check(Wt.dim() == 3 and Wt.shape[0] == r and Wt.shape[1] == N // tile and Wt.shape[2] >= 1,
                 lambda: f"{op}: argument 'Wt' has shape {tuple(Wt.shape)}; expected (rank, N/tile, P/tile) = "
                 f"({r}, {N // tile}, P/{tile})")
    pt = Wt.shape[2]
    for name, v, want in (("rows", rows, (B, tile - 1, N)), ("D", D, (tile * tile, r)), ("zcache", zcache, (B, r, pt))):
        torch._check(tuple(v.shape) == want, lambda: f"{op}: argument '{name}' has shape {tuple(v.shape)}; "
                     f"expected {want}")
    torch._check(bias.numel() == 0 or tuple(bias.shape) == (pt * tile,),
                 lambda: f"{op}: argument 'bias' has shape {tuple(bias.shape)}; expected ({pt * tile},) or empty")
    torch._check(rows_out.numel() == 0 or tuple(rows_out.shape) == (B, tile - 1, N),
                 lambda: f"{op}: argument 'rows_out' has shape {tuple(rows_out.shape)}; expected {(B, tile - 1, N)} "
                 "or empty")
    torch._check(tuple(pos.shape) == (B,) and pos.dtype == torch.int64,
                 lambda: f"{op}: argument 'pos' must be an int64 tensor of shape ({B},)")
    return B, pt * tile


@torch.library.register_fake("stl_torch::stl_decode_step")
def _fake(x, rows, E, Wt, D, bias, zcache, pos, tile, rows_out):
    B, P = _check(x, rows, E, Wt, D, bias, zcache, pos, tile, rows_out)
    return x.new_empty((B, P))


def decode_step(x, rows, E, Wt, D, bias, zcache, pos, tile, rows_out=None):
    """The op (no autograd: decoding runs under ``torch.no_grad``); ``rows_out`` None: not written."""
    return _op(x, rows, E, Wt, D, bias, zcache, pos, tile, x.new_empty((0,)) if rows_out is None else rows_out)


def decode_step_reference(x, rows, E, Wt, D, bias, zcache, pos, tile):
    """What the op computes, in float64 torch ops (tests): returns (y, zcache after the step)."""
    t, r = tile, E.shape[0]
    lev = torch.as_tensor(causal_levels(t, r))
    mE = (torch.arange(t * t)[None, :] // t <= lev[:, None]).double()
    mD = (torch.arange(t * t)[:, None] // t >= lev[None, :]).double()
    E, D, Wt = E.double() * mE, D.double() * mD, Wt.double()
    z = zcache.double().clone()
    ys = []
    for b in range(x.shape[0]):
        j = int(pos[b])
        tile_rows = torch.zeros(t, x.shape[1], dtype=torch.float64)
        if j:
            tile_rows[:j] = rows[b, t - 1 - j:].double()
        tile_rows[j] = x[b].double()
        xe = torch.einsum("lac,akc->lk", E.reshape(r, t, t), tile_rows.reshape(t, -1, t))
        new = torch.einsum("lk,lkj->lj", xe, Wt)
        sel = lev == j
        z[b, sel] = new[sel]
        use = lev <= j
        yb = torch.einsum("bl,lj->jb", D.reshape(t, t, r)[j][:, use], z[b, use]).reshape(-1)
        ys.append(yb + (bias.double() if bias.numel() else 0))
    return torch.stack(ys), z
