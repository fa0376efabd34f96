"""The hand-written signal-strength likelihood: derivatives, profiling, fits, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from vhbb.fit.fast_fit import fast_significance
from vhbb.stats import likelihood as lk


def _numeric_grad(f, x, eps=1e-6):  # type: ignore[no-untyped-def]
    return np.array([(f(x + e) - f(x - e)) / (2 * eps) for e in np.eye(len(x)) * eps])


@pytest.mark.parametrize("stat", [None, "profile", "parameters"])
@pytest.mark.parametrize("alpha", [0.4, -0.4])
def test_gradient_and_hessian_are_exact(stat, alpha):
    model, asimov = lk.toy_model(4, 3, stat=stat)
    observed = asimov * np.random.default_rng(1).uniform(0.7, 1.3, len(asimov))
    lik = lk.Likelihood(model, observed)
    x = model.init + np.random.default_rng(2).normal(0, 0.05, model.n_params)
    x[model.histo_index] = alpha
    _, grad = lik.value_and_grad(x)
    np.testing.assert_allclose(grad, _numeric_grad(lik, x), rtol=1e-4, atol=1e-4)
    hess = lik.hessian(x)
    num = np.array([(lik.grad(x + e) - lik.grad(x - e)) / 2e-6 for e in np.eye(len(x)) * 1e-6])
    np.testing.assert_allclose(hess, num, rtol=1e-5, atol=1e-5 * np.abs(hess).max())


@pytest.mark.parametrize("stat", [None, "profile", "parameters"])
def test_gradient_and_hessian_where_a_prediction_is_clamped(stat):
    """A shape variation that drives a bin's total below zero (here bin 0 at jes = -2.5, with
    no events observed there) clamps the prediction at TINY: the value is constant in that bin,
    and the analytic gradient and Hessian are those of the clamped value (before, the gradient
    kept the unclamped bin's slope, 3.6e3 off, and toy fits of the default chain ended invalid
    in 26 of 100 first MIGRADs)."""
    import dataclasses

    model, asimov = lk.toy_model(4, 3, stat=stat)
    up, down = model.histo_up.copy(), model.histo_down.copy()
    up[0, :, 0] = down[0, :, 0] = 0.6 * model.nominal[:, 0]  # 0.4 x nominal at jes = -1
    model = dataclasses.replace(model, histo_up=up, histo_down=down)
    observed = np.random.default_rng(1).poisson(asimov).astype(float)
    observed[0] = 0.0
    lik = lk.Likelihood(model, observed)
    x = model.init + np.random.default_rng(2).normal(0, 0.05, model.n_params)
    x[model.index("jes")] = -2.5
    assert lik._t(x)[0] == lk.TINY
    _, grad = lik.value_and_grad(x)
    np.testing.assert_allclose(grad, _numeric_grad(lik, x), rtol=1e-4, atol=2e-4)
    hess = lik.hessian(x)
    num = np.array([(lik.grad(x + e) - lik.grad(x - e)) / 2e-6 for e in np.eye(len(x)) * 1e-6])
    np.testing.assert_allclose(hess, num, rtol=1e-5, atol=1e-5 * np.abs(hess).max())


def test_hessian_where_an_empty_bin_has_its_gamma_at_zero():
    """Profiled MC statistics: in an empty bin with t sigma^2 >= 1 gamma-hat sits at its bound 0
    and the bin's term is constant; the Hessian is finite and exact there (it was NaN: 0 / 0)."""
    model, asimov = lk.toy_model(4, 3, stat="profile")
    observed = np.random.default_rng(1).poisson(asimov).astype(float)
    lik = lk.Likelihood(model, observed)
    x = model.init.copy()
    b = int(np.argmax(lik._t(x) * model.stat_sigma**2))
    observed[b] = 0.0
    x[model.norm_index] = 1.0 / (lik._t(x)[b] * model.stat_sigma[b] ** 2)  # t sigma^2 = 1
    x[model.norm_index] *= 1.5  # t sigma^2 = 1.5: gamma-hat = 0 in bin b
    lik = lk.Likelihood(model, observed)
    assert lik.gamma_hat(x)[b] == 0.0
    hess = lik.hessian(x)
    assert np.all(np.isfinite(hess))
    num = np.array([(lik.grad(x + e) - lik.grad(x - e)) / 2e-6 for e in np.eye(len(x)) * 1e-6])
    np.testing.assert_allclose(hess, num, rtol=1e-5, atol=1e-5 * np.abs(hess).max())


