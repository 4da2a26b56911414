"""The one home of how STL tiles rows, and of its float64 formulas (docs/operator.md).

Tiling rule (``STLinear``, ``stl_torch.flops``, calibration and the tile cache all use it):
a tile groups ``t`` consecutive tokens of one sequence.

- An input ``(*, S, N)`` with 3 or more dims: the second-to-last dim ``S`` is the token dim. Each
  of the ``prod(*)`` sequences is zero-padded at its end to a multiple of ``t`` tokens, so a tile
  never spans two sequences and padding never changes a real token's output.
- A 2-D input ``(B, N)`` has no token axis (a classifier head, a pooled vector): each row is its
  own sequence of one token, padded to one tile, so samples never mix. This costs ``t`` rows per
  row: such layers are better left dense (``convert(..., example_input=...)`` skips them).
- A 1-D input ``(N,)`` is one row, the same as ``(1, N)``.
- A sequence can start its tiles later than its first row (left padding, or a decode step that
  continues a partial tile): :func:`to_shifted_tiles` prepends, per sequence, the rows that open
  its current tile (``stl_torch.decode`` uses it).

Float64 formulas, tile t, rank r (index ``a*t+c`` is row-major inside a tile):
  E  (r, t*t)       activation encoder, column a*t + c (a: row inside the X tile, c: column)
  Wt (r, N/t, P/t)  the weight in encoded space
  D  (t*t, r)       decoder, row a*t + b (a: row inside the Y tile, b: column)
  F  (r, t*t)       weight encoder, column c*t + b over a tile of W^T (N x P); sets Wt once
These are the reference the C/CUDA kernels are tested against, and the exact computations
used by the initialisations and the calibration (never a hot path of training).
"""
import torch
import torch.nn.functional as Fn
from torch.fx.experimental.symbolic_shapes import statically_known_true

__all__ = ["padded_rows", "to_tiles", "from_tiles", "to_shifted_tiles", "from_shifted_tiles", "pad_rows",
           "encode_activations", "encode_weight", "decode", "stl_reference", "tensor_error", "matmul_tensor"]


# ------------------------------------------------------------------------------- tiling rule
def _seq_dims(shape):
    """(sequences, tokens per sequence) of an input of ``shape`` (..., N) under the tiling rule."""
    shape = tuple(shape)
    if len(shape) >= 3:
        seqs = 1
        for s in shape[:-2]:
            seqs *= s
        return seqs, shape[-2]
    return (shape[0] if len(shape) == 2 else 1), 1  # no token axis: every row is its own sequence


