"""pyhf export: the workspace fitted with pyhf agrees with the hand-written likelihood."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require_module

from vhbb.fit.workspace import to_workspace
from vhbb.stats import likelihood as lk


def _pyhf_results(ws: dict, tolerance: float = 0.001) -> dict:
    pyhf = require_module("pyhf", "agreement of the workspace export")
    pyhf.set_backend("numpy", pyhf.optimize.minuit_optimizer(tolerance=tolerance))
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


# ------------------------------------------------------------- interpolation codes 4 / 4p
def _asymmetric_model(stat: str) -> tuple[lk.Model, np.ndarray]:
    """SR (6 bins) + 2 one-bin CRs; asymmetric lnN and shape variations on every process."""
    rng = np.random.default_rng(7)
    nominal = {
        "S": np.array([2.0, 4.0, 7.0, 5.0, 3.0, 1.0, 0.1, 0.2]),
        "B1": np.array([30.0, 25.0, 20.0, 14.0, 9.0, 6.0, 120.0, 20.0]),
        "B2": np.array([12.0, 11.0, 9.0, 8.0, 6.0, 5.0, 15.0, 90.0]),
    }
    ramp = np.linspace(-1.0, 1.0, 8)
    histosys = {
        "jes": {
            p: (v * (1 + 0.06 * ramp + 0.02), v * (1 - 0.03 * ramp + 0.01))
            for p, v in nominal.items()
        },
        "shape_B2": {"B2": (nominal["B2"] * (1.1 - 0.05 * ramp), nominal["B2"] * 0.96)},
    }
    normsys = {
        "lumi": {"S": (0.97, 1.04), "B2": (0.97, 1.04)},
        "norm_B1": {"B1": (0.92, 1.05)},
        "xs_B2": {"B2": (0.85, 1.25)},
        "xs_S": {"S": (0.9, 1.08)},
    }
    model = lk.make_model(
        {"SR": 6, "CR1": 1, "CR2": 1},
        nominal,
        sumw2={p: v * rng.uniform(0.05, 0.4, 8) for p, v in nominal.items()},
        norm_factors={
            "mu": lk.NormFactor(("S",), 1.0, (-20.0, 20.0)),
            "sf_B1": lk.NormFactor(("B1",), 1.0, (0.0, 10.0)),
        },
        histosys=histosys,
        normsys=normsys,
        stat=stat,
    )
    observed = np.round(lk.asimov(model) * rng.uniform(0.85, 1.2, 8))
    return model, observed


def _pyhf_model(ws: dict):  # type: ignore[no-untyped-def]
    pyhf = require_module("pyhf", "agreement of the workspace export")
    pyhf.set_backend("numpy", pyhf.optimize.minuit_optimizer(tolerance=1e-6))
    workspace = pyhf.Workspace(ws)
    return workspace.model(), workspace


def test_nll_equals_pyhf_default_model_up_to_a_constant():
    """Codes 4 / 4p: NLL(internal) - NLL(pyhf) is one constant over random points, also
    beyond |alpha| = 1, with explicit per-bin gammas."""
    model, observed = _asymmetric_model("parameters")
    pdf, workspace = _pyhf_model(to_workspace(model, observed))
    data = np.asarray(workspace.data(pdf))
    lik = lk.Likelihood(model, observed)
    rng = np.random.default_rng(3)
    diffs = []
    for _ in range(50):
        x = model.init.copy()
        x[model.index("mu")] = rng.uniform(-1.0, 3.0)
        x[model.index("sf_B1")] = rng.uniform(0.7, 1.3)
        for i in [*model.histo_index, *model.normsys_index]:
            x[i] = rng.uniform(-2.5, 2.5)
        gammas = [i for i, n in enumerate(model.names) if n.startswith("gamma_")]
        x[gammas] = rng.uniform(0.8, 1.2, len(gammas))
        pars = np.array(pdf.config.suggested_init(), dtype=float)
        for name in pdf.config.par_order:
            sl = pdf.config.par_slice(name)
            if name.startswith("staterror_"):
                ch = name[len("staterror_") :]
                for b in range(sl.stop - sl.start):
                    pars[sl.start + b] = x[model.index(f"gamma_{ch}_{b}")]
            else:
                pars[sl] = x[model.index(name)]
        diffs.append(lik(x) + float(pdf.logpdf(pars, data)[0]))
    diffs = np.array(diffs)
    assert np.ptp(diffs) < 1e-8, np.ptp(diffs)


def test_fit_minos_and_significance_agree_with_pyhf_to_1e4():
    model, observed = _asymmetric_model("profile")
    ws = to_workspace(model, observed)
    best = lk.fit(model, observed, minos=["mu"], tolerance=1e-5)
    _, z = lk.discovery_significance(model, observed, best)
    theirs = _pyhf_results(ws, tolerance=1e-6)
    lo, hi = best.minos["mu"]
    assert best.value("mu") == pytest.approx(theirs["mu"], rel=1e-4)
    assert lo == pytest.approx(theirs["lo"], rel=1e-4)
    assert hi == pytest.approx(theirs["hi"], rel=1e-4)
    assert z == pytest.approx(theirs["z"], rel=1e-4)


def test_asimov_fit_with_asymmetric_jes_and_free_scale_factors_converges():
    """All-Asimov, asymmetric JES, SR + CRs, free scale factors: the minimum is at a = 0, where
    code 0 had its kink (MIGRAD failed there); with code 4p it converges with exact errors."""
    model, asimov = lk.toy_model(6, 5, n_cr=3, stat="profile", jes_asymmetry=0.04)
    best = lk.fit(model, asimov, minos=["mu"])
    assert best.status.valid and best.status.covariance_posdef and best.status.minos_valid
    assert best.value("mu") == pytest.approx(1.0, abs=1e-4)
    assert best.value("jes") == pytest.approx(0.0, abs=1e-3)
    assert best.nll == pytest.approx(0.0, abs=1e-6)


def test_mc_stat_of_a_sample_without_yield_is_exported():
    """A process with no positive yield (negative weights zeroed) and no shape variation still
    contributes its sum w^2 to pyhf's staterror: the relative uncertainties are the model's."""
    nominal = {"S": np.array([2.0, 3.0, 0.5]), "B": np.array([20.0, 10.0, 40.0])}
    neg = {"N": np.array([-1.0, -0.5, -2.0])}  # zeroed by make_model
    sumw2 = {"S": np.array([0.2, 0.3, 0.05]), "B": np.array([2.0, 1.0, 4.0])}
    sumw2["N"] = np.array([1.5, 0.5, 3.0])
    model = lk.make_model(
        {"SR": 2, "CR": 1},
        {**nominal, **neg},
        sumw2=sumw2,
        norm_factors={"mu": lk.NormFactor(("S",), 1.0, (-20.0, 20.0))},
        stat="profile",
    )
    ws = to_workspace(model, lk.asimov(model))
    pdf, _ = _pyhf_model(ws)
    assert any(s["name"] == "N" for ch in ws["channels"] for s in ch["samples"])
    sigmas = np.concatenate([pdf.config.param_set(f"staterror_{ch}").sigmas for ch in ("SR", "CR")])
    np.testing.assert_allclose(sigmas, model.stat_sigma, rtol=1e-12)
