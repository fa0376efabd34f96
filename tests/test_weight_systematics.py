"""Generic weight systematics: cached ratio columns ``weight_<name>Up/Down`` become histogram
variations and shape nuisances (histosys, code 4p) of the fit, the pyhf export and the datacard;
the toy's pT(V) reweighting of Z+jets and ttbar reaches the cache."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, require_module

from vhbb import config
from vhbb.config import params as P
from vhbb.core.errors import ConfigError, DataError, InputError
from vhbb.data import cache, events, toy
from vhbb.fit import combine, hists
from vhbb.fit import signal_fit as sfit
from vhbb.fit import templates as bn
from vhbb.fit.workspace import to_workspace
from vhbb.stats import likelihood as lk

CFG = config.load_config([REPO / "config" / "config.yaml"])
SR, CRS = "SR_medhigh_Znn", ["CR_tt", "CR_Zhf", "CR_Zlf"]
# process: (events, m_jj peak or None for falling, region probabilities SR / tt / Zhf / Zlf)
PROCS = {
    "ZH": (4000, 125.0, [0.9, 0.02, 0.05, 0.03]),
    "VZ": (2000, 91.0, [0.8, 0.05, 0.1, 0.05]),
    "TT": (8000, None, [0.3, 0.6, 0.05, 0.05]),
    "Zhf": (8000, None, [0.35, 0.05, 0.5, 0.1]),
    "Zlf": (8000, None, [0.1, 0.05, 0.15, 0.7]),
    "others": (2000, None, [0.4, 0.2, 0.2, 0.2]),
}
WEIGHTS = ["btag", "ptv_zjets"]
MJJ_EDGES = np.array([50.0, 80, 100, 115, 135, 160, 200, 250])
SCORE_EDGES = np.linspace(0.0, 1.0, 5)


def _events(rng: np.random.Generator, proc: str) -> dict[str, np.ndarray]:
    n, peak, probs = PROCS[proc]
    mjj = rng.normal(peak, 12.0, n) if peak else 50.0 + rng.exponential(60.0, n)
    mjj = np.clip(mjj, 50.5, 249.5)  # inside the edges: no flow in the hand-made histograms
    score = rng.beta(4, 2, n) if peak == 125.0 else rng.beta(2, 3, n)
    region = rng.choice([SR, *CRS], size=n, p=probs)
    met = 200.0 + rng.exponential(120.0, n)
    ev: dict[str, np.ndarray] = {
        "weight": rng.choice([-0.2, 0.2], size=n, p=[0.1, 0.9]) * rng.uniform(0.8, 1.2, n),
        "region": region,
        "m_jj": mjj,
        "score": score,
    }
    for sfx, k, ds in (("_jes_totalUp", 1.03, 0.01), ("_jes_totalDown", 0.98, -0.005)):
        ev[f"region{sfx}"] = region
        ev[f"m_jj{sfx}"] = mjj * k
        ev[f"score{sfx}"] = np.clip(score + ds, 0.0, 1.0)
    # a b-tag-like per-event ratio on every process, the toy's pT(V) ratio on Z+jets only
    eff = rng.uniform(0.02, 0.08, n)
    ev["weight_btagUp"], ev["weight_btagDown"] = 1.0 + eff, 1.0 - 0.7 * eff
    for side, sign in (("Up", 1.0), ("Down", -1.0)):
        zjets = proc in toy.PTV_VARIATIONS["ptv_zjets"]
        ev[f"weight_ptv_zjets{side}"] = toy.ptv_ratio(met, sign) if zjets else np.ones(n)
    return ev


@pytest.fixture(scope="module")
def inputs() -> dict:
    rng = np.random.default_rng(5)
    mc = {p: _events(rng, p) for p in PROCS}
    regions = {
        r: bn.fill_region(
            r,
            mc,
            mjj_edges=MJJ_EDGES,
            score_edges=SCORE_EDGES,
            data_events=None,
            weight_systematics=WEIGHTS,
        )
        for r in [SR, *CRS]
    }
    bkg = [p for p in PROCS if p != "ZH"]
    binning = bn.merge_bins(*regions[SR].total(bkg), min_background=1.0, min_mc_effective=10)
    meta = {
        "model": "disco",
        "signal_region": SR,
        "control_regions": CRS,
        "mc_processes": list(PROCS),
        "signal_processes": ["ZH"],
        "cr_data_fit_fraction": 0.5,
        "weight_systematics": WEIGHTS,
    }
    return {"mc": mc, "regions": regions, "binning": binning, "meta": meta}


def _spec(mode: str, **syst) -> dict:
    spec = P.signal_fit(CFG, "disco", mode)
    spec["systematics"] = {**spec["systematics"], **syst}
    return spec


SF = {"TT": 1.04, "Zhf": 1.15, "Zlf": 0.93}


def _fit_input(inputs: dict, mode: str = "simultaneous", **syst) -> sfit.FitInput:
    return sfit.build_model(
        inputs["regions"],
        inputs["binning"],
        inputs["meta"],
        SF,
        None,
        mode=mode,
        spec=_spec(mode, **syst),
    )


# ---------------------------------------------------------------------------- histograms
def test_weight_variation_histogram_equals_hand_computed(inputs):
    assert bn.variations(WEIGHTS, ["total"]) == (
        "nominal", "jes_totalUp", "jes_totalDown", "btagUp", "btagDown", "ptv_zjetsUp",
        "ptv_zjetsDown",
    )  # fmt: skip
    for region in (SR, "CR_Zlf"):
        rh = inputs["regions"][region]
        for proc in ("Zlf", "ZH"):
            ev = inputs["mc"][proc]
            sel = ev["region"] == region
            for var, col in (
                ("ptv_zjetsUp", "weight_ptv_zjetsUp"),
                ("btagDown", "weight_btagDown"),
            ):
                w = ev["weight"][sel] * ev[col][sel]
                want, _, _ = np.histogram2d(
                    ev["m_jj"][sel], ev["score"][sel], bins=[MJJ_EDGES, SCORE_EDGES], weights=w
                )
                want2, _, _ = np.histogram2d(
                    ev["m_jj"][sel], ev["score"][sel], bins=[MJJ_EDGES, SCORE_EDGES], weights=w * w
                )
                got, got2 = rh.mc[proc][var]
                np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
                np.testing.assert_allclose(got2, want2, rtol=1e-12, atol=1e-12)
    # ratio 1: the variation is the nominal; the JES variations are untouched by the weights
    zh = inputs["regions"][SR].mc["ZH"]
    np.testing.assert_array_equal(zh["ptv_zjetsUp"][0], zh["nominal"][0])
    plain = bn.fill_region(
        SR, inputs["mc"], mjj_edges=MJJ_EDGES, score_edges=SCORE_EDGES, data_events=None
    )
    jes_only = bn.variations(jes_sources=["total"])
    assert set(plain.mc["Zlf"]) == set(jes_only)
    for var in jes_only:
        np.testing.assert_array_equal(
            plain.mc["Zlf"][var][0], inputs["regions"][SR].mc["Zlf"][var][0]
        )


def test_weight_variations_round_trip_through_hists_h5(inputs, tmp_path):
    h5, root = tmp_path / "hists.h5", tmp_path / "hists.root"
    bn.write_hists(h5, root, inputs["regions"], inputs["binning"], inputs["meta"])
    regions, _, meta = bn.read_hists(h5)
    assert meta["weight_systematics"] == WEIGHTS
    for var in ("btagUp", "ptv_zjetsDown"):
        np.testing.assert_allclose(
            regions[SR].mc["Zhf"][var][0], inputs["regions"][SR].mc["Zhf"][var][0]
        )


def test_resolve_weight_systematics_auto_list_and_errors():
    avail = {"ZH": ["btag", "ptv_tt", "ptv_zjets"], "TT": ["ptv_tt", "ptv_zjets"]}
    assert hists.resolve_weight_systematics("auto", avail) == ["ptv_tt", "ptv_zjets"]
    assert hists.resolve_weight_systematics(["ptv_zjets"], avail) == ["ptv_zjets"]
    assert hists.resolve_weight_systematics([], avail) == []
    with pytest.raises(InputError, match=r"btag.*cache of TT"):
        hists.resolve_weight_systematics(["btag"], avail)
    with pytest.raises(ConfigError, match="sf_TT"):
        hists.resolve_weight_systematics("auto", {"ZH": ["sf_TT"]})


def test_config_weights_key_and_params():
    assert CFG["fit"]["systematics"]["weights"] == "auto"
    assert P.hists(CFG, "disco")["weight_systematics"] == "auto"
    cfg = json.loads(json.dumps(CFG))
    cfg["fit"]["systematics"]["weights"] = ["ptv_tt", "lumi"]
    with pytest.raises(ConfigError, match="lumi clash"):
        P.hists(cfg, "disco")
    cfg["fit"]["systematics"]["weights"] = ["ptv_tt"]
    assert P.hists(cfg, "disco")["weight_systematics"] == ["ptv_tt"]


# ---------------------------------------------------------------------------- likelihood
def test_build_model_has_one_shape_nuisance_per_weight(inputs):
    inp = _fit_input(inputs)
    model = inp.model
    h_names = [model.names[i] for i in model.histo_index]
    assert h_names == ["jes_total", *WEIGHTS]
    h = h_names.index("ptv_zjets")
    zjets = [model.processes.index(p) for p in ("Zlf", "Zhf")]
    others = [i for i in range(len(model.processes)) if i not in zjets]
    assert np.all(model.histo_up[h, others] == 0) and np.all(model.histo_down[h, others] == 0)
    assert np.any(model.histo_up[h, zjets] != 0)
    # the varied yields are the merged weighted histograms (signal region) and the CR sums
    sr = model.channel(SR)
    regions, binning = inputs["regions"], inputs["binning"]
    j = model.processes.index("Zlf")
    up = model.nominal[j] + model.histo_up[h, j]
    want_sr = binning.apply(regions[SR].mc["Zlf"]["ptv_zjetsUp"][0])
    np.testing.assert_allclose(up[sr.start : sr.stop], np.clip(want_sr, 0, None), rtol=1e-12)
    cr = model.channel("CR_Zlf")
    want_cr = 0.5 * regions["CR_Zlf"].mc["Zlf"]["ptv_zjetsUp"][0].sum()
    assert up[cr.start] == pytest.approx(want_cr, rel=1e-12)
    # jes off: the weight systematics stay; weights listed: only those
    no_jes = _fit_input(inputs, jes=False).model
    assert [no_jes.names[i] for i in no_jes.histo_index] == WEIGHTS
    listed = _fit_input(inputs, weights=["ptv_zjets"]).model
    assert [listed.names[i] for i in listed.histo_index] == ["jes_total", "ptv_zjets"]
    with pytest.raises(InputError, match=r"ptv_tt.*rerun the hists"):
        _fit_input(inputs, weights=["ptv_tt"])
    with pytest.raises(InputError, match="btag: both"):
        _fit_input(inputs, lnN={"btag": {"ZH": 1.02}})


def _pyhf_spec_by_hand(inputs: dict) -> tuple[dict, dict[str, np.ndarray], np.ndarray]:
    """The signal-region model written directly as pyhf JSON from the histograms (histosys for
    jes_total and every weight systematic, normfactors mu and sf_*), and the matching internal
    model."""
    regions, binning = inputs["regions"], inputs["binning"]
    shapes = ["jes_total", *WEIGHTS]
    samples, nominal, histosys = [], {}, {s: {} for s in shapes}
    for p in PROCS:
        mc = regions[SR].mc[p]
        nom = np.clip(binning.apply(mc["nominal"][0]), 0, None)
        nominal[p] = nom
        mods = [{"name": "mu", "type": "normfactor", "data": None}] if p == "ZH" else []
        if p in SF:
            mods.append({"name": f"sf_{p}", "type": "normfactor", "data": None})
        for s in shapes:
            hi = np.clip(binning.apply(mc[f"{s}Up"][0]), 0, None)
            lo = np.clip(binning.apply(mc[f"{s}Down"][0]), 0, None)
            histosys[s][p] = (hi, lo)
            mods.append(
                {"name": s, "type": "histosys",
                 "data": {"hi_data": hi.tolist(), "lo_data": lo.tolist()}}
            )  # fmt: skip
        samples.append({"name": p, "data": nom.tolist(), "modifiers": mods})
    observed = np.round(sum(nominal.values()) * 1.05)
    params = [{"name": "mu", "inits": [1.0], "bounds": [[-20.0, 20.0]]}]
    params += [{"name": f"sf_{p}", "inits": [1.0], "bounds": [[0.0, 10.0]]} for p in SF]
    spec = {
        "channels": [{"name": SR, "samples": samples}],
        "observations": [{"name": SR, "data": observed.tolist()}],
        "measurements": [{"name": "m", "config": {"poi": "mu", "parameters": params}}],
        "version": "1.0.0",
    }
    model = lk.make_model(
        {SR: binning.n_bins},
        nominal,
        norm_factors={
            "mu": lk.NormFactor(("ZH",), 1.0, (-20.0, 20.0)),
            **{f"sf_{p}": lk.NormFactor((p,), 1.0, (0.0, 10.0)) for p in SF},
        },
        histosys=histosys,
    )
    return spec, {"observed": observed}, model  # type: ignore[return-value]


def test_likelihood_with_weight_shape_nuisance_agrees_with_pyhf(inputs):
    pyhf = require_module("pyhf", "agreement with pyhf's histosys")
    pyhf.set_backend("numpy")
    spec, obs, model = _pyhf_spec_by_hand(inputs)
    ws = pyhf.Workspace(spec, validate=True)
    pdf = ws.model()
    data = np.asarray(ws.data(pdf))
    lik = lk.Likelihood(model, obs["observed"])

    def both(x: np.ndarray) -> tuple[float, float]:
        pars = np.array(pdf.config.suggested_init(), dtype=float)
        for name in pdf.config.par_order:
            pars[pdf.config.par_slice(name)] = x[model.index(name)]
        return lik(x), -float(pdf.logpdf(pars, data)[0])

    ours0, theirs0 = both(model.init.copy())
    rng = np.random.default_rng(17)
    for k in range(12):
        x = model.init.copy()
        x[model.index("mu")] = rng.uniform(0.2, 3.0)
        for p in SF:
            x[model.index(f"sf_{p}")] = rng.uniform(0.7, 1.3)
        for i in model.histo_index:  # inside |alpha| < 1 (polynomial) and beyond (linear)
            x[i] = rng.uniform(-0.9, 0.9) if k % 2 else rng.uniform(-2.0, 2.0)
        assert np.all(lk.expected_by_process(model, x).sum(axis=0) > 0)
        ours, theirs = both(x)
        assert ours - ours0 == pytest.approx(theirs - theirs0, rel=1e-8, abs=1e-9)


def test_workspace_validates_with_pyhf_and_carries_the_modifier(inputs, tmp_path):
    pyhf = require_module("pyhf", "validation of the exported workspace")
    pyhf.set_backend("numpy")
    inp = _fit_input(inputs)
    path = tmp_path / "workspace.json"
    sfit.write_workspace(inp, str(path), inputs["meta"])
    ws = json.loads(path.read_text())
    pyhf.schema.validate(ws, "workspace.json")
    for ch in ws["channels"]:
        kinds = {s["name"]: {m["name"]: m["type"] for m in s["modifiers"]} for s in ch["samples"]}
        for p in ("Zlf", "Zhf"):
            assert kinds[p]["ptv_zjets"] == "histosys" and kinds[p]["btag"] == "histosys"
        assert "ptv_zjets" not in kinds.get("ZH", {})  # ratio 1: no modifier
    assert {"ptv_zjets", "btag", "jes_total"} <= set(pyhf.Workspace(ws).model().config.par_order)
    # the export reproduces the internal likelihood up to a constant (MC-stat terms off: they
    # are profiled internally, explicit parameters in pyhf)
    plain = _fit_input(inputs, mc_stat={"enabled": False, "method": "profile"})
    model = plain.model
    workspace = pyhf.Workspace(to_workspace(model, plain.observed), validate=True)
    pdf = workspace.model()
    data = np.asarray(workspace.data(pdf))
    lik = lk.Likelihood(model, plain.observed)
    rng = np.random.default_rng(2)
    diffs = []
    for _ in range(8):
        x = model.init.copy()
        for i in model.histo_index:
            x[i] = rng.uniform(-2.0, 2.0)
        x[model.index("mu")] = rng.uniform(0.0, 2.0)
        pars = np.array(pdf.config.suggested_init(), dtype=float)
        for name in pdf.config.par_order:
            pars[pdf.config.par_slice(name)] = x[model.index(name)]
        diffs.append(lik(x) + float(pdf.logpdf(pars, data)[0]))
    assert np.ptp(diffs) < 1e-8 * max(1.0, abs(diffs[0]))


def test_datacard_lists_the_shape_line(inputs, tmp_path):
    require_module("uproot", "the shapes file")
    inp = _fit_input(inputs)
    combine.write_datacard(inp.model, inp.observed, tmp_path, signal=["ZH"])
    card = combine.parse_datacard(tmp_path / "datacard.txt")
    assert card["systematics"]["ptv_zjets"]["type"] == "shape"
    lines = (tmp_path / "datacard.txt").read_text().splitlines()
    procs = next(ln for ln in lines if ln.startswith("process ") and "ZH" in ln).split()[1:]
    row = next(ln for ln in lines if ln.startswith("ptv_zjets ")).split()[2:]
    assert len(row) == len(procs)
    for p, v in zip(procs, row, strict=True):
        assert v == ("1" if p in ("Zlf", "Zhf") else "-"), (p, v)
    shapes = combine.read_shapes(card, tmp_path)
    assert any(name == "Zlf_ptv_zjetsUp" for name in shapes[SR])


# ---------------------------------------------------------------------------- toy and cache
def test_toy_adds_ptv_branches_and_keeps_the_others():
    seed = toy.derive_seed(3, "Zlf", 0)
    ev = toy.generate_mc_file("Zlf", 2000, seed, 0)
    # the file before the weight variations: the same generation sequence, nothing else
    rng = np.random.default_rng(toy.derive_seed(3, "Zlf", 0))
    old = toy.generate_events("Zlf", 2000, rng)
    p_neg = old.pop("_p_negative")
    old["genWeight"] = (np.where(rng.random(2000) < p_neg, -1.0, 1.0) * 1000.0).astype(np.float32)
    old.update(toy._keys(2000, run=1, file_index=0))
    new = {k for k in ev if k not in old}
    assert new == {f"weight_{n}{s}" for n in toy.PTV_VARIATIONS for s in ("Up", "Down")}
    for k, v in old.items():
        assert ev[k].dtype == v.dtype and ev[k].tobytes() == v.tobytes(), k
    met = ev["MET_pt"].astype(np.float64)
    ramp = np.clip((met - 200.0) / 300.0, 0.0, 1.0)
    np.testing.assert_allclose(ev["weight_ptv_zjetsUp"], 1 + 0.1 * ramp, rtol=1e-6)
    np.testing.assert_allclose(ev["weight_ptv_zjetsDown"], 1 - 0.1 * ramp, rtol=1e-6)
    assert np.all(ev["weight_ptv_ttUp"] == 1) and np.all(ev["weight_ptv_ttDown"] == 1)
    zh = toy.generate_mc_file("ZH", 300, toy.derive_seed(3, "ZH", 0), 0)
    assert all(
        np.all(zh[f"weight_{n}{s}"] == 1) for n in toy.PTV_VARIATIONS for s in "Up Down".split()
    )


def test_flat_cache_keeps_weight_variation_columns(tmp_path):
    layout = CFG["samples"]["layouts"]["flat"]
    branches = toy.generate_mc_file("TT", 3000, toy.derive_seed(4, "TT", 0), 0)
    path = tmp_path / "tt.root"
    toy.write_tree(path, branches)
    args = {
        "sample": "TT",
        "is_mc": True,
        "layout": layout,
        "preselection": CFG["regions"]["preselection"],
        "regions": CFG["regions"]["definitions"],
    }
    frame, _ = cache.cache_file(str(path), **args)
    assert len(frame) > 0
    for name in ("weight_ptv_ttUp", "weight_ptv_ttDown", "weight_ptv_zjetsUp"):
        assert name in frame.columns
    # rows are the selected events: match them to the branches by event number
    idx = frame["event"].to_numpy().astype(np.int64) - 1
    np.testing.assert_array_equal(
        frame["weight_ptv_ttUp"].to_numpy(), branches["weight_ptv_ttUp"][idx]
    )
    assert np.all(frame["weight_ptv_zjetsDown"] == 1)
    # without the branches (older files) nothing is added and nothing else changes
    old = {k: v for k, v in branches.items() if not k.startswith("weight_")}
    toy.write_tree(tmp_path / "old.root", old)
    plain, _ = cache.cache_file(str(tmp_path / "old.root"), **args)
    pd.testing.assert_frame_equal(plain, frame[[c for c in frame.columns if c in plain.columns]])
    assert list(plain.columns) == [c for c in frame.columns if not c.startswith("weight_")]
    # the parquet schema lists the systematics
    frame.to_parquet(tmp_path / "c.parquet")
    assert events.weight_variations(str(tmp_path / "c.parquet")) == ["ptv_tt", "ptv_zjets"]


def test_lone_weight_variation_branch_and_inconsistent_files_are_errors():
    with pytest.raises(InputError, match="weight_ptvUp without the opposite side"):
        cache.flat_weight_variations(["MET_pt", "weight_ptvUp", "weight_xDown", "weight_xUp"])
    found = cache.flat_weight_variations(
        ["weight_bDown", "weight_aUp", "weight_aDown", "weight_bUp"]
    )
    assert found == [
        "weight_aUp", "weight_aDown", "weight_bUp", "weight_bDown",
    ]  # fmt: skip
    a = pd.DataFrame({"x": [1.0], "weight_aUp": [1.0], "weight_aDown": [1.0]})
    b = pd.DataFrame({"x": [1.0]})
    with pytest.raises(DataError, match="differ in the weight-variation columns"):
        cache._check_weight_variations([a, b], ["f0", "f1"], "TT")
