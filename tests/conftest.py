"""Shared fixtures: repository paths, the CI skip policy, the end-to-end run of the test overlay."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
NANOAOD_FILE = SHARED_DATA / "nanoAOD_2015_CMS_Open_Data_ttbar.root"
IN_CI = os.environ.get("CI", "").lower() == "true"


def skip_or_fail(reason: str) -> None:
    """Skip a test whose requirement is missing; under CI=true a skip is a failure."""
    if IN_CI:
        pytest.fail(f"required in CI but unavailable: {reason}")
    pytest.skip(reason)


def require_module(name: str, why: str = "") -> Any:
    """Import and return module ``name``; if it is missing, skip (under CI=true: fail)."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as exc:
        skip_or_fail(f"needs the Python module '{name}' ({exc}){': ' + why if why else ''}")


def snakemake_cmd(workdir: Path, *args: str, overlays: tuple[str, ...] = ()) -> list[str]:
    """A snakemake command line running the repository's workflow in ``workdir``.

    ``overlays`` are extra config files applied after config.yaml and test.yaml (a second
    ``--configfile`` flag would replace the first list, not extend it).
    """
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(REPO / "config" / "config.yaml"),
        str(REPO / "config" / "test.yaml"),
        *overlays,
        *args,
    ]


def run_snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 1200, overlays=()):  # type: ignore[no-untyped-def]
    cmd = snakemake_cmd(workdir, *args, overlays=tuple(str(o) for o in overlays))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=workdir)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake failed ({proc.returncode}): {' '.join(cmd)}\n"
            f"stdout:\n{proc.stdout[-5000:]}\nstderr:\n{proc.stderr[-5000:]}"
        )
    return proc


@pytest.fixture(scope="session")
def e2e_run(tmp_path_factory) -> Path:
    """Run the workflow once on the test overlay; many tests inspect the same outputs."""
    workdir = tmp_path_factory.mktemp("e2e")
    run_snakemake(workdir, "--cores", "2", "all")
    return workdir


@pytest.fixture()
def workdir_copy(e2e_run: Path, tmp_path: Path) -> Path:
    """A private copy of the finished end-to-end run (for tests that change or rerun it)."""
    dest = tmp_path / "run"
    shutil.copytree(e2e_run, dest, symlinks=True)
    return dest
