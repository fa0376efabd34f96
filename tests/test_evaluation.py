"""Evaluation figures where vhbb.evaluation.evaluate composes the estimators of vhbb.stats.metrics.

The estimators themselves are tested against ROOT/dcor/sklearn/scipy in test_metrics.py; here:
the quantile split (disjoint, equal yield), null-with-reason cases, the composition (chi2/KS on
the split, JSD on the pass/fail cut, dCor on unit weights), bootstrap sanity, the VZ-peak test,
significance merging, schema validation, a collapsed model, and the acceptance test (DisCo and
adversarial models sculpt less than the mass-less plain classifier).
"""

from __future__ import annotations

import copy
import json
import logging
import math

import numpy as np
import pytest
from conftest import REPO, require_module

from vhbb.core.errors import DataError
from vhbb.evaluation import evaluate as ev
from vhbb.stats import metrics as mt

SETTINGS = {
    "mjj_edges": [50, 70, 90, 110, 130, 150, 200, 250],
    "score_quantiles": 4,
    "significance_bins": 15,
    "min_mc_effective": 10,
    "bootstrap": 5,
    "positive_weight": "abs",
    "jsd_signal_efficiency": 0.5,
    "cvm": {"n_neighbours": 100, "step": 50},
    "dcor": {"max_events": 1500, "bootstrap": 2},
    "sculpting": {"reference_count": 1000.0, "metric": "chi2_ndf_ref", "threshold": 3.0},
    "vz_peak": {
        "window": [75, 105],
        "sidebands": [[50, 70], [110, 160]],
        "bin_width": 5,
        "order": 2,
        "min_significance": 3.0,
        "required": True,
    },
    "data_mc_ks_threshold": 0.09,
    "plot_score_bins": 20,
    "collapse": {"min_auc": 0.55, "mjj_slices": [[50, 110], [110, 130], [130, 250]]},
    "baseline": {"bootstrap": 4, "min_gain_significance": 3.0},
    "data_mc": {"bins": 20, "min_expected": 20, "reference_count": 1000, "min_p_value": 0.01,
                "require": False},
}  # fmt: skip


def toy_events(n: int = 6000, seed: int = 1, sculpt: float = 0.0) -> dict[str, np.ndarray]:
    """Signal (ZH), VZ and non-resonant background with m_jj; ``sculpt`` couples score and m_jj."""
    rng = np.random.default_rng(seed)
    n_s, n_v, n_b = n // 4, n // 4, n // 2
    m = np.concatenate(
        [rng.normal(125, 12, n_s), rng.normal(91, 10, n_v), 50 + rng.exponential(60, n_b)]
    )
    role = np.array(["signal"] * n_s + ["resonant"] * n_v + ["nonresonant"] * n_b)
    process = np.array(["ZH"] * n_s + ["VZ"] * n_v + ["TT"] * n_b)
    base = np.concatenate([rng.normal(1.0, 1, n_s), rng.normal(0, 1, n_v), rng.normal(0, 1, n_b)])
    z = base + sculpt * (role == "nonresonant") * np.exp(-(((m - 120) / 20) ** 2)) * 2
    score = 1 / (1 + np.exp(-z))
    weight = np.concatenate([np.full(n_s, 0.02), np.full(n_v, 0.1), np.full(n_b, 0.5)])
    weight = weight * rng.choice([1.0, 1.0, 1.0, 1.0, -1.0], len(weight)) * 1.5
    return {
        "score": score,
        "m_jj": np.clip(m, 50, 250),
        "weight": weight,
        "pos_weight": np.abs(weight),
        "role": role,
        "process": process,
    }


