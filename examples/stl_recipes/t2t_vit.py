"""T2T-ViT (Yuan et al., "Tokens-to-Token ViT", ICCV 2021), written for the STL recipe.

T2T-ViT-7 as in the paper: a tokens-to-token module (3 soft splits via nn.Unfold, with a small
token transformer -- Performer or plain attention, token dim 64 -- after each of the first two),
a linear projection to the embedding, a class token, fixed sinusoidal position embedding, then 7
pre-norm ViT blocks (embed dim 256, 4 heads, MLP ratio 2, qk scale 256**-0.5 as in the paper's
code) and a linear head.

Every projection is an ``nn.Linear`` so that ``stl_torch.convert`` (or ``STLinear.from_linear``)
can swap any of them. The soft-split geometry adapts to the input size: the paper's kernels
(7/4, 3/2, 3/2 -> 14x14 tokens at 224 px) for large images, (3/1, 3/2, 3/2 -> 7x7 tokens at 28 px)
for small ones. ``pad_features`` zero-pads each soft split's feature dim to a multiple of the STL
tile (e.g. 3*7*7=147 -> 148) so that every token-transformer layer can be tiled.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn


def sinusoid_table(n_pos, dim):
    """(1, n_pos, dim) fixed sin/cos position encoding (as in T2T-ViT's get_sinusoid_encoding)."""
    pos = torch.arange(n_pos, dtype=torch.float64)[:, None]
    i = torch.arange(dim, dtype=torch.float64)[None, :]
    angle = pos / torch.pow(10000.0, 2 * torch.div(i, 2, rounding_mode="floor") / dim)
    table = torch.where(i % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.float()[None]


def drop_path(x, p, training):
    """Stochastic depth: drop the residual branch per sample."""
    if p == 0.0 or not training:
        return x
    keep = 1 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


class Mlp(nn.Module):
    def __init__(self, dim, hidden, out=None, drop=0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out or dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(nn.Module):
    """Multi-head self-attention. With ``in_dim`` set (token transformer) the output has in_dim
    features and v is the skip connection, as in T2T-ViT's Token_transformer."""

    def __init__(self, dim, num_heads, in_dim=None, qkv_bias=False, qk_scale=None,
                 attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.num_heads = num_heads
        self.in_dim = in_dim
        out = in_dim or dim
        self.head_dim = out // num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * out, bias=qkv_bias)
        self.proj = nn.Linear(out, out)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x):
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training
                                           else 0.0, scale=self.scale)
        y = y.transpose(1, 2).reshape(b, n, -1)
        y = self.proj_drop(self.proj(y))
        if self.in_dim is not None:  # token transformer: v (single head) is the skip path
            return v.transpose(1, 2).reshape(b, n, -1) + y
        return y


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio, qkv_bias=False, qk_scale=None, drop=0.0,
                 attn_drop=0.0, drop_path=0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale,
                              attn_drop=attn_drop, proj_drop=drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.drop_path = drop_path

    def forward(self, x):
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


class TokenTransformer(nn.Module):
    """T2T's plain-attention token transformer (1 head, MLP ratio 1, v as attention skip)."""

    def __init__(self, dim, in_dim, mlp_ratio=1.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads=1, in_dim=in_dim)
        self.norm2 = nn.LayerNorm(in_dim)
        self.mlp = Mlp(in_dim, int(in_dim * mlp_ratio))

    def forward(self, x):
        x = self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TokenPerformer(nn.Module):
    """T2T's Performer token transformer: linear-complexity attention with positive random
    features for the softmax kernel (FAVOR+), 1 head, v as the attention skip connection."""

    def __init__(self, dim, in_dim, kernel_ratio=0.5, dp1=0.1, dp2=0.1):
        super().__init__()
        self.emb = in_dim
        self.kqv = nn.Linear(dim, 3 * in_dim)
        self.dp = nn.Dropout(dp1)
        self.proj = nn.Linear(in_dim, in_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(in_dim)
        self.mlp = nn.Sequential(nn.Linear(in_dim, in_dim), nn.GELU(), nn.Linear(in_dim, in_dim),
                                 nn.Dropout(dp2))
        self.m = int(in_dim * kernel_ratio)
        # fixed orthogonal random features (not trained, as in the paper): a buffer, not a Linear
        w = nn.init.orthogonal_(torch.empty(self.m, in_dim)) * math.sqrt(self.m)
        self.register_buffer("w", w)

    def prm_exp(self, x):
        # exp(w^T x - |x|^2/2) / sqrt(m): E_w[phi(q) phi(k)] = exp(q.k); computed in float32
        x = x.float()
        xd = (x * x).sum(-1, keepdim=True) / 2
        return torch.exp(x @ self.w.t() - xd) / math.sqrt(self.m)

    def single_attn(self, x):
        k, q, v = torch.split(self.kqv(x), self.emb, dim=-1)
        kp, qp = self.prm_exp(k), self.prm_exp(q)  # (B, T, m)
        d = torch.einsum("btm,bm->bt", qp, kp.sum(1)).unsqueeze(-1)  # (B, T, 1)
        kptv = torch.einsum("btn,btm->bnm", v.float(), kp)  # (B, emb, m)
        y = torch.einsum("btm,bnm->btn", qp, kptv) / (d + 1e-8)
        return v + self.dp(self.proj(y.to(v.dtype)))

    def forward(self, x):
        x = self.single_attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def soft_split_geometry(img_size):
    """(kernel, stride, padding) of the three soft splits. Paper's at >= 112 px (224 -> 14x14
    tokens); for small images a stride-1 first split keeps 28 -> 7x7 / 32 -> 8x8 tokens."""
    if img_size >= 112:
        return [(7, 4, 2), (3, 2, 1), (3, 2, 1)]
    return [(3, 1, 1), (3, 2, 1), (3, 2, 1)]


def _out_size(s, k, st, p):
    return (s + 2 * p - k) // st + 1


class T2TModule(nn.Module):
    """Tokens-to-token: soft split -> token transformer -> re-structurize, twice, then a final
    soft split and a linear projection to the embedding dim."""

    def __init__(self, img_size, in_chans, embed_dim, token_dim=64, tokens_type="performer",
                 geometry=None, pad_features=4):
        super().__init__()
        geo = geometry or soft_split_geometry(img_size)
        self.splits = nn.ModuleList(nn.Unfold(kernel_size=k, stride=s, padding=p) for k, s, p in geo)
        feats = [in_chans * geo[0][0] ** 2, token_dim * geo[1][0] ** 2, token_dim * geo[2][0] ** 2]
        q = max(1, pad_features)
        self.feats = [f + (-f) % q for f in feats]  # padded feature dims
        self.pads = [p - f for p, f in zip(self.feats, feats)]
        tok = {"performer": lambda d: TokenPerformer(d, token_dim, kernel_ratio=0.5),
               "transformer": lambda d: TokenTransformer(d, token_dim, mlp_ratio=1.0)}[tokens_type]
        self.attention1 = tok(self.feats[0])
        self.attention2 = tok(self.feats[1])
        self.project = nn.Linear(self.feats[2], embed_dim)
        s = img_size
        self.grid = []
        for k, st, p in geo:
            s = _out_size(s, k, st, p)
            self.grid.append(s)
        self.num_patches = self.grid[-1] ** 2

    def _split(self, i, x):
        x = self.splits[i](x).transpose(1, 2)  # (B, tokens, C*k*k)
        return F.pad(x, (0, self.pads[i])) if self.pads[i] else x

    @staticmethod
    def _restructure(x):
        b, n, c = x.shape
        s = math.isqrt(n)
        return x.transpose(1, 2).reshape(b, c, s, s)

    def forward(self, x):
        x = self.attention1(self._split(0, x))
        x = self.attention2(self._split(1, self._restructure(x)))
        return self.project(self._split(2, self._restructure(x)))


class T2TViT(nn.Module):
    def __init__(self, img_size=224, in_chans=3, num_classes=1000, embed_dim=256, depth=7,
                 num_heads=4, mlp_ratio=2.0, token_dim=64, tokens_type="performer",
                 qkv_bias=False, qk_scale=None, drop_rate=0.0, attn_drop_rate=0.0,
                 drop_path_rate=0.1, pad_features=4, geometry=None):
        super().__init__()
        self.num_classes = num_classes
        self.tokens_to_token = T2TModule(img_size, in_chans, embed_dim, token_dim, tokens_type,
                                         geometry, pad_features)
        n = self.tokens_to_token.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.register_buffer("pos_embed", sinusoid_table(n + 1, embed_dim), persistent=False)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = [v.item() for v in torch.linspace(0, drop_path_rate, depth)]
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, qkv_bias, qk_scale,
                                          drop_rate, attn_drop_rate, dpr[i]) for i in range(depth))
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward_features(self, x):
        x = self.tokens_to_token(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        x = self.pos_drop(x + self.pos_embed.to(x.dtype))
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)[:, 0]

    def forward(self, x):
        return self.head(self.forward_features(x))


def t2t_vit_7(**kw):
    """T2T-ViT-7: embed 256, depth 7, 4 heads, MLP ratio 2, Performer token dim 64."""
    cfg = dict(embed_dim=256, depth=7, num_heads=4, mlp_ratio=2.0, token_dim=64,
               tokens_type="performer", qk_scale=256 ** -0.5)
    cfg.update(kw)
    return T2TViT(**cfg)


def stl_filter(name, module):
    """Which layers the recipe converts: all of them except the classifier head, whose 2-D input
    (batch, dim) would be tiled across *samples* (a prediction would depend on its batch-mates);
    it is 0.1% of the FLOPs."""
    return name != "head"
