"""vhbb.stats.metrics against independent references: PyROOT, scipy, scikit-learn, dcor, closed
forms.

Tests needing ROOT or dcor skip when it is missing, and fail under CI=true (conftest).
"""

from __future__ import annotations

import ctypes
import math
import warnings

import numpy as np
import pytest
from conftest import require_module

from vhbb.core.errors import DataError
from vhbb.stats import metrics

REL = 1e-8


@pytest.fixture(scope="module")
def ROOT():
    with warnings.catch_warnings():  # the PyPI build warns that it is an alpha release
        warnings.simplefilter("ignore", UserWarning)
        root = require_module("ROOT", "reference for TH1::Chi2Test and TH1::KolmogorovTest")
    root.gROOT.SetBatch(True)
    root.TH1.AddDirectory(False)
    root.gErrorIgnoreLevel = root.kFatal  # ROOT's Info/Warning/Error lines are expected here
    return root


_counter = iter(range(10**9))


def _th1(root, contents, w2=None):
    """A TH1D with the given in-range contents and (if given) sums of squared weights."""
    name = f"h{next(_counter)}"
    n = len(contents)
    h = root.TH1D(name, name, n, 0.0, float(n))
    if w2 is not None:
        h.Sumw2()
    for i, c in enumerate(contents):
        h.SetBinContent(i + 1, float(c))
        if w2 is not None:
            h.SetBinError(i + 1, math.sqrt(float(w2[i])))
    return h


def _root_chi2(root, c1, c2, opt, w2_1=None, w2_2=None):
    h1, h2 = _th1(root, c1, w2_1), _th1(root, c2, w2_2)
    chi2, ndf, igood = ctypes.c_double(0), ctypes.c_int(0), ctypes.c_int(0)
    p = h1.Chi2TestX(h2, chi2, ndf, igood, opt, root.nullptr)
    return p, chi2.value, ndf.value, igood.value


def _close(a, b, rel=REL):
    return a == b or abs(a - b) <= rel * max(abs(a), abs(b))


def _weighted_hist(rng, n_events, nbins, shape=1.0, wscale=1.0):
    x = rng.beta(2.0, 2.0 + shape, size=n_events)
    w = wscale * rng.gamma(3.0, 1.0 / 3.0, size=n_events)
    edges = np.linspace(0, 1, nbins + 1)
    c, _ = np.histogram(x, edges, weights=w)
    w2, _ = np.histogram(x, edges, weights=w * w)
    return c, w2


def _counts(rng, n_events, nbins, shape=1.0):
    x = rng.beta(2.0, 2.0 + shape, size=n_events)
    c, _ = np.histogram(x, np.linspace(0, 1, nbins + 1))
    return c.astype(float)


DEVIATIONS: dict[str, float] = {}


def _compare_chi2(root, c1, c2, opt, w2_1=None, w2_2=None):
    ours = metrics.chi2_test(c1, c2, opt, w2_1=w2_1, w2_2=w2_2)
    p, chi2, ndf, igood = _root_chi2(root, c1, c2, opt, w2_1, w2_2)
    assert ours.defined, ours.reason
    assert ours.ndf == ndf
    assert ours.igood == igood
    assert _close(ours.statistic, chi2), (ours.statistic, chi2)
    assert _close(ours.p_value, p), (ours.p_value, p)
    for key, a, b in (("chi2", ours.statistic, chi2), ("p", ours.p_value, p)):
        if b:
            DEVIATIONS[key] = max(DEVIATIONS.get(key, 0.0), abs(a - b) / abs(b))
    return ours


# ------------------------------------------------------------------------------- chi2 vs ROOT


@pytest.mark.parametrize("seed", range(6))
def test_chi2_uu_matches_root(ROOT, seed):
    rng = np.random.default_rng(seed)
    nbins = int(rng.integers(5, 60))
    c1 = _counts(rng, int(rng.integers(50, 3000)), nbins)
    c2 = _counts(rng, int(rng.integers(50, 3000)), nbins, shape=1.0 + 0.3 * seed)
    res = _compare_chi2(ROOT, c1, c2, "UU")
    assert res.mode == "UU"
    # explicit w2 = contents (ROOT without Sumw2) is the same test
    assert metrics.chi2_test(c1, c2, "UU", w2_1=c1, w2_2=c2) == res