def test_nll_is_zero_at_asimov_point():
    model, asimov = lk.toy_model(3, 3, stat="profile")
    assert lk.Likelihood(model, asimov)(model.init) == pytest.approx(0.0, abs=1e-9)


def test_analytic_profiling_equals_explicit_gammas():
    observed = None
    results = {}
    for stat in ("profile", "parameters"):
        model, asimov = lk.toy_model(4, 4, stat=stat, seed=3)
        if observed is None:
            observed = asimov * np.random.default_rng(5).uniform(0.9, 1.1, len(asimov))
        results[stat] = lk.fit(model, observed, minos=["mu"], tolerance=0.001)
    a, b = results["profile"], results["parameters"]
    assert a.value("mu") == pytest.approx(b.value("mu"), rel=1e-4)
    assert a.error("mu") == pytest.approx(b.error("mu"), rel=1e-3)
    for x, y in zip(a.minos["mu"], b.minos["mu"], strict=True):
        assert x == pytest.approx(y, rel=1e-3)


def test_asimov_fit_returns_mu_one_and_closed_form_significance():
    model, asimov = lk.toy_model(6, 5, jes=False, lnn=False)
    model = model.with_fixed({"sf_TT": 1.08, "sf_Zhf": 1.22, "sf_Zlf": 0.91})
    sr = model.channel("SR")
    best = lk.fit(model, asimov)
    assert best.value("mu") == pytest.approx(1.0, abs=1e-4)
    _, z = lk.discovery_significance(model, asimov, best)
    nu = lk.expected_by_process(model, model.init)
    s = nu[model.processes.index("ZH")]
    # the control-region bins add no signal information with everything fixed
    z_cf = lk.closed_form_asimov_z(s[sr.start : sr.stop], (nu.sum(0) - s)[sr.start : sr.stop])
    z_all = lk.closed_form_asimov_z(s, nu.sum(0) - s)
    assert z == pytest.approx(z_all, rel=1e-3)
    assert z_cf == pytest.approx(z_all, rel=0.02)


def test_empty_bins_are_finite():
    nominal = {"S": np.array([1.0, 0.0, 0.5]), "B": np.array([5.0, 0.0, 3.0])}
    model = lk.make_model(
        {"SR": 3},
        nominal,
        sumw2={"S": np.array([0.1, 0.0, 0.2]), "B": np.array([1.0, 0.0, 0.5])},
        norm_factors={"mu": lk.NormFactor(("S",), 1.0, (-20, 20))},
        stat="profile",
    )
    observed = np.array([7.0, 0.0, 0.0])  # a bin with no prediction and no data, one with no data
    value, grad = lk.Likelihood(model, observed).value_and_grad(model.init)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    res = lk.fit(model, observed)
    assert np.isfinite(res.value("mu"))


def test_unconstrained_fit_fails_loudly():
    nominal = {"S": np.zeros(3), "B": np.array([5.0, 4.0, 3.0])}
    model = lk.make_model(
        {"SR": 3}, nominal, norm_factors={"mu": lk.NormFactor(("S",), 1.0, (-20, 20))}
    )
    with pytest.raises(lk.FitError, match=r"HESSE failed|MIGRAD"):
        lk.fit(model, lk.asimov(model))


def test_negative_observations_rejected():
    model, asimov = lk.toy_model(2, 2)
    with pytest.raises(lk.FitError, match="non-negative"):
        lk.Likelihood(model, -asimov)


def _events(rng, n, peak):  # type: ignore[no-untyped-def]
    return {
        "m_jj": rng.normal(peak, 15, n).clip(50, 249),
        "score": rng.uniform(0, 1, n),
        "weight": np.full(n, 0.5),
    }


FAST_SETTINGS = {
    "binning": {
        "mjj_edges": [50, 90, 110, 130, 150, 250],
        "score": {"mode": "quantile", "count": 4},
        "merge": {"min_background": 1.0, "min_mc_effective": 5},
    },
    "systematics": {"mc_stat": {"enabled": True}, "jes": True, "lnN": {"lumi": {"ZH": 1.025}}},
    "poi_bounds": [-20, 20],
}


