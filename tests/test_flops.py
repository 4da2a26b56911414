"""stl_torch.flops: multiply-add counts of nn.Linear and STLinear against hand-computed numbers."""
import pytest
import torch
from torch import nn

from stl_torch import STLConfig, STLinear, convert, flops


def test_dense_linear_counts():
    model = nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 4))
    rep = flops(model, torch.randn(2, 5, 8))
    # M = 2*5 = 10 rows: 10*8*12 + 10*12*4
    assert [x.macs for x in rep.layers] == [960, 480]
    assert rep.total_macs == rep.dense_macs == 1440 and rep.ratio == 1.0
    assert [x.calls for x in rep.layers] == [1, 1] and [x.rows for x in rep.layers] == [10, 10]


def test_stl_counts_with_padding():
    m = STLinear(16, 32, tile=4, rank=24, init="random")
    rep = flops(m, torch.randn(3, 7, 16))  # 7 tokens -> 8 per sequence: M = 24 padded rows
    (x,) = rep.layers
    # encode r*M*N, the r GEMMs r*M*N*P/t^3, decode r*M*P (docs/operator.md, "Cost")
    enc, gemm, dec = 24 * 24 * 16, 24 * 24 * 16 * 32 // 64, 24 * 24 * 32
    assert (enc, gemm, dec) == (9216, 4608, 18432)
    assert x.macs == enc + gemm + dec == 32256
    assert x.dense_macs == 21 * 16 * 32 == 10752  # the dense layer on the 21 real rows
    assert x.kind == "STLinear" and x.tile == 4 and x.rank == 24
    assert rep.ratio == pytest.approx(10752 / 32256)  # tiny layers: STL costs more
    # 2-D input: every row its own sequence, padded to one tile (10 -> 40 rows); 1-D: one row -> one tile
    two_d = flops(m, torch.randn(10, 16))
    assert two_d.total_macs == 40 * (24 * 16 + 24 * 16 * 32 // 64 + 24 * 32) and two_d.dense_macs == 10 * 16 * 32
    assert flops(m, torch.randn(16)).total_macs == 4 * (384 + 192 + 768)


def test_large_shape_matches_stl_md_ratio():
    """GEMM stage alone is t^3/r cheaper; encode/decode add r (N + P) per row."""
    M, N, P, t, r = 4096, 1024, 1024, 4, 24
    m = STLinear(N, P, tile=t, rank=r, init="random", device="meta")
    rep = flops(m, torch.empty(1, M, N, device="meta"))
    gemm = r * M * N * P // t ** 3
    assert rep.total_macs == gemm + r * M * (N + P)
    assert rep.dense_macs == M * N * P
    assert rep.ratio == pytest.approx(1024 * 1024 / (24 * 1024 * 1024 / 64 + 24 * 2048))  # 2.37
    assert 2.3 < rep.ratio < 64 / 24


def test_converted_model_report_and_repeated_calls():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.head = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3)

        def forward(self, x):
            for _ in range(2):          # self.a called twice
                x = torch.relu(self.a(x))
            return self.head(self.b(x))

    net = Net()
    convert(net, STLConfig(tile=2, rank=7, init="strassen"), only_if_cheaper=False)  # head: 3 not divisible by 2
    rep = flops(net, (torch.randn(1, 4, 8),))                  # tuple input is unpacked
    by = {x.name: x for x in rep.layers}
    assert by["a"].calls == 2 and by["head"].kind == "Linear"
    per_call = 7 * 4 * 8 + 7 * 4 * 8 * 8 // 8 + 7 * 4 * 8  # encode 224 + GEMMs 224 + decode 224
    assert by["a"].macs == 2 * per_call and by["b"].macs == per_call
    assert by["a"].dense_macs == 2 * 4 * 64 and by["head"].macs == 4 * 8 * 3
    assert rep.total_macs == 3 * per_call + 96
    rep2 = flops(net, torch.randn(4, 8))  # 2-D: each of the 4 rows fills a tile of 2: twice the rows
    assert {x.name: x.macs for x in rep2.layers}["b"] == 2 * per_call
    text = str(rep)
    assert "STLinear t=2 r=7" in text and "**total**" in text
    assert rep.to_dict()["total_macs"] == rep.total_macs


def test_bad_model_argument():
    with pytest.raises(ValueError, match="'model'"):
        flops(lambda x: x, torch.randn(2))