def test_quantile_split_is_disjoint_with_equal_yield():
    e = toy_events()
    nonres = e["role"] == "nonresonant"
    s, w = e["score"][nonres], e["pos_weight"][nonres]
    edges = ev.weighted_quantile_edges(s, w, 4)
    q = ev.quantile_index(s, edges)
    assert set(np.unique(q)) == {0, 1, 2, 3}
    yields = np.array([w[q == i].sum() for i in range(4)])
    np.testing.assert_allclose(yields / yields.sum(), 0.25, atol=0.01)
    res = ev.sculpting(s, e["m_jj"][nonres], w, mjj_edges=np.array(SETTINGS["mjj_edges"], float),
                       n_quantiles=4, reference_count=1000)  # fmt: skip
    for quant in res["quantiles"]:
        # in + out is every event exactly once: effective counts of disjoint complementary sets
        inside = q == quant["index"]
        assert quant["n_eff_in"] == pytest.approx(ev.n_effective(w[inside]))
        assert quant["n_eff_out"] == pytest.approx(ev.n_effective(w[~inside]))
        assert quant["yield_in"] == pytest.approx(w[inside].sum())


def test_sculpting_composes_root_tests():
    """Per quantile: the same numbers as chi2_test/kolmogorov_test on independent histograms."""
    e = toy_events(sculpt=1.0)
    nonres = e["role"] == "nonresonant"
    s, m, w = e["score"][nonres], e["m_jj"][nonres], e["pos_weight"][nonres]
    edges = np.array(SETTINGS["mjj_edges"], float)
    res = ev.sculpting(s, m, w, mjj_edges=edges, n_quantiles=4, reference_count=1000)
    q = ev.quantile_index(s, np.asarray(res["quantile_edges"]))
    for quant in res["quantiles"]:
        sel = q == quant["index"]
        h1, _ = np.histogram(m[sel], edges, weights=w[sel])
        h2, _ = np.histogram(m[~sel], edges, weights=w[~sel])
        e1, _ = np.histogram(m[sel], edges, weights=w[sel] ** 2)
        e2, _ = np.histogram(m[~sel], edges, weights=w[~sel] ** 2)
        chi2 = mt.chi2_test(h1, h2, "WW", w2_1=e1, w2_2=e2)
        ks = mt.kolmogorov_test(h1, h2, w2_1=e1, w2_2=e2)
        assert quant["chi2"]["value"] == pytest.approx(chi2.statistic)
        assert quant["chi2_ndf"]["value"] == pytest.approx(chi2.chi2_ndf)
        assert quant["p_value"]["value"] == pytest.approx(chi2.p_value)
        assert quant["ks_distance"]["value"] == pytest.approx(ks.max_distance)
        assert quant["ks_p_value"]["value"] == pytest.approx(ks.p_value)
    top = res["quantiles"][-1]
    assert res["highest"]["chi2_ndf"]["value"] == top["chi2_ndf"]["value"]
    vals = [x["chi2_ndf"]["value"] for x in res["quantiles"]]
    assert res["mean"]["chi2_ndf"]["value"] == pytest.approx(np.mean(vals))


def test_sculpting_against_pyroot_on_one_quantile():
    root = require_module("ROOT", "reference TH1::Chi2Test on the quantile split")
    e = toy_events(sculpt=1.0)
    nonres = e["role"] == "nonresonant"
    s, m, w = e["score"][nonres], e["m_jj"][nonres], e["pos_weight"][nonres]
    edges = np.array(SETTINGS["mjj_edges"], float)
    res = ev.sculpting(s, m, w, mjj_edges=edges, n_quantiles=4, reference_count=1000)
    q = ev.quantile_index(s, np.asarray(res["quantile_edges"]))
    sel = q == 3
    hs = []
    for name, mask in (("hin", sel), ("hout", ~sel)):
        h = root.TH1D(name, name, len(edges) - 1, edges)
        h.Sumw2()
        for x, wx in zip(np.clip(m[mask], 50, 249.999), w[mask], strict=True):
            h.Fill(float(x), float(wx))
        hs.append(h)
    assert res["quantiles"][3]["chi2_ndf"]["value"] == pytest.approx(
        hs[0].Chi2Test(hs[1], "WW CHI2/NDF"), rel=1e-9
    )
    assert res["quantiles"][3]["ks_distance"]["value"] == pytest.approx(
        hs[0].KolmogorovTest(hs[1], "M"), rel=1e-9
    )


