"""Fit diagnostics on pseudo-experiments: closure pulls, injection, impacts, GoF, VZ cross-check.

Pull criteria over N toys: mean 0 within 3/sqrt(N), width 1 within 3/sqrt(2N).  Pseudo-data of
the physics toy generator are made with its data/MC mismodelling switched off.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from vhbb.fit import diagnostics as dg
from vhbb.stats import likelihood as lk

TRUTH = {"sf_TT": 1.08, "sf_Zhf": 1.22, "sf_Zlf": 0.91}


def _model(stat: str | None = "profile") -> lk.Model:
    model, _ = lk.toy_model(5, 4, stat=stat, seed=2)
    return model


def test_closure_pulls_have_unit_width():
    n = 120
    out = dg.closure(_model(), {"mu": 1.0, **TRUTH}, n, seed=3)
    assert out["n_valid"] >= 0.95 * n
    for name, s in out["pulls"].items():
        assert abs(s["mean"]) < 3 / math.sqrt(s["n"]), (name, s["mean"])
        assert abs(s["width"] - 1) < 3 / math.sqrt(2 * s["n"]), (name, s["width"])
        assert s["mean_ok"] and s["width_ok"]


def test_closure_with_fluctuated_templates_runs():
    out = dg.closure(_model(), {"mu": 1.0}, 20, seed=4, templates=True)
    assert out["templates_fluctuated"] and out["n_valid"] >= 18


def test_signal_injection_recovers_mu():
    n = 60
    points = dg.injection(_model(), [0.0, 1.0, 2.0], n, seed=5)
    for p in points:
        assert p["n_valid"] >= 0.95 * n
        # the mean fitted mu agrees with the injected one within 3 standard errors
        assert abs(p["mean_fitted"] - p["injected"]) < 3 * p["std_fitted"] / math.sqrt(p["n_valid"])
        assert abs(p["pull_width"] - 1) < 3 / math.sqrt(2 * p["n_valid"])


def test_toys_are_reproducible_and_worker_independent():
    model = _model()
    x = dg.truth_point(model, {"mu": 1.0})
    a = dg.run_toys(model, x, 8, 11)
    b = dg.run_toys(model, x, 8, 11, workers=2)
    np.testing.assert_allclose(a.values, b.values)


def test_impacts_single_nuisance_is_exact_in_quadrature():
    """One lnN: sigma_tot^2 = sigma_stat^2 + impact^2 (Schur complement; 2 % for the lnN's
    non-linearity and the fit tolerance)."""
    rng = np.random.default_rng(0)
    s = np.array([5.0, 10.0, 20.0, 8.0])
    b = np.array([100.0, 60.0, 30.0, 80.0])
    model = lk.make_model(
        {"SR": 4},
        {"S": s, "B": b},
        norm_factors={"mu": lk.NormFactor(("S",), 1.0, (-20, 20))},
        normsys={"bnorm": {"B": (0.9, 1.1)}},
    )
    observed = rng.poisson(lk.asimov(model)).astype(float)
    imp = dg.impacts(model, observed)
    e = imp["nuisances"]["bnorm"]
    impact = 0.5 * (abs(e["postfit"][0]) + abs(e["postfit"][1]))
    total = math.hypot(imp["stat_only_error"], impact)
    assert total == pytest.approx(imp["total_error"], rel=0.02)
    assert imp["ranking"] == ["bnorm"]
    # a pre-fit shift (1 sigma) moves mu at least as much as a constrained post-fit one
    assert max(map(abs, e["prefit"])) >= max(map(abs, e["postfit"])) * 0.99


def test_impacts_sum_in_quadrature_for_separated_nuisances():
    """Nuisances on different backgrounds in different bins are nearly uncorrelated: the
    quadrature sum of stat-only, MC-stat and the impacts is the total error within 10 %."""
    s = np.array([4.0, 6.0, 9.0, 4.0, 6.0, 9.0])
    b1 = np.array([80.0, 50.0, 30.0, 0.0, 0.0, 0.0])
    b2 = np.array([0.0, 0.0, 0.0, 70.0, 40.0, 25.0])
    model = lk.make_model(
        {"SR": 6},
        {"S": s, "B1": b1, "B2": b2},
        sumw2={"S": 0.01 * s, "B1": 0.05 * b1, "B2": 0.05 * b2},
        norm_factors={"mu": lk.NormFactor(("S",), 1.0, (-20, 20))},
        normsys={"n1": {"B1": (0.92, 1.08)}, "n2": {"B2": (0.9, 1.1)}},
        stat="profile",
    )
    observed = np.random.default_rng(1).poisson(lk.asimov(model)).astype(float)
    imp = dg.impacts(model, observed)
    assert imp["quadrature_sum"] == pytest.approx(imp["total_error"], rel=0.10)
    assert imp["mc_stat_group_impact"] > 0
    assert set(imp["nuisances"]) == {"n1", "n2"}


def test_goodness_of_fit_p_value():
    model = _model()
    rng = np.random.default_rng(7)
    good = rng.poisson(lk.asimov(model)).astype(float)
    gof = dg.goodness_of_fit(model, good, 40, seed=8)
    assert gof["n_valid"] >= 38 and 0.0 <= gof["p_value"] <= 1.0
    assert gof["q_observed"] == pytest.approx(2 * lk.fit(model, good).nll, rel=1e-3)
    # a shape the model cannot describe (a slope across the signal-region bins) fails
    sr = model.channel("SR")
    bad = good.copy()
    tilt = np.linspace(0.6, 1.4, sr.n_bins)
    bad[sr.start : sr.stop] = rng.poisson(lk.asimov(model)[sr.start : sr.stop] * tilt)
    assert dg.goodness_of_fit(model, bad, 40, seed=9)["p_value"] < 0.05


def test_vz_model_and_injection():
    model = _model()
    vz = dg.vz_model(model, ["VZ"])
    assert vz.poi == "mu_VZ" and vz.fixed[vz.index("mu")] and vz.fixed[vz.index("xs_VZ")]
    assert not vz.fixed[vz.index("lumi")]
    np.testing.assert_allclose(lk.asimov(vz), lk.asimov(model))
    (point,) = dg.injection(vz, [1.0], 60, seed=10)
    assert abs(point["mean_fitted"] - 1) < 3 * point["std_fitted"] / math.sqrt(point["n_valid"])
    assert abs(point["pull_width"] - 1) < 3 / math.sqrt(2 * point["n_valid"])


def test_fit_errors_correct_with_fixed_parameters():
    """Fixed parameters do not shift the covariance (iminuit sub-block issue, worked around)."""
    model = _model()
    asimov = lk.asimov(model)
    fixed = model.with_fixed({"mu": 1.0, "xs_VZ": 0.0})
    res = lk.fit(fixed, asimov)
    free = [i for i in range(fixed.n_params) if not fixed.fixed[i]]
    hess = lk.Likelihood(fixed, asimov).hessian(res.values)[np.ix_(free, free)]
    np.testing.assert_allclose(res.errors[free], np.sqrt(np.diag(np.linalg.inv(hess))), rtol=0.05)
    assert res.errors[fixed.index("mu")] == 0.0


# ---------------------------------------------------------------------------- physics toy
LUMI = 41.5
XSEC = {"ZH": 0.004, "VZ": 0.04, "Zlf": 5.2, "Zhf": 0.95, "TT": 1.55, "others": 0.45}
N_MC = {"ZH": 40000, "VZ": 40000, "Zlf": 60000, "Zhf": 60000, "TT": 60000, "others": 30000}
SF_TRUE = {"TT": 1.08, "Zhf": 1.22, "Zlf": 0.91}


def _columns(branches: dict, is_mc: bool) -> dict:
    import yaml
    from conftest import REPO

    from vhbb.data import cache

    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    layout = cfg["samples"]["layouts"]["flat"]
    cols = cache.derive(cache.flat_events(branches, layout, None))
    _, region = cache.assign_regions(
        cols, cfg["regions"]["preselection"], cfg["regions"]["definitions"]
    )
    cols["region"] = region.astype(str)
    return cols


def _score(cols: dict) -> np.ndarray:
    z = 4.0 * (cols["btag_min"] - 0.6) + (cols["pt_jj"] - 220.0) / 80.0
    return 1.0 / (1.0 + np.exp(-z))


@pytest.fixture(scope="module")
def physics_toy():
    """MC and pseudo-data (mismodelling off, true SFs, mu = mu_VZ = 1) of the toy generator."""
    from vhbb.data import toy

    mc = {}
    for k, (proc, n) in enumerate(N_MC.items()):
        branches = toy.generate_mc_file(proc, n, toy.derive_seed(5, proc), k)
        cols = _columns(branches, True)
        w = branches["genWeight"].astype(np.float64)
        cols["weight"] = w * XSEC[proc] * 1000.0 * LUMI / w.sum()
        mc[proc] = cols
    expected = {p: XSEC[p] * 1000.0 * LUMI * SF_TRUE.get(p, 1.0) for p in XSEC}
    data = _columns(
        toy.generate_data_file(expected, toy.derive_seed(5, "data"), 0, mismodelling_scale=1.0),
        False,
    )
    return mc, data


def _physics_model(mc: dict, data: dict) -> tuple[lk.Model, np.ndarray]:
    """SR (m_jj x synthetic score, merged) + one-bin CRs with free scale factors; all data."""
    from vhbb.fit import templates as bn

    sr, crs = "SR_medhigh_Znn", ["CR_tt", "CR_Zhf", "CR_Zlf"]
    mjj_edges = np.array([50, 70, 80, 90, 100, 110, 120, 130, 140, 150, 170, 250.0])
    s_edges = np.array([0.0, 0.3, 0.6, 0.8, 0.9, 1.0])
    hists = {}
    for p, c in mc.items():
        sel = c["region"] == sr
        hists[p] = bn.histogram2d(
            c["m_jj"][sel], _score(c)[sel], c["weight"][sel], mjj_edges, s_edges
        )
    bkg = [p for p in mc if p != "ZH"]
    binning = bn.merge_bins(
        sum(hists[p][0] for p in bkg),
        sum(hists[p][1] for p in bkg),
        min_background=2.0,
        min_mc_effective=10.0,
    )
    nominal, sumw2 = {}, {}
    for p, c in mc.items():
        cr = [np.array([c["weight"][c["region"] == r].sum()]) for r in crs]
        cr2 = [np.array([(c["weight"][c["region"] == r] ** 2).sum()]) for r in crs]
        nominal[p] = np.concatenate([binning.apply(hists[p][0]), *cr])
        sumw2[p] = np.concatenate([binning.apply(hists[p][1]), *cr2])
    sel = data["region"] == sr
    d_sr, _ = bn.histogram2d(
        data["m_jj"][sel], _score(data)[sel], np.ones(int(sel.sum())), mjj_edges, s_edges
    )
    observed = np.concatenate(
        [binning.apply(d_sr)] + [[float((data["region"] == r).sum())] for r in crs]
    )
    norm = {"mu": lk.NormFactor(("ZH",), 1.0, (-20, 20))}
    norm |= {f"sf_{p}": lk.NormFactor((p,), 1.0, (0, 10)) for p in SF_TRUE}
    model = lk.make_model(
        {"SR": binning.n_bins, **{r: 1 for r in crs}},
        nominal,
        sumw2=sumw2,
        norm_factors=norm,
        normsys={"lumi": {"ZH": (1 / 1.025, 1.025), "VZ": (1 / 1.025, 1.025)}},
        stat="profile",
    )
    return model, observed


def test_unblinded_physics_toy_recovers_truth(physics_toy):
    """Fits of the generator's pseudo-data (SR unblinded, mismodelling off) recover the injected
    mu = 1, mu_VZ = 1 (the VZ cross-check on a known resonance) and the hidden scale factors."""
    model, observed = _physics_model(*physics_toy)
    best = lk.fit(model, observed)
    for name, truth in {"mu": 1.0, **{f"sf_{p}": v for p, v in SF_TRUE.items()}}.items():
        pull = (best.value(name) - truth) / best.error(name)
        assert abs(pull) < 3, (name, best.value(name), best.error(name))
    vz = dg.fit_summary(dg.vz_model(model, ["VZ"]), observed, "VZ cross-check")
    assert vz["hesse_error"] < 0.5  # a real measurement of the resonance
    assert abs(vz["value"] - 1.0) < 3 * vz["hesse_error"], vz["value"]
