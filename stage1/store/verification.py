"""Checking a store: :func:`verify` reads every shard and record (or a seeded sample), can
recompute a sample with the teacher, and returns a
:class:`~stage1.store.report.VerifyReport` of what it found."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stage1.store.codec import as_numpy, chunks, decode_record, nonfinite_rows
from stage1.store.manifest import (
    file_size,
    load_manifest,
    open_spec,
    read_lines,
    shard_paths,
    shard_ranks,
)
from stage1.store.reader import LISTED, KeyIndex, build_index
from stage1.store.report import Progress, ProgressCallback, VerifyReport
from stage1.store.spec import StoreError, StoreSpec, expected_differences

_RECOMPUTE_BATCH = 8  # keys per recompute call in verify
Recompute = Callable[[list[str]], np.ndarray | torch.Tensor]  # keys -> [N, *shape]


@dataclass
class _Shards:
    """The store being verified: its spec, and per shard its rank and complete keys."""

    root: Path
    spec: StoreSpec
    ranks: list[int]
    keys: list[list[bytes]]

    def values_path(self, position: int) -> Path:
        return shard_paths(self.root, self.ranks[position])[1]


def verify(
    root: str | os.PathLike,
    expected: StoreSpec | None = None,
    recompute: Recompute | None = None,
    sample: int = 0,
    seed: int = 0,
    *,
    decode_sample: int | None = None,
    legacy_shape: Sequence[int] | None = None,
    rtol: float = 0.05,
    progress: bool | ProgressCallback | None = None,
    recompute_batch: int = _RECOMPUTE_BATCH,
) -> VerifyReport:
    """Check a store: manifest, every shard's files (complete key lines, unique keys, values
    size == lines x record bytes), records finite (all of them, or ``decode_sample`` random
    ones). With ``recompute`` (keys -> [N, *shape], called with up to ``recompute_batch``
    keys at a time) and ``sample`` > 0, recompute a seeded random sample and report the max
    abs error and the max relative error (per record: max |stored - recomputed| /
    max |recomputed|), a problem when above ``rtol``. ``progress`` over the records decoded
    and recomputed: True shows a tqdm bar on stderr, False none, None one while stderr is a
    terminal; a callable is called as ``progress(done, total)`` instead."""
    root = Path(root)
    report = VerifyReport(root=str(root))
    legacy = legacy_shape is not None
    try:
        spec = open_spec(root, legacy_shape)
        manifest = None if legacy else load_manifest(root)
    except StoreError as err:
        report.problems.append(str(err))
        return report
    if expected is not None:
        report.problems += [
            f"spec mismatch: {d}" for d in expected_differences(spec, expected, legacy)
        ]
    ranks = shard_ranks(root)
    shards = _Shards(root, spec, ranks, [])
    for rank in ranks:
        lines, n = _check_shard_files(report, root, rank, spec.record_bytes, legacy)
        shards.keys.append(lines[:n])
    report.shards = len(ranks)
    index = build_index(shards.keys)
    report.records = len(index.keys)
    for key, sa, ra, sb, rb in index.duplicates[:LISTED]:
        text = (
            f"key {key.decode()!r} is stored twice: rank{ranks[sa]} record {ra} and "
            f"rank{ranks[sb]} record {rb}"
        )
        if not legacy:
            text += " (two exports were mixed) — re-export into an empty folder"
        (report.notes if legacy else report.problems).append(text)
    counts = {rank: len(k) for rank, k in zip(ranks, shards.keys)}
    if manifest and manifest.get("counts"):
        _check_counts(report, manifest, counts)
    total = sum(counts.values())
    if decode_sample is None or decode_sample >= total:
        todo = np.arange(total)
    else:  # a seeded random sample over all shards' records
        todo = np.sort(np.random.default_rng(seed).choice(total, decode_sample, replace=False))
    n_recompute = min(sample, report.records) if recompute is not None else 0
    bar = Progress(progress, len(todo) + max(0, n_recompute))
    try:
        _check_finite(report, shards, todo, bar)
        if n_recompute > 0:
            rng = np.random.default_rng(seed)
            picked = np.sort(rng.choice(len(index.keys), size=n_recompute, replace=False))
            _recompute_sample(report, shards, index, picked, recompute, rtol, recompute_batch, bar)
    finally:
        bar.close()
    return report


def _check_shard_files(
    report: VerifyReport, root: Path, rank: int, rb: int, legacy: bool
) -> tuple[list[bytes], int]:
    """Report what is wrong with ``rank``'s two files; its key lines and complete records."""
    keys_path, values_path = shard_paths(root, rank)
    lines, tail = read_lines(keys_path)
    size = file_size(values_path)
    fix = (
        f"open a StoreWriter for rank {rank} (it truncates to the complete records) and resume "
        "the export"
    )
    if legacy:
        fix = "check the record shape given (--legacy-shape / legacy_shape), or re-export"
    if not keys_path.exists():
        report.problems.append(
            f"{values_path.name} has {size} bytes but {keys_path.name} is gone — delete "
            f"{values_path.name} and resume the export to recompute its keys"
        )
    if tail:
        report.problems.append(
            f"{keys_path.name} ends with a partial line {tail[:40]!r} at byte offset "
            f"{sum(len(x) + 1 for x in lines)} (a writer was interrupted) — {fix}"
        )
    bad = [i for i, line in enumerate(lines) if line.split() != [line]]
    for i in bad[:LISTED]:
        report.problems.append(
            f"{keys_path.name} line {i + 1} is not a valid key: {lines[i]!r} — the file was "
            "edited or written by other code; re-export into an empty folder"
        )
    if size < len(lines) * rb:
        i = size // rb
        report.problems.append(
            f"{values_path.name} is truncated: record {i} (key {lines[i].decode()!r}) at byte "
            f"offset {i * rb} has {size - i * rb} of {rb} bytes, and {len(lines) - i} keyed "
            f"record(s) from there on are missing — {fix}"
        )
    elif size > len(lines) * rb:
        extra = size - len(lines) * rb
        report.problems.append(
            f"{values_path.name} has {extra} bytes of trailing garbage after its last keyed "
            f"record, at byte offset {len(lines) * rb} ({extra // rb} whole record(s) without "
            f"a key: a crash between the values and keys writes, or foreign data) — {fix}"
        )
    return lines, min(len(lines), size // rb)


def _check_counts(report: VerifyReport, manifest: dict[str, Any], counts: dict[int, int]) -> None:
    """Compare each shard's records with the counts ``finalize_manifest`` recorded."""
    for rank_text, n in manifest["counts"].items():
        have = counts.get(int(rank_text), 0)
        if have < n:
            report.problems.append(
                f"rank{rank_text} holds {have} records but the manifest counted {n} when the "
                "export finished, so records were lost — re-run the export to refill them"
            )
        elif have > n:
            report.notes.append(
                f"rank{rank_text} holds {have} records, the manifest counted {n}: records "
                "were added after finalize_manifest (call it again)"
            )


def _check_finite(report: VerifyReport, shards: _Shards, todo: np.ndarray, bar: Progress) -> None:
    """Decode records ``todo`` (numbers over all shards, in order) and report non-finite ones."""
    spec, bad_records = shards.spec, []
    rb = spec.record_bytes
    starts = np.cumsum([0] + [len(keys) for keys in shards.keys])
    for si, rank in enumerate(shards.ranks):
        mine = todo[(todo >= starts[si]) & (todo < starts[si + 1])] - starts[si]
        if not mine.size:
            continue
        path = shards.values_path(si)
        rows_all = np.memmap(path, np.uint8, "r", shape=(len(shards.keys[si]), rb))
        for lo, hi in chunks(len(mine), rb):
            picked = mine[lo:hi]
            for j in np.flatnonzero(nonfinite_rows(rows_all[picked], spec)):
                rec = int(picked[j])
                bad_records.append((rank, rec, shards.keys[si][rec].decode()))
            report.checked += len(picked)
            bar.update(len(picked))
        del rows_all
    for rank, rec, key in bad_records[:LISTED]:
        report.problems.append(
            f"record {rec} of rank{rank}-values.bin (key {key!r}) at byte offset {rec * rb} "
            "decodes to NaN/inf, so its bytes are corrupt — delete this rank's two shard files "
            "and resume the export to recompute its keys"
        )
    if len(bad_records) > LISTED:
        report.problems.append(f"... and {len(bad_records) - LISTED} more non-finite records")


def _recompute_sample(
    report: VerifyReport,
    shards: _Shards,
    index: KeyIndex,
    picked: np.ndarray,
    recompute: Recompute,
    rtol: float,
    batch: int,
    bar: Progress,
) -> None:
    """Recompute the records ``picked`` (positions in ``index``) and compare them."""
    spec = shards.spec
    keys = [bytes(index.keys[i]).decode() for i in picked]
    worst_abs, worst_rel, worst_key = 0.0, 0.0, keys[0]
    for lo in range(0, len(keys), max(1, batch)):
        chunk = keys[lo : lo + max(1, batch)]
        fresh = as_numpy(recompute(chunk)).astype(np.float32)
        if fresh.shape != (len(chunk), *spec.shape):
            report.problems.append(
                f"recompute returned shape {fresh.shape} for {len(chunk)} keys, expected "
                f"{(len(chunk), *spec.shape)} — the teacher does not match the store's records"
            )
            return
        for j, i in enumerate(picked[lo : lo + len(chunk)]):
            with open(shards.values_path(index.shard[i]), "rb") as f:
                f.seek(int(index.record[i]) * spec.record_bytes)
                row = np.frombuffer(f.read(spec.record_bytes), np.uint8)
            diff = np.abs(decode_record(row, spec).astype(np.float32) - fresh[j])
            abs_err = float(diff.max()) if np.isfinite(diff).all() else float("inf")
            rel_err = abs_err / max(float(np.abs(fresh[j]).max()), 1e-30)
            worst_abs = max(worst_abs, abs_err)
            if rel_err > worst_rel:
                worst_rel, worst_key = rel_err, chunk[j]
        bar.update(len(chunk))
    report.sampled, report.max_abs_error, report.max_rel_error = len(keys), worst_abs, worst_rel
    if worst_rel > rtol:
        report.problems.append(
            f"recomputed records differ from the stored ones: max relative error "
            f"{worst_rel:.4g} > {rtol} (key {worst_key!r}), so the store was exported with "
            "another teacher, preprocessing or precision than the one recomputing it — "
            "recompute with the export's config, or re-export"
        )
