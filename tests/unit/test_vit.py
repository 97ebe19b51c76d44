"""Unit tests of the vision trunk on small shapes."""

import math

import pytest
import torch

from sam3.model.vit import (
    ViT,
    ViTConfig,
    apply_rope,
    axial_rope_table,
    window_partition,
    window_unpartition,
)

from helpers.models import SMALL_VIT


def test_output_shape_and_channel_list():
    vit = ViT(SMALL_VIT).eval()
    with torch.no_grad():
        out = vit(torch.randn(2, 3, 112, 112))
    assert isinstance(out, list) and len(out) == 1
    assert out[0].shape == (2, 64, 8, 8)
    assert vit.channel_list == [64]


def test_full_size_parameter_count():
    with torch.device("meta"):
        vit = ViT()
    assert sum(p.numel() for p in vit.parameters()) == 446_237_696
    per_block = sum(p.numel() for p in vit.blocks[0].parameters())
    assert per_block == 13_907_584
    assert [i for i, b in enumerate(vit.blocks) if b.window_size == 0] == [7, 15, 23, 31]


def test_rope_table_geometry():
    table = axial_rope_table(head_dim=16, side=3, scale=0.5)
    assert table.shape == (9, 8) and table.dtype == torch.complex64
    assert torch.allclose(table.abs(), torch.ones(9, 8))
    angles = table.angle()
    # token 5 sits at column 2, row 1; slot 0 has frequency 1 -> angle = position * scale
    assert math.isclose(angles[5, 0].item(), 2 * 0.5, rel_tol=1e-6)
    assert math.isclose(angles[5, 4].item(), 1 * 0.5, rel_tol=1e-6)
    # second frequency is theta ** (-4/16)
    assert math.isclose(angles[5, 1].item(), 2 * 0.5 * 10000 ** (-0.25), rel_tol=1e-5)


def test_apply_rope_rotates_pairs_and_preserves_norm():
    x = torch.randn(2, 3, 9, 16)
    table = axial_rope_table(16, 3)
    y = apply_rope(x, table)
    assert torch.allclose(x.norm(dim=-1), y.norm(dim=-1), atol=1e-5)
    # first token (column 0, row 0) is not rotated
    assert torch.allclose(y[..., 0, :], x[..., 0, :])
    # explicit rotation of one pair
    a, b = x[0, 0, 4, 0], x[0, 0, 4, 1]
    c, s = table[4, 0].real, table[4, 0].imag
    assert torch.allclose(y[0, 0, 4, :2], torch.stack([a * c - b * s, a * s + b * c]), atol=1e-6)


def test_window_partition_round_trip():
    x = torch.randn(2, 8, 12, 5)
    w = window_partition(x, 4)
    assert w.shape == (2 * 2 * 3, 4, 4, 5)
    assert torch.equal(w[1], x[0, 0:4, 4:8])
    assert torch.equal(window_unpartition(w, 4, 8, 12), x)


def test_pos_embed_is_tiled_not_interpolated():
    vit = ViT(SMALL_VIT)
    pe = vit.tiled_pos_embed(8, 8)[0]
    grid = vit.pos_embed[0, 1:].reshape(4, 4, -1)
    for y, x in [(0, 0), (5, 2), (7, 7), (4, 6)]:
        assert torch.equal(pe[y, x], grid[y % 4, x % 4])


def test_windowed_block_does_not_mix_windows():
    vit = ViT(
        ViTConfig(
            img_size=112,
            embed_dim=32,
            depth=1,
            num_heads=2,
            window_size=4,
            global_blocks=(0,),
            pretrain_img_size=56,
        )
    )
    from sam3.model.vit import Block

    block = Block(vit.cfg, window_size=4).eval()
    x = torch.randn(1, 8, 8, 32)
    x2 = x.clone()
    x2[:, 0, 0] += 1.0  # inside the top-left window
    with torch.no_grad():
        d = (block(x) - block(x2)).abs().sum(-1)[0]
    assert d[:4, :4].max() > 0
    assert d[4:, :].max() == 0 and d[:, 4:].max() == 0


def test_wrong_input_size_is_a_clear_error():
    vit = ViT(SMALL_VIT)
    with pytest.raises(ValueError, match="built for 112x112"):
        vit(torch.randn(1, 3, 98, 98))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(img_size=100), "not a multiple of patch"),
        (dict(window_size=5), "not a multiple of window_size"),
        (dict(global_blocks=(1, 2)), "last global block"),
    ],
)
def test_invalid_configs_are_rejected(kwargs, message):
    cfg = ViTConfig(**{**SMALL_VIT.__dict__, **kwargs})
    with pytest.raises(ValueError, match=message):
        ViT(cfg)


def test_rope_mismatch_detection():
    vit = ViT(SMALL_VIT)
    assert vit.rope_mismatches() == []
    vit.blocks[2].attn.freqs_cis.mul_(1j)
    assert vit.rope_mismatches() == ["blocks.2.attn.freqs_cis"]


def test_backward_and_autocast():
    vit = ViT(SMALL_VIT)
    x = torch.randn(1, 3, 112, 112)
    vit(x)[0].square().mean().backward()
    assert all(p.grad is not None for p in vit.parameters())
    with torch.no_grad():
        ref = vit(x)[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = vit(x)[0].float()
    assert torch.isfinite(out).all()
    assert torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0) > 0.99
    assert not torch.equal(out, ref)  # autocast really ran in reduced precision
