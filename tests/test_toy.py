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
        **{
            var: cache.derive(cache.flat_events(ev, layout, var))
            for var in ("jes_absoluteUp", "jes_ptUp", "jes_flavourUp")
        },
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
    nom, raw = d[None], d["raw"]
    for source in ("absolute", "pt", "flavour"):
        up = d[f"jes_{source}Up"]
        assert np.all(up["j1_pt"] > nom["j1_pt"]), source
        assert np.median(up["m_jj"] / nom["m_jj"]) > 1.005, source
        # MET changes (propagated from the jets) and additional jets migrate across 30 GeV
        assert np.mean(np.abs(raw[f"MET_pt_jes_{source}Up"] - raw["MET_pt"]) > 0.1) > 0.5
        assert np.any(up["n_add_jets"] != nom["n_add_jets"]), source
    # a constant scale of both jets scales m_jj by exactly that factor
    ratio = d["jes_absoluteUp"]["m_jj"] / nom["m_jj"]
    np.testing.assert_allclose(ratio, 1.015, rtol=1e-5)


def _delta(spec: dict, pt: np.ndarray, flavour: np.ndarray) -> np.ndarray:
    """A JES source's relative uncertainty by hand: constant + over_pt / pT + the flavour term."""
    terms = [spec.get(f, 0.0) for f in ("b", "c", "l")]
    by_flavour = np.select([flavour == "b", flavour == "c", flavour == "l"], terms, np.nan)
    return spec.get("constant", 0.0) + spec.get("over_pt", 0.0) / np.maximum(pt, 1.0) + by_flavour


def test_jes_sources_scale_every_jet_by_their_own_uncertainty():
    """Every source's branches are the nominal jets times 1 +- delta_s (a numpy hand
    computation from the nominal branches and the true flavours), MET minus the pT shifts; the
    flavour source differs between b and light jets, the additional jets are light."""
    sources = CFG["toy"]["jes_sources"]
    assert list(sources) == ["absolute", "pt", "flavour"]
    truth: dict = {}
    ev = toy.generate_events("TT", 6000, np.random.default_rng(6), jes=sources, truth=truth)
    plain = toy.generate_events("TT", 6000, np.random.default_rng(6))  # the default sources
    assert plain.keys() == ev.keys()
    for key in ev:
        np.testing.assert_array_equal(ev[key], plain[key], err_msg=key)
    flavour = truth["jet_flavour"]
    assert flavour.shape == (6000, 2) and set(np.unique(flavour)) == {"b", "c", "l"}
    light = np.full(6000, "l")
    f8 = np.float64
    for name, spec in sources.items():
        for side, sign in (("Up", 1.0), ("Down", -1.0)):
            var = f"jes_{name}{side}"
            mx = ev["MET_pt"].astype(f8) * np.cos(ev["MET_phi"].astype(f8))
            my = ev["MET_pt"].astype(f8) * np.sin(ev["MET_phi"].astype(f8))
            jets = [(f"Jet{k}", flavour[:, k - 1]) for k in (1, 2)]
            jets += [(f"AddJet{i}", light) for i in range(1, 5)]
            for jet, flav in jets:
                pt = ev[f"{jet}_pt"].astype(f8)
                scale = 1.0 + sign * _delta(spec, pt, flav)
                np.testing.assert_allclose(ev[f"{jet}_pt_{var}"], pt * scale, rtol=2e-6)
                if jet.startswith("Jet"):
                    mass = ev[f"{jet}_mass"].astype(f8)
                    np.testing.assert_allclose(ev[f"{jet}_mass_{var}"], mass * scale, rtol=2e-6)
                phi = ev[f"{jet}_phi"].astype(f8)
                mx -= pt * (scale - 1) * np.cos(phi)
                my -= pt * (scale - 1) * np.sin(phi)
            np.testing.assert_allclose(ev[f"MET_pt_{var}"], np.hypot(mx, my), rtol=1e-4)
    rel = ev["Jet1_pt_jes_flavourUp"].astype(f8) / ev["Jet1_pt"] - 1.0
    for flav, want in (("b", 0.01), ("c", 0.015), ("l", 0.02)):
        np.testing.assert_allclose(rel[flavour[:, 0] == flav], want, rtol=1e-4)
    add = ev["AddJet1_pt"] > 0
    add_rel = ev["AddJet1_pt_jes_flavourDown"][add].astype(f8) / ev["AddJet1_pt"][add] - 1.0
    np.testing.assert_allclose(add_rel, -0.02, rtol=1e-4)
    # the quadrature sum is close to the former single source 0.015 + 1.5 / pT
    pt = np.array([50.0, 100.0, 200.0])
    total = np.sqrt(sum(_delta(spec, pt, np.full(3, "b")) ** 2 for spec in sources.values()))
    np.testing.assert_allclose(total, 0.015 + 1.5 / pt, rtol=0.15)


def test_written_file_round_trip(tmp_path):
    spec = toy.file_spec(CFG, "Zhf", 0)
    spec["n_events"] = 1000
    path = tmp_path / "part0.root"
    toy.run_toy_file(path, **spec)
    with uproot.open(path) as fin:
        tree = fin["Events"]
        assert tree.num_entries == 1000
        names = set(tree.keys())
        for source in ("absolute", "pt", "flavour"):
            assert {f"Jet1_pt_jes_{source}Up", f"MET_phi_jes_{source}Down"} <= names
        assert {"genWeight", "luminosityBlock"} <= names
        assert not any(n.endswith(("_jesUp", "_jesDown")) for n in names)
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
