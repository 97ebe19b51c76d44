"""What :func:`~stage1.store.verification.verify` reports (:class:`VerifyReport`) and how it
shows its progress."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from tqdm import tqdm

from stage1.store.spec import StoreCorruptError

ProgressCallback = Callable[[int, int], None]  # progress(done, total)


@dataclass
class VerifyReport:
    """What :func:`verify` found. ``ok`` is true when ``problems`` is empty."""

    root: str
    records: int = 0
    shards: int = 0
    checked: int = 0
    sampled: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    max_abs_error: float | None = None
    max_rel_error: float | None = None

    @property
    def ok(self) -> bool:
        """No problems found."""
        return not self.problems

    def summary(self) -> str:
        """A human-readable, multi-line report."""
        lines = [
            f"embedding store {self.root}: {'OK' if self.ok else 'PROBLEMS'}",
            f"  {self.records} complete records in {self.shards} shard(s); "
            f"{self.checked} decoded and checked finite",
        ]
        if self.sampled:
            lines.append(
                f"  {self.sampled} recomputed: max abs error {self.max_abs_error:.4g}, "
                f"max relative error {self.max_rel_error:.4g}"
            )
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  problem: {p}" for p in self.problems]
        return "\n".join(lines)

    def raise_if_bad(self) -> None:
        """Raise :class:`StoreCorruptError` with the summary when not ok."""
        if not self.ok:
            raise StoreCorruptError(self.summary())


class Progress:
    """:func:`verify`'s progress over records: a tqdm bar on stderr (``progress`` True, or
    ``None`` while stderr is a terminal), or ``progress(done, total)`` calls."""

    def __init__(self, progress: bool | ProgressCallback | None, total: int) -> None:
        self.callback = progress if callable(progress) else None
        tty = sys.stderr is not None and sys.stderr.isatty()
        show = progress is True or (progress is None and tty)
        self.bar = tqdm(total=total, desc="verify", unit="rec", disable=not show)
        self.done, self.total = 0, total

    def update(self, n: int) -> None:
        """``n`` more records done."""
        self.done += n
        self.bar.update(n)
        if self.callback is not None:
            self.callback(self.done, self.total)

    def close(self) -> None:
        """Close the bar."""
        self.bar.close()
