"""Workflow hygiene: lint, formatting, config errors at parse time, atomic outputs."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from conftest import REPO, run_snakemake

from vhbb.core.io import atomic_path


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_snakemake_lint_clean():
    proc = _run(sys.executable, "-m", "snakemake", "--lint", "--cores", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations" in proc.stdout + proc.stderr


def test_snakefmt_clean():
    exe = shutil.which("snakefmt")
    if exe is None:
        pytest.skip("snakefmt not installed")
    proc = _run(exe, "--check", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_clean():
    exe = shutil.which("ruff")
    if exe is None:
        pytest.skip("ruff not installed")
    proc = _run(exe, "check", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = _run(exe, "format", "--check", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_config_typo_fails_before_anything_runs(tmp_path):
    overlay = tmp_path / "typo.yaml"
    overlay.write_text("export:\n  fodls: 3\n")
    proc = run_snakemake(tmp_path, "-n", check=False, overlays=[overlay])
    assert proc.returncode != 0
    assert "unknown key 'export.fodls' (did you mean 'folds'?)" in proc.stdout + proc.stderr


def test_dry_run_lists_every_stage(tmp_path):
    proc = run_snakemake(tmp_path, "-n", "--cores", "2", "all")
    out = proc.stdout
    for rule in ("toy_file", "cache_file", "cache_sample", "export_regions"):
        assert rule in out


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_text("whole")
    assert target.read_text() == "whole" and [p.name for p in tmp_path.iterdir()] == ["out.json"]
