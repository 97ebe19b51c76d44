"""The errors a dataset can cause: each message says what is wrong and what to do."""

from __future__ import annotations

from stage1.common.errors import UserError


class DataError(UserError, ValueError):
    """A dataset that cannot be used as asked (a duplicate key, a wrong column, ...)."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A dataset folder or file that is missing, or holds nothing to use."""
