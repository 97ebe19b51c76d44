"""Logging for every phase: ``OUTPUT/log_rank{R}.txt`` per rank, a coloured console on rank 0."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from termcolor import colored

_COLOURS = {logging.WARNING: "yellow", logging.ERROR: "red", logging.CRITICAL: "red"}
FILE_FORMAT = "%(asctime)s [rank %(rank)s] %(levelname)s %(name)s: %(message)s"


class _ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        colour = _COLOURS.get(record.levelno)
        return colored(text, colour, attrs=["bold"]) if colour else text


class _RankFilter(logging.Filter):
    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        return True


def setup_logging(output: str | Path, rank: int, name: str = "stage1") -> logging.Logger:
    """Configure the ``stage1`` and ``sam3`` loggers for this process and return ``name``'s.

    Every rank appends to ``output/log_rank{rank}.txt``; rank 0 also prints (warnings in colour).
    Calling it again replaces the handlers (tests run several phases in one process).
    """
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    handlers: list[logging.Handler] = []
    file_handler = logging.FileHandler(out / f"log_rank{rank}.txt", mode="a", encoding="utf-8")
    file_handler.setFormatter(logging.Formatter(FILE_FORMAT))
    handlers.append(file_handler)
    if rank == 0:
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(_ConsoleFormatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        handlers.append(console)
    for logger_name in ("stage1", "sam3"):
        logger = logging.getLogger(logger_name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
            old.close()
        logger.setLevel(logging.INFO)
        logger.propagate = False
        for handler in handlers:
            logger.addHandler(handler)
        logger.filters = [_RankFilter(rank)]
    for handler in handlers:
        handler.addFilter(_RankFilter(rank))
    return logging.getLogger(name)
