"""Install Meta's ``sam3==0.1.4`` wheel into an isolated folder, for use as a test oracle.

Run ``python tests/reference/prepare_oracle.py [--force]``. The packages are installed with
``pip install --target tests/reference/.oracle/site --no-deps`` and are only ever imported by
``meta_oracle.py`` in a subprocess whose ``PYTHONPATH`` starts with that folder, so Meta's
``sam3`` never meets ours. ``torch``, ``timm``, ``open_clip_torch``, ``numpy``, ``tqdm``,
``ftfy``, ``regex`` and ``huggingface_hub`` come from the running environment.

The run is idempotent: ``.oracle/READY`` (JSON of the pinned versions) is written only after a
successful install and import check, and a matching stamp makes the script a no-op.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORACLE_DIR = HERE / ".oracle"
SITE_DIR = ORACLE_DIR / "site"
STAMP = ORACLE_DIR / "READY"

# Meta's package and the small modules its ``import sam3.model_builder`` needs that a
# torch/timm/open_clip environment lacks: iopath (and its portalocker), einops and psutil for the
# video/tracker modules, and pycocotools, which ``sam3.train.data`` imports at module level via
# ``model.sam1_task_predictor -> sam3_tracker_base -> train.data.collator``. scikit-image (with
# its lazy_loader; scipy, networkx and pillow come from the environment) is what Meta's
# interactive predictor fills mask holes with on the CPU; without it that step is skipped.
PINS: dict[str, str] = {
    "sam3": "0.1.4",
    "iopath": "0.1.10",
    "einops": "0.8.2",
    "portalocker": "4.4.2",
    "psutil": "7.2.2",
    "pycocotools": "2.0.11",
    "scikit-image": "0.26.0",
    "lazy_loader": "0.4",
}

# Imported in the check subprocess; the script fails if Meta's sam3 does not come from the site.
_IMPORT_CHECK = """
import sys
from pathlib import Path
site = Path(sys.argv[1]).resolve()
import sam3
import sam3.model_builder
where = Path(sam3.__file__).resolve()
if site not in where.parents:
    raise SystemExit(f"sam3 was imported from {where}, not from the oracle site {site}")
print(getattr(sam3, "__version__", "?"))
"""


def oracle_site() -> Path:
    """Return the folder that holds Meta's installed ``sam3`` (it may not exist yet)."""
    return SITE_DIR


def _read_stamp() -> dict[str, str] | None:
    """Return the pins recorded in the READY stamp, or None if it is missing or unreadable."""
    try:
        data = json.loads(STAMP.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_ready() -> bool:
    """Return True when the oracle site is installed with exactly the pinned versions."""
    return _read_stamp() == PINS and (SITE_DIR / "sam3" / "model_builder.py").is_file()


def _clean_env() -> dict[str, str]:
    """Return the current environment without PYTHONPATH (nothing of the caller's leaks in)."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


def _pip_install(target: Path) -> None:
    """Install the pinned set into ``target`` with pip (no dependencies resolved)."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--target",
        str(target),
        "--no-deps",
        "--no-input",
        "--disable-pip-version-check",
        *[f"{name}=={version}" for name, version in PINS.items()],
    ]
    print("+ " + " ".join(cmd), flush=True)
    result = subprocess.run(cmd, env=_clean_env(), check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"pip failed (exit {result.returncode}) installing the oracle into {target}. "
            "Check that PyPI is reachable and that pip works for this interpreter "
            f"({sys.executable}), then rerun: python {Path(__file__).name} --force"
        )


def _check_import(site: Path) -> str:
    """Import Meta's ``sam3.model_builder`` from ``site`` in a subprocess; return its version."""
    env = _clean_env()
    env["PYTHONPATH"] = str(site)
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_CHECK, str(site)],
        env=env,
        cwd=str(site),
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-25:])
        raise RuntimeError(
            f"Installed the oracle into {site}, but `import sam3.model_builder` fails there:\n"
            f"{tail}\n"
            "A module Meta's package needs is missing from this environment; install it "
            "(or add it to PINS in prepare_oracle.py) and rerun with --force."
        )
    return result.stdout.strip()


def prepare(force: bool = False) -> Path:
    """Install the pinned oracle (unless already stamped and not ``force``); return its site."""
    if is_ready() and not force:
        print(f"oracle already prepared at {SITE_DIR} ({json.dumps(PINS)})")
        return SITE_DIR
    ORACLE_DIR.mkdir(parents=True, exist_ok=True)
    STAMP.unlink(missing_ok=True)
    partial = ORACLE_DIR / "site.partial"
    if partial.exists():
        shutil.rmtree(partial)
    _pip_install(partial)
    version = _check_import(partial)
    if version != PINS["sam3"]:
        raise RuntimeError(
            f"Imported Meta's sam3 reports version {version!r}, expected {PINS['sam3']!r}; "
            f"delete {ORACLE_DIR} and rerun this script."
        )
    if SITE_DIR.exists():
        shutil.rmtree(SITE_DIR)
    partial.rename(SITE_DIR)
    tmp_stamp = STAMP.with_suffix(".tmp")
    tmp_stamp.write_text(json.dumps(PINS, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp_stamp, STAMP)
    print(f"oracle ready at {SITE_DIR} (sam3 {version})")
    return SITE_DIR


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: prepare the oracle, or reinstall it with ``--force``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--force", action="store_true", help="reinstall even if the READY stamp matches"
    )
    args = parser.parse_args(argv)
    try:
        prepare(force=args.force)
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
