"""dev/compare_results.py: identical trees agree; every kind of difference is reported."""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest
from conftest import REPO

spec = importlib.util.spec_from_file_location(
    "compare_results", REPO / "dev" / "compare_results.py"
)
compare_results = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_results)


@pytest.fixture()
def tree(tmp_path):
    import h5py
    import pandas as pd

    root = tmp_path / "a"
    (root / "fits").mkdir(parents=True)
    doc = {"mu": 1.0000000001, "errors": [0.1, 0.2], "provenance": {"commit": "abc"},
           "timings": {"fit": 0.3}, "status": "ok"}  # fmt: skip
    (root / "fits" / "fit.json").write_text(json.dumps(doc))
    with h5py.File(root / "export.h5", "w") as f:
        f["x"] = np.arange(5.0)
        f.attrs["features"] = json.dumps(["a", "b"])
        f.attrs["provenance"] = "x"
    pd.DataFrame({"m_jj": [100.0, 125.0], "region": ["SR", "CR"]}).to_parquet(root / "c.parquet")
    (root / "summary.csv").write_text("model,auc\nnn,0.94\n")
    (root / "plot.png").write_bytes(b"\x89PNG")
    return root


def test_identical_trees_agree(tree, tmp_path):
    other = tmp_path / "b"
    shutil.copytree(tree, other)
    doc = json.loads((other / "fits" / "fit.json").read_text())
    doc["provenance"] = {"commit": "def"}  # provenance and timing are ignored
    doc["timings"] = {"fit": 9.0}
    doc["mu"] = 1.0000000001 * (1 + 1e-12)  # within 1e-9 relative
    (other / "fits" / "fit.json").write_text(json.dumps(doc))
    (other / "plot.png").write_bytes(b"other renderer")
    assert compare_results.compare_trees(tree, other) == []
    assert compare_results.main([str(tree), str(other)]) == 0


def test_every_difference_is_reported(tree, tmp_path):
    import h5py
    import pandas as pd

    other = tmp_path / "b"
    shutil.copytree(tree, other)
    doc = json.loads((other / "fits" / "fit.json").read_text())
    doc["mu"] *= 1 + 1e-8
    doc["status"] = "failed"
    (other / "fits" / "fit.json").write_text(json.dumps(doc))
    with h5py.File(other / "export.h5", "a") as f:
        f["x"][2] = 2.5
    pd.DataFrame({"m_jj": [100.0, 125.0], "region": ["SR", "SR"]}).to_parquet(other / "c.parquet")
    (other / "summary.csv").write_text("model,auc\nnn,0.95\n")
    (other / "new.json").write_text("{}")
    (tree / "plot.png").unlink()
    diffs = compare_results.compare_trees(tree, other)
    text = "\n".join(diffs)
    assert "fits/fit.json.mu" in text and "fits/fit.json.status" in text
    assert "export.h5:x" in text
    assert "c.parquet:region" in text
    assert "summary.csv:2" in text
    assert "new.json: only in after" in text and "plot.png: only in after" in text
    assert compare_results.main([str(tree), str(other)]) == 1
