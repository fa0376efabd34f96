"""m_jj x score histograms, score edges, bin merging and storage."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require_module

from vhbb.core.errors import DataError
from vhbb.fit import templates as bn


def test_score_edges_uniform_and_quantile():
    np.testing.assert_allclose(
        bn.score_edges([], [], mode="uniform", count=4), [0, 0.25, 0.5, 0.75, 1]
    )
    rng = np.random.default_rng(0)
    s = rng.beta(5, 2, 100_000)
    w = rng.uniform(0.5, 1.5, len(s))
    edges = bn.score_edges(s, w, mode="quantile", count=5)
    assert edges[0] == 0 and edges[-1] == 1 and len(edges) == 6
    content = np.histogram(s, edges, weights=w)[0]
    np.testing.assert_allclose(content / content.sum(), 0.2, atol=0.003)
    # repeated quantiles (a collapsed classifier) are dropped, never an invalid axis
    collapsed = bn.score_edges(np.full(100, 0.3), np.ones(100), mode="quantile", count=5)
    assert np.all(np.diff(collapsed) > 0)


def test_histogram2d_sums_and_flow():
    x = np.array([10.0, 60.0, 60.0, 300.0])
    y = np.array([0.1, 0.9, 0.9, 1.0])
    w = np.array([1.0, 2.0, -1.0, 3.0])
    sumw, sumw2 = bn.histogram2d(x, y, w, np.array([50.0, 100.0, 250.0]), np.array([0, 0.5, 1]))
    np.testing.assert_allclose(sumw, [[1.0, 1.0], [0.0, 3.0]])
    np.testing.assert_allclose(sumw2, [[1.0, 5.0], [0.0, 9.0]])


def test_merging_meets_minimums_and_documented_order():
    rng = np.random.default_rng(1)
    b = rng.exponential(3.0, (6, 8)) * np.linspace(2, 0.05, 8)[None, :]
    b2 = b * 0.2
    b[2, 5] = 0.0  # an empty bin
    binning = bn.merge_bins(b, b2, min_background=2.0, min_mc_effective=20)
    merged = binning.apply(b)
    merged2 = binning.apply(b2)
    assert np.all(merged >= 2.0) and np.all(merged > 0)
    assert np.all(merged**2 / merged2 >= 20)
    assert merged.sum() == pytest.approx(b.sum())
    # numbering follows the first fine bin in C order (m_jj major, score minor)
    first = [np.flatnonzero(binning.bin_map.ravel() == k)[0] for k in range(binning.n_bins)]
    assert first == sorted(first)


def test_merging_without_background_fails():
    with pytest.raises(DataError, match="no positive expected background"):
        bn.merge_bins(np.zeros((3, 3)), np.zeros((3, 3)), min_background=1, min_mc_effective=1)


VARIATIONS = ("jes_absoluteUp", "jes_absoluteDown", "jes_ptUp", "jes_ptDown")


def _region_events(rng, n):  # type: ignore[no-untyped-def]
    ev = {"weight": rng.normal(1, 0.5, n)}
    for sfx in ("", *(f"_{v}" for v in VARIATIONS)):
        ev["region" + sfx] = np.where(rng.uniform(size=n) < 0.6, "SR", "CR")
        ev["m_jj" + sfx] = rng.uniform(50, 250, n)
        ev["score" + sfx] = rng.uniform(0, 1, n)
    return ev


def test_storage_roundtrip_hdf5_and_root(tmp_path):
    uproot = require_module("uproot")
    rng = np.random.default_rng(2)
    events = {"ZH": _region_events(rng, 500), "TT": _region_events(rng, 800)}
    data = {k: events["TT"][k] for k in ("region", "m_jj", "score")}
    me, se = np.array([50.0, 100, 150, 250]), np.linspace(0, 1, 5)
    regions = {
        r: bn.fill_region(r, events, mjj_edges=me, score_edges=se, data_events=data)
        for r in ("SR", "CR")
    }
    binning = bn.merge_bins(*regions["SR"].total(["TT"]), min_background=5, min_mc_effective=5)
    bn.write_hists(tmp_path / "h.h5", tmp_path / "h.root", regions, binning, {"model": "m"})
    back, b2, meta = bn.read_hists(tmp_path / "h.h5")
    assert meta == {"model": "m"} and np.array_equal(b2.bin_map, binning.bin_map)
    for r in regions:
        for p in events:
            assert tuple(regions[r].mc[p]) == ("nominal", *VARIATIONS)  # found in the columns
            for var in bn.variations(jes_sources=["absolute", "pt"]):
                for a, b in zip(back[r].mc[p][var], regions[r].mc[p][var], strict=True):
                    np.testing.assert_allclose(a, b)
        np.testing.assert_allclose(back[r].data, regions[r].data)
    with uproot.open(tmp_path / "h.root") as fin:
        for var in VARIATIONS:
            h = fin[f"SR/ZH_{var}"]
            np.testing.assert_allclose(h.values(), regions["SR"].mc["ZH"][var][0])
            np.testing.assert_allclose(h.variances(), regions["SR"].mc["ZH"][var][1])
        np.testing.assert_allclose(fin["CR/data_obs"].values(), regions["CR"].data)


def test_hists_plot_data_and_blinded_projections(tmp_path):
    """The side-band data of the blinded figures: stored only while blinded, and only outside
    the window; the plot driver hides the window in m_jj and shows the score in the side
    bands (data and MC)."""
    from vhbb.fit.figures import hists_projections
    from vhbb.fit.hists import read_plot_data, write_plot_data

    rng = np.random.default_rng(3)
    n = 400
    data = {
        "region": np.where(rng.random(n) < 0.5, "SR", "CR"),
        "m_jj": rng.uniform(50, 250, n),
        "score": rng.uniform(0, 1, n),
    }
    window = (90.0, 150.0)
    write_plot_data(str(tmp_path / "unblinded.h5"), data, "SR", False, window)
    assert read_plot_data(str(tmp_path / "unblinded.h5")) is None
    write_plot_data(str(tmp_path / "blinded.h5"), data, "SR", True, window)
    sr_data = read_plot_data(str(tmp_path / "blinded.h5"))
    sr = data["region"] == "SR"
    side = sr & ((data["m_jj"] < 90) | (data["m_jj"] >= 150))
    np.testing.assert_array_equal(sr_data["m_jj"], data["m_jj"][side])

    mjj_edges, s_edges = np.array([50.0, 90, 150, 250]), np.array([0.0, 0.5, 1.0])
    columns = {f"{k}{v}": data[k] for k in data for v in ("", "_jes_aUp", "_jes_aDown")}
    mc = {"B": {"weight": np.full(n, 2.0), **columns}}
    regions = {r: bn.fill_region(r, mc, mjj_edges=mjj_edges, score_edges=s_edges,
                                 data_events=None) for r in ("SR", "CR")}  # fmt: skip
    meta = {"signal_region": "SR", "mc_processes": ["B"], "cr_data_fit_fraction": 0.5,
            "blinded": True}  # fmt: skip
    figs = {f["name"]: f for f in hists_projections(regions, meta, sr_data, (90.0, 150.0))}
    assert figs["SR/m_jj"]["hidden"] == (90.0, 150.0)
    assert figs["SR/m_jj"]["data"].sum() == side.sum()  # the window's bins hold no data
    assert figs["SR/score"]["data"].sum() == side.sum()
    assert figs["SR/score"]["mc"]["B"].sum() == pytest.approx(2.0 * side.sum())
    assert figs["CR/m_jj"]["mc"]["B"].sum() == pytest.approx(0.5 * 2.0 * (~sr).sum())
    assert figs["CR/m_jj"]["hidden"] is None and figs["CR/m_jj"]["data"] is None


@pytest.mark.parametrize("seed", range(5))
def test_plot_data_hold_no_event_inside_any_accepted_window(tmp_path, seed):
    """For random accepted windows (low < high, anywhere in the m_jj range): no stored event
    lies inside the window, every side-band event is stored."""
    from vhbb.fit.hists import read_plot_data, write_plot_data

    rng = np.random.default_rng(100 + seed)
    lo = float(rng.uniform(50, 200))
    window = (lo, float(rng.uniform(lo + 1, 250)))
    n = 2000
    m = rng.uniform(50, 250, n)
    m[:20] = window[0]  # the edges: low is blinded, high is a side band (the figures' bins)
    m[20:40] = window[1]
    data = {"region": np.full(n, "SR"), "m_jj": m, "score": rng.uniform(0, 1, n)}
    write_plot_data(str(tmp_path / "p.h5"), data, "SR", True, window)
    stored = read_plot_data(str(tmp_path / "p.h5"))["m_jj"]
    assert not np.any((stored >= window[0]) & (stored < window[1]))
    assert len(stored) == int(np.sum((m < window[0]) | (m >= window[1])))
