"""Float64 reference of the STL operator (tests only; not used on any hot path).

Conventions (see ../shared/STL.md): tile t, rank r.
  E  (r, t*t)   activation encoder, column index a*t + c  (a: row inside the X tile, c: column)
  Wt (r, N/t, P/t) weight in encoded space
  D  (t*t, r)   decoder, row index a*t + b  (a: row inside the Y tile, b: column)
  F  (r, t*t)   weight encoder, column index c*t + b over a tile of W^T (N x P)
Rows of x that do not fill the last tile are treated as zero padding.
"""
import torch


def _pad_rows(x: torch.Tensor, t: int) -> torch.Tensor:
    m = x.shape[0]
    pad = (-m) % t
    return torch.nn.functional.pad(x, (0, 0, 0, pad)) if pad else x


def encode_activations(x, E, t):
    """Xe[l, I, K] = sum_{a,c} E[l, a*t+c] X[t*I+a, t*K+c]  ->  (r, ceil(M/t), N/t)."""
    x = _pad_rows(x, t)
    m, n = x.shape
    tiles = x.reshape(m // t, t, n // t, t)  # I a K c
    return torch.einsum("lac,iakc->lik", E.reshape(-1, t, t), tiles)


def encode_weight(W, F, t):
    """Wt[l, K, J] = sum_{c,b} F[l, c*t+b] W^T[t*K+c, t*J+b]  with W of shape (P, N)."""
    wt = W.t()
    n, p = wt.shape
    tiles = wt.reshape(n // t, t, p // t, t)  # K c J b
    return torch.einsum("lcb,kcjb->lkj", F.reshape(-1, t, t), tiles)


def decode(z, D, t, m):
    """Y[t*I+a, t*J+b] = sum_l D[a*t+b, l] Z[l, I, J], first m rows."""
    r, mi, pj = z.shape
    y = torch.einsum("abl,lij->iajb", D.reshape(t, t, r), z).reshape(mi * t, pj * t)
    return y[:m]


def stl_reference(x, E, Wt, D, bias=None, tile=4):
    """y = decode(encode(x) @ Wt) + bias, computed in float64. x: (M, N)."""
    x, E, Wt, D = (v.double() for v in (x, E, Wt, D))
    z = torch.bmm(encode_activations(x, E, tile), Wt)
    y = decode(z, D, tile, x.shape[0])
    if bias is not None:
        y = y + bias.double()
    return y


def dense_equivalent_error(E, F, D, t):
    """Relative error ||T_hat - T|| / ||T|| of (E, F, D) against the t x t x t matmul tensor.

    T[(a,c), (c',b), (a',b')] = [a=a'][c=c'][b=b'].
    """
    eye = torch.eye(t, dtype=torch.float64)
    T = torch.einsum("ax,cy,bz->acybxz", eye, eye, eye).reshape(t * t, t * t, t * t)
    That = torch.einsum("li,lj,kl->ijk", E.double(), F.double(), D.double())
    return ((That - T).norm() / T.norm()).item()
