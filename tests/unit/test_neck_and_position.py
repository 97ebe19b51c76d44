"""Unit tests of the sine position encoding and the dual neck."""

import math

import torch

from sam3.model.neck import DualViTDetNeck
from sam3.model.position_encoding import PositionEmbeddingSine
from sam3.model.vit import ViT

from helpers.models import TWO_BLOCK_VIT

SMALL = TWO_BLOCK_VIT


def test_sine_encoding_values():
    pe = PositionEmbeddingSine(8)  # 4 channels per axis
    x = torch.zeros(2, 3, 5, 7, dtype=torch.float64)
    enc = pe(x)
    assert enc.shape == (2, 8, 5, 7) and enc.dtype == torch.float64
    i, j = 3, 6
    py = (i + 1) / 5 * 2 * math.pi
    px = (j + 1) / 7 * 2 * math.pi
    t1 = 10000 ** (2 * 1 / 4)  # channels 2 and 3 use k // 2 == 1
    expected = [
        math.sin(py),
        math.cos(py),
        math.sin(py / t1),
        math.cos(py / t1),
        math.sin(px),
        math.cos(px),
        math.sin(px / t1),
        math.cos(px / t1),
    ]
    assert torch.allclose(enc[1, :, i, j], torch.tensor(expected, dtype=torch.float64), atol=1e-5)


def test_sine_encoding_is_cached_per_size():
    pe = PositionEmbeddingSine(16)
    a = pe(torch.zeros(1, 1, 4, 4))
    pe(torch.zeros(1, 1, 4, 6))
    assert len(pe._cache) == 2
    assert torch.equal(pe(torch.zeros(3, 1, 4, 4))[2], a[0])


def test_neck_shapes_and_independent_sam2_copy():
    neck = DualViTDetNeck(ViT(SMALL), d_model=32, add_sam2_neck=True).eval()
    with torch.no_grad():
        maps, pos, maps2, pos2 = neck(torch.randn(2, 3, 112, 112))
    sides = [32, 16, 8, 4]
    assert [m.shape for m in maps] == [(2, 32, s, s) for s in sides]
    assert [p.shape for p in pos] == [(2, 32, s, s) for s in sides]
    assert [m.shape for m in maps2] == [(2, 32, s, s) for s in sides]
    assert [torch.equal(a, b) for a, b in zip(pos, pos2)] == [True] * 4
    # same names, separate parameters
    names = [n for n, _ in neck.convs.named_parameters()]
    assert names == [n for n, _ in neck.sam2_convs.named_parameters()]
    neck.sam2_convs[2].conv_1x1.weight.data.zero_()
    assert neck.convs[2].conv_1x1.weight.abs().sum() > 0


def test_full_size_neck_parameter_count():
    with torch.device("meta"):
        neck = DualViTDetNeck(ViT(), 256, add_sam2_neck=True)
    assert sum(p.numel() for p in neck.convs.parameters()) == 7_802_112
    assert sum(p.numel() for p in neck.sam2_convs.parameters()) == 7_802_112