def test_empty_quantile_is_null_with_reason_never_zero():
    """A collapsed score (all equal): every event in one quantile, the others empty."""
    e = toy_events()
    nonres = e["role"] == "nonresonant"
    s = np.full(int(nonres.sum()), 0.5)
    res = ev.sculpting(s, e["m_jj"][nonres], e["pos_weight"][nonres],
                       mjj_edges=np.array(SETTINGS["mjj_edges"], float), n_quantiles=4,
                       reference_count=1000)  # fmt: skip
    empty = [q for q in res["quantiles"] if q["yield_in"] == 0]
    assert empty
    for q in empty:
        assert q["reason"] and "empty" in q["reason"]
        for key in ("chi2", "chi2_ndf", "p_value", "ks_distance", "ks_p_value"):
            assert q[key]["value"] is None and q[key]["reason"]


def test_no_background_at_all_is_null():
    res = ev.sculpting(np.array([]), np.array([]), np.array([]),
                       mjj_edges=np.array([50.0, 100, 250]), n_quantiles=4,
                       reference_count=1000)  # fmt: skip
    assert res["mean"]["chi2_ndf"]["value"] is None
    assert "no background" in res["mean"]["chi2_ndf"]["reason"]
    assert all(q["chi2"]["value"] is None for q in res["quantiles"])


def test_negative_bin_content_is_guarded():
    """Signed weights making a bin negative: null with the guard's reason before any test."""
    rng = np.random.default_rng(3)
    s = rng.uniform(0, 1, 4000)
    m = rng.uniform(50, 250, 4000)
    w = np.ones(4000)
    w[(m < 70)] = -3.0  # first m_jj bin negative everywhere
    res = ev.sculpting(s, m, w, mjj_edges=np.array([50.0, 70, 150, 250]), n_quantiles=4,
                       reference_count=1000)  # fmt: skip
    for q in res["quantiles"]:
        assert q["chi2"]["value"] is None
        assert "negative content" in q["reason"]


def test_jsd_pass_fail_matches_scipy():
    scipy_distance = require_module("scipy.spatial.distance")
    e = toy_events(sculpt=1.5)
    nonres = e["role"] == "nonresonant"
    edges = np.array(SETTINGS["mjj_edges"], float)
    sig = e["role"] == "signal"
    thr = ev.signal_threshold(e["score"][sig], e["weight"][sig], 0.5)
    kept = np.clip(e["weight"][sig], 0, None)
    frac = kept[e["score"][sig] > thr].sum() / kept.sum()
    assert frac == pytest.approx(0.5, abs=0.01)
    res = ev.jsd_pass_fail(
        e["score"][nonres], e["m_jj"][nonres], e["pos_weight"][nonres], thr, edges
    )
    passing = e["score"][nonres] > thr
    w, m = e["pos_weight"][nonres], e["m_jj"][nonres]
    hp, _ = np.histogram(m[passing], edges, weights=w[passing])
    hf, _ = np.histogram(m[~passing], edges, weights=w[~passing])
    ref = scipy_distance.jensenshannon(hp, hf, base=2) ** 2
    assert res["jsd"]["value"] == pytest.approx(ref, rel=1e-9)
    assert res["inverse_jsd"]["value"] == pytest.approx(1 / ref, rel=1e-9)
    assert res["n_eff_pass"] == pytest.approx(ev.n_effective(w[passing]))


def test_dcor_tiled_matches_dcor_fast_path_on_unit_weights():
    dcor = require_module("dcor", "unweighted reference of the tiled estimator")
    rng = np.random.default_rng(5)
    x = rng.normal(size=1200)
    y = x**2 + rng.normal(size=1200)
    res = ev.dcor_sq(y, x, np.ones(1200), max_events=5000, seed=0, replicas=0)
    ref = dcor.distance_correlation_sqr(x, y, method="mergesort")
    assert res["value"] == pytest.approx(ref, rel=1e-9)
    assert res["subsampled"] is False and res["n_events"] == 1200
    sub = ev.dcor_sq(y, x, np.ones(1200), max_events=500, seed=0, replicas=2)
    assert sub["subsampled"] and sub["n_events"] == 500 and sub["error"] is not None


