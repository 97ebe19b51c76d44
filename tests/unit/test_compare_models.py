"""stage1/compare_models.py: the spec's command runs and reproduces the spec's tables.

Expected counts are the documented ones (sam3_model.md §4-§5, sam3_interactive.md §8-§9), or are
recomputed here from modules built independently of the report code.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sam3.arch import BackboneConfig
from sam3.backbones import build_student, list_students
from sam3.merged import merged_backbone
from sam3.model.heads_config import HeadsConfig, SamHeadsConfig
from sam3.model.sam3_image import Sam3ImageModel
from sam3.model_builder import build_sam3_image_model
from stage1.report import compare as compare_models
from stage1.report import params as report_params
from stage1.report.published import PUBLISHED
from stage1.report.students import PUBLISHED_RULES

ROOT = Path(__file__).resolve().parents[2]
ZOO = ["ES-RV-S", "ES-RV-M", "ES-RV-L", "ES-TV-S", "ES-TV-M", "ES-TV-L", "ES-EV-S", "ES-EV-M"]
ZOO += ["ES-EV-L", "ES-MC-S", "ES-MC-M", "ES-MC-L"]

# sam3_model.md §4: SAM3's default image model by sam3.pt prefix (under "detector.")
HEADS = {
    "geometry_encoder": 8_215_808,
    "transformer.encoder": 9_472_512,
    "transformer.decoder": 11_575_093,
    "segmentation_head": 2_298_881,
    "dot_prod_scoring": 1_182_976,
}
TRUNK, CONVS, SAM2_CONVS = 446_237_696, 7_802_112, 7_802_112
TEXT_ENCODER, RESIZER = 353_462_272, 262_400
IMAGE_MODEL = 840_509_750  # sam3_model.md §5: build_sam3_image_model()
# sam3_interactive.md §8-§9: sam3.pt's tracker.*, of which the image model builds the SAM heads
TRACKER, PROMPT_ENCODER, MASK_DECODER, NO_MEM_EMBED = 11_743_362, 6_220, 4_215_109, 256
INTERACTIVE = 4_221_585  # the three above
VIDEO_ONLY = 7_521_777  # memory attention, memory encoder, object pointers: not built
INTERACTIVE_MODEL = 852_533_447  # build_sam3_image_model(enable_inst_interactivity=True)
SAM3_PT = 860_055_224  # §9: Meta's build with interactivity, all of sam3.pt's parameters


def _numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def report() -> tuple[dict, str]:
    """``main(["--json"])`` for all students, computed once: (returned report, printed text)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        returned = compare_models.main(["--json", "--student", "all"])
    return returned, printed.getvalue()


