"""Two-parameter profile-likelihood scan (mu x mu_VZ): exact profiles, the Gaussian limit, the
rule drivers of scan_2d and the Asimov impacts and constraint flags of the diagnostics."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy import optimize

from vhbb.fit import diagnostics as dg
from vhbb.stats import likelihood as lk


def _vz_model(scale: float = 1.0, **kw) -> lk.Model:  # type: ignore[no-untyped-def]
    model, _ = lk.toy_model(5, 4, seed=2, **kw)
    if scale != 1.0:
        model = replace(model, nominal=model.nominal * scale, sumw2=model.sumw2 * scale)
    return dg.vz_model(model, ["VZ"], fix_poi=False)


def _min_nll(model: lk.Model, observed: np.ndarray, fixed: dict[str, float]) -> float:
    """An independent profile: scipy's L-BFGS-B on the nll with ``fixed`` held."""
    lik = lk.Likelihood(model, observed)
    hold = {model.index(k): v for k, v in fixed.items()}
    free = [i for i in range(model.n_params) if not model.fixed[i] and i not in hold]
    x0 = model.init.copy()
    for i, v in hold.items():
        x0[i] = v

    def full(xf: np.ndarray) -> np.ndarray:
        x = x0.copy()
        x[free] = xf
        return x

    def fg(xf: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = lik.value_and_grad(full(xf))
        return value, grad[free]

    bounds = [model.bounds[i] for i in free]
    res = optimize.minimize(
        fg, x0[free], jac=True, method="L-BFGS-B", bounds=bounds,
        options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 10000},
    )  # fmt: skip
    return float(res.fun)


def test_vz_model_with_free_mu():
    model = _vz_model()
    assert not model.fixed[model.index("mu")] and not model.fixed[model.index("mu_VZ")]
    assert model.fixed[model.index("xs_VZ")]  # the VZ cross-section is what mu_VZ measures


def test_scan_point_equals_an_independent_profile_fit():
    model = _vz_model(stat=None)
    observed = np.random.default_rng(3).poisson(lk.asimov(model)).astype(float)
    scan = dg.scan_2d(model, observed, ("mu", (0.0, 2.0), 5), ("mu_VZ", (0.2, 1.8), 4))
    q = np.array(scan["twice_delta_nll"])
    assert q.shape == (5, 4) and scan["n_failed"] == 0
    assert np.nanmin(q) >= 0.0
    nll_hat = _min_nll(model, observed, {})
    for i, j in ((1, 2), (4, 0), (0, 3)):
        mu, mu_vz = scan["values"]["mu"][i], scan["values"]["mu_VZ"][j]
        ref = 2.0 * (_min_nll(model, observed, {"mu": mu, "mu_VZ": mu_vz}) - nll_hat)
        assert q[i, j] == pytest.approx(ref, abs=1e-4), (mu, mu_vz)
    # and lk.fit with both fixed (the public API) agrees too
    mu, mu_vz = scan["values"]["mu"][1], scan["values"]["mu_VZ"][2]
    res = lk.fit(model.with_fixed({"mu": mu, "mu_VZ": mu_vz}), observed, tolerance=1e-4)
    assert q[1, 2] == pytest.approx(2 * (res.nll - scan["nll_min"]), abs=1e-4)


def test_contours_match_the_hesse_ellipse_in_the_gaussian_limit():
    """Large yields, no nuisances: the profile likelihood of (mu, mu_VZ) is Gaussian, so the 68 %
    and 95 % contours are the HESSE ellipses: area pi * q * sqrt(det C), half-extent
    sqrt(q C_ii)."""
    model = _vz_model(scale=100.0, jes=False, lnn=False)
    scan = dg.scan_2d(model, lk.asimov(model), ("mu", None, 15), ("mu_VZ", None, 15))
    cov = np.array(scan["hesse_covariance"])
    assert scan["best_fit"]["mu"] == pytest.approx(1.0, abs=1e-3)
    for name, level in dg.SCAN_2D_LEVELS.items():
        c = scan["contours"][name]
        assert c["closed"]
        ellipse = math.pi * level * math.sqrt(np.linalg.det(cov))
        assert c["area"] == pytest.approx(ellipse, rel=0.03), name
        for k, (lo, hi) in enumerate(c["extent"]):
            assert 0.5 * (hi - lo) == pytest.approx(math.sqrt(level * cov[k, k]), rel=0.02)