def test_chi2_uu_empty_bins_reduce_ndf(ROOT):
    c1 = np.array([0, 3, 0, 7, 12, 0, 1, 0, 9, 4], float)
    c2 = np.array([0, 5, 2, 6, 10, 0, 0, 0, 11, 3], float)
    res = _compare_chi2(ROOT, c1, c2, "UU")
    assert res.ndf == 10 - 1 - 3  # three bins empty in both
    assert res.igood == 3  # a bin with < 1 event in each histogram


@pytest.mark.parametrize("seed", range(6))
def test_chi2_uw_matches_root(ROOT, seed):
    rng = np.random.default_rng(100 + seed)
    nbins = int(rng.integers(5, 50))
    c1 = _counts(rng, int(rng.integers(30, 2000)), nbins)
    c2, w2 = _weighted_hist(rng, int(rng.integers(100, 5000)), nbins, wscale=rng.uniform(0.1, 3))
    _compare_chi2(ROOT, c1, c2, "UW", w2_2=w2)


def test_chi2_uw_special_bins(ROOT):
    # bin 0: both empty (ndf - 1); bin 2: h2 zero content and zero error (e2 -> sumw2/sum2);
    # bin 4: h1 empty with sum2*n2 <= sum1*e2, ROOT's loop incrementing n1 and S1 persistently
    c1 = np.array([0, 20, 5, 9, 0, 14, 30], float)
    c2 = np.array([0, 15.5, 0, 7.2, 1.0, 12.1, 25.0])
    w2 = np.array([0, 9.0, 0, 5.1, 1.0, 8.3, 20.0])
    res = _compare_chi2(ROOT, c1, c2, "UW", w2_2=w2)
    assert res.ndf == 5
    # the documented degenerate example: n1 = 0, n2 = 1, S1 > S2
    _compare_chi2(ROOT, [0, 5, 5], [1, 4, 3], "UW", w2_2=[1, 4, 3])


@pytest.mark.parametrize("seed", range(6))
def test_chi2_ww_matches_root(ROOT, seed):
    rng = np.random.default_rng(200 + seed)
    nbins = int(rng.integers(5, 50))
    c1, w1 = _weighted_hist(rng, int(rng.integers(100, 4000)), nbins, wscale=rng.uniform(0.1, 3))
    c2, w2 = _weighted_hist(rng, int(rng.integers(100, 4000)), nbins, 1.5, rng.uniform(0.1, 3))
    _compare_chi2(ROOT, c1, c2, "WW", w2_1=w1, w2_2=w2)


def test_chi2_ww_empty_and_zero_error_bins(ROOT):
    c1 = np.array([0.0, 4.2, 3.3, 0.0, 8.8, 2.5])
    w1 = np.array([0.0, 1.1, 0.9, 0.0, 2.0, 0.7])
    c2 = np.array([0.0, 3.9, 2.7, 1.4, 9.6, 0.0])
    w2 = np.array([0.0, 1.3, 0.0, 0.6, 2.2, 0.0])  # bin 2: h2 exact (zero error), h1 not
    res = _compare_chi2(ROOT, c1, c2, "WW", w2_1=w1, w2_2=w2)
    assert res.ndf == 4


@pytest.mark.parametrize("seed", range(5))
def test_chi2_norm_scaled_unweighted_matches_root(ROOT, seed):
    rng = np.random.default_rng(300 + seed)
    nbins = int(rng.integers(5, 40))
    n1 = _counts(rng, int(rng.integers(50, 2000)), nbins)
    n2 = _counts(rng, int(rng.integers(50, 2000)), nbins, shape=1.2)
    k1, k2 = rng.uniform(0.01, 5, size=2)
    c1, c2 = k1 * n1, k2 * n2
    res = _compare_chi2(ROOT, c1, c2, "UU NORM", w2_1=k1 * k1 * n1, w2_2=k2 * k2 * n2)
    assert res.mode == "UU NORM"
    # scaling does not change the NORM test: it is the UU test of the raw counts
    raw = metrics.chi2_test(n1, n2, "UU")
    assert res.statistic == pytest.approx(raw.statistic, rel=1e-12)
    assert res.ndf == raw.ndf


