"""``python -m stage1.store info|verify PATH``: see :mod:`stage1.store.cli`."""

from stage1.store.cli import cli

cli("python -m stage1.store")
