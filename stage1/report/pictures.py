"""Pictures of a distillation run: feature maps as PCA colours, and training curves.

Feature maps are compared in the teacher's own PCA basis: the three leading principal components
of the teacher's map (over valid cells) become red, green and blue, and every student map is
projected onto the same components with the same scaling, so equal colours mean equal features.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from sam3.files import atomic_path  # noqa: E402


def pca_basis(features: Tensor, valid: Tensor | None = None, k: int = 3) -> tuple[Tensor, Tensor]:
    """``(mean [C], components [C, k])`` of a ``[C, H, W]`` map over its valid cells."""
    x = features.flatten(1).T.double()  # [H*W, C]
    if valid is not None:
        x = x[valid.flatten().bool()]
    mean = x.mean(0)
    _, _, v = torch.linalg.svd(x - mean, full_matrices=False)
    return mean, v[:k].T


def pca_rgb(
    features: Tensor,
    mean: Tensor,
    components: Tensor,
    limits: tuple[Tensor, Tensor] | None = None,
    valid: Tensor | None = None,
) -> tuple[np.ndarray, tuple[Tensor, Tensor]]:
    """Project ``[C, H, W]`` onto ``components`` -> an ``[H, W, 3]`` image in [0, 1].

    ``limits`` (per-component low/high) fix the colour scale; by default they are the 1st/99th
    percentiles of this map (pass the teacher's limits when drawing a student). Invalid cells are
    drawn black. Returns the image and the limits used.
    """
    c, h, w = features.shape
    proj = (features.flatten(1).T.double() - mean) @ components  # [H*W, 3]
    if limits is None:
        rows = proj if valid is None else proj[valid.flatten().bool()]
        limits = (torch.quantile(rows, 0.01, dim=0), torch.quantile(rows, 0.99, dim=0))
    low, high = limits
    rgb = ((proj - low) / (high - low).clamp_min(1e-12)).clamp(0, 1).reshape(h, w, -1)
    if valid is not None:
        rgb = rgb * valid.reshape(h, w, 1).to(rgb.dtype)
    return rgb.numpy(), limits


def cosine_map_mean(a: Tensor, b: Tensor, valid: Tensor | None = None) -> float:
    """Mean over (valid) cells of the per-cell cosine similarity of two ``[C, H, W]`` maps."""
    cos = torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0)
    return float(cos[valid.bool()].mean() if valid is not None else cos.mean())


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Save ``fig`` to ``path`` atomically (its folder is created if need be; the format follows
    the suffix) and close it; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as tmp:  # the temporary name keeps the suffix: same format
            fig.savefig(tmp, dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def feature_comparison(
    path: str | Path,
    image: np.ndarray,
    teacher: Tensor,
    students: Mapping[str, Tensor],
    valid: Tensor | None = None,
    title: str = "",
) -> Path:
    """Save ``image | teacher PCA | each student PCA`` side by side, in the teacher's basis.

    ``image`` is ``[H, W, 3]`` uint8 (what the models saw, padding included); ``teacher`` and
    ``students`` are ``[C, h, w]`` maps on the same grid; ``valid`` masks the padded cells.
    Each student panel is titled with its mean cosine similarity to the teacher.
    """
    mean, comps = pca_basis(teacher, valid)
    teacher_rgb, limits = pca_rgb(teacher, mean, comps, valid=valid)
    panels = [("input", image), ("teacher", teacher_rgb)]
    for name, feats in students.items():
        if feats.shape != teacher.shape:
            raise ValueError(f"{name}: map {tuple(feats.shape)} vs teacher {tuple(teacher.shape)}")
        rgb, _ = pca_rgb(feats, mean, comps, limits, valid)
        panels.append((f"{name}\ncos {cosine_map_mean(feats, teacher, valid):.3f}", rgb))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6))
    for ax, (label, picture) in zip(axes, panels):
        ax.imshow(picture, interpolation="nearest")
        ax.set_title(label, fontsize=10)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, Path(path))


def training_curves(path: str | Path, runs: Mapping[str, Mapping[str, Sequence[float]]]) -> Path:
    """Save one panel per run with its per-epoch curves (e.g. ``train loss``, ``val loss``)."""
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.6), squeeze=False)
    for ax, (run, curves) in zip(axes[0], runs.items()):
        for label, values in curves.items():
            if len(values):
                ax.plot(range(1, len(values) + 1), values, marker="o", ms=3, label=label)
        ax.set_title(run, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, Path(path))