def test_chi2_automatic_mode_matches_root(ROOT):
    rng = np.random.default_rng(7)
    c1 = _counts(rng, 800, 20)
    c2 = _counts(rng, 900, 20)
    cw, ww = _weighted_hist(rng, 2000, 20, wscale=0.3)
    assert _compare_chi2(ROOT, c1, c2, "").mode == "UU"
    assert _compare_chi2(ROOT, c1, cw, "", w2_2=ww).mode == "UW"
    assert _compare_chi2(ROOT, cw, c1, "", w2_1=ww, w2_2=c1).mode == "WW"


def test_chi2_filled_histograms(ROOT):
    """Histograms filled event by event in ROOT, contents and sumw2 read back from ROOT."""
    rng = np.random.default_rng(11)
    h1 = ROOT.TH1D("filled1", "", 25, 0, 1)
    h2 = ROOT.TH1D("filled2", "", 25, 0, 1)
    h2.Sumw2()
    for v in rng.beta(2, 3, size=600):
        h1.Fill(v)
    for v, w in zip(rng.beta(2, 3.2, size=1500), rng.gamma(2.0, 0.5, size=1500), strict=True):
        h2.Fill(v, w)
    c1 = np.array([h1.GetBinContent(i) for i in range(1, 26)])
    c2 = np.array([h2.GetBinContent(i) for i in range(1, 26)])
    w2 = np.array([h2.GetSumw2()[i] for i in range(1, 26)])
    for opt in ("UW", ""):
        ours = metrics.chi2_test(c1, c2, opt, w2_2=w2)
        assert _close(ours.p_value, h1.Chi2Test(h2, opt))
        assert _close(ours.statistic, h1.Chi2Test(h2, opt + " CHI2"))
        assert _close(ours.chi2_ndf, h1.Chi2Test(h2, opt + " CHI2/NDF"))


# ------------------------------------------------------------------- undefined cases: never 0


def test_guard_reasons():
    assert metrics.check_nonnegative([0.0, 1.0, 2.0], "h") is None
    assert "empty" in metrics.check_nonnegative([0.0, 0.0], "h")
    assert "negative" in metrics.check_nonnegative([1.0, -0.5, 2.0], "h")
    assert "non-finite" in metrics.check_nonnegative([1.0, np.nan], "h")
    assert "no bins" in metrics.check_nonnegative([], "h")


def test_chi2_and_ks_undefined_give_none_with_reason(ROOT):
    full = np.array([3.0, 4.0, 5.0])
    for c1, c2 in (([0.0, 0.0, 0.0], full), (full, [1.0, -2.0, 3.0])):
        res = metrics.chi2_test(c1, c2, "UU")
        assert not res.defined and res.reason
        assert res.p_value is None and res.statistic is None and res.ndf is None
        ks = metrics.kolmogorov_test(c1, c2)
        assert not ks.defined and ks.reason and ks.p_value is None and ks.max_distance is None
    # where ROOT returns a silent 0 (empty histogram), we return None
    assert _root_chi2(ROOT, [0.0, 0.0, 0.0], full, "UU")[0] == 0.0
    # WW with all-zero errors in a bin of both histograms
    res = metrics.chi2_test(full, full, "WW", w2_1=[1.0, 0.0, 1.0], w2_2=[1.0, 0.0, 1.0])
    assert not res.defined and "zero errors" in res.reason
    # KS with zero errors in both histograms
    ks = metrics.kolmogorov_test(full, full, w2_1=np.zeros(3), w2_2=np.zeros(3))
    assert not ks.defined and "zero" in ks.reason


def test_chi2_rejects_flow_options():
    with pytest.raises(ValueError, match="OF"):
        metrics.chi2_test([1.0, 2.0], [2.0, 1.0], "UU OF")


# ---------------------------------------------------------------------------------- KS vs ROOT


def test_kolmogorov_prob_matches_root(ROOT):
    for z in np.concatenate([np.linspace(0.0, 7.5, 1501), [0.2, 0.755, 6.8116, 1.0, 3.0]]):
        assert _close(metrics.kolmogorov_prob(float(z)), ROOT.TMath.KolmogorovProb(float(z)), 1e-12)


