"""envs/vhbb.yaml (conda, for cluster users) stays consistent with pyproject.toml."""

from __future__ import annotations

import re
import tomllib

import yaml
from conftest import REPO

CONDA_NAMES = {"torch": "pytorch", "root": "root"}


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].strip().lower()


def test_conda_env_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    # snakemake runs the rules; it is not needed inside the rules' environment
    runtime = {_name(r) for r in project["dependencies"]} - {"snakemake"}
    for extra in ("analysis", "remote"):
        runtime |= {_name(r) for r in project["optional-dependencies"][extra]}
    env = yaml.safe_load((REPO / "envs" / "vhbb.yaml").read_text())
    conda = {_name(d) for d in env["dependencies"] if isinstance(d, str)}
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda |= {_name(p) for p in pip if not p.startswith("-")}
    expected = {CONDA_NAMES.get(n, n) for n in runtime}
    missing = expected - conda
    assert not missing, f"envs/vhbb.yaml lacks {sorted(missing)} (declared in pyproject.toml)"
    # and nothing in the env that the project does not declare (python/pip aside)
    extra = conda - expected - {"python", "pip"}
    assert not extra, f"envs/vhbb.yaml has undeclared packages {sorted(extra)}"
    assert any(p.startswith("-e") for p in pip), "the env must install the vhbb package itself"
