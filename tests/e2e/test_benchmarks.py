"""Figures the benchmarks print must be true: a cosine similarity is never above 1, IoUs and
agreement figures are those worked out by hand, ratios are paired per round."""

from __future__ import annotations

import importlib.util
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _bench(name: str = "teacher_vs_reference"):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def agreement():
    return _bench("agreement")


@pytest.fixture(scope="module")
def timing():
    return _bench("timing")


def test_flat_cosine_of_a_trunk_sized_map_stays_within_one():
    # a trunk-sized map and its bf16 rounding: accumulated in float32, the cosine of this pair
    # comes out near 1.0001 and that of the map with itself near 1.0003
    torch.manual_seed(0)
    a = torch.randn(1024 * 72 * 72) * 3
    c = a.bfloat16().float()
    cosine = _bench().flat_cosine
    assert cosine(a, a) <= 1.0 and abs(cosine(a, a) - 1.0) < 1e-12
    assert 0.99999 < cosine(c, a) <= 1.0


def test_box_iou_pairs_by_hand(agreement):
    a = torch.tensor([[0.0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 1, 1], [0, 0, 4, 1], [1, 1, 1, 1]])
    b = torch.tensor([[1.0, 1, 3, 3], [0, 0, 2, 2], [2, 2, 3, 3], [1, 0, 2, 1], [1, 1, 1, 1]])
    # overlap 1 of union 4 + 4 - 1; identical; disjoint; inside (1 of 4); both empty
    expected = torch.tensor([1 / 7, 1.0, 0.0, 0.25, 0.0], dtype=torch.float64)
    assert torch.allclose(agreement.box_iou_pairs(a, b), expected)


def test_mask_iou_pairs_by_hand(agreement):
    a = torch.zeros(3, 2, 4, dtype=torch.bool)
    b = torch.zeros(3, 2, 4, dtype=torch.bool)
    a[0, :, :2] = True  # 4 pixels
    b[0, :, 1:3] = True  # 4 pixels, 2 shared: 2 / 6
    a[1] = True  # against an empty mask: 0
    # masks 2: both empty, so they agree
    expected = torch.tensor([1 / 3, 0.0, 1.0], dtype=torch.float64)
    assert torch.allclose(agreement.mask_iou_pairs(a, b), expected)


def _outputs(logits: list[float], boxes: list[list[float]], masks: torch.Tensor) -> dict:
    return {
        "pred_logits": torch.tensor(logits).view(1, -1, 1),
        "presence_logit_dec": torch.zeros(1, 1),  # sigmoid 0.5
        "pred_boxes_xyxy": torch.tensor(boxes).view(1, -1, 4),
        "pred_masks": masks[None],
    }


def test_top_k_agreement_on_the_reference_top_queries(agreement):
    boxes = [[0.0, 0, 2, 2], [0, 0, 1, 1], [0, 0, 4, 4], [2, 2, 3, 3]]
    masks = torch.full((4, 2, 2), -1.0)
    masks[:, 0, 0] = 1.0  # every reference mask is one pixel
    ref = _outputs([3.0, -2.0, 1.0, 0.0], boxes, masks)  # top-2: queries 0 and 2
    other_boxes = [list(b) for b in boxes]
    other_boxes[0] = [1.0, 1, 3, 3]  # IoU 1/7 with the reference's
    other_masks = masks.clone()
    other_masks[2, 0, 1] = 1.0  # two pixels against one: IoU 1/2
    other = _outputs([3.0, 2.0, 0.0, 0.0], other_boxes, other_masks)  # its top-2: 0 and 1
    got = agreement.top_k_agreement(ref, other, k=2)
    sig = torch.sigmoid(torch.tensor(1.0)).item()
    assert got["k"] == 2
    assert got["box_iou_mean"] == pytest.approx((1 / 7 + 1) / 2)
    assert got["box_iou_min"] == pytest.approx(1 / 7)
    assert got["mask_iou_mean"] == pytest.approx(0.75)
    assert got["mask_iou_min"] == pytest.approx(0.5)
    assert got["score_diff_max"] == pytest.approx(0.5 * (sig - 0.5))  # query 2's score
    assert got["score_diff_mean"] == pytest.approx(0.25 * (sig - 0.5))
    assert got["shared_top_k"] == 0.5
    assert agreement.top_k_agreement(ref, ref, k=10)["k"] == 4  # k is capped at the queries


def test_paired_ratio_is_the_median_of_per_round_ratios(timing):
    # per round 2, 1, 3 -> 2; the ratio of the medians would be 4 / 3
    assert timing.paired_ratio([2.0, 4.0, 9.0], [1.0, 4.0, 3.0]) == 2.0
    with pytest.raises(ValueError, match="longer"):
        timing.paired_ratio([1.0], [1.0, 2.0])


def test_uncontended_median_drops_runs_that_lost_their_cores(timing):
    times, cores = [1.0, 9.0, 3.0, 2.0], [1.9, 0.9, 1.6, 1.5]  # 0.9 of 2 threads: contended
    assert timing.uncontended_median(times, cores, threads=2) == 2.0
    assert timing.uncontended_median(times, cores, threads=4) is None  # none kept 3 of 4 busy