def _compare_ks(root, c1, c2, w2_1=None, w2_2=None):
    h1, h2 = _th1(root, c1, w2_1), _th1(root, c2, w2_2)
    ours = metrics.kolmogorov_test(c1, c2, w2_1=w2_1, w2_2=w2_2)
    ours_n = metrics.kolmogorov_test(c1, c2, w2_1=w2_1, w2_2=w2_2, option="N")
    assert ours.defined, ours.reason
    p, d, pn = h1.KolmogorovTest(h2, ""), h1.KolmogorovTest(h2, "M"), h1.KolmogorovTest(h2, "N")
    assert _close(ours.p_value, p), (ours.p_value, p)
    assert _close(ours.max_distance, d), (ours.max_distance, d)
    assert _close(ours_n.p_value, pn), (ours_n.p_value, pn)
    for key, a, b in (("ks_p", ours.p_value, p), ("ks_d", ours.max_distance, d)):
        if b:
            DEVIATIONS[key] = max(DEVIATIONS.get(key, 0.0), abs(a - b) / abs(b))
    return ours


@pytest.mark.parametrize("seed", range(6))
def test_kolmogorov_unweighted_matches_root(ROOT, seed):
    rng = np.random.default_rng(400 + seed)
    nbins = int(rng.integers(5, 100))
    c1 = _counts(rng, int(rng.integers(20, 3000)), nbins)
    c2 = _counts(rng, int(rng.integers(20, 3000)), nbins, shape=1.0 + 0.1 * seed)
    res = _compare_ks(ROOT, c1, c2)
    assert res.n_eff1 == pytest.approx(c1.sum())


@pytest.mark.parametrize("seed", range(6))
def test_kolmogorov_weighted_matches_root(ROOT, seed):
    rng = np.random.default_rng(500 + seed)
    nbins = int(rng.integers(5, 100))
    c1, w1 = _weighted_hist(rng, int(rng.integers(50, 3000)), nbins, wscale=rng.uniform(0.1, 3))
    c2, w2 = _weighted_hist(rng, int(rng.integers(50, 3000)), nbins, 1.1, rng.uniform(0.1, 3))
    res = _compare_ks(ROOT, c1, c2, w1, w2)
    # effective entries (sum w)^2 / sum w^2
    assert res.n_eff1 == pytest.approx(c1.sum() ** 2 / w1.sum(), rel=1e-12)


def test_kolmogorov_exact_function_and_empty_bins(ROOT):
    rng = np.random.default_rng(9)
    model = np.array([0.0, 1.0, 3.0, 7.0, 9.0, 6.0, 2.0, 0.5, 0.0, 0.0])
    data = np.array([0.0, 2.0, 2.0, 9.0, 8.0, 4.0, 3.0, 1.0, 0.0, 1.0])
    _compare_ks(ROOT, data, model, None, np.zeros_like(model))  # model without errors
    c1, w1 = _weighted_hist(rng, 60, 30)  # sparse: many empty bins
    _compare_ks(ROOT, c1, data.repeat(3), w1, None)


# ---------------------------------------------------------------- other metrics vs references


def test_jensen_shannon_matches_scipy():
    from scipy.spatial.distance import jensenshannon

    rng = np.random.default_rng(1)
    for _ in range(20):
        p = rng.gamma(1.0, size=30) * (rng.random(30) > 0.2)
        q = rng.gamma(1.0, size=30) * (rng.random(30) > 0.2) * rng.uniform(0.1, 10)
        assert metrics.jensen_shannon_divergence(p, q) == pytest.approx(
            jensenshannon(p, q, base=2) ** 2, rel=1e-12, abs=1e-15
        )
    assert metrics.jensen_shannon_divergence([1, 0], [0, 1]) == pytest.approx(1.0)
    assert metrics.jensen_shannon_divergence([1, 2], [2, 4]) == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(DataError, match="negative"):
        metrics.jensen_shannon_divergence([1.0, -1.0, 3.0], [1.0, 1.0, 1.0])


def _classifier_sample(rng, n, ties=False, weighted=True):
    y = rng.random(n) < 0.3
    score = 1 / (1 + np.exp(-(rng.normal(size=n) + 1.2 * y)))
    if ties:
        score = np.round(score, 1)
    w = rng.gamma(2.0, 0.5, size=n) if weighted else None
    return y.astype(int), score, w