def test_scan_2d_validates_its_axes():
    model = _vz_model()
    obs = lk.asimov(model)
    with pytest.raises(ValueError, match="must differ"):
        dg.scan_2d(model, obs, ("mu", None, 3), ("mu", None, 3))
    with pytest.raises(ValueError, match="at least 2"):
        dg.scan_2d(model, obs, ("mu", None, 1), ("mu_VZ", None, 3))
    with pytest.raises(ValueError, match="fixed"):
        dg.scan_2d(model, obs, ("mu", None, 3), ("xs_VZ", None, 3))


# ---------------------------------------------------------------------------- constraint flags
def _one_nuisance_model(bkg: float, lnn: float) -> lk.Model:
    """One bin of signal on a background with an lnN of ``lnn`` and a control bin of the
    background alone: a precise control bin measures the lnN (strong constraint)."""
    return lk.make_model(
        {"SR": 1, "CR": 1},
        {"S": np.array([20.0, 0.0]), "B": np.array([100.0, bkg])},
        norm_factors={"mu": lk.NormFactor(("S",), 1.0, (-20, 20))},
        normsys={"bnorm": {"B": (1 / (1 + lnn), 1 + lnn)}},
    )


@pytest.mark.parametrize(("bkg", "lnn", "flagged"), [(1e5, 0.5, True), (10.0, 0.01, False)])
def test_constraint_flag(bkg, lnn, flagged):
    model = _one_nuisance_model(bkg, lnn)
    obs = lk.asimov(model)
    imp = dg.impacts(model, obs, constraint_fraction=0.5)
    entry = imp["nuisances"]["bnorm"]
    assert entry["constrained"] is flagged
    assert [c["name"] for c in imp["constrained_nuisances"]] == (["bnorm"] if flagged else [])
    if flagged:
        c = imp["constrained_nuisances"][0]
        assert c["ratio"] == pytest.approx(c["postfit"] / c["prefit"]) and c["ratio"] < 0.5
    else:
        assert entry["constraint_ratio"] > 0.9
    best = lk.fit(model, obs)
    assert (dg.constrained_nuisances(model, best, 0.5) != []) is flagged


def test_pull_flag():
    model = _one_nuisance_model(1e4, 0.05)
    obs = lk.asimov(model)
    obs[1] *= 1.15  # the control bin 3 pre-fit widths high
    best = lk.fit(model, obs)
    (p,) = dg.pulled_nuisances(model, best, 2.0)
    assert p["name"] == "bnorm" and p["pull"] > 2.0
    assert dg.pulled_nuisances(model, lk.fit(model, lk.asimov(model)), 2.0) == []


def test_impacts_on_asimov_have_zero_pulls():
    """The Asimov data set at nominal: every post-fit pull is 0 (to rounding), the constraints
    are the expected ones, and the ranking is that of the expected impacts."""
    model, asimov = lk.toy_model(5, 4, stat="profile", seed=2)
    imp = dg.impacts(model, asimov)
    constrained = [n for n, e in imp["nuisances"].items() if e["prefit_error"] is not None]
    assert set(constrained) == {"jes", "lumi", "xs_VZ", "xs_others"}
    for name in constrained:
        e = imp["nuisances"][name]
        assert abs(e["pull"]) < 1e-9, (name, e["pull"])
        assert abs(e["value"]) < 1e-9
        assert 0 < e["constraint_ratio"] <= 1.0 + 1e-6
    assert imp["poi_value"] == pytest.approx(1.0, abs=1e-9)


def test_impact_checks_use_the_configured_data():
    model, asimov = lk.toy_model(5, 4, stat="profile", seed=2)
    observed = np.random.default_rng(5).poisson(asimov).astype(float)
    best = lk.fit(model, observed)
    settings = {"impacts": {"data": "asimov"}, "constraint_flag_fraction": 0.5}
    out = dg.impact_checks(
        model, observed, best, settings, asimov=(asimov, "Asimov"), obs_label="toy", timings={}
    )
    assert out["impacts_data"] == {"data": "asimov", "observations": "Asimov"}
    assert out["impacts"]["data"] == "asimov"
    assert all(abs(e["pull"]) < 1e-9 for e in out["impacts"]["nuisances"].values() if e["pull"])
    # the JES is measured by the toy's 20 bins: flagged, with a warning
    assert [c["name"] for c in out["constrained_nuisances"]] == ["jes"]
    assert any("jes is constrained" in w for w in out["warnings"])
    obs = dg.impact_checks(
        model,
        observed,
        best,
        {**settings, "impacts": {"data": "observed"}},
        asimov=None,
        obs_label="toy",
        timings={},
    )
    assert obs["impacts_data"]["data"] == "observed"
    assert obs["impacts"]["poi_value"] == pytest.approx(best.value("mu"))
    with pytest.raises(ValueError, match=r"impacts\.data"):
        dg.impact_checks(
            model, observed, best, {"impacts": {"data": "bogus"}}, asimov=None, obs_label="",
            timings={},
        )  # fmt: skip