def test_fast_significance_value_and_nulls():
    rng = np.random.default_rng(0)
    events = {"ZH": _events(rng, 2000, 125), "Zhf": _events(rng, 20000, 100)}
    out = fast_significance(events, signal=["ZH"], settings=FAST_SETTINGS)
    assert out["significance"] > 0 and out["reason"] is None
    empty = fast_significance({}, signal=["ZH"], settings=FAST_SETTINGS)
    assert empty["significance"] is None and "no signal-region MC" in empty["reason"]
    no_bkg = fast_significance({"ZH": events["ZH"]}, signal=["ZH"], settings=FAST_SETTINGS)
    assert no_bkg["significance"] is None and "background" in no_bkg["reason"]
    nan = {k: dict(v) for k, v in events.items()}
    nan["ZH"]["score"] = np.full(2000, np.nan)
    assert fast_significance(nan, signal=["ZH"], settings=FAST_SETTINGS)["significance"] is None
    collapsed = {k: {**v, "score": np.full(len(v["score"]), 0.5)} for k, v in events.items()}
    res = fast_significance(collapsed, signal=["ZH"], settings=FAST_SETTINGS)
    assert res["significance"] is None or res["significance"] < out["significance"]


# ------------------------------------------------------------------------ the one Minuit wrapper
def test_both_fits_share_the_minuit_wrapper():
    """One FitError, one status record: the signal-strength likelihood and the control-region
    fit report through vhbb.stats.minuit."""
    from vhbb.fit import scale_factors as sf
    from vhbb.stats import minuit as mn
    from vhbb.stats.results import RegionHistogram

    assert lk.FitError is mn.FitError is sf.FitError
    model, asimov = lk.toy_model(3, 3, stat="profile")
    best = lk.fit(model, asimov, minos=["mu"])
    assert isinstance(best.status, mn.FitStatus)
    assert best.status.valid and best.status.minos_valid
    h = RegionHistogram("CR", None, np.array([120.0]), {"X": np.array([100.0])}, {"X": np.zeros(1)})
    cr = sf.fit_scale_factors([h], ["X"], minos=False)
    assert isinstance(cr.status, mn.FitStatus) and cr.status.minos_valid is None
    assert set(cr.status.as_dict()) == set(best.status.as_dict())


class _InvalidLowerMinos:
    """A real Minuit whose MINOS reports the lower side of ``b`` invalid (as MINOS does when
    its crossing search fails); everything else is delegated."""

    def __init__(self, m) -> None:
        from types import SimpleNamespace

        object.__setattr__(self, "_m", m)
        bad = SimpleNamespace(
            lower=-0.1, upper=0.5, is_valid=False, lower_valid=False, upper_valid=True,
            lower_new_min=False, upper_new_min=False, at_lower_limit=True, at_upper_limit=False,
        )  # fmt: skip
        object.__setattr__(self, "_bad", bad)

    def minos(self, *names):
        self._m.minos(*[n for n in names if n != "b"])

    @property
    def merrors(self):
        return {**{k: v for k, v in self._m.merrors.items()}, "b": self._bad}

    def __getattr__(self, key):
        return getattr(self._m, key)

    def __setattr__(self, key, value):
        setattr(self._m, key, value)


def test_failed_minos_is_recorded_or_raised():
    """An invalid MINOS side with no profile crossing either (b is cut by its limit):
    require_valid=False records it, the default raises naming it; a valid one passes."""
    from iminuit import Minuit

    from vhbb.stats import minuit as mn

    def nll(a: float, b: float) -> float:
        return 0.5 * ((a - 1.0) / 0.5) ** 2 + 0.5 * ((b - 1.0) / 0.5) ** 2

    real = Minuit(nll, a=1.0, b=1.0)
    real.errordef = 0.5
    real.limits["b"] = (0.9, None)
    real.migrad()
    m = _InvalidLowerMinos(real)
    intervals, valid = mn.minos(m, ["a", "b"], "test", require_valid=False)
    assert intervals["a"] == pytest.approx((-0.5, 0.5), abs=1e-4) and valid is False
    assert intervals["b"] == (-0.1, 0.5)
    with pytest.raises(mn.FitError, match=r"test: MINOS failed for b \(lower_valid=False"):
        mn.minos(m, ["a", "b"], "test")
    fallbacks: list[str] = []
    assert mn.minos(m, ["a"], "test", fallbacks=fallbacks)[1] is True and fallbacks == []
    # without the limit the profile crossing replaces the failed side, and says so
    real.limits["b"] = (None, None)
    intervals, valid = mn.minos(m, ["b"], "test", fallbacks=fallbacks)
    assert valid and fallbacks == ["b lower"]
    assert intervals["b"][0] == pytest.approx(-0.5, abs=1e-4)