@pytest.mark.parametrize(("ties", "weighted"), [(False, False), (False, True), (True, True)])
def test_roc_auc_matches_sklearn(ties, weighted):
    from sklearn.metrics import roc_auc_score, roc_curve

    rng = np.random.default_rng(3)
    y, s, w = _classifier_sample(rng, 3000, ties, weighted)
    assert metrics.roc_auc(y, s, w) == pytest.approx(
        roc_auc_score(y, s, sample_weight=w), rel=1e-12
    )
    fpr, tpr, thr = metrics.roc_curve(y, s, w)
    fpr_ref, tpr_ref, thr_ref = roc_curve(y, s, sample_weight=w, drop_intermediate=False)
    np.testing.assert_allclose(fpr, fpr_ref, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(tpr, tpr_ref, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(thr[1:], thr_ref[1:])


def _fop_truncated_reference(y, s, w, edges=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0), wts=(4, 3, 2, 1, 0)):
    """The challenge's roc_auc_truncated, with sample weights passed to sklearn's roc_curve."""
    from sklearn.metrics import auc, roc_curve

    fpr, tpr, _ = roc_curve(y, s, sample_weight=w)
    area = 0.0
    for k in range(1, len(edges)):
        area += wts[k - 1] * (
            auc(fpr, np.minimum(tpr, edges[k])) - auc(fpr, np.minimum(tpr, edges[k - 1]))
        )
    return area / np.sum(np.diff(edges) * np.asarray(wts))


@pytest.mark.parametrize(("ties", "weighted"), [(False, False), (False, True), (True, True)])
def test_truncated_auc_matches_challenge(ties, weighted):
    rng = np.random.default_rng(4)
    y, s, w = _classifier_sample(rng, 4000, ties, weighted)
    assert metrics.roc_auc_truncated(y, s, w) == pytest.approx(
        _fop_truncated_reference(y, s, w), rel=1e-12
    )
    # a perfect classifier scores 1, the (reversed) worst 0
    assert metrics.roc_auc_truncated(y, y.astype(float), w) == pytest.approx(1.0)
    assert metrics.roc_auc_truncated(y, 1.0 - y, w) == pytest.approx(0.0, abs=1e-15)


def test_r50():
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(5)
    y, s, w = _classifier_sample(rng, 5000)
    fpr, tpr, _ = roc_curve(y, s, sample_weight=w, drop_intermediate=False)
    assert metrics.r50(y, s, w) == pytest.approx(1.0 / np.interp(0.5, tpr, fpr), rel=1e-10)
    # analytic: unit weights, signal scores 1..4, background 0.5..9.5 -> at TPR 0.5 the
    # cut s >= 3 keeps background {3.5..9.5}: the ROC passes (fpr 7/10, tpr 1/2) exactly
    sig = np.array([1.0, 2.0, 3.0, 4.0])
    bkg = np.arange(10) + 0.5
    y2 = np.r_[np.ones(4), np.zeros(10)]
    assert metrics.r50(y2, np.r_[sig, bkg]) == pytest.approx(10 / 7)
    assert metrics.r50(y2, np.r_[sig + 100, bkg]) == math.inf


def _cvm_reference(predictions, masses, n_neighbours=200, step=50):
    """Flavours-of-Physics compute_cvm: per mass window, CvM of global-rank CDFs."""
    predictions = np.asarray(predictions)[np.argsort(masses)]
    ranks = np.argsort(np.argsort(predictions, kind="mergesort"), kind="mergesort")
    n = len(ranks)
    target = np.arange(1, n + 1, dtype=float) / n
    values = []
    for start in range(0, n - n_neighbours + 1, step):
        window = ranks[start : start + n_neighbours]
        cdf = np.cumsum(np.bincount(window, minlength=n), dtype=float)
        values.append(np.mean((target - cdf / cdf[-1]) ** 2))
    return np.mean(values)


@pytest.mark.parametrize(("n", "nn", "step"), [(3000, 200, 50), (1234, 100, 37), (500, 500, 1)])
def test_cvm_matches_challenge(n, nn, step):
    rng = np.random.default_rng(6)
    mass = rng.uniform(50, 200, size=n)
    sculpted = rng.random(n) + 0.005 * (mass - 125)
    flat = rng.random(n)
    for score in (sculpted, flat, np.round(flat, 2)):
        assert metrics.cvm_flatness(score, mass, nn, step) == pytest.approx(
            _cvm_reference(score, mass, nn, step), rel=1e-10
        )
    if nn < n:  # one window holding every event is trivially flat
        assert metrics.cvm_flatness(sculpted, mass, nn, step) > metrics.cvm_flatness(
            flat, mass, nn, step
        )


def test_pearson_correlation():
    rng = np.random.default_rng(8)
    x = rng.normal(size=500)
    y = 0.6 * x + rng.normal(size=500)
    assert metrics.pearson_correlation(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], rel=1e-12)
    w = rng.integers(1, 5, size=500)
    rep = np.corrcoef(np.repeat(x, w), np.repeat(y, w))[0, 1]
    assert metrics.pearson_correlation(x, y, w) == pytest.approx(rep, rel=1e-12)
    cov = np.cov(x, y, aweights=w * 0.37)
    assert metrics.pearson_correlation(x, y, w * 0.37) == pytest.approx(
        cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1]), rel=1e-12
    )


