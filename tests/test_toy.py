"""The toy generator: physics properties, weights, determinism, and the significance check."""

from __future__ import annotations

import numpy as np
import pytest
import uproot
from conftest import REPO

from vhbb import config
from vhbb.data import cache, toy

CFG = config.load_config([REPO / "config" / "config.yaml"])


def test_generation_is_deterministic():
    a = toy.generate_mc_file("ZH", 500, toy.derive_seed(1, "ZH", 0), 0)
    b = toy.generate_mc_file("ZH", 500, toy.derive_seed(1, "ZH", 0), 0)
    c = toy.generate_mc_file("ZH", 500, toy.derive_seed(1, "ZH", 1), 1)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["MET_pt"], c["MET_pt"])


@pytest.mark.parametrize("process", ["ZH", "Zlf", "Zhf", "TT"])
def test_negative_weight_fraction_is_nlo_like_and_kinematic(process):
    ev = toy.generate_mc_file(process, 40_000, toy.derive_seed(3, process, 0), 0)
    neg = ev["genWeight"] < 0
    assert 0.05 <= neg.mean() <= 0.20
    # the sign depends on kinematics: more negative weights at high dijet pT
    pt = np.hypot(
        ev["Jet1_pt"] * np.cos(ev["Jet1_phi"]) + ev["Jet2_pt"] * np.cos(ev["Jet2_phi"]),
        ev["Jet1_pt"] * np.sin(ev["Jet1_phi"]) + ev["Jet2_pt"] * np.sin(ev["Jet2_phi"]),
    )
    hi = pt > np.quantile(pt, 0.75)
    lo = pt < np.quantile(pt, 0.25)
    assert neg[hi].mean() > 1.5 * neg[lo].mean()


def _derived(process: str, n: int = 30_000) -> dict:
    ev = toy.generate_mc_file(process, n, toy.derive_seed(5, process, 0), 0)
    layout = CFG["samples"]["layouts"]["flat"]
    return {
        None: cache.derive(cache.flat_events(ev, layout, None)),
        "jesUp": cache.derive(cache.flat_events(ev, layout, "jesUp")),
        "raw": ev,
    }


def test_signal_mass_peak_and_resolution():
    d = _derived("ZH")[None]
    m = d["m_jj"][(d["j1_pt"] > 60) & (d["j2_pt"] > 35)]
    core = m[(m > 60) & (m < 190)]
    median = np.median(core)
    width = 0.5 * (np.quantile(core, 0.84) - np.quantile(core, 0.16))
    assert 115 < median < 132
    assert 0.09 < width / median < 0.14
    vz = _derived("VZ")[None]["m_jj"]
    assert 80 < np.median(vz[(vz > 40) & (vz < 160)]) < 98


def test_boosted_pair_relation_and_background_sculpting():
    """m ~ pT * dR / 2 for the boosted pair: a signal-like cut on dR_jj (a feature that is not
    m_jj) at fixed pT_jj sculpts the non-resonant background m_jj."""
    d = _derived("Zlf")[None]
    ratio = d["m_jj"] / (0.5 * d["pt_jj"] * d["dr_jj"])
    boosted = d["pt_jj"] > 200
    assert 0.8 < np.median(ratio[boosted]) < 1.25
    fixed_pt = (d["pt_jj"] > 200) & (d["pt_jj"] < 260)
    narrow = np.median(d["m_jj"][fixed_pt & (d["dr_jj"] < 1.0)])
    wide = np.median(d["m_jj"][fixed_pt & (d["dr_jj"] > 1.5)])
    assert wide > 1.8 * narrow


def test_jes_variation_moves_jets_met_and_counts():
    d = _derived("TT")
    nom, up, raw = d[None], d["jesUp"], d["raw"]
    assert np.all(up["j1_pt"] > nom["j1_pt"])
    assert np.median(up["m_jj"] / nom["m_jj"]) > 1.01
    # MET changes (propagated from the jets) and additional jets migrate across 30 GeV
    assert np.mean(np.abs(raw["MET_pt_jesUp"] - raw["MET_pt"]) > 0.1) > 0.5
    assert np.any(up["n_add_jets"] != nom["n_add_jets"])


def test_written_file_round_trip(tmp_path):
    spec = toy.file_spec(CFG, "Zhf", 0)
    spec["n_events"] = 1000
    path = tmp_path / "part0.root"
    toy.run_toy_file(path, **spec)
    with uproot.open(path) as fin:
        tree = fin["Events"]
        assert tree.num_entries == 1000
        assert {"Jet1_pt_jesUp", "MET_phi_jesDown", "genWeight", "luminosityBlock"} <= set(
            tree.keys()
        )
    # no temporary file left behind by the atomic write
    assert [p.name for p in tmp_path.iterdir()] == ["part0.root"]


def test_pseudo_data_follows_signed_density_with_true_scale_factors():
    """Data are an independent draw: counts match sigma*L*SF per process within Poisson."""
    expected = {"Zlf": 4000.0, "TT": 1500.0}
    data = toy.generate_data_file(expected, toy.derive_seed(9, "data", 0), 0)
    assert len(data["MET_pt"]) == pytest.approx(5500, abs=5 * np.sqrt(5500))
    assert np.all(data["genWeight"] == 1)
    # the signed-density draw removes events where negative weights cancel: compare the
    # pT_jj spectrum of data with the signed MC histogram of the same process mix
    mc = {p: toy.generate_mc_file(p, 60_000, toy.derive_seed(10, p, 0), 0) for p in expected}

    def pt_jj(ev):  # type: ignore[no-untyped-def]
        return np.hypot(
            ev["Jet1_pt"] * np.cos(ev["Jet1_phi"]) + ev["Jet2_pt"] * np.cos(ev["Jet2_phi"]),
            ev["Jet1_pt"] * np.sin(ev["Jet1_phi"]) + ev["Jet2_pt"] * np.sin(ev["Jet2_phi"]),
        )

    edges = np.array([0, 150, 200, 250, 300, 400, 2000.0])
    hist_mc = np.zeros(len(edges) - 1)
    for p, ev in mc.items():
        w = np.sign(ev["genWeight"]) * expected[p] / np.sign(ev["genWeight"]).sum()
        hist_mc += np.histogram(pt_jj(ev), edges, weights=w)[0]
    hist_data = np.histogram(pt_jj(data), edges)[0]
    pull = (hist_data - hist_mc) / np.sqrt(hist_mc)
    assert np.all(np.abs(pull) < 4), pull


def test_keys_unique_within_sample_though_event_numbers_repeat():
    a = toy.generate_mc_file("ZH", 3000, toy.derive_seed(1, "ZH", 0), 0)
    b = toy.generate_mc_file("ZH", 3000, toy.derive_seed(1, "ZH", 1), 1)
    assert np.intersect1d(a["event"], b["event"]).size == 3000  # event numbers repeat
    keys = {
        (r, lu, e)
        for x in (a, b)
        for r, lu, e in zip(x["run"], x["luminosityBlock"], x["event"], strict=True)
    }
    assert len(keys) == 6000


@pytest.mark.slow
def test_toy_significance_is_cms_like():
    """A quick gradient-boosted classifier (m_jj among its inputs) gives 1.5-2.5 sigma."""
    from vhbb.evaluation.toy_significance import toy_significance

    result = toy_significance(CFG, n_per_sample=150_000, seed=11)
    assert 1.5 <= result["significance"] <= 2.5, result