def test_spec_command_runs_from_the_repository_root():
    env = {**os.environ, "PYTHONPATH": "sam3", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "stage1/compare_models.py", "--student", "all"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "vision backbone   461.84M = trunk 446.24M + convs 7.80M + sam2_convs 7.80M" in out
    assert "language backbone 353.72M = encoder 353.46M + resizer 0.26M" in out
    assert (
        "decoder/heads      44.49M = heads 32.75M + interactive heads 4.22M + tracker video-only "
        "7.52M*   (spec: ~45M)\n" in out
    )
    assert (
        "total             860.06M = image model 852.53M + tracker video-only 7.52M*   "
        "(spec: 860.06M)\n" in out
    )
    assert "  * tracker video-only 7,521,777, not built: " in out
    assert (
        "  tracker (sam3.pt's tracker.*) 11,743,362 = interactive heads 4,221,585 (built) + "
        "video-only 7,521,777* (+ 256 buffer elements" in out
    )
    assert "not built here" not in out and "NOT reproduced" not in out
    for line in (
        "geometry_encoder                        8,215,808",
        "transformer.encoder                     9,472,512",
        "transformer.decoder                    11,575,093",
        "segmentation_head                       2,298,881",
        "dot_prod_scoring                        1,182,976",
        "detector heads (the five above)        32,745,270",
        "backbone.vision_backbone.sam2_convs     7,802,112",
        "tracker.sam_prompt_encoder                  6,220",
        "tracker.sam_mask_decoder                4,215,109",
        "tracker.no_mem_embed                          256",
        "interactive heads (the three above)     4,221,585",
        "total                                 852,533,447  (852.53M)",
        "without interactivity                 840,509,750  (840.51M): no sam2_convs, no tracker",
        "+ tracker video-only, not built*        7,521,777",
        "= sam3.pt's parameters (spec total)   860,055,224  (860.06M)",
        "with interactivity (enable_inst_interactivity=True) each also builds sam2_convs 7.80M "
        "and the interactive heads 4.22M: +12.02M",
        "ES-EV-S  SAM3        10.25M    353.72M   7.80M  32.75M  404.53M     51.87%",
        "SAM3     ES-MC-S     42.29M    446.24M   7.80M  32.75M  529.07M     37.05%",
        "ES-EV-S     93.09M (88.92%)   114.08M (86.43%)   174.02M (79.30%)",
    ):
        assert f"\n  {line}\n" in out, line
    for zoo in ZOO:
        assert zoo in out
    lines = [(line.split() or [""], line) for line in out.splitlines()]
    rows = [line for w, line in lines if w[0] in ZOO and line.count("%") == 3 and "%)" not in line]
    assert len(rows) == 12 and all("M=" in row and "!" not in row for row in rows)
    merged = [words[:2] for words, _ in lines if "SAM3" in words[:2] and set(words[:2]) & set(ZOO)]
    assert len(merged) == 12
    pairs = [line for words, line in lines if words[0] in ZOO and line.count("%)") == 3]
    assert len(pairs) == 9


def test_json_report_reproduces_the_published_figures(report):
    returned, printed = report
    assert json.loads(printed) == json.loads(json.dumps(returned))
    teacher = returned["teacher"]
    assert teacher["image"] == {
        "trunk": 446_237_696,
        "convs": 7_802_112,
        "sam2_convs": 7_802_112,
        "total": 461_841_920,
    }
    assert teacher["text"] == {"encoder": 353_462_272, "resizer": 262_400, "total": 353_724_672}
    rows = {r["name"]: r for r in returned["students"]}
    assert list(rows) == list_students()
    assert all(r["published_reproduced"] for r in rows.values())
    assert rows["efficientvit_b0"]["backbone_params"] == 682_608
    assert rows["efficientvit_b0"]["head_params"] == 9_571_328
    assert rows["tiny_vit_21m"]["backbone_params"] == 20_620_416
    by_rule = {n: rows[n]["params_by_published_rule"] for n in list_students("text")}
    assert by_rule == {
        "MobileCLIP-S0": 42_572_544,
        "MobileCLIP-S1": 63_559_424,
        "MobileCLIP2-L": 123_603_456,
    }
    assert rows["MobileCLIP-S0"]["total_params"] == 42_287_360
    # the % smaller the spec prints agree to 2 decimals except where it rounded differently,
    # and those are explained
    for r in rows.values():
        same = f"{r['smaller_pct_by_published_rule']:.2f}" == f"{r['published_smaller_pct']:.2f}"
        assert same or any("smaller" in note for note in r["notes"]), r["name"]
    assert {n for n, r in rows.items() if r["notes"] and r["kind"] == "image"} == {
        "efficientvit_b1",
        "tiny_vit_21m",
    }


def test_teacher_counts_come_from_the_built_image_model(report):
    teacher = report[0]["teacher"]
    assert teacher["parts"] == {
        "backbone.vision_backbone.trunk": TRUNK,
        "backbone.vision_backbone.convs": CONVS,
        "backbone.vision_backbone.sam2_convs": SAM2_CONVS,
        "backbone.language_backbone.encoder": TEXT_ENCODER,
        "backbone.language_backbone.resizer": RESIZER,
        **HEADS,
        "tracker.sam_prompt_encoder": PROMPT_ENCODER,
        "tracker.sam_mask_decoder": MASK_DECODER,
        "tracker.no_mem_embed": NO_MEM_EMBED,
    }
    assert teacher["heads"] == {**HEADS, "total": 32_745_270}
    assert teacher["interactive_heads"]["total"] == INTERACTIVE
    assert teacher["tracker"] == {
        "interactive_heads": INTERACTIVE,
        "video_only": VIDEO_ONLY,
        "total": TRACKER,
        "buffer_numel": 256,
    }
    assert teacher["image_model"] == INTERACTIVE_MODEL and teacher["unassigned"] == 0
    assert teacher["image_model_without_interactivity"] == IMAGE_MODEL
    assert teacher["not_built"]["tracker video-only"]["count"] == VIDEO_ONLY
    figures = {f["label"]: (f["count"], f["reproduced"]) for f in teacher["spec_figures"]}
    assert figures == {
        "vision backbone": (461_841_920, True),
        "language backbone": (353_724_672, True),
        "decoder/heads": (44_488_632, True),
        "total": (SAM3_PT, True),
    }
    # the same counts straight from the builder, without the report code
    plain = build_sam3_image_model(device="meta")
    assert _numel(plain) == IMAGE_MODEL
    assert {name: _numel(plain.get_submodule(name)) for name in HEADS} == HEADS
    assert _numel(plain.backbone.vision_backbone) == TRUNK + CONVS
    assert _numel(plain.backbone.language_backbone) == TEXT_ENCODER + RESIZER
    with pytest.raises(ValueError, match="enable_inst_interactivity"):
        report_params.teacher_counts(plain)
    model = build_sam3_image_model(device="meta", enable_inst_interactivity=True)
    tracker = model.tracker
    assert _numel(tracker) == INTERACTIVE and sum(b.numel() for b in tracker.buffers()) == 256
    assert _numel(tracker.sam_prompt_encoder) == PROMPT_ENCODER
    assert _numel(tracker.sam_mask_decoder) == MASK_DECODER
    assert _numel(model.backbone.vision_backbone.sam2_convs) == SAM2_CONVS
    assert _numel(model) == INTERACTIVE_MODEL == IMAGE_MODEL + SAM2_CONVS + INTERACTIVE
    # the not-built constant is the documented tracker less the built heads, and closes the total
    video_only = sum(report_params.VIDEO_ONLY_PARTS.values())
    assert video_only == TRACKER - _numel(tracker) == VIDEO_ONLY
    assert _numel(model) + video_only == SAM3_PT


def test_every_student_has_published_figures_and_a_known_rule():
    assert list(PUBLISHED) == list_students()  # the spec's model-zoo order
    assert {figure.rule for figure in PUBLISHED.values()} == set(PUBLISHED_RULES)


def test_spec_figure_reproduction_rule():
    approx = report_params.SpecFigure("heads", 45.0, True, ("a",))
    exact = report_params.SpecFigure("total", 860.06, False, ("a",))
    assert report_params.spec_figure(approx, {"a": 44_488_632})["reproduced"]
    assert not report_params.spec_figure(approx, {"a": 43_900_000})["reproduced"]
    assert report_params.spec_figure(exact, {"a": 860_055_224})["reproduced"]
    assert not report_params.spec_figure(exact, {"a": 860_050_000})["reproduced"]


def test_each_merged_total_is_the_students_plus_sam3s_kept_parts(report):
    rows = {(r["image"], r["text"]): r for r in report[0]["merged"]}
    vision, text = list_students("image"), list_students("text")
    expected = [(v, None) for v in vision] + [(None, t) for t in text]
    expected += [(v, t) for v in vision for t in text]
    assert list(rows) == expected
    with torch.device("meta"):
        student = {name: _numel(build_student(name)) for name in vision + text}
    heads = sum(HEADS.values())
    for (image, caption), row in rows.items():
        students = (student[image] if image else 0) + (student[caption] if caption else 0)
        kept = (0 if image else TRUNK) + (0 if caption else TEXT_ENCODER + RESIZER)
        assert row["total"] == students + kept + CONVS + heads, (image, caption)
        assert (row["students"], row["sam3_encoders_kept"]) == (students, kept)
        assert (row["convs"], row["heads"], row["unassigned"]) == (CONVS, heads, 0)
        pct = 100 * (1 - row["total"] / IMAGE_MODEL)
        assert row["smaller_pct_than_sam3"] == pytest.approx(pct)
        assert (row["sam2_convs"], row["interactive_heads"]) == (SAM2_CONVS, INTERACTIVE)
        assert row["total_with_interactivity"] == row["total"] + SAM2_CONVS + INTERACTIVE


def test_merged_backbone_of_sam3_merged_gives_the_same_total(report):
    rows = {(r["image"], r["text"]): r for r in report[0]["merged"]}
    for image, caption in (("efficientvit_b0", "MobileCLIP-S0"), ("tiny_vit_21m", "MobileCLIP2-L")):
        with torch.device("meta"):
            backbone = merged_backbone({"name": image}, {"name": caption}, BackboneConfig())
            both = merged_backbone(
                {"name": image}, {"name": caption}, BackboneConfig(), enable_sam2_neck=True
            )
            model = Sam3ImageModel(both, HeadsConfig(), sam_heads=SamHeadsConfig())
        total = _numel(backbone) + sum(HEADS.values())
        assert rows[(image, caption)]["total"] == total
        assert rows[(image, caption)]["total_with_interactivity"] == _numel(model)


def test_one_student_by_zoo_name(capsys):
    compare_models.main(["--student", "ES-EV-S"])
    out = capsys.readouterr().out
    assert "ES-EV-S  EfficientViT-B0" in out and "ES-RV-S" not in out
    assert "Text students" not in out and "both students" not in out
    assert "\n  ES-EV-S  SAM3        10.25M    353.72M" in out


def test_student_latency_without_teacher(capsys):
    report = compare_models.main(
        ["--student", "ES-EV-S", "--json", "--latency", "--no-teacher-latency"]
        + ["--img-size", "64", "--latency-repeats", "1", "--latency-warmup", "0"]
    )
    latency = json.loads(capsys.readouterr().out)["latency"]
    assert latency == json.loads(json.dumps(report["latency"]))
    assert latency["teacher_s"] == {} and latency["students"]["efficientvit_b0"]["seconds"] > 0


def test_bad_arguments_fail_with_a_message(capsys):
    with pytest.raises(SystemExit) as err:
        compare_models.main(["--student", "repvit_m9"])
    assert err.value.code == 2
    message = capsys.readouterr().err
    assert "efficientvit_b0" in message and "MobileCLIP2-L" in message
    with pytest.raises(SystemExit, match="multiple of 336"):
        compare_models.main(["--student", "ES-EV-S", "--latency", "--img-size", "224"])