def test_closed_form_follows_the_significance_edge_rule():
    """closed_form_asimov_z is vhbb.stats.significance.asimov_significance: bins without signal
    add nothing, a bin with signal and no positive background raises."""
    from vhbb.core.errors import DataError
    from vhbb.stats.significance import asimov_significance

    s, b = np.array([1.0, 0.0, 2.0]), np.array([4.0, 0.0, 9.0])
    assert lk.closed_form_asimov_z(s, b) == asimov_significance(s, b)
    assert lk.closed_form_asimov_z(s, b) == lk.closed_form_asimov_z(s[[0, 2]], b[[0, 2]])
    with pytest.raises(DataError, match="background"):
        lk.closed_form_asimov_z(np.array([1.0, 1.0]), np.array([3.0, 0.0]))


# ------------------------------------------------------------------------ exact HESSE
def _richardson_hessian(lik, x, idx, h=1e-3):  # type: ignore[no-untyped-def]
    """Hessian over ``idx`` from Richardson-extrapolated central differences of the gradient."""

    def central(step):  # type: ignore[no-untyped-def]
        out = np.empty((len(idx), len(idx)))
        for a, i in enumerate(idx):
            e = np.zeros(len(x))
            e[i] = step
            out[a] = (lik.grad(x + e)[idx] - lik.grad(x - e)[idx]) / (2 * step)
        return out

    d1, d2 = central(h), central(h / 2)
    hess = (4 * d2 - d1) / 3
    return 0.5 * (hess + hess.T)


def _check_hesse(model, observed, expect_limit=()):  # type: ignore[no-untyped-def]
    best = lk.fit(model, observed, tolerance=1e-4)
    assert best.status.covariance_method == "analytic Hessian"
    assert best.status.at_limit == tuple(expect_limit)
    lik = lk.Likelihood(model, observed)
    idx = [
        i for i, n in enumerate(model.names) if not model.fixed[i] and n not in best.status.at_limit
    ]
    cov = np.linalg.inv(_richardson_hessian(lik, best.values, idx))
    np.testing.assert_allclose(best.errors[idx], np.sqrt(np.diag(cov)), rtol=1e-5)
    np.testing.assert_allclose(best.covariance[np.ix_(idx, idx)], cov, rtol=1e-4, atol=1e-9)
    excluded = [i for i in range(model.n_params) if i not in idx]
    assert np.all(best.errors[excluded] == 0) and np.all(best.covariance[excluded] == 0)
    return best


@pytest.mark.parametrize("stat", [None, "profile"])
def test_hesse_is_the_inverse_analytic_hessian(stat):
    model, asimov = lk.toy_model(4, 4, stat=stat, jes_asymmetry=0.03)
    observed = np.round(asimov * np.random.default_rng(4).uniform(0.9, 1.1, len(asimov)))
    _check_hesse(model, observed)


def test_hesse_with_fixed_parameters():
    model, asimov = lk.toy_model(4, 4, stat="profile", jes_asymmetry=0.03)
    model = model.with_fixed({"sf_TT": 1.08, "lumi": 0.3})
    observed = np.round(asimov * np.random.default_rng(5).uniform(0.9, 1.1, len(asimov)))
    _check_hesse(model, observed)


def test_hesse_with_a_parameter_at_its_limit():
    """sf_Zhf's upper bound (1.0) is below what the data want: it sits on it, is excluded from
    the covariance (error 0) and named in the status."""
    from dataclasses import replace

    model, asimov = lk.toy_model(4, 4, stat="profile", jes_asymmetry=0.03)
    i = model.index("sf_Zhf")
    bounds = list(model.bounds)
    bounds[i] = (0.0, 1.0)
    init = model.init.copy()
    init[i] = 0.9
    model = replace(model, bounds=tuple(bounds), init=init)
    best = _check_hesse(model, asimov, expect_limit=("sf_Zhf",))
    assert best.value("sf_Zhf") == pytest.approx(1.0, abs=1e-4)
    assert best.status.as_dict()["at_limit"] == ["sf_Zhf"]


