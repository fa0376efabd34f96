"""The wheel ships the runtime data: an installed, non-editable package validates a config."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest
from conftest import REPO

pytest.importorskip("setuptools")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    # setuptools' build/ folder is git-ignored
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(REPO)],
        check=True, timeout=600,
    )  # fmt: skip
    (path,) = out.glob("vhbb-*.whl")
    return path


def test_wheel_contains_the_schemas(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "vhbb/config/schemas/config.schema.yaml" in names
    assert "vhbb/config/schemas/metrics.schema.json" in names
    assert "vhbb/py.typed" in names


def test_installed_package_validates_a_config(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
         str(wheel)],
        check=True, timeout=600,
    )  # fmt: skip
    code = (
        "import vhbb, vhbb.config as c; "
        f"assert vhbb.__file__.startswith({str(target)!r}), vhbb.__file__; "
        f"cfg = c.load_config([{str(REPO / 'config' / 'config.yaml')!r}]); "
        "assert cfg['weights']['method']; "
        "import json; json.loads(c.METRICS_SCHEMA_PATH.read_text()); print('ok')"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr
