"""pyhf export: the workspace fitted with pyhf agrees with the hand-written likelihood."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require_module

from vhbb.fit.workspace import to_workspace
from vhbb.stats import likelihood as lk


def _pyhf_results(ws: dict) -> dict:
    pyhf = require_module("pyhf", "agreement of the workspace export")
    pyhf.set_backend("numpy", pyhf.optimize.minuit_optimizer(tolerance=0.001))
    workspace = pyhf.Workspace(ws)
    model = workspace.model()
    data = workspace.data(model)
    init, bounds = model.config.suggested_init(), model.config.suggested_bounds()
    fixed = model.config.suggested_fixed()
    pars, result = pyhf.infer.mle.fit(
        data, model, init_pars=init, par_bounds=bounds, fixed_params=fixed,
        return_result_obj=True, return_uncertainties=True,
    )  # fmt: skip
    minuit = result.minuit
    poi = model.config.poi_index
    name = minuit.parameters[poi]
    minuit.minos(name)
    twice_nll_hat = float(result.fun)
    _, twice_nll_0 = pyhf.infer.mle.fixed_poi_fit(
        0.0, data, model, init_pars=init, par_bounds=bounds, fixed_params=fixed,
        return_fitted_val=True,
    )  # fmt: skip
    q0 = max(float(twice_nll_0) - twice_nll_hat, 0.0)
    return {
        "mu": float(pars[poi, 0]),
        "hesse": float(pars[poi, 1]),
        "lo": float(minuit.merrors[name].lower),
        "hi": float(minuit.merrors[name].upper),
        "z": float(np.sqrt(q0)),
        "bounds": bounds[poi],
    }


def _ours(model: lk.Model, observed: np.ndarray) -> dict:
    best = lk.fit(model, observed, minos=["mu"], tolerance=0.001)
    _, z = lk.discovery_significance(model, observed, best)
    lo, hi = best.minos["mu"]
    return {"mu": best.value("mu"), "hesse": best.error("mu"), "lo": lo, "hi": hi, "z": z}


def _compare(ours: dict, theirs: dict, rel: float) -> None:
    assert ours["mu"] == pytest.approx(theirs["mu"], rel=rel, abs=rel * ours["hesse"])
    for key in ("lo", "hi", "z"):
        assert ours[key] == pytest.approx(theirs[key], rel=rel), key


def _observed(model: lk.Model, asimov: np.ndarray) -> np.ndarray:
    """Asimov in the signal region, a data-like fluctuation in the control regions."""
    out = asimov.copy()
    for ch in model.channels:
        if ch.name != "SR":
            out[ch.start] = np.round(asimov[ch.start] * 1.03)
    return out


def test_simultaneous_export_agrees_with_pyhf():
    model, asimov = lk.toy_model(8, 8, stat=None, jes=True, lnn=True)
    observed = _observed(model, asimov)
    ws = to_workspace(model, observed)
    theirs = _pyhf_results(ws)
    assert theirs["bounds"] == (-20.0, 20.0) or list(theirs["bounds"]) == [-20.0, 20.0]
    _compare(_ours(model, observed), theirs, rel=0.005)


def test_mc_stat_export_agrees_with_pyhf():
    model, asimov = lk.toy_model(3, 3, stat="profile", jes=True, lnn=True)
    observed = _observed(model, asimov)
    _compare(_ours(model, observed), _pyhf_results(to_workspace(model, observed)), rel=0.01)


def test_constrained_export_through_eigen_histosys_agrees_with_pyhf():
    base, _ = lk.toy_model(6, 6, stat=None, jes=False, lnn=True)
    names = ["sf_TT", "sf_Zhf", "sf_Zlf"]
    centre = np.array([1.08, 1.22, 0.91])
    cov = np.array([[0.004, -0.001, 0.0005], [-0.001, 0.006, -0.002], [0.0005, -0.002, 0.001]])
    sr = base.channel("SR")
    nominal = {p: base.nominal[i, sr.start : sr.stop] for i, p in enumerate(base.processes)}
    model = lk.make_model(
        {"SR": sr.n_bins},
        nominal,
        norm_factors={
            "mu": lk.NormFactor(("ZH",), 1.0, (-20.0, 20.0)),
            **{
                n: lk.NormFactor((n[3:],), c, (0.0, 10.0))
                for n, c in zip(names, centre, strict=True)
            },
        },
        normsys={"lumi": {"ZH": (1 / 1.025, 1.025)}, "xs_VZ": {"VZ": (1 / 1.1, 1.1)}},
        gauss=(names, centre, cov),
    )
    observed = lk.asimov(model)
    ws = to_workspace(model, observed)
    sample = next(s for s in ws["channels"][0]["samples"] if s["name"] == "TT")
    kinds = {m["name"]: m["type"] for m in sample["modifiers"]}
    assert kinds == {"sf_eig0": "histosys", "sf_eig1": "histosys", "sf_eig2": "histosys"}
    _compare(_ours(model, observed), _pyhf_results(ws), rel=0.005)
