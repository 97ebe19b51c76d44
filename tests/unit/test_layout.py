"""The layout's rules, checked on the source tree: which package may import which, how long a
file may grow, and that files are renamed into place only by ``sam3/files.py``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("sam3", "stage1", "data", "benchmarks", "tests")
MAX_LINES = 300  # one purpose per file; a longer file is split by purpose
PHASES = ("export", "train", "merge", "report")  # stage1's phase packages
# what each part of stage1 may import from stage1 (besides itself); sam3 is open to all of them
ALLOWED = {
    "common": (),
    "store": ("common",),
    "data": ("common", "store"),
    **{phase: ("common", "data", "store") for phase in PHASES},
}
# os.replace outside sam3/files.py that is not an atomic write, and why
RENAMES_ALLOWED = {
    "stage1/train/resume.py": "moves an earlier run's checkpoints aside",
    "data/reorg_sa1b.py": "moves extracted images into their split folder",
    "tests/reference/meta_oracle.py": "runs beside Meta's sam3 package, so cannot import ours",
    "tests/reference/prepare_oracle.py": "runs before the project is importable in CI",
}


def _python_files(*tops: str) -> list[Path]:
    files = []
    for top in tops:
        files += [p for p in (ROOT / top).rglob("*.py") if ".oracle" not in p.parts]
    return sorted(files)


def _imported(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names; relative ones resolved)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    return _imports_of(path.read_text(encoding="utf-8"), package)


def _imports_of(source: str, package: str) -> set[str]:
    """Every module ``source``, a module of ``package``, imports."""
    tree = ast.parse(source)
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _stage1_part(module: str) -> str | None:
    """``stage1.train.loop`` -> ``train``; None for ``stage1`` itself or an entry point."""
    parts = module.split(".")
    if parts[0] != "stage1" or len(parts) < 2:
        return None
    return parts[1] if (ROOT / "stage1" / parts[1]).is_dir() else None


def test_sam3_never_imports_stage1():
    bad = [
        f"{p.relative_to(ROOT)}: {m}"
        for p in _python_files("sam3")
        for m in _imported(p)
        if m.split(".")[0] == "stage1"
    ]
    assert not bad, bad


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_stage1_import_direction(part):
    allowed = {part, *ALLOWED[part]}
    bad = []
    for path in _python_files(f"stage1/{part}"):
        for module in _imported(path):
            if module.split(".")[0] != "stage1":
                continue
            target = _stage1_part(module)
            if target is None and module not in ("stage1",):
                bad.append(f"{path.relative_to(ROOT)} imports the entry point {module}")
            elif target is not None and target not in allowed:
                bad.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not bad, "\n".join(sorted(set(bad)))


def test_every_part_of_stage1_has_a_rule():
    parts = {p.name for p in (ROOT / "stage1").iterdir() if (p / "__init__.py").is_file()}
    assert parts - {"demo"} == set(ALLOWED), "give the new package a row in ALLOWED"


def test_files_stay_small():
    long = {
        str(p.relative_to(ROOT)): n
        for p in _python_files(*SOURCES)
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"split these by purpose (over {MAX_LINES} lines): {long}"


def test_atomic_writes_go_through_one_helper():
    found = []
    for path in _python_files(*SOURCES):
        rel = str(path.relative_to(ROOT))
        if rel in ("sam3/files.py", "tests/unit/test_layout.py") or rel in RENAMES_ALLOWED:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("replace", "rename")
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "os"
            ):
                found.append(f"{rel}:{node.lineno}")
    assert not found, f"use sam3.files (atomic_path / atomic_open / write_*_atomic): {found}"


def test_import_reader_sees_every_form():
    """Relative and absolute imports alike reach the rules, so they can fail."""
    source = "from ..train import loop\nimport stage1.report.tables\nfrom stage1.common import cli"
    names = _imports_of(source, "stage1.merge")
    assert {"stage1.train.loop", "stage1.report.tables", "stage1.common.cli"} <= names
    assert _stage1_part("stage1.train.loop") == "train"
    assert _stage1_part("stage1.quickstart") is None
