"""data/download_datacomp.py (offline failure, fraction, resume) and data/reorg_sa1b.py (layout,
determinism, idempotence, no deletion) on tiny fake inputs; no network is used."""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import sys
import tarfile
from fractions import Fraction
from pathlib import Path

import huggingface_hub
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stage1.data.sa1b import list_sa1b

REPO = Path(__file__).resolve().parents[2]


def _load(name: str):
    """Import a script from data/ (not a package) as a module."""
    spec = importlib.util.spec_from_file_location(
        f"data_script_{name}", REPO / "data" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


dl = _load("download_datacomp")
reorg = _load("reorg_sa1b")


# ----------------------------------------------------------------------------- download


class _OfflineApi:
    def list_repo_files(self, *args, **kwargs):
        raise ConnectionError("Failed to resolve 'huggingface.co'")


def _fake_hub(monkeypatch, repo_files: list[str], calls: list[str]) -> None:
    class Api:
        def list_repo_files(self, repo_id, repo_type=None, revision=None):
            assert repo_type == "dataset"
            return list(repo_files)

    def fake_download(repo_id, filename, repo_type=None, revision=None, local_dir=None):
        calls.append(filename)
        path = Path(local_dir) / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"key": [filename], "re_caption": ["a caption"]}), path)
        return str(path)

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)