def test_cpu_bf16_flags_read_the_flags_line(timing):
    # only the flags line counts, and whole words only
    text = "processor\t: 0\nmodel name\t: amx_bf16 lookalike\nflags\t\t: fpu avx512f avx512_bf16\n"
    assert timing.cpu_bf16_flags(text) == {
        "avx512_bf16": True,
        "amx_bf16": False,
        "amx_tile": False,
    }
    assert not any(timing.cpu_bf16_flags("flags\t: amx_bf16x avx512_bf16_\n").values())


@pytest.fixture(scope="module")
def interactive():
    return _bench("interactive_vs_reference")


def test_mask_like_logits_holes_by_hand():
    from sam3.instance import fill_holes

    # at 288 the holes have sides 1, 2, 4, 8, 12, 16, 20, 30: the six of at most 256 cells
    # (1 + 4 + 16 + 64 + 144 + 256) are filled, the 400- and 900-cell ones are kept; at 96
    # the sides are 1, 1, 1, 3, 4, 5, 7, 10 and all are filled
    for side, filled in ((288, 485), (96, 202)):
        logits = _bench("seeded_models").mask_like_logits(side)
        assert logits.shape == (1, 1, side, side)
        assert int((logits == -4.0).sum()) == (485 + 400 + 900 if side == 288 else 202)
        assert int((fill_holes(logits) > 0).sum() - (logits > 0).sum()) == filled


@pytest.mark.oracle
def test_interactive_benchmark_runs_reduced_and_compares_like_with_like(interactive):
    res = interactive.main(["--size", "small", "--rounds", "2", "--passes", "2", "--warmup", "0"])
    for mode in ("heads", "features", "post"):
        r = res[mode]
        assert all(t > 0 for times in r["times"].values() for t in times)
        assert len(r["times"]["ours"]) == len(r["times"]["meta"]) == 2
        # the printed ratio is ours over Meta's, from this run's medians
        assert r["ratio"] == pytest.approx(r["median"]["ours"] / r["median"]["meta"])
    # both workers ran the same function of the same weights and inputs
    for mode in ("heads", "features"):
        for key, d in res[mode]["ours_vs_meta"].items():
            assert d["rel_l2"] <= 1e-5, (mode, key, d)
    assert set(res["heads"]["ours_vs_meta"]) == {"iou", "low_res_masks"}
    assert res["post"]["ours_vs_meta"]["low_res_logits"]["max_abs"] == 0.0
    if res["meta_hole_filling"]:
        assert res["post"]["mask_iou"] == 1.0
    else:  # unfilled holes make Meta's mask smaller
        assert res["post"]["mask_iou"] < 1.0
    stages = res["heads"]["stages"]["ours"]
    assert set(stages) == {"prompt_encoder", "transformer", "decoder_rest", "other"}
    assert stages["transformer"] > 0 and stages["decoder_rest"] > 0


@pytest.mark.oracle
def test_heads_benchmark_runs_reduced_and_compares_like_with_like():
    argv = ["--size", "small", "--repeats", "2", "--warmup", "0", "--bf16-repeats", "0"]
    res = _bench("heads_vs_reference").main([*argv, "--skip-interactive"])
    for part, (a, b) in (("heads", ("ours", "meta")), ("e2e", ("sam3", "efficient"))):
        r = res[part]["fp32"]
        assert len(r["times"][a]) == len(r["times"][b]) == 2
        assert r["ratio"] == pytest.approx(r["median"][a] / r["median"][b])
        assert r["paired_ratio"] == pytest.approx(
            statistics.median(x / y for x, y in zip(r["times"][a], r["times"][b]))
        )
    # both heads workers ran the same function of the same weights and inputs
    for key, d in res["heads"]["ours_vs_meta"]["max_diff"].items():
        assert d["rel_l2"] <= 1e-5, (key, d)
    assert res["heads"]["ours_vs_meta"]["top_k"]["shared_top_k"] == 1.0
    heads_stages = {"geometry", "fusion_encoder", "decoder", "scoring", "segmentation_head"}
    assert set(res["heads"]["fp32"]["stages"]["ours"]) == heads_stages | {"other"}
    e2e_stages = {"preprocess", "image_backbone", "text", "heads"}
    assert set(res["e2e"]["fp32"]["stages"]["sam3"]) == e2e_stages


@pytest.mark.oracle
def test_teacher_benchmark_runs_reduced_from_the_shell():
    argv = ["--size", "small", "--repeats", "1", "--warmup", "0", "--bf16-repeats", "0"]
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "teacher_vs_reference.py"), *argv, "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = r"fp32 median: ours ([\d.]+) s, Meta ([\d.]+) s, ratio ours/Meta = ([\d.]+)"
    found = re.search(line, proc.stdout)
    assert found, proc.stdout
    ours, meta, printed = (float(v) for v in found.groups())
    assert printed == pytest.approx(ours / meta, rel=0.05)  # of the unrounded medians
    rel_l2 = float(re.search(r"relative L2 = ([\d.e+-]+)", proc.stdout).group(1))
    assert rel_l2 <= 1e-5