@pytest.mark.parametrize("stat", [None, "profile", "parameters"])
def test_set_observed_is_a_fresh_likelihood(stat):
    model, asimov = lk.toy_model(4, 3, stat=stat)
    rng = np.random.default_rng(8)
    lik = lk.Likelihood(model, asimov)
    x = model.init + rng.normal(0, 0.1, model.n_params)
    lik.hessian(x)  # cached: must not survive the new observations
    observed = rng.poisson(asimov).astype(float)
    lik.set_observed(observed)
    fresh = lk.Likelihood(model, observed)
    v, g = lik.value_and_grad(x)
    v2, g2 = fresh.value_and_grad(x)
    assert v == pytest.approx(v2, rel=1e-12)
    np.testing.assert_allclose(g, g2, rtol=1e-12)
    np.testing.assert_allclose(lik.hessian(x), fresh.hessian(x), rtol=1e-12)


@pytest.mark.parametrize("alpha", [0.3, 1.7, -2.2])
def test_normsys_beyond_one_sigma(alpha):
    """code 4 outside |alpha| < 1 (the exponential branch) in the fast path."""
    model, asimov = lk.toy_model(3, 3, stat="profile")
    lik = lk.Likelihood(model, asimov * 1.1)
    x = model.init.copy()
    x[model.normsys_index] = alpha
    _, grad = lik.value_and_grad(x)
    np.testing.assert_allclose(grad, _numeric_grad(lik, x), rtol=1e-4, atol=1e-4)
    f = np.exp(alpha * model.normsys_log_hi) if alpha > 1 else np.exp(-alpha * model.normsys_log_lo)
    if abs(alpha) > 1:
        np.testing.assert_allclose(lk._normsys_factor(model, x), np.prod(f, axis=0), rtol=1e-12)


def test_analytic_hessian_in_migrad_gives_the_classic_minimum():
    """MIGRAD checking its minimum with the analytic Hessian ends where the classic fit
    (numerical HESSE inside MIGRAD) ends."""
    model, asimov = lk.toy_model(4, 4, stat="profile", jes_asymmetry=0.03)
    rng = np.random.default_rng(12)
    for _ in range(4):
        observed = rng.poisson(asimov).astype(float)
        fast = lk.fit(model, observed)
        lik = lk.Likelihood(model, observed)
        m, _ = lk._minuit(lik, model, 0.1, 1)
        m.migrad()
        assert fast.nll == pytest.approx(m.fval, abs=1e-4)
        np.testing.assert_allclose(fast.values, np.array(m.values), atol=0.02 * fast.errors.max())


def _double_well(mu: float, a: float) -> float:
    """mu pulled by a, which has two wells (a ~ +-1, the one at a < 0 lower by ~0.4)."""
    return 0.5 * ((mu - 1.0 - 0.6 * a) / 0.3) ** 2 + 0.5 * (a * a - 1.0) ** 2 + 0.3 * a


def test_minos_profiling_finds_the_lower_minimum_and_migrad_restarts_there():
    """MIGRAD started in the upper well stops in the local minimum; profiling mu for MINOS
    finds the global one (:class:`NewMinimum`), and from there MINOS is valid."""
    from iminuit import Minuit

    from vhbb.stats import minuit as mn

    m = Minuit(_double_well, mu=1.6, a=1.0)
    m.errordef = 0.5
    m.migrad()
    local = float(m.fval)
    assert m.values["a"] > 0.5  # the local minimum
    with pytest.raises(mn.NewMinimum) as new:
        mn.minos(m, ["mu"], "double well")
    assert new.value.improvement > 0.1
    m.values = new.value.values
    m.migrad()
    assert m.fval < local - 0.3 and m.values["a"] < -0.5
    intervals, valid = mn.minos(m, ["mu"], "double well")
    assert valid and intervals["mu"][0] < 0 < intervals["mu"][1]