def test_download_fails_at_once_when_offline_mode_is_set(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "HfApi", _OfflineApi)
    assert dl.main(["--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "HF_HUB_OFFLINE" in err and "copy" in err and str(tmp_path / "out") in err


def test_download_reports_an_unreachable_hub(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "HfApi", _OfflineApi)
    assert dl.main(["--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "ConnectionError" in err and "Failed to resolve" in err
    assert "reachable" in err and "*.parquet" in err


def test_download_selects_first_fraction_and_resumes(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    train = [f"data/train_data/train-{i:05d}-of-00010.parquet" for i in range(10)]
    repo_files = [*reversed(train), "README.md", "data/val_data/val-00000.parquet"]
    calls: list[str] = []
    _fake_hub(monkeypatch, repo_files, calls)
    out = tmp_path / "recap_subset"
    assert dl.main(["--fraction", "0.25", "--output", str(out)]) == 0
    assert calls == train[:3]  # ceil(0.25 * 10) = 3, sorted
    record = json.loads((out / dl.RECORD_NAME).read_text())
    assert record["files"] == train[:3] and record["fraction"] == "1/4"
    # A truncated file is fetched again; complete ones are skipped.
    (out / train[1]).write_bytes(b"PAR1 half a file")
    calls.clear()
    assert dl.main(["--fraction", "0.25", "--output", str(out)]) == 0
    assert calls == [train[1]]
    assert "1 downloaded, 2 already complete" in capsys.readouterr().out


def test_fraction_parsing_is_exact() -> None:
    names = [f"train-{i:03d}.parquet" for i in range(100)]
    assert len(dl.select_files(names, dl.parse_fraction("0.07"))) == 7
    assert len(dl.select_files(names, Fraction(1, 100))) == 1
    assert len(dl.select_files(names[:3], Fraction(1, 100))) == 1
    for bad, message in (("0", "must be in"), ("1.5", "must be in"), ("abc", "not a number")):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            dl.parse_fraction(bad)


# ----------------------------------------------------------------------------- reorg


def _tar(path: Path, members: dict[str, bytes], extra: list[tarfile.TarInfo] = ()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info)
    return path


def _pairs(stems: range, tag: str = "") -> dict[str, bytes]:
    members = {}
    for i in stems:
        members[f"./sa_{i}.jpg"] = f"jpeg {i}{tag}".encode()
        members[f"./sa_{i}.json"] = json.dumps({"image": {"image_id": i}}).encode()
    return members


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.parent.parent.name in ("images", "annotations")
    }


@pytest.fixture()
def tars(tmp_path: Path) -> Path:
    folder = tmp_path / "tars"
    _tar(folder / "sa_000020.tar", _pairs(range(0, 60)))
    _tar(folder / "sa_000021.tar", _pairs(range(60, 120)))
    return folder


def test_reorg_layout_split_and_idempotent_rerun(tars: Path, tmp_path: Path) -> None:
    out = tmp_path / "sa-1b"
    args = ["--tars-dir", str(tars), "--output", str(out), "--workers", "2"]
    assert reorg.main(args) == 0
    tree = _tree(out)
    assert len(tree) == 240
    for i in range(120):
        split = reorg.split_of(f"sa_{i}", 42, 0.1)
        assert tree[f"images/{split}/sa_{i}.jpg"] == f"jpeg {i}".encode()
        assert f"annotations/{split}/sa_{i}.json" in tree
    assert not (out / reorg.SCRATCH).exists()
    report = json.loads((out / reorg.REPORT).read_text())
    assert report["placed"] == 120 and report["split_counts"]["val"] == len(
        list((out / "images" / "val").iterdir())
    )
    items = list_sa1b(out)
    assert len(items) == 120 and all(i.annotation_path is not None for i in items)

    # Re-run: skipped by the markers, nothing changes.
    assert reorg.main(args) == 0
    report = json.loads((out / reorg.REPORT).read_text())
    assert report["tars_skipped_done"] == 2 and report["placed"] == 0
    assert _tree(out) == tree
    # Re-run without markers (and one file lost): re-extracted, identical files left alone.
    for marker in (out / reorg.STATE).iterdir():
        marker.unlink()
    lost = next(iter((out / "images" / "train").iterdir()))
    lost.unlink()
    assert reorg.main([*args, "--workers", "1"]) == 0
    report = json.loads((out / reorg.REPORT).read_text())
    assert report["placed"] == 1 and report["already_present"] == 119
    assert _tree(out) == tree


def test_split_is_stable_and_near_the_fraction() -> None:
    stems = [f"sa_{i}" for i in range(20000)]
    val = sum(reorg.split_of(s, 42, 0.1) == "val" for s in stems)
    assert 1800 < val < 2200  # binomial sd ~42
    assert reorg.split_of("sa_1", 42, 0.1) == reorg.split_of("sa_1", 42, 0.1)
    assert {reorg.split_of(s, 42, 0.0) for s in stems[:100]} == {"train"}
    assert {reorg.split_of(s, 42, 1.0) for s in stems[:100]} == {"val"}
    seed7 = {s for s in stems[:2000] if reorg.split_of(s, 7, 0.1) == "val"}
    seed42 = {s for s in stems[:2000] if reorg.split_of(s, 42, 0.1) == "val"}
    assert seed7 != seed42  # the seed matters


def test_reorg_never_overwrites_and_reports_problems(tars: Path, tmp_path: Path) -> None:
    out = tmp_path / "sa-1b"
    split = reorg.split_of("sa_5", 42, 0.1)
    mine = out / "images" / split / "sa_5.jpg"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"my own edited image")
    link = tarfile.TarInfo("./sa_500.jpg")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    _tar(
        tars / "sa_000022.tar",
        {
            "../evil.json": b"{}",
            "./sa_200.jpg": b"image without json",
            "./sa_201.json": b"{}",
            "./readme.txt": b"hello",
        },
        extra=[link],
    )
    rc = reorg.main(["--tars-dir", str(tars), "--output", str(out)])
    assert rc == 1
    assert mine.read_bytes() == b"my own edited image"
    assert not (out / "annotations" / split / "sa_5.json").exists()  # pair kept together
    report = json.loads((out / reorg.REPORT).read_text())
    assert len(report["conflicts"]) == 1 and "sa_5.jpg" in report["conflicts"][0]
    assert report["unpaired_images"] == ["sa_000022.tar:sa_200.jpg"]
    assert report["unpaired_annotations"] == ["sa_000022.tar:sa_201.json"]
    refused = " ".join(report["refused_members"])
    assert "../evil.json" in refused and "sa_500.jpg" in refused
    assert report["ignored_members"] == ["sa_000022.tar:./readme.txt"]
    assert not (tmp_path / "evil.json").exists() and not (out / "evil.json").exists()
    assert (out / reorg.SCRATCH / "sa_000020.tar" / "sa_5.jpg").read_bytes() == b"jpeg 5"
    assert report["placed"] == 119
    # A re-run changes nothing and still reports the conflict.
    before = _tree(out)
    assert reorg.main(["--tars-dir", str(tars), "--output", str(out)]) == 1
    assert _tree(out) == before


def test_changing_seed_never_duplicates_across_splits(tars: Path, tmp_path: Path) -> None:
    out = tmp_path / "sa-1b"
    assert reorg.main(["--tars-dir", str(tars), "--output", str(out)]) == 0
    assert reorg.main(["--tars-dir", str(tars), "--output", str(out), "--seed", "7"]) == 0
    report = json.loads((out / reorg.REPORT).read_text())
    assert report["in_other_split"] and report["placed"] == 0
    assert len(list_sa1b(out)) == 120  # no key in both splits


def test_tar_list_names_and_missing_tars(tars: Path, tmp_path: Path, capsys) -> None:
    names = reorg.read_tar_list(REPO / "data" / "sa-1b-1p.txt")
    assert names == [f"sa_0000{i}.tar" for i in range(20, 30)]
    text = (REPO / "data" / "sa-1b-1p.txt").read_text()
    assert "https://ai.meta.com/datasets/segment-anything-downloads/" in text
    assert "<paste the link for sa_000020.tar" in text
    listing = tmp_path / "list.txt"
    listing.write_text("# comment\nfile_name\tcdn_link\nsa_000020.tar\t<link>\n")
    out = tmp_path / "sa-1b"
    assert (
        reorg.main(["--tars-dir", str(tars), "--output", str(out), "--tar-list", str(listing)]) == 0
    )
    assert len(list_sa1b(out)) == 60
    full = ["--tars-dir", str(tars), "--output", str(out), "--tar-list"]
    assert reorg.main([*full, str(REPO / "data" / "sa-1b-1p.txt")]) == 2
    assert "sa_000022.tar" in capsys.readouterr().err
    assert reorg.main(["--tars-dir", str(tmp_path / "none"), "--output", str(out)]) == 2
