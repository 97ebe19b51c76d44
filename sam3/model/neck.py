"""SAM3's dual ViTDet neck: a simple feature pyramid on the trunk's last map."""

from __future__ import annotations

import copy

from torch import Tensor, nn

from .position_encoding import PositionEmbeddingSine

SCALE_FACTORS = (4.0, 2.0, 1.0, 0.5)


def _pyramid_level(dim: int, d_model: int, scale: float) -> nn.Sequential:
    """One level: resample the trunk map by ``scale``, then 1x1 and 3x3 convs to ``d_model``."""
    layers: dict[str, nn.Module]
    if scale == 4.0:
        layers = {
            "dconv_2x2_0": nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2),
            "gelu": nn.GELU(),
            "dconv_2x2_1": nn.ConvTranspose2d(dim // 2, dim // 4, kernel_size=2, stride=2),
        }
        out = dim // 4
    elif scale == 2.0:
        layers = {"dconv_2x2": nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2)}
        out = dim // 2
    elif scale == 1.0:
        layers, out = {}, dim
    elif scale == 0.5:
        layers, out = {"maxpool_2x2": nn.MaxPool2d(kernel_size=2, stride=2)}, dim
    else:
        raise ValueError(f"unsupported neck scale {scale}; choose from {SCALE_FACTORS}")
    layers["conv_1x1"] = nn.Conv2d(out, d_model, kernel_size=1)
    layers["conv_3x3"] = nn.Conv2d(d_model, d_model, kernel_size=3, padding=1)
    seq = nn.Sequential()
    for name, layer in layers.items():
        seq.add_module(name, layer)
    return seq


class DualViTDetNeck(nn.Module):
    """Trunk + pyramid convs (``convs``) and an optional second copy (``sam2_convs``).

    ``forward`` returns ``(sam3_maps, sam3_pos, sam2_maps | None, sam2_pos | None)``, one entry per
    scale factor, with the sine position encoding of every map.
    """

    def __init__(
        self,
        trunk: nn.Module,
        d_model: int = 256,
        scale_factors: tuple[float, ...] = SCALE_FACTORS,
        add_sam2_neck: bool = False,
    ):
        super().__init__()
        self.trunk = trunk
        self.position_encoding = PositionEmbeddingSine(d_model)
        dim = trunk.channel_list[-1]
        self.convs = nn.ModuleList(_pyramid_level(dim, d_model, s) for s in scale_factors)
        self.sam2_convs = copy.deepcopy(self.convs) if add_sam2_neck else None

    def _pyramid(self, convs: nn.ModuleList, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        maps = [conv(x) for conv in convs]
        return maps, [self.position_encoding(m) for m in maps]

    def forward(
        self, images: Tensor
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor] | None, list[Tensor] | None]:
        """Run the trunk on ``images`` and build both pyramids."""
        x = self.trunk(images)[-1]
        maps, pos = self._pyramid(self.convs, x)
        if self.sam2_convs is None:
            return maps, pos, None, None
        return (maps, pos, *self._pyramid(self.sam2_convs, x))
