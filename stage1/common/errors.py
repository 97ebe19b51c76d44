"""The errors a user's input can cause, and the one-line report every entry point gives them.

A :class:`UserError` is a mistake in what was asked for (a config key or value, a data or output
path, a store, a checkpoint): its message says what is wrong and what to do, as
``<what is wrong> — <what to do>``. Entry points report it, and ``OSError`` (a missing file, a
read-only folder, a full disk), as one ``error: ...`` line with a non-zero exit and no
traceback; ``--debug`` or ``STAGE1_DEBUG=1`` shows the traceback. Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input, reported as one ``error:`` line."""
