"""Students from weight files: plain timm / safetensors vision weights, Apple's and open_clip's
text weights, and the text students' handling of padding tokens."""

from __future__ import annotations

import re

import pytest
import timm
import torch
from open_clip.transformer import TextTransformer
from safetensors.torch import save_file

from sam3.backbones import (
    VISION_BACKBONES,
    TextStudent,
    VisionStudent,
    WeightFileError,
    build_student,
    list_students,
)

from helpers.zoo import CAPTIONS, FAST_1008, tiny_student

# ---- vision weight files ------------------------------------------------------------------


def _plain_timm(name: str) -> torch.nn.Module:
    torch.manual_seed(1)
    return timm.create_model(VISION_BACKBONES[name].timm_name, pretrained=False).eval()


@pytest.mark.parametrize("name", FAST_1008)
def test_vision_weights_from_plain_timm_state_dict(tmp_path, name):
    plain = _plain_timm(name)
    path = tmp_path / "weights.pth"
    torch.save({"model": plain.state_dict()}, path)  # wrapped, classifier included
    student = VisionStudent(name, embed_size=8, img_size=112, pretrained_path=path).eval()
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        assert torch.equal(student.backbone(x)[-1], plain.forward_features(x))
    random = tiny_student(name)
    first = next(iter(student.backbone.state_dict()))
    assert not torch.equal(
        student.backbone.state_dict()[first], random.backbone.state_dict()[first]
    )


def test_vision_weights_from_safetensors_and_features_layout(tmp_path):
    plain = _plain_timm("efficientvit_b0")
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in plain.state_dict().items()}, str(path))
    student = VisionStudent("efficientvit_b0", embed_size=8, img_size=112, pretrained_path=path)
    again = tmp_path / "backbone.pt"
    torch.save(student.backbone.state_dict(), again)
    other = VisionStudent("efficientvit_b0", embed_size=8, img_size=112)
    notes = other.load_pretrained(again)
    assert "features_only layout" in notes[0]
    for key, value in student.backbone.state_dict().items():
        assert torch.equal(other.backbone.state_dict()[key], value), key


def test_vision_weights_of_another_architecture_fail_clearly(tmp_path):
    path = tmp_path / "repvit.pth"
    torch.save(_plain_timm("repvit_m0_9").state_dict(), path)
    with pytest.raises(WeightFileError) as err:
        VisionStudent("efficientvit_b0", pretrained_path=path)
    message = str(err.value)
    assert str(path) in message and "missing" in message and "unexpected" in message
    assert "efficientvit_b0" in message

    bigger = tmp_path / "b1.pth"
    torch.save(timm.create_model("efficientvit_b1").state_dict(), bigger)
    with pytest.raises(WeightFileError, match="shape mismatch"):
        VisionStudent("efficientvit_b0", pretrained_path=bigger)

    partial = tmp_path / "partial.pth"
    state = _plain_timm("efficientvit_b0").state_dict()
    dropped = next(k for k in state if k.startswith("stages.1.") and k.endswith("conv.weight"))
    del state[dropped]
    torch.save(state, partial)
    with pytest.raises(WeightFileError, match=re.escape(dropped)):
        VisionStudent("efficientvit_b0", pretrained_path=partial)

    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        VisionStudent("efficientvit_b0", pretrained_path=tmp_path / "nothing.pth")


# ---- text padding --------------------------------------------------------------------------


@pytest.mark.parametrize("name", list_students("text"))
def test_text_padding_is_invisible_when_masked(name):
    model = tiny_student(name).eval()
    tokens = model.tokenizer(CAPTIONS)
    pad = tokens == 0
    noisy = tokens.clone()
    noisy[pad] = torch.randint(1, 49406, (int(pad.sum()),))
    with torch.no_grad():
        clean = model.encode_tokens(tokens)
        changed = model.encode_tokens(noisy, pad_mask=pad)
        torch.testing.assert_close(changed[~pad], clean[~pad], rtol=1e-5, atol=1e-5)
        # the real tokens of a caption get the features they get without any padding at all
        n = int((~pad[0]).sum())
        alone = model.encode_tokens(tokens[:1, :n])
        torch.testing.assert_close(alone[0], clean[0, :n], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list_students("text"))
def test_text_padding_is_visible_without_masking(name):
    model = tiny_student(name, mask_padding=False).eval()
    tokens = model.tokenizer(CAPTIONS[:1])
    n = int((tokens[0] != 0).sum())
    with torch.no_grad():
        full = model.encode_tokens(tokens)
        alone = model.encode_tokens(tokens[:, :n])
    assert not torch.allclose(alone[0], full[0, :n], atol=1e-5)