def test_bootstrap_errors_match_the_spread_of_independent_samples():
    """Bootstrap AUC error is the sample-to-sample spread (within a generous factor)."""
    settings = copy.deepcopy(SETTINGS)
    aucs = []
    for seed in range(12):
        e = toy_events(3000, seed=100 + seed)
        sig = e["role"] == "signal"
        aucs.append(mt.roc_auc(sig, e["score"], e["weight"]))
    spread = float(np.std(aucs, ddof=1))
    e = toy_events(3000, seed=7)
    result = ev.sr_metrics(e, settings)
    ev.bootstrap(e, settings | {"bootstrap": 30}, result, replicas=30, seed=1)
    err = result["separation"]["auc"]["error"]
    assert err is not None and 0.4 * spread < err < 2.5 * spread
    # more events: smaller error (about 1/sqrt(N))
    big = toy_events(12000, seed=8)
    rb = ev.sr_metrics(big, settings)
    ev.bootstrap(big, settings, rb, replicas=30, seed=1)
    assert rb["separation"]["auc"]["error"] < err


def test_vz_peak_excess_visible_and_gone_without_vz():
    rng = np.random.default_rng(11)
    bkg = 50 + rng.exponential(80, 40000)
    vz = rng.normal(91, 9, 3000)
    kw = {"window": [75, 105], "sidebands": [[50, 70], [110, 160]], "bin_width": 5.0, "order": 2}
    m_all = np.concatenate([bkg, vz])
    with_vz = ev.peak_excess(m_all, np.full(len(m_all), 0.2), **kw)
    without = ev.peak_excess(bkg, np.full(len(bkg), 0.2), **kw)
    assert with_vz["significance"]["value"] > 5
    assert abs(without["significance"]["value"]) < 3
    inside = ((vz >= 75) & (vz < 105)).sum() * 0.2
    assert with_vz["excess"]["value"] == pytest.approx(inside, rel=0.25)


def test_significance_bins_merge_until_background_and_effective_count():
    rng = np.random.default_rng(2)
    s_score = rng.beta(5, 2, 5000)
    b_score = rng.beta(2, 5, 3000)
    b_w = rng.uniform(0.5, 1.5, 3000)
    res = ev.binned_significance(s_score, np.full(5000, 0.01), b_score, b_w, n_bins=15,
                                 min_mc_effective=50)  # fmt: skip
    assert res["n_bins_before_merging"] == 15
    assert 1 <= res["n_bins"] < 15
    groups = ev.merge_significance_bins(
        np.ones(4), np.array([0.0, 5.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0, 0.0]), 1.0
    )
    assert sorted(i for g in groups for i in g) == [0, 1, 2, 3]
    assert all(np.array([0.0, 5.0, 0.0, 0.0])[g].sum() > 0 for g in groups)
    assert res["asimov"]["value"] > 0 and res["simple"]["value"] > 0


def _variant(e, collapsed=False):
    fit = {
        "binning": {
            "mjj_edges": [50, 90, 130, 250],
            "score": {"mode": "quantile", "count": 4},
            "merge": {"min_background": 1.0, "min_mc_effective": 5},
        },
        "systematics": {"mc_stat": {"enabled": False}, "jes": False, "lnN": {}},
        "poi_bounds": [-20, 20],
    }
    return ev.evaluate_variant(e, SETTINGS, signal_processes=["ZH"], fit_settings=fit,
                               scale_factors={}, collapsed=collapsed, seed=0)  # fmt: skip


def _wrap(variant: dict, collapsed: bool = False) -> dict:
    data_mc = {"threshold": 0.09, "regions": {}, "passes": None,
               "max_ks_distance": ev.undefined("no control region in this test")}  # fmt: skip
    variant = {**variant, "data_mc": data_mc}
    return {
        "model": "toy",
        "method": "none",
        "collapsed": collapsed,
        "collapse": {"collapsed": collapsed, "folds": [{"fold": 0, "collapsed": collapsed}]},
        "weights": {"signed": "sigma*L", "positive": "abs", "positive_flagged": True},
        "settings": SETTINGS,
        "variants": {"out_of_fold": variant, "validation": variant},
        "provenance": {},
    }


