"""No duplicated code in src/: pylint's duplicate-code check (six similar lines; imports,
docstrings, comments and signatures ignored) finds nothing."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO

pytest.importorskip("pylint")

ARGS = [
    "--disable=all",
    "--enable=duplicate-code",
    "--min-similarity-lines=6",
    "--ignore-imports=yes",
    "--ignore-docstrings=yes",
    "--ignore-comments=yes",
    "--ignore-signatures=yes",
    "--score=no",
]


def pylint(path) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    return subprocess.run(
        [sys.executable, "-m", "pylint", *ARGS, str(path)],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_no_duplicate_code_in_src():
    out = pylint(REPO / "src" / "vhbb")
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_check_finds_a_planted_copy(tmp_path):
    body = "\n".join(f"    x{i} = value * {i} + offset" for i in range(8))
    for name in ("a", "b"):
        (tmp_path / f"{name}.py").write_text(
            f"def f_{name}(value, offset):\n{body}\n    return x7\n"
        )
    out = pylint(tmp_path)
    assert out.returncode != 0 and "duplicate-code" in out.stdout