def padded_rows(shape, t):
    """Rows the operator processes for an input of ``shape`` (..., N): every sequence padded to
    a multiple of ``t`` tokens (a 2-D input's rows: one tile each)."""
    seqs, s = _seq_dims(shape)
    return seqs * (-(-s // t) * t)


def to_tiles(x, t):
    """``x`` (..., N) -> 2-D rows for the operator, tiled by the rule: every sequence is padded at
    its end to a multiple of ``t`` tokens (a row of a <= 2-D input to one tile)."""
    if x.dim() < 3:
        x = x.reshape(-1, 1, x.shape[-1])  # (B, N) -> B sequences of one token
    S = x.shape[-2]
    if not statically_known_true(S % t == 0):  # a symbolic S (export, dynamic compile) pads by a formula: no guard
        x = Fn.pad(x, (0, 0, 0, (S + t - 1) // t * t - S))
    return x.reshape(-1, x.shape[-1])


def from_tiles(y, shape, t):
    """Inverse of :func:`to_tiles` for the output: (rows, P) -> (*shape[:-1], P), padded rows
    dropped. Always contiguous, as ``nn.Linear``'s output is."""
    seqs, s = _seq_dims(shape)
    if statically_known_true(s % t == 0):
        return y.reshape(*tuple(shape)[:-1], y.shape[-1]).contiguous()
    y = y.reshape(seqs, (s + t - 1) // t * t, y.shape[-1])
    if statically_known_true(s % t != 0):  # a concrete length off the tile
        y = y[:, :s].contiguous()
    else:  # a symbolic length (export, dynamic compile): a gather, free of guards on s % t
        y = y.index_select(1, torch.arange(s, device=y.device))
    return y.reshape(*tuple(shape)[:-1], y.shape[-1])


def to_shifted_tiles(x, t, shift, history=None):
    """Rows for the operator when sequence b's current tile opened ``shift[b]`` rows before
    ``x[b, 0]`` (0 <= shift < t): those rows are ``history[b, -shift[b]:]`` (the last inputs of an
    earlier call, ``history`` (B, t-1, N)), or zeros when ``history`` is None (rows of padding
    before a sequence's first real token). x: (B, S, N); ``shift``: a (B,) tensor, or an int when
    every sequence has the same shift (then slices do what the gather does). Returns
    (rows (B*L, N), L), every sequence laid out from its tile start and zero-padded to L rows, a
    multiple of t: no Python loop. With a tensor shift, L covers the largest possible shift, so it
    depends only on S (no host sync)."""
    B, S, N = x.shape
    if isinstance(shift, int):
        L = -(-(S + shift) // t) * t
        parts = [x, x.new_zeros(B, L - S - shift, N)]
        if shift:
            parts.insert(0, history[:, t - 1 - shift:] if history is not None else x.new_zeros(B, shift, N))
        return torch.cat(parts, dim=1).reshape(B * L, N), L
    if history is None:
        history = x.new_zeros(B, t - 1, N)
    L = -(-(S + t - 1) // t) * t
    window = torch.cat([history, x, x.new_zeros(B, L - S, N)], dim=1)  # (B, t-1+L, N)
    idx = (t - 1 - shift)[:, None] + torch.arange(L, device=x.device)[None, :]
    rows = window.gather(1, idx[:, :, None].expand(B, L, N))
    return rows.reshape(B * L, N), L


def from_shifted_tiles(y, shift, S, B=None):
    """Inverse of :func:`to_shifted_tiles` for the output: (B*L, P) -> (B, S, P), the rows of x.
    ``B`` is needed when ``shift`` is an int."""
    if isinstance(shift, int):
        return y.reshape(B, -1, y.shape[-1])[:, shift:shift + S].contiguous()
    B = shift.shape[0]
    y = y.reshape(B, -1, y.shape[-1])
    idx = shift[:, None] + torch.arange(S, device=y.device)[None, :]
    return y.gather(1, idx[:, :, None].expand(B, S, y.shape[-1]))


# ---------------------------------------------------------------------------- float64 formulas
def pad_rows(x, t):
    """(M, N) -> (ceil(M/t)*t, N): zero rows complete the last tile (what the kernels read)."""
    pad = (-x.shape[0]) % t
    return Fn.pad(x, (0, 0, 0, pad)) if pad else x


def encode_activations(x, E, t):
    """Xe[l, I, K] = sum_{a,c} E[l, a*t+c] X[t*I+a, t*K+c]  ->  (r, ceil(M/t), N/t). x: (M, N);
    rows that do not fill the last tile read as zero."""
    x = pad_rows(x, t)
    m, n = x.shape
    tiles = x.reshape(m // t, t, n // t, t)  # I a K c
    return torch.einsum("lac,iakc->lik", E.reshape(-1, t, t), tiles)


def encode_weight(W, F, tile):
    """``Wt[l, K, J] = sum_{c,b} F[l, c*t+b] W^T[t*K+c, t*J+b]`` for W of shape (P, N) (as
    ``nn.Linear.weight``) -> (r, N/t, P/t), in W's dtype and device."""
    t = tile
    if isinstance(t, bool) or not isinstance(t, int) or t < 1:
        raise ValueError(f"encode_weight: argument 'tile' must be a positive integer, got {tile!r}")
    if W.dim() != 2:
        raise ValueError(f"encode_weight: argument 'W' must be 2-D (P, N), got shape {tuple(W.shape)}")
    if F.dim() != 2 or F.shape[1] != t * t:
        raise ValueError(f"encode_weight: argument 'F' must have shape (r, {t * t}), got "
                         f"{tuple(F.shape)}")
    P, N = W.shape
    if N % t or P % t:
        raise ValueError(f"encode_weight: W's shape {(P, N)} is not divisible by tile={t}")
    F = F.to(device=W.device, dtype=W.dtype)
    tiles = W.t().reshape(N // t, t, P // t, t)  # K c J b
    return torch.einsum("lcb,kcjb->lkj", F.reshape(-1, t, t), tiles).contiguous()


def decode(z, D, t, m):
    """Y[t*I+a, t*J+b] = sum_l D[a*t+b, l] Z[l, I, J], first m rows."""
    r, mi, pj = z.shape
    y = torch.einsum("abl,lij->iajb", D.reshape(t, t, r), z).reshape(mi * t, pj * t)
    return y[:m]


def stl_reference(x, E, Wt, D, bias=None, tile=4):
    """y = decode(encode(x) @ Wt) + bias, computed in float64. x: (M, N), rows tiled in order."""
    x, E, Wt, D = (v.double() for v in (x, E, Wt, D))
    z = torch.bmm(encode_activations(x, E, tile), Wt)
    y = decode(z, D, tile, x.shape[0])
    if bias is not None:
        y = y + bias.double()
    return y


def matmul_tensor(t):
    """The t x t x t matrix-multiplication tensor T[a*t+c, c*t+b, a*t+b] = 1 (float64)."""
    eye = torch.eye(t, dtype=torch.float64)
    return torch.einsum("ax,cy,bz->acybxz", eye, eye, eye).reshape(t * t, t * t, t * t)


def tensor_error(E, F, D, tile):
    """Relative error ||T_hat - T|| / ||T|| of (E, F, D) against the tile-product tensor,
    T_hat[i, j, k] = sum_l E[l, i] F[l, j] D[k, l] (dense float64: exact inits give ~1e-16)."""
    E, F, D = (torch.as_tensor(v, dtype=torch.float64) for v in (E, F, D))
    T = matmul_tensor(tile)
    That = torch.einsum("li,lj,kl->ijk", E, F, D)
    return ((That - T).norm() / T.norm()).item()