def test_metrics_follow_the_schema_and_bad_ones_do_not():
    e = toy_events(4000)
    result = _wrap(_variant(e))
    ev.validate_metrics(result)
    assert result["variants"]["out_of_fold"]["significance"]["fast_fit"]["value"] > 0
    bad = json.loads(json.dumps(result))
    bad["variants"]["validation"]["separation"]["auc"] = {
        "value": None,
        "error": None,
        "reason": None,
    }
    with pytest.raises(DataError, match=r"separation\.auc"):
        ev.validate_metrics(bad)
    bad = json.loads(json.dumps(result))
    del bad["variants"]["out_of_fold"]["sculpting"]["highest"]["chi2_ndf"]
    with pytest.raises(DataError):
        ev.validate_metrics(bad)


def test_collapsed_model_is_marked_without_crash():
    e = toy_events(4000)
    e["score"] = np.full(len(e["score"]), 0.3)
    variant = _variant(e, collapsed=True)
    result = _wrap(variant, collapsed=True)
    ev.validate_metrics(result)
    fast = variant["significance"]["fast_fit"]
    assert fast["value"] is None and "collapsed" in fast["reason"]
    assert (
        variant["sculpting"]["mean"]["chi2_ndf"]["value"] is not None
        or (variant["sculpting"]["mean"]["chi2_ndf"]["reason"])
    )
    assert variant["jsd"]["inverse_jsd"]["value"] is None or math.isfinite(
        variant["jsd"]["inverse_jsd"]["value"]
    )


def test_metrics_schema_is_a_valid_json_schema():
    jsonschema = require_module("jsonschema")
    from vhbb.config import METRICS_SCHEMA_PATH

    schema = json.loads(METRICS_SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)


# ------------------------------------------------------------------------------ acceptance
@pytest.mark.slow
def test_decorrelated_models_sculpt_less_than_massless_none(toy_sr_export):
    """Acceptance: DisCo and adversarial models have lower sculpting chi2/ndf and higher 1/JSD
    than the mass-less plain classifier, on held-out events of an in-memory toy export."""
    require_module("torch")
    from vhbb.config import load_config
    from vhbb.config.models import resolve_model
    from vhbb.ml.train import build_and_train, predict

    data, names, mean, std = toy_sr_export
    config = load_config([REPO / "config" / "config.yaml"])
    held = data["fold"] == 0  # not seen by the fold-0 model
    out = {}
    for name in ("nn_massless", "disco", "adversarial"):
        spec = resolve_model(config["models"], name)
        spec.update(
            layers=[64, 64], epochs=8, lr=0.005, batch_size=1024, decorrelation_weight="abs",
            weight_strategy="raw", validation_dcor_events=500, checkpoint_every=100,
        )  # fmt: skip
        spec["disco"] = dict(spec["disco"], **{"lambda": 5.0})
        spec["adversary"].update(pretrain_clf_epochs=2, pretrain_adv_epochs=2)
        clf, _ = build_and_train(
            spec, data, feature_names=names, mean=mean, std=std, fold=0, seed=3, progress=False
        )
        score = predict(clf, data["x"][held])
        e = {
            "score": score,
            "m_jj": data["m_jj"][held],
            "weight": data["weight"][held],
            "pos_weight": np.abs(data["weight"][held]),
            "role": data["role"][held],
            "process": data["process"][held],
        }
        out[name] = ev.sr_metrics(
            e, SETTINGS | {"mjj_edges": [50, 70, 90, 110, 130, 150, 170, 200, 250]}, full=False
        )
    ref = out["nn_massless"]
    for name, res in out.items():
        logging.getLogger(__name__).warning(
            "%s: chi2/ndf %.3g, 1/JSD %.3g, AUC %.3g",
            name,
            res["sculpting"]["mean"]["chi2_ndf"]["value"],
            res["jsd"]["inverse_jsd"]["value"],
            res["separation"]["auc"]["value"],
        )
    for name in ("disco", "adversarial"):
        assert (
            out[name]["sculpting"]["mean"]["chi2_ndf"]["value"]
            < ref["sculpting"]["mean"]["chi2_ndf"]["value"]
        ), name
        assert out[name]["jsd"]["inverse_jsd"]["value"] > ref["jsd"]["inverse_jsd"]["value"], name
