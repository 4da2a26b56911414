"""stl_torch.tiling: the float64 formulas against explicit loops over docs/operator.md, and the tiling rule."""
import pytest
import torch

from stl_torch.tiling import (decode, encode_activations, encode_weight, from_shifted_tiles, from_tiles, padded_rows,
                              stl_reference, tensor_error, to_shifted_tiles, to_tiles)


def naive_decomposition(t):
    """The t^3 naive products: product (a,c,b) reads X[a,c], W^T[c,b], writes Y[a,b]."""
    r = t ** 3
    E, F, D = torch.zeros(r, t * t), torch.zeros(r, t * t), torch.zeros(t * t, r)
    for l, (a, c, b) in enumerate((a, c, b) for a in range(t) for c in range(t) for b in range(t)):
        E[l, a * t + c] = F[l, c * t + b] = D[a * t + b, l] = 1
    return E.double(), F.double(), D.double()


def test_encode_decode_match_loops():
    t, r, M, N, P = 2, 3, 6, 4, 6
    x, E, Wt, D = torch.randn(M, N), torch.randn(r, 4), torch.randn(r, N // t, P // t), torch.randn(4, r)
    x, E, Wt, D = (v.double() for v in (x, E, Wt, D))
    xe = encode_activations(x, E, t)
    for l in range(r):
        for i in range(M // t):
            for k in range(N // t):
                s = sum(E[l, a * t + c] * x[t * i + a, t * k + c] for a in range(t) for c in range(t))
                assert abs(xe[l, i, k] - s) < 1e-12
    z = torch.bmm(xe, Wt)
    y = decode(z, D, t, M)
    for row in range(M):
        for col in range(P):
            i, a, j, b = row // t, row % t, col // t, col % t
            s = sum(D[a * t + b, l] * z[l, i, j] for l in range(r))
            assert abs(y[row, col] - s) < 1e-12


def test_naive_decomposition_is_exact():
    for t in (1, 2, 4):
        E, F, D = naive_decomposition(t)
        assert tensor_error(E, F, D, t) < 1e-14
        x, W = torch.randn(9, 8 * t).double(), torch.randn(4 * t, 8 * t).double()
        y = stl_reference(x, E, encode_weight(W, F, t), D, tile=t)
        assert torch.allclose(y, x @ W.t(), atol=1e-12)


def test_partial_tile_is_zero_padding():
    t, r = 4, 5
    x, E, Wt, D = torch.randn(7, 8).double(), torch.randn(r, 16).double(), torch.randn(r, 2, 3).double(), torch.randn(16, r).double()
    y = stl_reference(x, E, Wt, D, tile=t)
    xp = torch.cat([x, torch.zeros(1, 8, dtype=torch.float64)])
    assert torch.equal(y, stl_reference(xp, E, Wt, D, tile=t)[:7])


def test_encode_weight_matches_loops():
    t, r, N, P = 2, 3, 4, 6
    W, F = torch.randn(P, N, dtype=torch.float64), torch.randn(r, t * t, dtype=torch.float64)
    wt = encode_weight(W, F, t)
    assert wt.shape == (r, N // t, P // t)
    for l in range(r):
        for k in range(N // t):
            for j in range(P // t):
                s = sum(F[l, c * t + b] * W[t * j + b, t * k + c] for c in range(t) for b in range(t))
                assert abs(wt[l, k, j] - s) < 1e-12
    assert encode_weight(W.float(), F, t).dtype == torch.float32


@pytest.mark.parametrize("shape,rows", [((7, 8), 28), ((8, 8), 32), ((8,), 4), ((0, 8), 0), ((2, 3, 8), 8),
                                        ((2, 3, 5, 8), 48), ((3, 0, 8), 0)])
def test_padded_rows_rule(shape, rows):
    assert padded_rows(shape, 4) == rows


def test_to_and_from_tiles_pad_each_sequence():
    x = torch.arange(2 * 3 * 4, dtype=torch.float64).reshape(2, 3, 4)
    rows = to_tiles(x, 2)
    assert rows.shape == (8, 4)  # every sequence of 3 tokens padded to 4
    assert torch.equal(rows[3], torch.zeros(4, dtype=torch.float64)) and torch.equal(rows[4], x[1, 0])
    back = from_tiles(rows[:, :3] * 2, x.shape[:-1] + (3,), 2)
    assert back.shape == (2, 3, 3) and back.is_contiguous() and torch.equal(back, x[..., :3] * 2)
    flat = torch.randn(5, 4)  # 2-D: every row its own sequence, one tile each
    rows = to_tiles(flat, 4)
    assert rows.shape == (20, 4) and torch.equal(rows[::4], flat) and not rows.reshape(5, 4, 4)[:, 1:].any()
    assert torch.equal(from_tiles(rows, flat.shape, 4), flat)
    assert torch.equal(from_tiles(to_tiles(flat[0], 4), (4,), 4), flat[0])


def test_shifted_tiles_match_a_loop():
    """Row b's tile opens shift[b] rows before x[b, 0]: those rows come from the history (or are zero)."""
    t, B, S, N = 4, 3, 6, 2
    x, hist = torch.randn(B, S, N, dtype=torch.float64), torch.randn(B, t - 1, N, dtype=torch.float64)
    shift = torch.tensor([0, 3, 1])
    for h in (hist, None):
        rows, L = to_shifted_tiles(x, t, shift, h)
        assert L % t == 0 and rows.shape == (B * L, N)
        rows = rows.reshape(B, L, N)
        for b in range(B):
            s = int(shift[b])
            prev = h[b, t - 1 - s:] if h is not None else torch.zeros(s, N, dtype=torch.float64)
            want = torch.cat([prev, x[b]])
            assert torch.equal(rows[b, :s + S], want) and not rows[b, s + S:].any()
        back = from_shifted_tiles(rows.reshape(B * L, N) * 2, shift, S)
        assert torch.equal(back, x * 2)
    for s, h in ((s, h) for s in range(t) for h in (hist, None)):  # one shift for all: slices, same rows
        rows, L = to_shifted_tiles(x, t, s, h)
        ref, L_ref = to_shifted_tiles(x, t, torch.full((B,), s), h)
        assert L % t == 0 and torch.equal(rows.reshape(B, L, N), ref.reshape(B, L_ref, N)[:, :L])
        assert not ref.reshape(B, L_ref, N)[:, L:].any()
        assert torch.equal(from_shifted_tiles(rows * 3, s, S, B), x * 3)
