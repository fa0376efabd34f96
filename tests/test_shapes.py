"""Smoothing (ROOT's 353QH twice) and the MC-noise shape test of vhbb.stats.shapes."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import require_module
from vhbb.stats.shapes import shape_test, smooth_353qh, smooth_variation


@pytest.mark.parametrize("times", [1, 2, 3])
def test_smoothing_equals_root_smootharray(times: int) -> None:
    root = require_module("ROOT", "reference TH1::SmoothArray")
    rng = np.random.default_rng(7)
    for n in (3, 4, 5, 6, 9, 16, 41):
        for trial in range(12):
            x = rng.normal(10.0, 3.0, n)
            if trial % 3 == 0:
                x = np.round(x)  # flat segments: the quadratic-interpolation branch
            if trial % 4 == 1:
                x -= 10.0  # negative values: no clipping at zero
            ref = x.copy()
            root.TH1.SmoothArray(n, ref, times)
            np.testing.assert_allclose(smooth_353qh(x, times), ref, rtol=0, atol=1e-12)
            assert n < 5 or not np.allclose(ref, x)  # the reference did smooth


def test_smooth_variation_keeps_a_constant_ratio_and_empty_bins() -> None:
    rng = np.random.default_rng(1)
    nom = rng.uniform(1.0, 5.0, (4, 9))
    nom[2, 3] = 0.0
    var = nom * 1.07
    var[2, 3] = 0.4  # no nominal: kept as it is
    out = smooth_variation(nom, var, axis=1)
    np.testing.assert_allclose(out[nom > 0], 1.07 * nom[nom > 0], rtol=1e-12)
    assert out[2, 3] == 0.4
    # a noisy ratio gets smoother (smaller second differences) along the smoothed axis only
    nom = rng.uniform(1.0, 5.0, (3, 30))
    noisy = nom * (1.0 + rng.normal(0.0, 0.05, nom.shape))
    sm = smooth_variation(nom, noisy, axis=1)
    rough = np.abs(np.diff(noisy / nom, 2, axis=1)).sum(axis=1)
    assert np.all(np.abs(np.diff(sm / nom, 2, axis=1)).sum(axis=1) < 0.5 * rough)
    across = np.abs(np.diff(sm / nom, 1, axis=0)).sum()  # rows are smoothed separately
    assert across > 0.5 * np.abs(np.diff(noisy / nom, 1, axis=0)).sum()


def _weighted_events(rng: np.random.Generator, n: int, n_bins: int):
    bins = rng.integers(0, n_bins, n)
    w = rng.exponential(1.0, n)
    return bins, w


def _fill(bins: np.ndarray, w: np.ndarray, n_bins: int) -> np.ndarray:
    return np.bincount(bins, weights=w, minlength=n_bins)


def test_shape_test_is_calibrated_on_pure_noise_and_finds_a_real_shape() -> None:
    """A weight variation 1 + eps_i with eps independent of the bin has no shape: its p-values
    are uniform (5 % below 0.05 within binomial errors); a slope of the same size is found."""
    rng = np.random.default_rng(3)
    n_bins, p_noise, p_slope = 12, [], []
    for _ in range(400):
        bins, w = _weighted_events(rng, 3000, n_bins)
        nom = _fill(bins, w, n_bins)
        for store, slope in ((p_noise, 0.0), (p_slope, 0.2)):
            ratio = 1.0 + rng.normal(0.0, 0.3, len(w)) + slope * (bins / (n_bins - 1) - 0.5)
            var = _fill(bins, w * ratio, n_bins)
            diff2 = _fill(bins, (w * ratio - w) ** 2, n_bins)  # Var(var - nom) per bin
            store.append(shape_test(nom, var, diff2).p_value)
    frac = np.mean(np.array(p_noise) < 0.05)
    assert abs(frac - 0.05) < 3 * np.sqrt(0.05 * 0.95 / 400)
    assert np.mean(np.array(p_slope) < 0.05) > 0.9


def test_shape_test_of_a_pure_normalisation_change() -> None:
    nom = np.array([4.0, 6.0, 10.0, 3.0])
    res = shape_test(nom, 1.1 * nom, np.full(4, 0.01))
    assert res.chi2 == pytest.approx(0.0, abs=1e-20)
    assert res.ndf == 3 and res.p_value == pytest.approx(1.0)
    assert res.norm_change == pytest.approx(0.1)
    assert res.norm_sigma == pytest.approx(np.sqrt(0.04) / 23.0)
    # bins without noise carry no information; a single noisy bin has no shape degree of freedom
    assert shape_test(nom, nom, np.array([0.0, 0.0, 0.0, 1.0])).ndf == 0


def test_channel_noise_equals_the_bootstrap_variance_of_varied_minus_nominal() -> None:
    """diff_sumw2 is the variance of varied - nominal under Poisson resampling of the events
    (the same events fill both): checked against 4000 bootstrap replicas, and far below the
    nominal sumw2 for a small migration."""
    from vhbb.fit.templates import diff_sumw2

    rng = np.random.default_rng(11)
    n, n_bins = 4000, 6
    nominal_bin = rng.integers(-1, n_bins, n)
    moved = rng.random(n) < 0.1  # 10 % of the events migrate (some in from / out to -1)
    varied_bin = np.where(
        moved, np.clip(nominal_bin + rng.choice([-1, 1], n), -1, n_bins - 1), nominal_bin
    )
    w = rng.exponential(1.0, n) * np.where(rng.random(n) < 0.1, -1.0, 1.0)
    wv = w * (1.0 + 0.05 * rng.normal(size=n))
    expected = diff_sumw2(nominal_bin, varied_bin, w, wv, n_bins)

    def fill(bins: np.ndarray, weights: np.ndarray, k: np.ndarray) -> np.ndarray:
        ok = bins >= 0
        return np.bincount(bins[ok], weights=(weights * k)[ok], minlength=n_bins)

    reps = []
    for _ in range(4000):
        k = rng.poisson(1.0, n)
        reps.append(fill(varied_bin, wv, k) - fill(nominal_bin, w, k))
    np.testing.assert_allclose(np.var(reps, axis=0), expected, rtol=0.1)
    nominal_sumw2 = fill(nominal_bin, w**2, np.ones(n))
    assert np.all(expected < 0.5 * nominal_sumw2)


def _yields(rng: np.random.Generator, shape: float, norm: float, n: int = 10):
    nom = rng.uniform(50.0, 100.0, n)
    noise = np.full(n, 1.0)  # sigma 1 per bin on varied - nominal
    up = nom * (1.0 + norm) + shape * np.linspace(-1.0, 1.0, n) * 10.0 + rng.normal(0, 1, n)
    down = nom * (1.0 - norm) - shape * np.linspace(-1.0, 1.0, n) * 10.0 + rng.normal(0, 1, n)
    return {
        "nominal": nom,
        "sumw2": nom.copy(),
        "sysUp": up,
        "sysDown": down,
        "noise_sysUp": noise,
        "noise_sysDown": noise.copy(),
    }


def test_treat_shapes_keeps_prunes_to_normalisation_or_drops() -> None:
    from vhbb.fit.signal_fit import treat_shapes

    rng = np.random.default_rng(5)
    yields = {
        "shape": _yields(rng, shape=0.5, norm=0.0),  # 5 sigma per edge bin: a real shape
        "norm": _yields(rng, shape=0.0, norm=0.05),  # 5 % of ~750: far above sigma_k ~ 0.004
        "none": _yields(rng, shape=0.0, norm=0.0),  # noise only
    }
    before = {p: {k: v.copy() for k, v in y.items()} for p, y in yields.items()}
    left, report = treat_shapes(
        yields,
        ["sys"],
        pruning={"enabled": True, "p_value": 0.05, "norm_sigma": 3.0},
        smoothing=None,
    )
    assert left == ["sys"]
    assert {p: r["action"] for p, r in report["sys"].items()} == {
        "shape": "kept",
        "norm": "normalisation only",
        "none": "pruned",
    }
    np.testing.assert_array_equal(yields["shape"]["sysUp"], before["shape"]["sysUp"])
    k = report["sys"]["norm"]["up"]["norm_change"]
    assert k == pytest.approx(before["norm"]["sysUp"].sum() / before["norm"]["nominal"].sum() - 1)
    np.testing.assert_allclose(yields["norm"]["sysUp"], (1 + k) * before["norm"]["nominal"])
    np.testing.assert_array_equal(yields["none"]["sysDown"], before["none"]["nominal"])
    # a nuisance pruned for every process is removed; pruning off keeps everything as it is
    only_noise = {"none": _yields(rng, shape=0.0, norm=0.0)}
    assert treat_shapes(only_noise, ["sys"], pruning={"enabled": True}, smoothing=None)[0] == []
    again = {"none": _yields(rng, shape=0.0, norm=0.0)}
    copy = again["none"]["sysUp"].copy()
    left, report = treat_shapes(again, ["sys"], pruning={"enabled": False}, smoothing=None)
    assert left == ["sys"] and report["sys"]["none"]["action"] == "kept"
    np.testing.assert_array_equal(again["none"]["sysUp"], copy)
