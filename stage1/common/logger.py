"""Logging for every phase: ``OUTPUT/log_rank{R}.txt`` per rank, a coloured console on rank 0.

The ``stage1`` and ``sam3`` loggers share one set of handlers and do not propagate, so each
record is printed once. The console handler writes through ``tqdm.write``: log lines and
progress bars do not break each other, and no other redirection is needed (adding one, e.g.
``tqdm.contrib.logging.logging_redirect_tqdm`` on a child logger, would print lines twice).

Checks that run before a run may create its folder log with :func:`setup_console`: the console
shows the records at once, and :func:`setup_logging` later copies them into the log file.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from termcolor import colored
from tqdm import tqdm

_COLOURS = {logging.WARNING: "yellow", logging.ERROR: "red", logging.CRITICAL: "red"}
FILE_FORMAT = "%(asctime)s [rank %(rank)s] %(levelname)s %(name)s: %(message)s"
_LOGGERS = ("stage1", "sam3")


def _printable(text: str) -> str:
    """``text`` with lone surrogates (the undecodable bytes of a file name) as ``\\udcXX``."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class _ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = _printable(super().format(record))
        colour = _COLOURS.get(record.levelno)
        return colored(text, colour, attrs=["bold"]) if colour else text


class _ConsoleHandler(logging.StreamHandler):
    """Prints above any open tqdm bar (``tqdm.write``), to the stream it was created with."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


class _Backlog(logging.Handler):
    """Keeps records until :func:`setup_logging` writes them into the log file."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class _RankFilter(logging.Filter):
    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        return True


def _console(rank: int) -> list[logging.Handler]:
    if rank != 0:
        return []
    console = _ConsoleHandler(sys.stdout)
    console.setFormatter(_ConsoleFormatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    return [console]


def _install(handlers: list[logging.Handler], rank: int) -> list[logging.LogRecord]:
    """Replace the handlers of the project's loggers; return the records any backlog held."""
    backlog: list[logging.LogRecord] = []
    for handler in handlers:
        handler.addFilter(_RankFilter(rank))
    for logger_name in _LOGGERS:
        logger = logging.getLogger(logger_name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
            if isinstance(old, _Backlog) and not backlog:
                backlog = old.records  # shared by both loggers: taken once
            old.close()
        logger.setLevel(logging.INFO)
        logger.propagate = False
        for handler in handlers:
            logger.addHandler(handler)
        logger.filters = [_RankFilter(rank)]
    return backlog


def setup_console(rank: int) -> None:
    """Log to the console only (rank 0) and keep the records for :func:`setup_logging`;
    creates nothing on disk."""
    _install([*_console(rank), _Backlog()], rank)


def setup_logging(output: str | Path, rank: int, name: str = "stage1") -> logging.Logger:
    """Configure the ``stage1`` and ``sam3`` loggers for this process and return ``name``'s.

    Every rank appends to ``output/log_rank{rank}.txt``; rank 0 also prints (warnings in colour).
    Records kept since :func:`setup_console` go into the file first (they were printed then).
    Calling it again replaces the handlers (tests run several phases in one process).
    """
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(
        out / f"log_rank{rank}.txt", mode="a", encoding="utf-8", errors="backslashreplace"
    )
    file_handler.setFormatter(logging.Formatter(FILE_FORMAT))
    for record in _install([file_handler, *_console(rank)], rank):
        file_handler.handle(record)
    return logging.getLogger(name)