def test_profile_crossing_equals_minos_on_a_smooth_likelihood():
    from iminuit import Minuit

    from vhbb.stats import minuit as mn

    def nll(mu: float, b: float) -> float:
        return 0.5 * ((mu - 1) / 0.5) ** 2 + 0.5 * ((b - 0.5 * mu) / 0.4) ** 2 + 0.1 * (mu - 1) ** 3

    m = Minuit(nll, mu=1.0, b=0.5)
    m.errordef = 0.5
    m.migrad()
    m.minos()
    me = m.merrors["mu"]
    assert mn.profile_crossing(m, "mu", -1, step=0.5) == pytest.approx(me.lower, abs=1e-5)
    assert mn.profile_crossing(m, "mu", 1, step=0.5) == pytest.approx(me.upper, abs=1e-5)
    m.limits["mu"] = (0.8, None)  # no crossing below: a one-sided interval
    assert mn.profile_crossing(m, "mu", -1, step=0.5) is None


def _two_well_model():  # type: ignore[no-untyped-def]
    """jes lowers the low-m_jj SR bins on both sides (30 % up, 22 % down: code-4p makes the
    yield a hump in jes) and the data there are 25 % low: two minima, the one at jes > 0 lower."""
    import dataclasses

    model, _ = lk.toy_model(4, 4, stat="profile")
    up, down = model.histo_up.copy(), model.histo_down.copy()
    low = np.zeros(model.n_bins, dtype=bool)
    low[:8] = True
    up[0][:, low] = -0.30 * model.nominal[:, low]
    down[0][:, low] = 0.22 * model.nominal[:, low]
    model = dataclasses.replace(model, histo_up=up, histo_down=down)
    observed = np.round(4 * lk.asimov(model) * np.where(low, 0.75, 1.0)) / 4
    return model, observed


def test_sign_flip_restarts_find_the_lower_minimum():
    """Started in the upper well (jes = -0.6), MIGRAD stops in the local minimum; the sign-flip
    restart reaches the global one.  Reference: the profile of the nll in jes minimised by scipy's
    bounded Brent on each side (jes fixed: nothing to flip)."""
    import dataclasses

    from scipy.optimize import minimize_scalar

    model, observed = _two_well_model()
    i = model.index("jes")
    start = dataclasses.replace(
        model, init=np.where(np.arange(model.n_params) == i, -0.6, model.init)
    )

    def profile(a: float) -> float:
        return lk.fit(model.with_fixed({"jes": a}), observed, hesse=False, tolerance=1e-3).nll

    wells = [minimize_scalar(profile, bounds=b, method="bounded") for b in [(-2, 0), (0, 2)]]
    assert wells[0].fun > wells[1].fun + 0.3  # two wells, the right one lower
    local = lk.fit(start, observed, flips=False)
    assert local.value("jes") == pytest.approx(wells[0].x, abs=0.02)
    assert local.nll == pytest.approx(wells[0].fun, abs=2e-3)
    best = lk.fit(start, observed)
    assert best.status.flips == 1 and best.status.valid
    assert best.value("jes") == pytest.approx(wells[1].x, abs=0.02)
    assert best.nll == pytest.approx(wells[1].fun, abs=2e-3)
    # with MINOS (the classic Minuit starts at the lowest minimum) and in the toy fitter
    with_minos = lk.fit(start, observed, minos=["mu"])
    assert with_minos.nll == pytest.approx(best.nll, abs=1e-3)
    assert with_minos.status.flips == 1 and with_minos.status.minos_valid
    from vhbb.stats import toys as st

    fits = st.fit_toys(start, np.vstack([observed, observed]))
    np.testing.assert_allclose(fits.nll, best.nll, atol=1e-3)
    assert list(fits.flips) == [1, 1]
    assert st.fit_toys(start, observed[None], flips=False).nll[0] == pytest.approx(local.nll)


def test_sign_flip_restarts_leave_a_unimodal_fit_alone():
    """One well: the restarts find nothing lower and the fit is the one without them."""
    model, asimov = lk.toy_model(4, 4, stat="profile", jes_asymmetry=0.03)
    observed = np.random.default_rng(3).poisson(asimov).astype(float)
    a, b = lk.fit(model, observed), lk.fit(model, observed, flips=False)
    assert a.status.flips == 0
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.errors, b.errors)
