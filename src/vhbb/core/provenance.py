"""Provenance block attached to every JSON and HDF5 result."""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import subprocess
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from vhbb import __version__

MAIN_DEPENDENCIES = (
    "numpy",
    "pandas",
    "uproot",
    "awkward",
    "vector",
    "h5py",
    "torch",
    "scikit-learn",
    "iminuit",
    "snakemake",
)


@functools.cache
def git_commit() -> str:
    """The commit of the source tree the package runs from ("unknown" outside a git checkout)."""
    src = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if out.returncode != 0:
        return "unknown"
    commit = out.stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=10,
    )
    return commit + ("-dirty" if dirty.stdout.strip() else "")


@functools.cache
def dependency_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in MAIN_DEPENDENCIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions


def provenance(config_sections: dict[str, Any]) -> dict[str, Any]:
    """Package version, git commit, main dependency versions and the hash of ``config_sections``."""
    return {
        "vhbb_version": __version__,
        "git_commit": git_commit(),
        "dependencies": dependency_versions(),
        "config_hash": section_hash(config_sections),
        "config_sections": sorted(config_sections),
    }


def canonical(obj: Any) -> Any:
    """A canonical, JSON-compatible copy (sorted keys) used for params and hashes."""
    return json.loads(json.dumps(obj, sort_keys=True))


def section_hash(sections: Mapping[str, Any]) -> str:
    """SHA-256 (first 16 hex digits) of the canonical JSON of the given config sections."""
    text = json.dumps(sections, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