def test_text_forward_rejects_longer_context():
    model = tiny_student("MobileCLIP-S1")
    mask, features, _ = model(["a cat"], context_length=16)
    assert mask.shape == (1, 16) and features.shape == (16, 1, 256)
    with pytest.raises(ValueError, match="context_length=64"):
        model(["a cat"], context_length=64)


# ---- text weight files --------------------------------------------------------------------

# Apple's text-encoder names (ml-mobileclip text_encoder.py / transformer.py) for our layers.
APPLE_NAMES = (
    (r"^token_embedding\.", "embedding_layer."),
    (r"^ln_final\.", "final_layer_norm."),
    (r"^transformer\.resblocks\.(\d+)\.", r"transformer.\1."),
    (r"\.ln_1\.", ".pre_norm_mha.0."),
    (r"\.attn\.in_proj_(weight|bias)$", r".pre_norm_mha.1.qkv_proj.\1"),
    (r"\.attn\.out_proj\.", ".pre_norm_mha.1.out_proj."),
    (r"\.ln_2\.", ".pre_norm_ffn.0."),
    (r"\.mlp\.c_fc\.", ".pre_norm_ffn.1."),
    (r"\.mlp\.c_proj\.", ".pre_norm_ffn.4."),
)


def _apple_layout(tower_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in tower_state.items():
        if key == "positional_embedding":
            out["text_encoder.positional_embedding.pos_embed.pos_embed"] = value[None, None]
            continue
        for pattern, repl in APPLE_NAMES:
            key = re.sub(pattern, repl, key)
        out["text_encoder." + key] = value
    out["text_encoder.projection_layer"] = torch.randn(512, 512)
    out["image_encoder.model.stem.weight"] = torch.randn(4)
    out["logit_scale"] = torch.tensor(4.6)
    return out


def test_text_weights_from_apple_s0_checkpoint(tmp_path):
    torch.manual_seed(2)
    source = build_student("MobileCLIP-S0", context_length=77)
    path = tmp_path / "mobileclip_s0.pt"
    torch.save({"state_dict": _apple_layout(source.encoder.state_dict())}, path)
    student = TextStudent("MobileCLIP-S0", pretrained_path=path)
    want = source.encoder.state_dict()
    for key, value in student.encoder.state_dict().items():
        expected = want[key][:32] if key == "positional_embedding" else want[key]
        assert torch.equal(value, expected), key
    notes = student.load_pretrained(path)
    assert any("77 to 32 rows" in n for n in notes)
    assert any("projection" in n for n in notes)


def test_text_weights_from_open_clip_state_dict(tmp_path):
    torch.manual_seed(3)
    tower = TextTransformer(
        context_length=77, width=512, heads=8, layers=12, no_causal_mask=True, output_tokens=True
    ).eval()
    state = {"text." + k: v for k, v in tower.state_dict().items()}
    state["visual.trunk.stem.weight"] = torch.randn(3)
    path = tmp_path / "open_clip_model.safetensors"
    save_file(state, str(path))
    student = TextStudent("MobileCLIP-S1", mask_padding=False, pretrained_path=path).eval()
    tokens = student.tokenizer(CAPTIONS)
    with torch.no_grad():
        _, reference = tower(tokens)
        ours = student.encoder.encode(tokens)
    torch.testing.assert_close(ours, reference, rtol=0, atol=0)


def test_text_weights_of_another_architecture_fail_clearly(tmp_path):
    path = tmp_path / "s1.pt"
    torch.save(tiny_student("MobileCLIP-S1").state_dict(), path)  # a student checkpoint
    loaded = TextStudent("MobileCLIP-S1", pretrained_path=path)
    assert torch.equal(loaded.projector.weight, tiny_student("MobileCLIP-S1").projector.weight)
    with torch.device("meta"):  # the checks run before any copy: no need to initialise
        with pytest.raises(WeightFileError) as err:
            TextStudent("MobileCLIP-S0", pretrained_path=path)
        message = str(err.value)
        assert str(path) in message and "missing" in message and "unexpected" in message
        with pytest.raises(WeightFileError, match="shape mismatch"):
            TextStudent("MobileCLIP2-L", pretrained_path=path)
        with pytest.raises(WeightFileError, match="context_length <= 32"):
            TextStudent("MobileCLIP-S1", context_length=40, pretrained_path=path)
