"""Binning scan (small): sigma_mu and significance versus n x n bins, MC statistics on and off."""

from __future__ import annotations

import numpy as np

from vhbb.fit.binning_scan import scan

SETTINGS = {
    "binning": {
        "mjj_edges": [50, 250],
        "score": {"mode": "uniform", "count": 1},
        "merge": {"min_background": 1.0, "min_mc_effective": 10},
    },
    "systematics": {"lnN": {"lumi": {"S": 1.025}}},
    "poi_bounds": [-20, 20],
}


def _events(rng, n, weight, peak, slope):  # type: ignore[no-untyped-def]
    mjj = rng.normal(peak, 12, n).clip(50, 249.9) if peak else rng.uniform(50, 250, n)
    score = rng.beta(slope, 1.0, n) if slope > 1 else rng.beta(1.0, 3.0, n)
    return {"m_jj": mjj, "score": score, "weight": np.full(n, weight)}


def test_finer_bins_gain_until_mc_statistics_take_over():
    rng = np.random.default_rng(0)
    events = {
        "S": _events(rng, 20000, 0.01, 125.0, 4.0),
        "B": _events(rng, 4000, 1.0, 0.0, 1.0),  # few MC events with large weights
    }
    out = scan(events, [1, 4, 12, 40], signal=["S"], settings=SETTINGS)
    pts = out["points"]
    assert [p["fine_bins"] for p in pts] == [1, 16, 144, 1600]
    z = [p["significance"] for p in pts]
    z_ideal = [p["significance_no_mc_stat"] for p in pts]
    assert z[1] > z[0]  # binning helps
    # the MC-statistics terms never help, and cost more the finer the bins (after the gain)
    assert all(zs <= zi * 1.0001 for zs, zi in zip(z, z_ideal, strict=True))
    loss = out["mc_stat_loss"]
    assert loss[-1] > loss[1] and loss[-1] > loss[2]
    assert out["best"]["fine_bins"] < pts[-1]["fine_bins"]  # the finest binning is not the best
    assert all(p["merged_bins"] <= p["fine_bins"] for p in pts)
