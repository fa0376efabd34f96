"""CLs upper limits (q-tilde, asymptotic) agree with pyhf.infer.intervals.upper_limits."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require_module

from vhbb.fit.workspace import to_workspace
from vhbb.stats import likelihood as lk
from vhbb.stats import limits


def _small_model() -> tuple[lk.Model, np.ndarray]:
    nominal = {
        "S": np.array([1.0, 3.0, 6.0, 0.2]),
        "B": np.array([40.0, 20.0, 8.0, 150.0]),
        "C": np.array([10.0, 8.0, 6.0, 30.0]),
    }
    ramp = np.array([-1.0, 0.0, 1.0, 0.3])
    model = lk.make_model(
        {"SR": 3, "CR": 1},
        nominal,
        sumw2={p: 0.1 * v for p, v in nominal.items()},
        norm_factors={
            "mu": lk.NormFactor(("S",), 1.0, (-20.0, 20.0)),
            "sf_B": lk.NormFactor(("B",), 1.0, (0.0, 10.0)),
        },
        histosys={
            "jes": {
                p: (v * (1 + 0.05 * ramp + 0.02), v * (1 - 0.03 * ramp)) for p, v in nominal.items()
            }
        },
        normsys={"lumi": {"S": (0.97, 1.04), "C": (0.97, 1.04)}, "xs_C": {"C": (0.85, 1.2)}},
        stat="profile",
    )
    observed = np.round(lk.asimov(model) * np.array([1.1, 0.9, 1.2, 1.02]))
    return model, observed


def test_upper_limits_agree_with_pyhf():
    pyhf = require_module("pyhf", "reference CLs limits")
    model, observed = _small_model()
    ours = limits.upper_limits(model, observed, cl=0.95)
    ws = to_workspace(model, observed)
    for par in ws["measurements"][0]["config"]["parameters"]:
        if par["name"] == "mu":  # q-tilde: mu-hat >= 0 (pyhf scans the POI bounds)
            par["bounds"] = [[0.0, 20.0]]
    pyhf.set_backend("numpy", pyhf.optimize.minuit_optimizer(tolerance=1e-4))
    workspace = pyhf.Workspace(ws)
    pdf = workspace.model()
    obs, exp = pyhf.infer.intervals.upper_limits.upper_limit(
        workspace.data(pdf), pdf, scan=None, level=0.05, test_stat="qtilde", calctype="asymptotics"
    )
    assert ours.observed == pytest.approx(float(obs), rel=0.01)
    np.testing.assert_allclose(ours.expected, np.asarray(exp, dtype=float), rtol=0.01)
    assert list(ours.expected) == sorted(ours.expected)
    doc = ours.as_dict()
    assert set(doc) == {"observed", "expected", "cl", "method"} and len(doc["expected"]) == 5
