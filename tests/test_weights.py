"""Negative-weight transformation: exact estimator, network, validation power, bad input, stage."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import NANOAOD_FILE, REPO

from vhbb.core.errors import ConfigError, DataError
from vhbb.ml import weights as W

TINY = {"layers": [32, 32], "epochs": 8, "batch_size": 256, "learning_rate": 3e-3}

# ---------------------------------------------------------------- exact estimator
X_EXAMPLE = np.array([15.0, 23.0, 15.0, 15.0, 90.0])
W_EXAMPLE = np.array([1.0, 1.0, 1.0, -1.0, 1.0])
EXPECTED = np.array([1 / 3, 1.0, 1 / 3, 1 / 3, 1.0])


def test_exact_local_mean_example_keeps_histogram():
    out = W.exact_local_mean(X_EXAMPLE, W_EXAMPLE)
    np.testing.assert_allclose(out, EXPECTED)
    edges = [0, 20, 50, 100]
    np.testing.assert_allclose(
        np.histogram(X_EXAMPLE, edges, weights=out)[0],
        np.histogram(X_EXAMPLE, edges, weights=W_EXAMPLE)[0],
    )
    assert (out > 0).all()


@pytest.mark.parametrize("method", W.METHODS)
def test_network_reproduces_exact_example(method):
    copies = 6000
    x = np.tile(X_EXAMPLE, copies)
    w = np.tile(W_EXAMPLE, copies)
    fold = np.repeat(np.arange(copies) % 2, 5)
    out, report = W.transform_process(
        x, w, fold, settings={**TINY, "method": method}, seed=3, name="example"
    )
    per_value = {v: out[x == v] for v in (15.0, 23.0, 90.0)}
    for v, target in ((15.0, 1 / 3), (23.0, 1.0), (90.0, 1.0)):
        assert np.abs(per_value[v] - target).max() < 0.05, (method, v, per_value[v][:3])
    assert out.sum() == pytest.approx(w.sum(), rel=1e-12)
    assert (out >= 0).all() and report["transformed"]


# ---------------------------------------------------------------- known-answer toy, test power
def test_known_answer_toy_matches_analytic_mean():
    """Tolerance: RMS deviation from the analytic E[w|x] < 0.05 (in units of mean |w| = 1),
    decile means of pT_jj within 0.03, and the paired test passes (p > 0.001) on every x."""
    toy = W.toy_events(50_000, seed=11)
    settings = {"layers": [32, 32, 32], "epochs": 5, "batch_size": 512, "learning_rate": 2e-3}
    out, report = W.transform_process(
        toy["x"], toy["w"], toy["fold"], settings=settings, seed=2, name="toy"
    )
    exact = toy["expected"] * toy["w"].sum() / toy["expected"].sum()
    assert np.sqrt(np.mean((out - exact) ** 2)) < 0.05
    pt = toy["x"][:, 1]
    deciles = np.digitize(pt, np.quantile(pt, np.linspace(0, 1, 11)[1:-1]))
    for d in range(10):
        assert abs(out[deciles == d].mean() - exact[deciles == d].mean()) < 0.03
    for i in range(3):
        v = toy["x"][:, i]
        res = W.paired_test(v, toy["w"], out, W.bin_edges(v, 20))
        assert res["p_value"] > 1e-3, (toy["names"][i], W.summary(res))
    assert report["rescale_factor"] == pytest.approx(1.0, abs=0.05)


def test_paired_test_has_power_against_a_5pct_tilt():
    toy = W.toy_events(300_000, seed=5)
    w, m_jj = toy["w"], toy["x"][:, 0]
    exact = toy["expected"] * w.sum() / toy["expected"].sum()
    edges = W.bin_edges(m_jj, 20)
    good = W.paired_test(m_jj, w, exact, edges)
    bad = W.paired_test(m_jj, w, W.tilt(exact, m_jj, 0.05), edges)
    assert good["p_value"] > 0.01 and good["max_ratio_deviation"] < 0.03
    assert bad["p_value"] < 1e-6, W.summary(bad)
    assert W.tilt(exact, m_jj, 0.05).sum() == pytest.approx(w.sum())


def test_paired_test_numbers():
    v = np.array([0.0, 0.0, 1.0, 1.0])
    w = np.array([1.0, -1.0, 1.0, 1.0])
    wn = np.array([0.0, 0.0, 1.0, 1.0])
    res = W.paired_test(v, w, wn, np.array([-0.5, 0.5, 1.5]))
    # bin 0: D = 0, var = 2; bin 1: var = 0 (unused) -> chi2 0 over 1 bin, ndf 1
    assert res["chi2"] == 0.0 and res["ndf"] == 1 and res["p_value"] == pytest.approx(1.0)
    assert res["max_ratio_deviation"] == 0.0  # bin 0 has sum w = 0: not in the ratio


def test_paired_test_two_bins_analytic():
    """Two bins tied by the yield: D_1 = -D_2 = d, chi2 = d^2 / Var(D_1) with
    Var(D_1) = (1 - u_1)^2 V_1 + u_1^2 V_2, u_1 = sum_1 w' / sum w', V_b = sum_b (w^2 - w'^2)."""
    v = np.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    w = np.array([1.0, 1.0, -1.0, 1.0, -1.0, 1.0, 1.0])
    wn = np.array([0.3] * 3 + [0.525] * 4)  # sum 3 = sum w
    res = W.paired_test(v, w, wn, np.array([-0.5, 0.5, 1.5]))
    d = 1.0 - 0.9
    v1, v2 = 3 - 3 * 0.3**2, 4 - 4 * 0.525**2
    u1 = 0.9 / 3.0
    assert res["ndf"] == 1
    assert res["chi2"] == pytest.approx(d**2 / ((1 - u1) ** 2 * v1 + u1**2 * v2), rel=1e-12)


def test_paired_test_is_calibrated_under_the_null():
    """Exact E[w|x] (rescaled to the yield, as the stage does), 1000 events, 300 replicas: the
    p-values are uniform (KS) and the false-alarm rates at 5 % and 1 % are nominal."""
    from scipy.stats import kstest

    rng = np.random.default_rng(12)
    ps = []
    for _ in range(300):
        x = rng.normal(size=1000)
        p_neg = 0.02 + 0.3 / (1 + np.exp(-2 * x))
        w = np.where(rng.random(1000) < p_neg, -1.0, 1.0) * rng.uniform(0.5, 1.5, 1000)
        exact = np.abs(w) * (1 - 2 * p_neg)
        wn = exact * (w.sum() / exact.sum())
        edges = W.bin_edges(x, W.process_bins(w, 20))
        ps.append(W.paired_test(x, w, wn, edges)["p_value"])
    ps = np.array(ps)
    assert kstest(ps, "uniform").pvalue > 0.01
    assert 0.02 <= np.mean(ps < 0.05) <= 0.09 and np.mean(ps < 0.01) <= 0.03


# ---------------------------------------------------------------- clipping, bad input
def test_negative_local_mean_is_clipped_and_yield_kept():
    copies = 3000
    x = np.tile([0.0, 0.0, 1.0, 1.0, 1.0, 0.0], copies)
    w = np.tile([1.0, 1.0, 1.0, -1.0, -1.0, 1.0], copies)  # E[w|x=1] = -1/3
    fold = np.repeat(np.arange(copies) % 2, 6)
    out, report = W.transform_process(x, w, fold, settings=TINY, seed=1, name="clip")
    assert (out >= 0).all()
    assert out.sum() == pytest.approx(w.sum(), rel=1e-12)
    assert np.abs(out[x == 1]).max() < 0.05
    assert report["clipped_fraction"] == pytest.approx(0.5, abs=0.02)
    assert report["rescale_factor"] == pytest.approx(2.0 / 3.0, abs=0.05)  # sum w / sum(x=0)
    assert report["yield_after"] == pytest.approx(report["yield_before"])


def test_process_without_negative_weights_is_a_noop():
    w = np.array([0.5, 1.0, 2.0])
    out, report = W.transform_process(np.zeros((3, 2)), w, np.array([0, 1, 0]), name="ZZ")
    np.testing.assert_array_equal(out, w)
    assert report["transformed"] is False and report["rescale_factor"] == 1.0


def test_nonpositive_total_is_an_error():
    with pytest.raises(DataError, match=r"process 'TT'.*sum to -1 <= 0"):
        W.transform_process(
            np.zeros((3, 1)), np.array([1.0, -1.0, -1.0]), np.array([0, 1, 0]), name="process 'TT'"
        )


JES_VARIATIONS = ["jes_absoluteUp", "jes_absoluteDown", "jes_ptUp", "jes_ptDown"]


def _region(n=200, seed=0):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n, 2)).astype(np.float32)
    arrays = {
        "features/nominal": feats,
        **{f"features/{v}": feats * (1 + 0.01 * k) for k, v in enumerate(JES_VARIATIONS)},
        "weight": np.where(rng.random(n) < 0.2, -1.0, 1.0),
        "process": np.repeat(np.array([0, 1], np.int8), n // 2),
        "sample": np.repeat(np.array([0, 1], np.int16), n // 2),
        "domain": np.zeros(n, np.int8),
        "m_jj": rng.uniform(50, 250, n).astype(np.float32),
        "pt_jj": rng.uniform(100, 300, n).astype(np.float32),
        "run": np.ones(n, np.uint32),
        "luminosityBlock": np.ones(n, np.uint32),
        "event": np.arange(n, dtype=np.uint64),
        "fold": (np.arange(n) % 2).astype(np.int8),
    }
    for k, v in enumerate(JES_VARIATIONS):
        arrays[f"m_jj_{v}"] = arrays["m_jj"] * (1.01 if v.endswith("Up") else 0.99) ** (k + 1)
    attrs = {
        "jes_sources": ["absolute", "pt"],
        "region": "SR",
        "feature_names": ["f1", "f2"],
        "process_names": ["ZH", "TT"],
        "sample_names": ["ZH_nlo", "TT_nlo"],
    }
    return arrays, attrs


def test_nan_weight_names_sample_and_process():
    arrays, attrs = _region()
    arrays["weight"][150] = np.nan
    with pytest.raises(
        DataError, match=r"region 'SR'.*non-finite.*sample 'TT_nlo' \(process 'TT'\)"
    ):
        W.transform_region(arrays, attrs, settings=TINY)


def test_region_output_is_aligned_and_positive():
    arrays, attrs = _region(2000)
    arrays["domain"][:10] = 1  # a few data events keep weight 1
    arrays["weight"][:10] = 1.0
    out, report, tests = W.transform_region(arrays, attrs, settings=TINY, seed=4)
    assert out.shape == arrays["weight"].shape
    np.testing.assert_array_equal(out[:10], 1.0)
    assert (out >= 0).all()
    for i, proc in enumerate(attrs["process_names"]):
        sel = (arrays["process"] == i) & (arrays["domain"] == 0)
        assert out[sel].sum() == pytest.approx(arrays["weight"][sel].sum())
        assert report["processes"][proc]["transformed"]
    # the default extra variables m_jj_jes_*: m_jj under every JES variation, in source order
    extra = [v for v in report["variables"] if v.startswith("m_jj_jes_")]
    assert extra == [f"m_jj_{v}" for v in JES_VARIATIONS]
    assert {"f1", "f2", "m_jj", "pt_jj"} <= set(report["variables"])
    assert report["variables"]["m_jj_jes_ptUp"]["in_conditioning"] is False
    # a feature's JES variation by name; a pattern matching nothing is dropped
    np.testing.assert_array_equal(
        W.column(arrays, attrs["feature_names"], "f2_jes_ptDown"),
        arrays["features/nominal"][:, 1] * 1.03,
    )
    assert W.expand_variables(["f1_jes_*Up", "x_*"], arrays, attrs, ["f1", "f2"]) == [
        "f1_jes_absoluteUp", "f1_jes_ptUp",
    ]  # fmt: skip
    assert {"chi2", "ndf", "p_value", "max_ratio_deviation"} <= set(W.summary(tests["f1"]))


# ---------------------------------------------------------------- training strategies, config
def test_training_weights_strategies():
    w = np.array([1.0, -2.0, 3.0])
    wt = np.array([0.5, 0.0, 1.5])
    np.testing.assert_array_equal(W.training_weights("raw", w), w)
    np.testing.assert_array_equal(W.training_weights("abs", w), [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(W.training_weights("drop_negative", w), [1.0, 0.0, 3.0])
    np.testing.assert_array_equal(W.training_weights("transformed", w, wt), wt)
    with pytest.raises(ConfigError, match="needs the transformed weights"):
        W.training_weights("transformed", w)
    with pytest.raises(ConfigError, match="did you mean 'transformed'"):
        W.training_weights("transfromed", w)
    with pytest.raises(DataError, match="not the same events"):
        W.training_weights("transformed", w, wt[:2])


def test_params_helper_resolves_and_checks_conditioning():
    from vhbb import config
    from vhbb.config import params

    cfg = config.load_config([REPO / "config" / "config.yaml"])
    spec = params.weights(cfg)
    cond = spec["settings"]["conditioning"]
    assert cond == list(dict.fromkeys([*cfg["features"]["training"], "m_jj", "pt_jj"]))
    assert spec["device"] == cfg["device"] and spec["roles"]["data"] == "data"
    cfg["weights"]["conditioning"] = ["m_jj", "met_ptt"]
    with pytest.raises(
        ConfigError, match=r"weights.conditioning.*'met_ptt'.*did you mean 'met_pt'"
    ):
        params.weights(cfg)


# ---------------------------------------------------------------- real CMS NanoAOD
def test_real_nanoaod_ttbar_weights(tmp_path):
    if not NANOAOD_FILE.exists():
        pytest.skip(f"the real NanoAOD file is absent ({NANOAOD_FILE})")
    from vhbb import config
    from vhbb.data import cache
    from vhbb.data import keys as keymod

    cfg = config.load_config([REPO / "config" / "config.yaml"])
    frame, stats = cache.cache_file(
        str(NANOAOD_FILE),
        sample="TT",
        is_mc=True,
        layout={**cfg["samples"]["layouts"]["nanoaod"], "jet_eta_max": 10.0},
        preselection="pt_jj > 0",
        regions={"loose": "met_pt >= 0"},
    )
    frame, _ = cache.merge_sample(
        [frame], [stats], sample="TT", is_mc=True, xsec_pb=832.0, lumi_fb=41.5
    )
    w = frame["weight"].to_numpy(np.float64)
    assert (w < 0).any(), "the real file's selected events include negative weights"
    cond = W.conditioning_variables(None, cfg["features"]["training"])
    x = frame[cond].to_numpy(np.float64)
    fold = keymod.fold(
        "TT", frame["run"].to_numpy(), frame["luminosityBlock"].to_numpy(),
        frame["event"].to_numpy(), 2,
    )  # fmt: skip
    tiny = {"layers": [8], "epochs": 2, "batch_size": 16, "calibration_fraction": 0.3}
    out, report = W.transform_process(x, w, fold, settings=tiny, seed=1, name="TT (NanoAOD)")
    assert (out >= 0).all()
    assert out.sum() == pytest.approx(w.sum(), rel=1e-9)
    assert report["transformed"] and report["negative_events"] == int((w < 0).sum())


# ---------------------------------------------------------------- the workflow stage
@pytest.fixture(scope="module")
def weights_run(e2e_run):
    """The stage's outputs from the session's end-to-end run (`snakemake all` on test.yaml)."""
    return e2e_run


@pytest.mark.e2e
def test_stage_outputs_aligned_with_export(weights_run):
    from vhbb.data.export import read_h5

    cfg_regions = ["SR_medhigh_Znn", "CR_tt", "CR_Zhf", "CR_Zlf"]
    for region in cfg_regions:
        exp, attrs = read_h5(weights_run / "results" / "export" / f"{region}.h5")
        out, wattrs = read_h5(weights_run / "results" / "weights" / f"{region}.h5")
        for key in ("run", "luminosityBlock", "event", "sample"):
            np.testing.assert_array_equal(out[key], exp[key])
        np.testing.assert_array_equal(out["weight"], exp["weight"])
        wt = out["weight_transformed"]
        assert len(wt) == len(exp["weight"]) and np.isfinite(wt).all()
        mc = exp["domain"] == 0
        assert (wt[mc] >= 0).all()
        np.testing.assert_array_equal(wt[~mc], 1.0)
        for p in np.unique(exp["process"][mc]):
            sel = mc & (exp["process"] == p)
            assert wt[sel].sum() == pytest.approx(exp["weight"][sel].sum(), rel=1e-9)
        assert wattrs["provenance"]["config_hash"]
        val = json.loads(
            (weights_run / "results" / "weights" / region / "validation.json").read_text()
        )
        jes = [f"m_jj_jes_{s}{d}" for s in ("absolute", "pt", "flavour") for d in ("Up", "Down")]
        assert list(attrs["jes_sources"]) == ["absolute", "pt", "flavour"]
        for var in ["m_jj", "pt_jj", *attrs["feature_names"], *jes]:
            assert {"chi2", "ndf", "p_value", "max_ratio_deviation"} <= set(val["variables"][var])
        for rep in val["processes"].values():
            assert {"yield_before", "yield_after", "clipped_fraction", "rescale_factor"} <= set(rep)
        assert val["provenance"]["git_commit"]
        plots = list((weights_run / "results" / "weights" / region / "plots").glob("*.png"))
        assert len(plots) == len(val["variables"])


# ---------------------------------------------------------------- estimate quality and the gate
def _dependent_region(n=6000, seed=0):  # type: ignore[no-untyped-def]
    """Two processes whose sign probability rises steeply with the feature f1."""
    arrays, attrs = _region(n, seed)
    rng = np.random.default_rng(seed + 1)
    f1 = arrays["features/nominal"][:, 0]
    p_neg = 0.02 + 0.4 / (1 + np.exp(-3 * f1))
    arrays["weight"] = np.where(rng.random(n) < p_neg, -1.0, 1.0)
    return arrays, attrs


def test_sign_independent_of_x_gives_the_constant_estimate():
    arrays, attrs = _region(4000, seed=3)
    out, report, _ = W.transform_region(arrays, attrs, settings=TINY, seed=2)
    for i, proc in enumerate(attrs["process_names"]):
        sel = arrays["process"] == i
        w = arrays["weight"][sel]
        # the constant estimate: every event gets the process's mean weight
        assert np.std(out[sel]) / np.mean(out[sel]) < 0.05, proc
        assert out[sel].sum() == pytest.approx(w.sum())
        folds = report["processes"][proc]["training"]["folds"].values()
        for f in folds:
            vc = f["versus_constant"]
            assert f["estimate"] == "constant" and not vc["beats_constant"]


def test_strong_dependence_is_captured_where_plain_abs_fails():
    """The default estimator (gradient boosting) at 20 k events."""
    arrays, attrs = _dependent_region(20_000, seed=5)
    out, report, _ = W.transform_region(arrays, attrs, settings={"method": "gbdt"}, seed=1)
    f1 = arrays["features/nominal"][:, 0].astype(np.float64)
    edges = W.bin_edges(f1, 10)
    w = arrays["weight"]
    after = W.paired_test(f1, w, out, edges)["p_value"]
    plain = np.abs(w) * (w.sum() / np.abs(w).sum())  # |w| rescaled to the yield
    before = W.paired_test(f1, w, plain, edges)["p_value"]
    assert after > 0.01 and before < 1e-6, (after, before)
    for prep in report["processes"].values():
        for f in prep["training"]["folds"].values():
            assert f["estimate"] == "gbdt" and f["versus_constant"]["beats_constant"]
            assert f["stop_epoch"] <= f["max_epochs"] and f["best_epoch"] is not None


def test_gate_fails_an_under_trained_network_naming_region_process_variable(tmp_path):
    from vhbb.core.checks import CheckFailed
    from vhbb.data.export import write_h5

    arrays, attrs = _dependent_region(6000, seed=7)
    export = tmp_path / "SR.h5"
    write_h5(export, arrays, attrs)
    under = {**TINY, "method": "classification", "epochs": 1, "learning_rate": 1e-7}
    paths = {
        "h5": tmp_path / "w.h5",
        "validation": tmp_path / "validation.json",
        "plot_data": tmp_path / "plot_data.json",
        "checks": tmp_path / "checks.json",
    }
    with pytest.raises(CheckFailed, match=r"(?s)weights: .*paired test p-value at SR/(ZH|TT)/f1"):
        W.run_weights({"SR": export}, outputs={"SR": paths}, spec={"settings": under})
    assert not any(p.exists() for p in paths.values())  # nothing that looks valid
    # warn mode: the job goes on and every output carries the warning
    warn = {**under, "validation": {**under.get("validation", {}), "on_failure": "warn"}}
    report = W.run_weights({"SR": export}, outputs={"SR": paths}, spec={"settings": warn})["SR"]
    assert any("SR/" in line and "/f1" in line for line in report["warnings"])
    from vhbb.core.checks import read_checks
    from vhbb.data.export import read_h5

    failed = [c for c in read_checks([paths["checks"]]) if c.failed]
    assert failed and all(c.warned for c in failed)
    assert read_h5(paths["h5"])[1]["warnings"] == report["warnings"]
    # the figures (rule weights_plots): one per variable, one ratio panel per process
    from vhbb.plots.weights import run_weights_plots

    written = run_weights_plots(paths["plot_data"], tmp_path / "plots", {"ZH": "ZH(bb)"})
    assert sorted(p.name for p in written) == sorted(f"{v}.png" for v in report["variables"])
    data = json.loads(paths["plot_data"].read_text())
    assert set(data["variables"]["f1"]["processes"]) == {"ZH", "TT"}


# ---------------------------------------------------------------- one estimate from all regions
def _split_regions(n=12_000, seed=11):  # type: ignore[no-untyped-def]
    """The events of :func:`_dependent_region` split into two regions by the feature f2 (a
    conditioning variable): a large region A (f2 < 1) and a small region B (f2 >= 1)."""
    arrays, attrs = _dependent_region(n, seed)
    out = {}
    for name, sel in (("A", arrays["features/nominal"][:, 1] < 1.0),
                      ("B", arrays["features/nominal"][:, 1] >= 1.0)):  # fmt: skip
        out[name] = ({k: v[sel] for k, v in arrays.items()}, {**attrs, "region": name})
    return out


def test_pooled_estimate_serves_a_small_region_and_keeps_each_yield():
    regions = _split_regions()
    results = W.transform_regions(regions, settings={"method": "gbdt"}, seed=3)
    for name, (arrays, _attrs) in regions.items():
        out, report, _ = results[name]
        w = arrays["weight"]
        assert report["pooled_regions"] == ["A", "B"]
        for i, proc in enumerate(report["processes"]):
            sel = arrays["process"] == i
            assert out[sel].sum() == pytest.approx(w[sel].sum(), rel=1e-9)  # per region
            info = report["processes"][proc]["training"]
            assert info["regions"] == {
                r: int((a["process"] == i).sum()) for r, (a, _) in regions.items()
            }
        f1 = arrays["features/nominal"][:, 0].astype(np.float64)
        edges = W.bin_edges(f1, 8)
        after = W.paired_test(f1, w, out, edges)["p_value"]
        plain = W.paired_test(f1, w, np.abs(w) * (w.sum() / np.abs(w).sum()), edges)["p_value"]
        assert after > 0.01 and plain < 1e-3, (name, after, plain)
    # the small region's events are weighted by the estimate trained on both regions
    b_events = len(regions["B"][0]["weight"])
    assert b_events < 2500
    folds = results["B"][1]["processes"]["ZH"]["training"]["folds"].values()
    assert all(f["n_train"] > b_events for f in folds)


def test_pooling_needs_every_region_defining_variable_in_x():
    from vhbb import config
    from vhbb.config import params

    cfg = config.load_config([REPO / "config" / "config.yaml"])
    params.weights(cfg)  # the default passes: btag_max, btag_min, n_add_jets are in x
    cfg["weights"]["conditioning"] = ["m_jj", "pt_jj", "btag_max", "btag_min"]
    with pytest.raises(
        ConfigError, match=r"region 'SR_medhigh_Znn' is defined by 'n_add_jets'.*pool_regions"
    ):
        params.weights(cfg)
    cfg["weights"]["pool_regions"] = False  # one estimate per region: no such condition
    assert params.weights(cfg)["settings"]["pool_regions"] is False
