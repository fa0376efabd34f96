"""Parsing the workflow stays light: no heavy library is imported by the Snakefile, its rules'
helper functions or the modules they import (``snakemake --lint`` and ``snakemake -n`` of a large
scan must not pay for torch, ROOT, scikit-learn, matplotlib, dcor ...)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, snakemake_cmd

HEAVY = (
    "torch",
    "ROOT",
    "sklearn",
    "matplotlib",
    "dcor",
    "scipy",
    "uproot",
    "awkward",
    "h5py",
    "iminuit",
    "pyhf",
    "onnx",
    "onnxruntime",
)
# Runs Snakemake in this process and reports, at exit, which heavy modules were imported.
PROBE = f"""
import atexit, sys
HEAVY = {HEAVY!r}
atexit.register(lambda: print("HEAVY_MODULES=" + ",".join(h for h in HEAVY if h in sys.modules)))
from snakemake.cli import main
main(sys.argv[1:])
"""


def smk_imported_modules() -> list[str]:
    """The vhbb modules named by ``import`` statements in the Snakefile and workflow/rules."""
    files = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]
    found: set[str] = set()
    for path in files:
        for match in re.finditer(r"^\s*(?:from|import)\s+(vhbb[\w.]*)", path.read_text(), re.M):
            found.add(match.group(1))
    return sorted(found)


def heavy_after(args: list[str], cwd: Path, check: bool = True) -> list[str]:
    cmd = [sys.executable, "-c", PROBE, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 or not check, out[-5000:]
    line = [ln for ln in out.splitlines() if ln.startswith("HEAVY_MODULES=")]
    assert line, out[-3000:]
    return [m for m in line[-1].split("=", 1)[1].split(",") if m]


def test_rule_files_import_only_light_modules():
    modules = smk_imported_modules()
    assert "vhbb.config.params" in modules
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"print(','.join(h for h in {HEAVY!r} if h in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "", f"{modules} import {proc.stdout.strip()}"


@pytest.mark.parametrize("mode", ["dry-run", "lint"])
def test_parsing_the_workflow_imports_no_heavy_library(mode, tmp_path):
    if mode == "lint":
        # (whether the lint is clean is test_workflow's business)
        assert heavy_after(["--lint", "--cores", "1"], REPO, check=False) == []
    else:
        # the command line without "python -m snakemake"
        args = snakemake_cmd(tmp_path, "-n", "--cores", "1", "all")[3:]
        assert heavy_after(args, tmp_path) == []
