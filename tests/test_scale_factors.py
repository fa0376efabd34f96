"""The model-independent control-region scale-factor fit (vhbb.fit.scale_factors)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from conftest import REPO, skip_or_fail
from scipy.optimize import brentq

from vhbb.config import load_config
from vhbb.config import params as P
from vhbb.core.errors import ConfigError
from vhbb.fit.scale_factors import fit_scale_factors, histogram_region, run_scale_factors
from vhbb.stats.minuit import FitError
from vhbb.stats.results import RegionHistogram, ScaleFactorFit

CONFIG = REPO / "config" / "config.yaml"


def hist(region, data, mc, sumw2=None, edges=None):
    data = np.atleast_1d(np.asarray(data, dtype=float))
    mc = {p: np.atleast_1d(np.asarray(y, dtype=float)) for p, y in mc.items()}
    if sumw2 is None:
        sumw2 = {p: np.zeros_like(y) for p, y in mc.items()}
    sumw2 = {p: np.atleast_1d(np.asarray(y, dtype=float)) for p, y in sumw2.items()}
    edges = None if edges is None else np.asarray(edges, dtype=float)
    return RegionHistogram(region, edges, data, mc, sumw2, None if edges is None else "m_jj")


def profile_interval(n: float, mc: float, fixed: float) -> tuple[float, float]:
    """Analytic Poisson profile-likelihood interval (2 dNLL = 1) of s in nu = s*mc + fixed."""
    s_hat = (n - fixed) / mc

    def dnll(s: float) -> float:
        nu = s * mc + fixed
        return 2.0 * ((nu - n * np.log(nu)) - (n - n * np.log(n))) - 1.0

    lo = brentq(dnll, max(1e-9, -fixed / mc + 1e-9), s_hat)
    hi = brentq(dnll, s_hat, 10 * s_hat + 10)
    return lo - s_hat, hi - s_hat


def test_perfect_fit_reports_zero_nll():
    """The NLL is the saturated-model deviance / 2: 0 for a perfect fit (two regions, two
    processes, data equal to the prediction at the fitted scale factors), positive otherwise."""
    hists = [
        hist("A", 1250.0, {"X": 1000.0, "Y": 100.0, "F": 50.0}),
        hist("B", 885.0, {"X": 50.0, "Y": 800.0, "F": 30.0}),
    ]
    res = fit_scale_factors(hists, ["X", "Y"], minos=False)
    assert res.values["X"] == pytest.approx(1.1, rel=1e-5)
    assert res.values["Y"] == pytest.approx(1.0, rel=1e-5)
    assert res.nll == pytest.approx(0.0, abs=1e-6)
    worse = [hist("A", 1260.0, {"X": 1000.0, "F": 50.0}), hist("B", 900.0, {"X": 1000.0, "F": 0.0})]
    assert fit_scale_factors(worse, ["X"], minos=False).nll > 1.0


# ---------------------------------------------------------------------------- (1) analytic
def test_one_process_per_region_is_analytic():
    # region A constrains X only, region B constrains Y only; F is fixed in both
    n_a, x, f_a = 1000.0, 800.0, 100.0
    n_b, y, f_b = 50.0, 30.0, 12.0
    w2 = {"X": [400.0, 0.0], "Y": [0.0, 9.0], "F": [25.0, 4.0]}
    hists = [
        hist("A", n_a, {"X": x, "Y": 0.0, "F": f_a}, {p: v[0] for p, v in w2.items()}),
        hist("B", n_b, {"X": 0.0, "Y": y, "F": f_b}, {p: v[1] for p, v in w2.items()}),
    ]
    res = fit_scale_factors(hists, ["X", "Y"], minos=True)
    assert res.status.valid and res.status.covariance_accurate and res.status.minos_valid
    for name, n, mc, fixed, i in (("X", n_a, x, f_a, 0), ("Y", n_b, y, f_b, 1)):
        s_hat = (n - fixed) / mc
        assert res.values[name] == pytest.approx(s_hat, rel=1e-5)
        # HESSE: var = nu^2 / (n mc^2) at nu = n
        assert res.hesse_errors[name] == pytest.approx(np.sqrt(n) / mc, rel=2e-3)
        lo, hi = profile_interval(n, mc, fixed)
        assert res.minos_errors[name][0] == pytest.approx(lo, rel=2e-3)
        assert res.minos_errors[name][1] == pytest.approx(hi, rel=2e-3)
        assert -lo != pytest.approx(hi, rel=1e-3)  # asymmetric at low counts
        # MC statistics: s = (n - f)/m -> var = (s/m)^2 w2_m + (1/m)^2 w2_f
        var = (s_hat / mc) ** 2 * w2[name][i] + w2["F"][i] / mc**2
        assert res.mc_stat_errors[name] == pytest.approx(np.sqrt(var), rel=1e-4)
    assert res.correlation[0, 1] == pytest.approx(0.0, abs=1e-3)
    assert res.fixed == ("F",)


# ---------------------------------------------------------------------------- (2) pyhf
def toy_model(seed: int = 7):
    rng = np.random.default_rng(seed)
    truth = {"TT": 1.1, "Zhf": 1.25, "Zlf": 0.9}
    share = {  # which region each process populates, times a shape over 4 bins
        "CR_tt": {"TT": 800, "Zhf": 80, "Zlf": 20, "others": 60},
        "CR_Zhf": {"TT": 90, "Zhf": 300, "Zlf": 120, "others": 30},
        "CR_Zlf": {"TT": 10, "Zhf": 60, "Zlf": 3000, "others": 150},
    }
    hists = []
    for region, procs in share.items():
        mc = {p: y * rng.uniform(0.5, 1.5, 4) for p, y in procs.items()}
        expected = sum(mc[p] * truth.get(p, 1.0) for p in mc)
        data = rng.poisson(expected).astype(float)
        hists.append(hist(region, data, mc, edges=[50, 90, 130, 170, 250]))
    return hists, truth


def test_agrees_with_pyhf():
    try:
        import pyhf
    except ImportError:
        skip_or_fail("pyhf is not installed (pip install -e '.[test]')")
    hists, _ = toy_model()
    free = ["TT", "Zhf", "Zlf"]
    res = fit_scale_factors(hists, free, minos=False)
    spec = {
        "channels": [
            {
                "name": h.region,
                "samples": [
                    {
                        "name": p,
                        "data": h.mc[p].tolist(),
                        "modifiers": (
                            [{"name": p, "type": "normfactor", "data": None}] if p in free else []
                        ),
                    }
                    for p in h.mc
                ],
            }
            for h in hists
        ],
        "observations": [{"name": h.region, "data": h.data.tolist()} for h in hists],
        "measurements": [
            {
                "name": "sf",
                "config": {
                    "poi": "TT",
                    "parameters": [{"name": p, "bounds": [[0.0, 10.0]]} for p in free],
                },
            }
        ],
        "version": "1.0.0",
    }
    workspace = pyhf.Workspace(spec)
    model = workspace.model()
    data = workspace.data(model)
    pyhf.set_backend("numpy", pyhf.optimize.minuit_optimizer(tolerance=1e-4))
    try:
        fitted = pyhf.infer.mle.fit(data, model, return_uncertainties=True)
    finally:
        pyhf.set_backend("numpy", pyhf.optimize.scipy_optimizer())
    for p in free:
        best, unc = fitted[model.config.par_slice(p).start]
        assert res.values[p] == pytest.approx(best, rel=5e-3)
        assert res.hesse_errors[p] == pytest.approx(unc, rel=5e-3)


# ---------------------------------------------------------------------------- (3) closure
def _toy_region_arrays(config: dict, sample: str, n_events: int) -> dict[str, np.ndarray]:
    """Generate one toy sample in memory (no ROOT file) and assign the analysis regions."""
    from vhbb.data import cache, toy

    layout = config["samples"]["layouts"]["flat"]
    spec = config["samples"]["list"][sample]
    seed = toy.derive_seed(config["seed"], "sf-closure", sample)
    if n_events == 0:  # data: drawn from the signed MC density with the hidden truth
        fs = toy.file_spec({**config, "toy": {**config["toy"], "data_files": 1}}, sample, 0)
        ev = toy.generate_data_file(fs["data_expected"], seed, 0, fs["mismodelling_scale"])
        weight = np.ones(len(ev["event"]))
    else:
        ev = toy.generate_mc_file(spec["process"], n_events, seed, 0)
        gen = ev["genWeight"].astype(np.float64)
        weight = spec["xsec_pb"] * 1000.0 * config["lumi"] * gen / gen.sum()
    cols = cache.derive(cache.flat_events(ev, layout, None))
    _, region = cache.assign_regions(
        cols, config["regions"]["preselection"], config["regions"]["definitions"]
    )
    return {"weight": weight, "region": region, "m_jj": cols["m_jj"]}


def test_closure_on_toy_recovers_true_scale_factors():
    config = load_config([CONFIG])
    events = {"TT": 120_000, "Zhf": 150_000, "Zlf": 250_000, "others": 40_000}
    events |= {"ZH": 20_000, "VZ": 20_000, "data": 0}
    process_names = list(config["samples"]["processes"])
    mc_processes = [p for p in process_names if p != "data"]
    rng = np.random.default_rng(3)
    parts = []
    for sample, n in events.items():
        arr = _toy_region_arrays(config, sample, n)
        is_data = n == 0
        proc = config["samples"]["list"][sample]["process"]
        size = len(arr["weight"])
        arr["process"] = np.full(size, process_names.index(proc))
        arr["domain"] = np.full(size, 1 if is_data else 0)
        # half of the data is reserved for fits (as the export's cr_split)
        arr["cr_split"] = (rng.random(size) < 0.5).astype(int) if is_data else np.full(size, -1)
        parts.append(arr)
    allev = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    hists = []
    for region in ("CR_tt", "CR_Zhf", "CR_Zlf"):
        sel = allev["region"] == region
        ev = {k: v[sel] for k, v in allev.items()}
        hists.append(histogram_region(region, ev, process_names, mc_processes, mc_scale=0.5))
    res = fit_scale_factors(hists, ["TT", "Zhf", "Zlf"], minos=True)
    truth = config["toy"]["truth"]["scale_factors"]
    for p, true in truth.items():
        sigma = np.hypot(res.hesse_errors[p], res.mc_stat_errors[p])
        pull = (res.values[p] - true) / sigma
        assert abs(pull) < 3.0, f"{p}: {res.values[p]:.4f} vs truth {true} (pull {pull:.2f})"
        assert sigma < 0.1 * true


# ---------------------------------------------------------------------------- inputs
def test_histogram_uses_only_fit_half_of_data_and_scales_mc():
    events = {
        "weight": np.array([2.0, 3.0, 1.0, 1.0, 1.0, -0.5]),
        "process": np.array([0, 1, 2, 2, 2, 0]),
        "domain": np.array([0, 0, 1, 1, 1, 0]),
        "cr_split": np.array([-1, -1, 1, 0, 1, -1]),
    }
    h = histogram_region("CR", events, ["A", "B", "data"], ["A", "B"], mc_scale=0.5)
    assert h.data.tolist() == [2.0]  # the cr_split == 0 event is never used
    assert h.mc["A"].tolist() == [0.75] and h.mc["B"].tolist() == [1.5]
    assert h.mc_sumw2["A"].tolist() == [pytest.approx(1.0 + 0.0625)]
    x = np.array([60.0, 100.0, 60.0, 60.0, 300.0, 100.0])
    hb = histogram_region(
        "CR", events, ["A", "B", "data"], ["A", "B"], mc_scale=1.0, x=x, edges=[50, 80, 150]
    )
    assert hb.data.tolist() == [1.0, 0.0]  # the event at 300 is outside the edges
    assert hb.mc["A"].tolist() == [2.0, -0.5]


# ---------------------------------------------------------------------------- bad input
def test_process_without_yield_is_a_clear_error():
    hists = [hist("CR_a", 100, {"X": 90, "Y": 0}), hist("CR_b", 100, {"X": 10, "Y": 0})]
    with pytest.raises(FitError, match=r"process 'Y' has no MC yield.*CR_a, CR_b"):
        fit_scale_factors(hists, ["X", "Y"])


def test_process_absent_from_one_region_is_fine():
    hists = [
        hist("CR_a", 100, {"X": 90, "Y": 0, "F": 5}),
        hist("CR_b", 200, {"X": 10, "Y": 150, "F": 5}),
    ]
    res = fit_scale_factors(hists, ["X", "Y"])
    assert res.values["X"] == pytest.approx(95 / 90, rel=1e-4)


def test_degenerate_processes_are_named():
    hists = [hist("CR_a", 100, {"X": 40, "Y": 20}), hist("CR_b", 300, {"X": 120, "Y": 60})]
    with pytest.raises(FitError, match=r"'X', 'Y' are degenerate"):
        fit_scale_factors(hists, ["X", "Y"])


def test_data_without_prediction_names_the_region():
    hists = [
        hist("CR_a", [100, 5], {"X": [90, 0], "F": [1, 0]}, edges=[50, 100, 150]),
        hist("CR_b", 30, {"X": 25, "F": 1}),
    ]
    with pytest.raises(FitError, match=r"region 'CR_a' bin 1 .* no MC prediction"):
        fit_scale_factors(hists, ["X"])


def test_region_without_data():
    # identifiable: the empty region only adds a small pull
    hists = [hist("CR_a", 1000, {"X": 900, "Y": 10}), hist("CR_b", 0, {"X": 0.1, "Y": 0.0})]
    res = fit_scale_factors(hists, ["X"])
    assert 1.0 < res.values["X"] < 1.2
    # not identifiable: Y lives only where there are no data -> at its limit, named
    hists = [
        hist("CR_a", 1000, {"X": 900, "Y": 0}),
        hist("CR_empty", 0, {"X": 1.0, "Y": 50}),
    ]
    with pytest.raises(FitError, match=r"Y at the lower limit 0.*CR_empty"):
        fit_scale_factors(hists, ["X", "Y"])


def test_negative_yields_are_zeroed(caplog):
    hists = [hist("CR_a", [100, 100], {"X": [80, 90], "F": [-5, 10]}, edges=[0, 1, 2])]
    res = fit_scale_factors(hists, ["X"])
    assert "bin 0 (m_jj in [0, 1)): negative yield -5 of 'F' set to 0" in caplog.text
    clipped = [hist("CR_a", [100, 100], {"X": [80, 90], "F": [0, 10]}, edges=[0, 1, 2])]
    assert res.values["X"] == pytest.approx(fit_scale_factors(clipped, ["X"]).values["X"])


# ---------------------------------------------------------------------------- driver
def _write_export(path, region, rng, n_mc=3000, bad=False):
    """A one-region export: TT flat in m_jj, 'others' falling; data = 1.2 TT + others."""
    from vhbb.data.export import write_h5

    process_names = ["TT", "others", "data"]
    tt, others = rng.uniform(50, 250, n_mc), rng.exponential(60, n_mc) + 50
    # MC weight 0.5: expected data = 0.5 * (1.2 * n_mc + n_mc) before the fit split
    data = np.concatenate(
        [
            rng.uniform(50, 250, rng.poisson(0.6 * n_mc)),
            rng.exponential(60, rng.poisson(0.5 * n_mc)) + 50,
        ]
    )
    m = np.concatenate([tt, others, data])
    process = np.repeat([0, 1, 2], [n_mc, n_mc, data.size])
    if bad:  # no TT at all: its scale factor is undetermined
        process[:n_mc] = 1
    domain = (process == 2).astype(np.int8)
    weight = np.where(domain == 1, 1.0, 0.5)
    table = {
        "features/nominal": np.stack([m, rng.normal(0, 1, m.size)], axis=1).astype(np.float32),
        "weight": weight,
        "process": process.astype(np.int8),
        "domain": domain,
        "cr_split": np.where(domain == 1, (rng.random(m.size) < 0.5).astype(np.int8), -1),
        "m_jj": m.astype(np.float32),
    }
    attrs = {
        "region": region,
        "feature_names": ["m_jj", "x1"],
        "process_names": process_names,
        "config": {"export": {"cr_data_fit_fraction": 0.5}},
    }
    write_h5(path, table, attrs)


def _driver_spec():
    return {
        "settings": {
            "regions": ["CR_tt"],
            "variable": "m_jj",
            "bins": [50.0, 100.0, 150.0, 250.0],
            "mjj_slices": [50.0, 120.0, 250.0],
            "minos": True,
        },
        "processes": {
            "TT": {"role": "nonresonant", "scale_factor": True, "label": "tt", "color": "C1"},
            "others": {"role": "nonresonant", "scale_factor": False, "label": "o", "color": None},
            "data": {"role": "data", "scale_factor": False, "label": "data", "color": "k"},
        },
        "lumi": 41.5,
    }


def _run(tmp_path, inputs):
    return run_scale_factors(
        inputs,
        json_path=str(tmp_path / "sf.json"),
        plot_data=str(tmp_path / "plot_data.json"),
        spec=_driver_spec(),
    )


def test_driver_writes_json_and_plot_data_then_the_plot_rule_draws(tmp_path):
    from vhbb.fit.figures import plot_styles, run_scale_factor_plots

    rng = np.random.default_rng(1)
    _write_export(tmp_path / "CR_tt.h5", "CR_tt", rng)
    summary = _run(tmp_path, {"CR_tt": str(tmp_path / "CR_tt.h5")})
    written = json.loads((tmp_path / "sf.json").read_text())
    assert written["scale_factors"]["TT"]["value"] == pytest.approx(
        summary["scale_factors"]["TT"]["value"]
    )
    entry = written["scale_factors"]["TT"]
    assert {"value", "hesse_error", "minos_lower", "minos_upper", "mc_stat_error"} <= set(entry)
    assert written["status"]["valid"] and written["status"]["covariance_accurate"]
    assert written["method"]["mc_scale"] == 0.5
    assert written["yields"]["CR_tt"]["edges"] == [50.0, 100.0, 150.0, 250.0]
    assert len(written["mjj_slices"]["fits"]) == 2
    assert written["correlation"] == [[1.0]]
    assert entry["value"] == pytest.approx(1.2, abs=4 * entry["hesse_error"])
    assert "config_hash" in written["provenance"]
    # the plot data round-trips the fits exactly; the plot rule draws every figure from it
    plot_data = json.loads((tmp_path / "plot_data.json").read_text())
    inclusive = ScaleFactorFit.from_dict(plot_data["inclusive"])
    assert inclusive.values == {"TT": entry["value"]}
    assert inclusive.errors("TT") == (-entry["minos_lower"], entry["minos_upper"])
    assert sorted(plot_data["features"]["CR_tt"]) == ["m_jj", "x1"]
    assert not (tmp_path / "yields").exists()
    run_scale_factor_plots(
        str(tmp_path / "plot_data.json"),
        yields_dir=str(tmp_path / "yields"),
        slices_plot=str(tmp_path / "sf_vs_mjj.png"),
        features_dir=str(tmp_path / "features"),
        styles=plot_styles(_driver_spec()["processes"]),
        lumi=41.5,
    )
    for rel in ("yields/prefit/CR_tt.png", "yields/postfit/CR_tt.png", "sf_vs_mjj.png"):
        assert (tmp_path / rel).stat().st_size > 0
    assert sorted(p.name for p in (tmp_path / "features" / "CR_tt").iterdir()) == [
        "m_jj.png",
        "x1.png",
    ]


def test_failed_fit_leaves_no_json(tmp_path):
    rng = np.random.default_rng(2)
    _write_export(tmp_path / "CR_tt.h5", "CR_tt", rng, bad=True)
    with pytest.raises(FitError, match="process 'TT' has no MC yield"):
        _run(tmp_path, {"CR_tt": str(tmp_path / "CR_tt.h5")})
    assert not (tmp_path / "sf.json").exists()
    assert not (tmp_path / "plot_data.json").exists()


# ---------------------------------------------------------------------------- config
def test_params_depend_only_on_what_the_fit_reads():
    config = load_config([CONFIG])
    base = P.scale_factor_fit(config)
    assert base["settings"]["regions"] == ["CR_tt", "CR_Zhf", "CR_Zlf"]
    other = copy.deepcopy(config)
    other["blinding"]["window"] = [80.0, 160.0]  # SR-only option
    other["features"]["training"] = other["features"]["training"][:-1]
    assert P.scale_factor_fit(other) == base
    other["fit"]["scale_factors"]["minos"] = False
    assert P.scale_factor_fit(other) != base


def test_plot_options_are_not_params_of_the_fits():
    """The rules' params without the plot options (vhbb.fit.figures.without_plot_options): a
    process colour or label, the lumi label and the blinding window change none of them."""
    from vhbb.fit.figures import plot_styles, without_plot_options

    config = load_config([CONFIG])
    other = copy.deepcopy(config)
    other["samples"]["processes"]["TT"]["color"] = "#123456"
    other["samples"]["processes"]["ZH"]["label"] = "signal"
    other["blinding"]["window"] = [80.0, 160.0]
    for spec in (
        lambda c: P.scale_factor_fit(c),
        lambda c: P.hists(c, "disco"),
        lambda c: P.signal_fit(c, "disco", "simultaneous"),
        lambda c: P.diagnostics(c, "disco", "simultaneous"),
        lambda c: P.binning_scan(c, "disco"),
    ):
        assert without_plot_options(spec(other)) == without_plot_options(spec(config))
    hists = without_plot_options(P.hists(config, "disco"))
    assert hists["blinding"] == {"enabled": True} and "lumi" not in hists
    assert set(hists["processes"]["TT"]) == {"role"}
    styles = plot_styles(other["samples"]["processes"])
    assert styles["TT"]["color"] == "#123456" and styles["ZH"]["label"] == "signal"
    assert styles != plot_styles(config["samples"]["processes"])


def test_schema_defaults_and_bad_settings():
    config = load_config([CONFIG])
    del config["fit"]
    from vhbb.config import validate

    validate(config)
    assert config["fit"]["scale_factors"]["variable"] is None
    assert config["fit"]["scale_factors"]["minos"] is True
    bad = copy.deepcopy(config)
    bad["fit"]["scale_factors"]["regions"] = ["SR_medhigh_Znn"]
    with pytest.raises(ConfigError, match="blinded training region"):
        P.scale_factor_fit(bad)
    bad["fit"]["scale_factors"]["regions"] = ["CR_nope"]
    with pytest.raises(ConfigError, match="not exported"):
        P.scale_factor_fit(bad)
    bad = copy.deepcopy(config)
    bad["fit"]["scale_factors"]["mjj_slices"] = [50, 40]
    with pytest.raises(ConfigError, match="mjj_slices"):
        P.scale_factor_fit(bad)
