"""Model-quality figures (vhbb.evaluation.quality): collapse on discrimination, the paired
baseline gain, the data/MC chi2 test, the VZ verdict."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vhbb.evaluation import quality

SETTINGS = {
    "bootstrap": 20,
    "collapse": {"min_auc": 0.55, "mjj_slices": [[50, 90], [90, 110], [110, 130], [130, 250]]},
}


def events(score_fn, n=20_000, seed=0):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    sig = rng.random(n) < 0.3
    m = np.where(sig, rng.normal(125, 12, n), rng.uniform(50, 250, n))
    x = np.where(sig, rng.normal(1.0, 1.0, n), rng.normal(-1.0, 1.0, n))
    return {
        "role": np.where(sig, "signal", "nonresonant"),
        "score": score_fn(x, m, rng),
        "m_jj": m,
        "weight": np.ones(n),
        "pos_weight": np.ones(n),
    }


@pytest.mark.parametrize(
    "score_fn",
    [lambda x, m, rng: np.full(len(x), 0.5), lambda x, m, rng: rng.random(len(x))],
    ids=["constant", "random"],
)
def test_constant_and_random_models_are_collapsed(score_fn):
    ev = events(score_fn)
    out = quality.discrimination(ev, SETTINGS, training_collapsed=False, seed=1)
    assert out["collapsed"]
    assert any("no AUC" in r for r in out["reasons"])
    for s in out["mjj_slices"]:
        assert s["auc"]["value"] < 0.55 and s["auc"]["error"] is not None  # bootstrap error


def test_a_discriminating_model_is_not_collapsed():
    ev = events(lambda x, m, rng: 1 / (1 + np.exp(-2 * x)))
    out = quality.discrimination(ev, SETTINGS, training_collapsed=False, seed=1)
    assert not out["collapsed"] and out["auc"]["value"] > 0.8
    assert out["cross_entropy"]["value"] < math.log(2)
    flagged = quality.discrimination(ev, SETTINGS, training_collapsed=True, seed=1)
    assert flagged["collapsed"] and "score spread" in flagged["reasons"][0]


def test_class_balanced_bce_of_the_prior_is_ln2():
    y = np.array([1, 0, 0, 0], bool)
    assert quality.class_balanced_bce(y, np.full(4, 0.5), np.ones(4)) == pytest.approx(math.log(2))


def test_baseline_gain_is_paired():
    rng = np.random.default_rng(3)
    score = rng.random(1000)
    w = np.ones(1000)

    def fast_fit(s, ww):  # type: ignore[no-untyped-def]
        # a toy "significance": sum of weights times a score-dependent factor
        return float(np.sum(ww * (0.1 + s)) / 100)

    out = quality.baseline_gain(fast_fit, score, w, replicas=50, seed=1)
    gain = out["gain"]["value"]
    assert gain == pytest.approx(fast_fit(score, w) - fast_fit(np.full(1000, 0.5), w))
    # paired: the replica differences vary much less than either figure's replicas
    assert 0 < out["gain"]["error"] < 0.3
    assert out["replicas_used"] == 50


def test_data_mc_chi2_against_scipy_and_effect_size():
    from scipy import stats

    rng = np.random.default_rng(4)
    mc = rng.beta(2, 5, 200_000)
    w_mc = np.full(len(mc), 0.01)  # expectation 2000 events
    data = rng.beta(2, 5, rng.poisson(2000))
    out = quality.data_mc_chi2(data, mc, w_mc, n_bins=20, min_expected=20, reference_count=1000)
    assert out["ndf"] == out["n_bins"] - 1
    edges = np.linspace(0, 1, 21)
    d, _ = np.histogram(data, edges)
    m, _ = np.histogram(mc, edges, weights=w_mc)
    m2, _ = np.histogram(mc, edges, weights=w_mc**2)
    groups = quality.merge_from_top(m, 20)
    dg = np.array([d[g].sum() for g in groups])
    mg = np.array([m[g].sum() for g in groups])
    m2g = np.array([m2[g].sum() for g in groups])
    chi2 = float(np.sum((dg - mg) ** 2 / (mg + m2g)))
    assert out["chi2"]["value"] == pytest.approx(chi2, rel=1e-9)
    assert out["p_value"]["value"] == pytest.approx(stats.chi2.sf(chi2, len(groups) - 1))
    assert out["p_value"]["value"] > 1e-3  # data drawn from the MC shape
    assert all(mg >= 20)
    # a tilt is significant, and its effect size does not grow with the count
    tilted = rng.choice(mc, size=20_000, p=(1 + 0.6 * (mc - 0.3)) / np.sum(1 + 0.6 * (mc - 0.3)))
    big = quality.data_mc_chi2(tilted, mc, w_mc * 10, n_bins=20, min_expected=20,
                               reference_count=1000)  # fmt: skip
    assert big["p_value"]["value"] < 1e-6


def test_vz_verdict():
    assert quality.vz_verdict(5.0, 0.5, 3.0, [])["visible"] is True
    stays = quality.vz_verdict(19.0, 10.0, 3.0, [])
    assert stays["visible"] is False and "stays" in stays["reason"]
    assert quality.sees_mjj(["pt_jj", "dr_jj"]) == []  # approximations: the test applies
    na = quality.vz_verdict(-10.5, 1.0, 3.0, quality.sees_mjj(["m_jj", "met_pt"]))
    assert na["visible"] is None and na["applicable"] is False and "m_jj" in na["reason"]