def test_significances_analytic():
    # s = b: Z_A^2 = 2 (2b ln 2 - b)
    assert metrics.asimov_significance(50.0, 50.0) == pytest.approx(
        math.sqrt(100 * (2 * math.log(2) - 1)), rel=1e-14
    )
    # bins add in quadrature
    z1 = metrics.asimov_significance(3.0, 40.0)
    z2 = metrics.asimov_significance(8.0, 15.0)
    assert metrics.asimov_significance([3.0, 8.0, 0.0], [40.0, 15.0, 0.0]) == pytest.approx(
        math.hypot(z1, z2), rel=1e-14
    )
    # s << b: Z_A -> s / sqrt(b) (next order -s^2 / (6 b^1.5) relative... check the limit)
    s, b = 1e-3, 1e6
    assert metrics.asimov_significance(s, b) == pytest.approx(s / math.sqrt(b), rel=1e-8)
    # sqrt(sum s^2 / (s + b))
    assert metrics.simple_significance([5.0, 12.0], [20.0, 24.0]) == pytest.approx(
        math.sqrt(1.0 + 4.0), rel=1e-14
    )
    with pytest.raises(DataError, match="background <= 0"):
        metrics.asimov_significance([1.0, 2.0], [3.0, 0.0])


def test_distance_correlation_numpy_matches_dcor():
    dcor = require_module("dcor", "reference distance correlation")
    rng = np.random.default_rng(10)
    for n, block in ((300, 1024), (517, 64)):
        x = rng.normal(size=n)
        y = np.sin(2 * x) + 0.5 * rng.normal(size=n)
        ref = dcor.distance_correlation_sqr(x, y, method="naive")
        got = metrics.distance_correlation_sq(x, y, block=block)
        assert abs(got - ref) < 1e-10
        DEVIATIONS["dcor_numpy"] = max(DEVIATIONS.get("dcor_numpy", 0.0), abs(got - ref))
        w = rng.integers(1, 4, size=n)
        ref_w = dcor.distance_correlation_sqr(np.repeat(x, w), np.repeat(y, w), method="naive")
        assert abs(metrics.distance_correlation_sq(x, y, w, block=block) - ref_w) < 1e-10
    assert metrics.distance_correlation_sq(np.ones(10), np.arange(10.0)) == 0.0


def test_report_max_deviation_vs_root():
    """Not a check: logs the largest relative deviations seen above (pytest -s -k report)."""
    import logging

    logging.getLogger(__name__).info("max relative deviations vs references: %s", DEVIATIONS)


def test_stable_order_is_remembered_by_content_and_matches_argsort():
    rng = np.random.default_rng(11)
    s = np.round(rng.random(5000), 2)  # many ties: the stable order matters
    first = metrics.stable_order(s)
    np.testing.assert_array_equal(first, np.argsort(s, kind="mergesort"))
    assert metrics.stable_order(s.copy()) is first  # same bytes: the remembered order
    changed = s.copy()
    changed[0] = 2.0
    np.testing.assert_array_equal(
        metrics.stable_order(changed), np.argsort(changed, kind="mergesort")
    )
    with pytest.raises(ValueError):
        first[0] = 1  # shared between calls: read-only


def test_roc_of_bootstrap_replicas_equals_sklearn_with_zero_weights():
    skm = require_module("sklearn.metrics")
    rng = np.random.default_rng(5)
    s, y = np.round(rng.random(3000), 2), rng.random(3000) < 0.4
    for _ in range(3):
        w = rng.random(3000) * rng.poisson(1.0, 3000)  # zero-weight events are dropped
        fpr, tpr, thr = metrics.roc_curve(y, s, w)
        ref = skm.roc_curve(y, s, sample_weight=w, drop_intermediate=False)
        np.testing.assert_allclose(fpr, ref[0], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(tpr, ref[1], rtol=1e-12, atol=1e-15)
        np.testing.assert_array_equal(thr[1:], ref[2][1:])
