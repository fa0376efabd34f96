"""The fit stage's own drivers on small inputs: the workspace the chain writes is a valid pyhf
workspace and pyhf reproduces the chain's signal-strength fit and limits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, require_module

from vhbb.fit import signal_fit as sfit
from vhbb.fit import templates as bn

SR, CRS = "SR_medhigh_Znn", ["CR_tt", "CR_Zhf", "CR_Zlf"]
# process: (events, m_jj peak or None for falling, region probabilities SR / tt / Zhf / Zlf)
PROCS = {
    "ZH": (6000, 125.0, [0.9, 0.02, 0.05, 0.03]),
    "VZ": (3000, 91.0, [0.8, 0.05, 0.1, 0.05]),
    "TT": (12000, None, [0.3, 0.6, 0.05, 0.05]),
    "Zhf": (12000, None, [0.35, 0.05, 0.5, 0.1]),
    "Zlf": (12000, None, [0.1, 0.05, 0.15, 0.7]),
    "others": (3000, None, [0.4, 0.2, 0.2, 0.2]),
}
WEIGHT = 0.2


def _events(rng: np.random.Generator, n: int, peak: float | None, probs: list[float]) -> dict:
    mjj = rng.normal(peak, 12.0, n) if peak else 50.0 + rng.exponential(60.0, n)
    signal_like = peak == 125.0
    score = rng.beta(4, 2, n) if signal_like else rng.beta(2, 3, n)
    region = rng.choice([SR, *CRS], size=n, p=probs)
    ev = {"weight": np.full(n, WEIGHT), "region": region, "m_jj": mjj, "score": score}
    # three JES sources, each with its own shape change and migration between regions:
    # absolute, asymmetric (+3 % up, -2 % down in m_jj, a small score shift, 2 % of the events
    # into / out of the first control region); pt, a low-mass shift growing towards low m_jj
    # with 4 % of the events into / out of the signal region; flavour, a score shift only
    # for the events of the signal region, 1 % into / out of the last control region
    u = rng.random(n)
    for side, sign in (("Up", 1.0), ("Down", -1.0)):
        k, ds = (1.03, 0.01) if sign > 0 else (0.98, -0.005)
        cr0, sr, cr2 = (CRS[0], SR, CRS[-1]) if sign > 0 else (SR, CRS[0], SR)
        ev[f"region_jes_absolute{side}"] = np.where(u < 0.02, cr0, region)
        ev[f"m_jj_jes_absolute{side}"] = mjj * k
        ev[f"score_jes_absolute{side}"] = np.clip(score + ds, 0.0, 1.0)
        ev[f"region_jes_pt{side}"] = np.where((u > 0.5) & (u < 0.54), sr, region)
        ev[f"m_jj_jes_pt{side}"] = mjj * (1.0 + sign * 0.06 * np.exp(-(mjj - 50.0) / 40.0))
        ev[f"score_jes_pt{side}"] = score
        ev[f"region_jes_flavour{side}"] = np.where(u > 0.99, cr2, region)
        ev[f"m_jj_jes_flavour{side}"] = mjj
        ev[f"score_jes_flavour{side}"] = np.clip(score + sign * 0.03 * (region == SR), 0.0, 1.0)
    return ev


JES_SOURCES = ["absolute", "pt", "flavour"]


def _write_hists(
    tmp: Path, mc: dict, data: dict, *, sr_data: bool, cr_data_fit_fraction: float
) -> Path:
    """``hists.h5`` as the chain writes it (the signal-region data only when ``sr_data``)."""
    mjj_edges = np.array([50.0, 80, 100, 115, 135, 160, 200, 250])
    score_edges = np.linspace(0.0, 1.0, 5)
    regions = {
        r: bn.fill_region(r, mc, mjj_edges=mjj_edges, score_edges=score_edges, data_events=data)
        for r in [SR, *CRS]
    }
    if not sr_data:
        regions[SR] = bn.RegionHists(SR, mjj_edges, score_edges, regions[SR].mc, None, "")
    bkg = [p for p in PROCS if p != "ZH"]
    binning = bn.merge_bins(*regions[SR].total(bkg), min_background=1.0, min_mc_effective=10)
    meta = {
        "model": "disco",
        "signal_region": SR,
        "control_regions": CRS,
        "mc_processes": list(PROCS),
        "signal_processes": ["ZH"],
        "cr_data_fit_fraction": cr_data_fit_fraction,
        "blinded": not sr_data,
        "jes_sources": JES_SOURCES,
    }
    hists = tmp / "hists.h5"
    bn.write_hists(hists, tmp / "hists.root", regions, binning, meta)
    return hists


@pytest.fixture(scope="module")
def chain_inputs(tmp_path_factory) -> dict:
    """``hists.h5`` and ``scale_factors.json`` as the chain writes them, and the fit params."""
    from vhbb import config
    from vhbb.config import params as P

    tmp = tmp_path_factory.mktemp("chain")
    rng = np.random.default_rng(11)
    mc = {p: _events(rng, n, peak, probs) for p, (n, peak, probs) in PROCS.items()}
    # pseudo-data in the control regions: half of the MC yield (cr_data_fit_fraction 0.5)
    keep = {p: rng.random(len(ev["weight"])) < 0.5 * WEIGHT for p, ev in mc.items()}
    data = {
        k: np.concatenate([np.asarray(mc[p][k])[keep[p]] for p in mc])
        for k in ("region", "m_jj", "score")
    }
    data = {k: v[data["region"] != SR] for k, v in data.items()}
    hists = _write_hists(tmp, mc, data, sr_data=False, cr_data_fit_fraction=0.5)
    sf = {
        "scale_factors": {
            "TT": {"value": 1.04, "hesse_error": 0.03},
            "Zhf": {"value": 1.15, "hesse_error": 0.05},
            "Zlf": {"value": 0.93, "hesse_error": 0.02},
        },
        "parameters": ["TT", "Zhf", "Zlf"],
        "covariance": [[9e-4, -2e-4, 1e-4], [-2e-4, 2.5e-3, -3e-4], [1e-4, -3e-4, 4e-4]],
    }
    sf_path = tmp / "scale_factors.json"
    sf_path.write_text(json.dumps(sf))
    cfg = config.load_config([REPO / "config" / "config.yaml"])
    specs = {mode: P.signal_fit(cfg, "disco", mode) for mode in ("simultaneous", "constrained")}
    return {"dir": tmp, "hists": str(hists), "sf": str(sf_path), "specs": specs}


def _chain_outputs(inputs: dict, mode: str) -> tuple[dict, dict, Path]:
    out = inputs["dir"] / mode
    out.mkdir(exist_ok=True)
    spec = inputs["specs"][mode]
    ws_path = out / "workspace.json"
    sfit.run_workspace(inputs["hists"], inputs["sf"], mode=mode, path=str(ws_path), spec=spec)
    doc = sfit.run_signal_fit(
        inputs["hists"],
        inputs["sf"],
        mode=mode,
        json_path=str(out / "signal_strength.json"),
        plot_data=str(out / "plot_data.json"),
        spec=spec,
    )
    return json.loads(ws_path.read_text()), doc, out


def _pyhf_fit(spec: dict) -> tuple[float, float]:
    pyhf = require_module("pyhf", "validation of the exported workspace")
    pyhf.set_backend("numpy", pyhf.optimize.minuit_optimizer(tolerance=1e-4))
    workspace = pyhf.Workspace(spec, validate=True)
    model = workspace.model()
    data = workspace.data(model)
    pars = pyhf.infer.mle.fit(
        data, model, init_pars=model.config.suggested_init(),
        par_bounds=model.config.suggested_bounds(),
        fixed_params=model.config.suggested_fixed(), return_uncertainties=True,
    )  # fmt: skip
    poi = model.config.poi_index
    return float(pars[poi, 0]), float(pars[poi, 1])


@pytest.mark.parametrize("mode", ["simultaneous", "constrained"])
def test_chain_workspace_is_valid_pyhf_and_reproduces_the_fit(chain_inputs, mode):
    pyhf = require_module("pyhf", "validation of the exported workspace")
    spec, doc, out = _chain_outputs(chain_inputs, mode)
    assert "metadata" not in spec
    pyhf.schema.validate(spec, "workspace.json")
    prov = json.loads((out / "workspace.provenance.json").read_text())
    assert prov["mode"] == mode and prov["interpolation"] == {
        "normsys": "code4",
        "histosys": "code4p",
    }
    assert doc["status"]["covariance_method"] == "analytic Hessian"
    mu, sigma = _pyhf_fit(spec)
    assert mu == pytest.approx(doc["mu"], rel=5e-3, abs=5e-3 * doc["mu_hesse_err"])
    assert sigma == pytest.approx(doc["mu_hesse_err"], rel=5e-3)


def test_one_jes_parameter_per_source_acting_on_normalisation_and_shape(chain_inputs):
    """The signal-fit likelihood has one histosys jes_<source> per JES source of the
    histograms, each correlated across regions and processes and acting on the normalisation
    (migration between regions) and on the shape, with templates of its own; the pyhf
    workspace carries the same modifiers; fit.systematics.jes chooses the sources."""
    from vhbb.core.errors import InputError
    from vhbb.core.results import read_scale_factors
    from vhbb.fit.templates import read_hists

    regions, binning, meta = read_hists(chain_inputs["hists"])
    assert meta["jes_sources"] == JES_SOURCES
    assert set(regions[SR].mc["ZH"]) == {"nominal", *(f"jes_{s}{d}" for s in JES_SOURCES
                                                       for d in ("Up", "Down"))}  # fmt: skip
    spec = chain_inputs["specs"]["simultaneous"]
    sf = read_scale_factors(chain_inputs["sf"])
    inp = sfit.build_model(
        regions, binning, meta, sf.values, sf.covariance, mode="simultaneous", spec=spec
    )
    model = inp.model
    names = [model.names[int(i)] for i in model.histo_index]
    params = [f"jes_{s}" for s in JES_SOURCES]
    assert names[: len(params)] == params and len(set(names)) == len(names)
    sr = model.channel(SR)
    crs = [model.channel(cr).start for cr in CRS]
    bkg = [model.processes.index(p) for p in PROCS if p != "ZH"]
    ups = {}
    for h, name in enumerate(names[: len(params)]):
        up = model.histo_up[h]  # (process, bin): up template minus nominal
        ups[name] = up
        nominal = model.nominal[bkg].sum(axis=0)
        shifted = nominal + up[bkg].sum(axis=0)
        # normalisation: the signal-region yield and the control-region yields move (migration)
        sr_ratio = shifted[sr.start : sr.stop].sum() / nominal[sr.start : sr.stop].sum()
        assert abs(sr_ratio - 1.0) > 1e-3, name
        assert np.any(np.abs(shifted[crs] / nominal[crs] - 1.0) > 1e-3), name
        # shape: the normalised signal-region template changes too
        a = shifted[sr.start : sr.stop] / shifted[sr.start : sr.stop].sum()
        b = nominal[sr.start : sr.stop] / nominal[sr.start : sr.stop].sum()
        assert np.max(np.abs(a / b - 1.0)) > 5e-3, name
        # one parameter for every process (correlated across processes)
        assert sum(np.any(up[p] != 0) for p in range(len(model.processes))) >= 4, name
    for i, a in enumerate(params):
        for b in params[i + 1 :]:
            assert not np.allclose(ups[a], ups[b]), (a, b)
    # the workspace: the same modifiers, one per source, on every sample they act on
    ws, _, _ = _chain_outputs(chain_inputs, "simultaneous")
    modifiers = {
        m["name"]
        for ch in ws["channels"]
        for sample in ch["samples"]
        for m in sample["modifiers"]
        if m["type"] == "histosys"
    }
    assert set(params) <= modifiers
    # fit.systematics.jes: a list chooses sources, false drops them, an unknown name fails
    listed = {**spec, "systematics": {**spec["systematics"], "jes": ["pt"]}}
    chosen = sfit.build_model(
        regions, binning, meta, sf.values, sf.covariance, mode="simultaneous", spec=listed
    ).model
    assert [chosen.names[int(i)] for i in chosen.histo_index][:1] == ["jes_pt"]
    assert "jes_absolute" not in chosen.names
    none = {**spec, "systematics": {**spec["systematics"], "jes": False}}
    off = sfit.build_model(
        regions, binning, meta, sf.values, sf.covariance, mode="simultaneous", spec=none
    ).model
    assert not any(n.startswith("jes") for n in off.names)
    bad = {**spec, "systematics": {**spec["systematics"], "jes": ["absolut"]}}
    with pytest.raises(InputError, match=r"JES source\(s\) absolut .*not in the histograms"):
        sfit.build_model(
            regions, binning, meta, sf.values, sf.covariance, mode="simultaneous", spec=bad
        )


def test_signal_fit_writes_cls_limits(chain_inputs):
    _, _, out = _chain_outputs(chain_inputs, "simultaneous")
    written = json.loads((out / "signal_strength.json").read_text())
    limits = written["limits"]
    assert limits["cl"] == 0.95 and "q-tilde" in limits["method"]
    assert len(limits["expected"]) == 5 and limits["expected"] == sorted(limits["expected"])
    # Asimov signal region at mu = 1: the observed limit is above the median expected one
    assert limits["observed"] > limits["expected"][2] > 0


def test_observed_fit_of_unblinded_pseudo_data_recovers_the_injected_signal(tmp_path):
    """fit.signal_region_data: observed fits the signal-region data (not Asimov): pseudo-data with
    twice the signal give mu-hat near 2, the truth pull is reported, and pyhf agrees on the
    workspace the chain writes from those observations."""
    from vhbb import config
    from vhbb.config import params as P
    from vhbb.core.errors import ConfigError

    rng = np.random.default_rng(5)
    mc = {p: _events(rng, n, peak, probs) for p, (n, peak, probs) in PROCS.items()}
    # unweighted pseudo-data: each MC event kept with probability weight x (2 for the signal)
    keep = {p: rng.random(len(ev["weight"])) < WEIGHT * (2.0 if p == "ZH" else 1.0)
            for p, ev in mc.items()}  # fmt: skip
    data = {
        k: np.concatenate([np.asarray(mc[p][k])[keep[p]] for p in mc])
        for k in ("region", "m_jj", "score")
    }
    hists = _write_hists(tmp_path, mc, data, sr_data=True, cr_data_fit_fraction=1.0)
    sf = {
        "scale_factors": {p: {"value": 1.0, "hesse_error": 0.05} for p in ("TT", "Zhf", "Zlf")},
        "parameters": ["TT", "Zhf", "Zlf"],
        "covariance": (np.eye(3) * 0.05**2).tolist(),
    }
    sf_path = tmp_path / "scale_factors.json"
    sf_path.write_text(json.dumps(sf))

    cfg = config.load_config([REPO / "config" / "config.yaml"])
    assert P.signal_fit(cfg, "disco", "simultaneous")["signal_region_data"] == "asimov"
    cfg["fit"]["signal_region_data"] = "observed"
    with pytest.raises(ConfigError, match=r"blinding\.enabled: false"):
        P.signal_fit(cfg, "disco", "simultaneous")
    cfg["blinding"]["enabled"] = False
    cfg["fit"]["signal_region_data"] = "auto"
    cfg["toy"]["truth"]["mu"] = 2.0
    spec = P.signal_fit(cfg, "disco", "simultaneous")
    assert spec["signal_region_data"] == "observed" and spec["truth"]["mu"] == 2.0

    ws_path = tmp_path / "workspace.json"
    sfit.run_workspace(str(hists), str(sf_path), mode="simultaneous", path=str(ws_path), spec=spec)
    doc = sfit.run_signal_fit(
        str(hists),
        str(sf_path),
        mode="simultaneous",
        json_path=str(tmp_path / "signal_strength.json"),
        plot_data=str(tmp_path / "plot_data.json"),
        spec=spec,
    )
    assert doc["observations"][SR].startswith("data")
    assert abs(doc["mu"] - 2.0) < 3.0 * doc["mu_hesse_err"]
    assert (doc["mu"] - 1.0) / doc["mu_hesse_err"] > 2.0  # not the Asimov answer
    pull = doc["truth_pull"]
    err = doc["mu_err_up"] if doc["mu"] < 2.0 else doc["mu_err_down"]
    assert pull["mu_true"] == 2.0 and pull["pull"] == pytest.approx((doc["mu"] - 2.0) / err)
    assert pull["corrections"] == []  # these hists carry no data-driven reweighting
    mu, sigma = _pyhf_fit(json.loads(ws_path.read_text()))
    assert mu == pytest.approx(doc["mu"], rel=5e-3, abs=5e-3 * doc["mu_hesse_err"])
    assert sigma == pytest.approx(doc["mu_hesse_err"], rel=5e-3)