# ---------------------------------------------------------------------------- rule drivers
@pytest.fixture(scope="module")
def chain_inputs(tmp_path_factory) -> dict:
    """hists.h5 and scale_factors.json as the chain writes them (test_fit_chain's inputs)."""
    import test_fit_chain as tfc

    return tfc.chain_inputs.__wrapped__(tmp_path_factory)  # type: ignore[attr-defined]


def test_scan_2d_rule_driver_and_plot(chain_inputs, tmp_path):
    from conftest import REPO

    from vhbb import config
    from vhbb.config import params as P
    from vhbb.plots import diagnostics as dp

    cfg = config.load_config([REPO / "config" / "config.yaml"])
    cfg["fit"]["diagnostics"]["scan_2d"]["points"] = [6, 5]
    spec = P.scan_2d(cfg, "disco", "simultaneous")
    assert "scan_2d" not in P.diagnostics(cfg, "disco", "simultaneous")["diagnostics"]
    out = tmp_path / "scan_2d.json"
    doc = dg.run_scan_2d(
        chain_inputs["hists"], chain_inputs["sf"], mode="simultaneous", json_path=str(out),
        spec=spec,
    )  # fmt: skip
    saved = json.loads(out.read_text())
    assert saved["parameters"] == ["mu", "mu_VZ"] and saved["data"] == "asimov"
    assert np.array(saved["twice_delta_nll"], dtype=float).shape == (6, 5)
    # Asimov signal region (the control regions hold their fit-half data): near mu = mu_VZ = 1
    assert doc["best_fit"]["mu"] == pytest.approx(1.0, abs=0.1)
    assert doc["best_fit"]["mu_VZ"] == pytest.approx(1.0, abs=0.1)
    assert saved["contours"]["68%"]["closed"]
    png = tmp_path / "plots" / "scan_2d.png"
    dp.scan_2d(png, saved, title="disco, simultaneous", lumi=41.5)
    assert png.stat().st_size > 10_000
    # an unknown parameter names the model's parameters
    bad = {**spec, "scan_2d": {**spec["scan_2d"], "parameters": ["mu", "nope"]}}
    with pytest.raises(lk.FitError, match="nope"):
        dg.run_scan_2d(
            chain_inputs["hists"], chain_inputs["sf"], mode="simultaneous",
            json_path=str(tmp_path / "bad.json"), spec=bad,
        )  # fmt: skip


def test_impact_figure_marks_constrained_nuisances(tmp_path: Path):
    from vhbb.plots import diagnostics as dp

    model, asimov = lk.toy_model(5, 4, stat="profile", seed=2)
    imp = dg.impacts(model, asimov)
    imp["data"] = "asimov"
    assert imp["nuisances"]["jes"]["constrained"]
    dp.impacts(tmp_path / "impacts.png", imp, title="toy", lumi=None)
    assert (tmp_path / "impacts.png").stat().st_size > 10_000


def test_diagnostics_driver_records_the_impact_data_and_flags(chain_inputs, tmp_path):
    from conftest import REPO

    from vhbb import config
    from vhbb.config import params as P

    cfg = config.load_config([REPO / "config" / "config.yaml"])
    diag = cfg["fit"]["diagnostics"]
    diag.update(n_toys=4, gof_toys=4, injection={"points": [1.0], "n_toys": 4})
    diag["constraint_flag_fraction"] = 0.99  # every measured nuisance is flagged
    spec = P.diagnostics(cfg, "disco", "simultaneous")
    spec = {**spec, "truth": None}
    out = tmp_path / "diagnostics.json"
    dg.run_diagnostics(
        chain_inputs["hists"], chain_inputs["sf"], mode="simultaneous", json_path=str(out),
        plot_data=str(tmp_path / "plot_data.json"), spec=spec,
    )  # fmt: skip
    doc = json.loads(out.read_text())
    assert doc["impacts_data"]["data"] == "asimov" and doc["impacts"]["data"] == "asimov"
    assert doc["impacts_data"]["observations"].startswith("Asimov")
    flagged = {c["name"] for c in doc["constrained_nuisances"]}
    assert flagged and all(doc["impacts"]["nuisances"][n]["constrained"] for n in flagged)
    assert len(doc["warnings"]) >= len(flagged)
    assert all(
        set(c) >= {"name", "prefit", "postfit", "ratio"} for c in doc["constrained_nuisances"]
    )
