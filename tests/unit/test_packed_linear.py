"""The packed CPU linear: same results as ``nn.Linear``, used only where it applies, never stale;
and ``inference_linear``, oneDNN on the plain weight where it applies, ``F.linear`` elsewhere."""

import copy
import io
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sam3.model.packed_linear as pl
from sam3.model.packed_linear import PackableLinear, inference_linear, onednn_linear_available
from sam3.model.vit import ViT

from helpers.models import SMALL_VIT

pytestmark = pytest.mark.skipif(
    not onednn_linear_available(), reason="this PyTorch build has no oneDNN"
)


@pytest.fixture
def calls(monkeypatch):
    """Count calls of the packed kernel."""
    count = {"n": 0}
    real = pl.packed_linear

    def counting(*args):
        count["n"] += 1
        return real(*args)

    monkeypatch.setattr(pl, "packed_linear", counting)
    return count


def _layer(bias: bool = True) -> PackableLinear:
    torch.manual_seed(0)
    return PackableLinear(48, 80, bias=bias)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(7, 48), (2, 5, 6, 48), "strided"])
def test_packed_output_matches_plain(calls, bias, shape):
    layer = _layer(bias)
    x = torch.randn(3, 4, 96)[..., ::2] if shape == "strided" else torch.randn(shape)
    want = F.linear(x, layer.weight, layer.bias)
    assert layer.pack_for_cpu(rows=16) and layer.is_packed
    with torch.no_grad():
        got = layer(x)
    assert calls["n"] == 1
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_unpacked_layer_is_nn_linear(calls):
    layer = _layer()
    plain = nn.Linear(48, 80)
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(5, 48)
    with torch.no_grad():
        assert torch.equal(layer(x), plain(x))
    assert calls["n"] == 0
    assert list(layer.state_dict()) == list(plain.state_dict())


def test_weight_changes_are_followed(calls):
    layer = _layer()
    layer.pack_for_cpu()
    x = torch.randn(6, 48)
    with torch.no_grad():
        layer(x)
        layer.weight.mul_(-2.0)  # in place: bumps the version
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
    new = {k: torch.randn_like(v) for k, v in layer.state_dict().items()}
    layer.load_state_dict(new)
    with torch.inference_mode():
        got = layer(x)
    torch.testing.assert_close(got, F.linear(x, new["weight"], new["bias"]))
    assert calls["n"] == 3


def test_training_autocast_and_other_dtypes_take_the_plain_path(calls):
    layer = _layer()
    reference = nn.Linear(48, 80)
    reference.load_state_dict(layer.state_dict())
    layer.pack_for_cpu()
    x = torch.randn(4, 48)
    layer(x).square().sum().backward()  # grad enabled, weights require grad
    reference(x).square().sum().backward()
    assert torch.equal(layer.weight.grad, reference.weight.grad)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16
    layer.double()
    with torch.no_grad():
        out = layer(x.double())
    assert out.dtype == torch.float64 and not layer.is_packed
    assert calls["n"] == 0


def test_unpack_and_copies(calls):
    layer = _layer()
    layer.pack_for_cpu()
    x = torch.randn(3, 48)
    twin = copy.deepcopy(layer)  # oneDNN tensors cannot be copied: the copy repacks on use
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    assert not twin.is_packed
    with torch.no_grad():
        torch.testing.assert_close(twin(x), layer(x))
    assert calls["n"] == 2 and twin.is_packed
    layer.unpack()
    with torch.no_grad():
        assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
    assert calls["n"] == 2 and not layer.is_packed


def test_trunk_pack_for_cpu(calls):
    cfg = SMALL_VIT
    torch.manual_seed(0)
    vit = ViT(cfg).eval()
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        plain = vit(x)[0].clone()
        assert vit.pack_for_cpu() == 4 * cfg.depth
        packed = vit(x)[0].clone()
        vit.unpack()
        again = vit(x)[0]
    assert calls["n"] == 4 * cfg.depth  # one forward pass through every packed linear
    rel = ((packed - plain).norm() / plain.norm()).item()
    assert rel < 1e-6  # another kernel: the same numbers to fp32 rounding
    assert torch.equal(again, plain)


@pytest.mark.parametrize("precision, packed", [("fp32", True), ("bf16", False)])
def test_cpu_export_teacher_packs_its_trunk_in_fp32(precision, packed):
    from stage1.common.config import load_config
    from stage1.export.teachers import Teacher

    from helpers.data import TINY_TEACHER

    cfg = load_config(
        Path(__file__).resolve().parents[2] / "stage1/configs/teacher/sam_vit_huge_sa1b.yaml",
        TINY_TEACHER + ["DISTILL.EXPORT_PRECISION", precision],
    )
    teacher = Teacher(cfg, "image", torch.device("cpu"))
    linears = [m for m in teacher.modules() if isinstance(m, PackableLinear)]
    assert len(linears) == 8  # sam3_tiny: two blocks
    assert all(m.is_packed == packed for m in linears)


@pytest.fixture
def onednn_calls(monkeypatch):
    """Count calls of oneDNN's plain-weight linear."""
    count = {"n": 0}
    real = pl.onednn_linear

    def counting(*args, **kwargs):
        count["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(pl, "onednn_linear", counting)
    return count


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(7, 48), (2, 5, 6, 48), "strided"])
def test_inference_linear_matches_f_linear(onednn_calls, relu, bias, shape):
    layer = _layer(bias)
    x = torch.randn(3, 4, 96)[..., ::2] if shape == "strided" else torch.randn(shape)
    want = F.linear(x, layer.weight, layer.bias)
    want = want.relu() if relu else want
    with torch.inference_mode():
        got = inference_linear(x, layer.weight, layer.bias, relu=relu)
    assert onednn_calls["n"] == 1
    assert got.shape == want.shape and got.is_contiguous()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_inference_linear_falls_back_where_onednn_does_not_apply(onednn_calls):
    layer = _layer()
    x = torch.randn(4, 48)
    # autograd: the same gradients as F.linear
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    inference_linear(x1, layer.weight, layer.bias, relu=True).square().sum().backward()
    grad_w = layer.weight.grad.clone()
    layer.weight.grad = None
    F.linear(x2, layer.weight, layer.bias).relu().square().sum().backward()
    assert torch.equal(x1.grad, x2.grad) and torch.equal(grad_w, layer.weight.grad)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert inference_linear(x, layer.weight, layer.bias).dtype == torch.bfloat16
        w_t = layer.weight.t().contiguous().t()  # a transposed view: oneDNN is slow on those
        assert torch.equal(inference_linear(x, w_t, layer.bias), F.linear(x, w_t, layer.bias))
        out = inference_linear(x.double(), layer.weight.double(), layer.bias.double())
        assert out.dtype == torch.float64
    assert onednn_calls["n"] == 0
    with torch.no_grad():  # no grad recorded: oneDNN even with parameters that require grad
        inference_linear(x, layer.weight, layer.bias)
    assert onednn_calls["n"] == 1
