"""Sanity checks of the toy: the expected signal-region significance of a quick BDT.

``python -m vhbb.evaluation.toy_significance`` prints it for the default config.  The toy is tuned
so that a gradient-boosted classifier with m_jj among its inputs gives an expected binned Asimov
significance of 1.5-2.5 sigma at 41.5 fb^-1 (the scale of CMS's 2017 Z(nunu)H result).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from vhbb.data import cache, toy
from vhbb.stats.histograms import quantile_inner_edges, weighted_hist
from vhbb.stats.significance import asimov_significance

log = logging.getLogger(__name__)


def equal_signal_bins(score: np.ndarray, w_sig: np.ndarray, n_bins: int) -> np.ndarray:
    """Score edges with equal signal yield per bin (open outer edges)."""
    return np.concatenate([[-np.inf], quantile_inner_edges(score, w_sig, n_bins), [np.inf]])


def toy_significance(config: Mapping[str, Any], n_per_sample: int = 150_000, seed: int = 1) -> dict:
    """Generate the toy in memory, select the signal region, train a BDT on half, and return
    the 15-bin (equal signal yield) Asimov significance on the other half (weights x2)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    layout = config["samples"]["layouts"]["flat"]
    sr = config["export"]["training_region"]
    features = config["features"]["training"]
    lumi = config["lumi"]
    xs, ys, ws = [], [], []
    for name, spec in config["samples"]["list"].items():
        role = config["samples"]["processes"][spec["process"]]["role"]
        if role == "data" or spec.get("source") != "toy":
            continue
        ev = toy.generate_mc_file(spec["process"], n_per_sample, toy.derive_seed(seed, name, 0), 0)
        stats = {"n_read": 0, "sum_gen_weight": 0.0, "n_pair": 0, "n_nan_dropped": 0}
        frame = cache._process_chunk(
            ev, "flat", layout, True, "genWeight", config["regions"]["preselection"],
            config["regions"]["definitions"], stats, "drop", name,
        )  # fmt: skip
        weight = (
            frame["gen_weight"].to_numpy() / stats["sum_gen_weight"] * spec["xsec_pb"] * 1e3 * lumi
        )
        sel = (frame["region"] == sr).to_numpy()
        xs.append(frame.loc[sel, features].to_numpy())
        ys.append(np.full(sel.sum(), role == "signal"))
        ws.append(weight[sel])
    x, y, w = np.concatenate(xs), np.concatenate(ys), np.concatenate(ws)
    rng = np.random.default_rng(seed)
    train = rng.random(len(y)) < 0.5
    balance = np.where(y, 1 / w[y].sum(), 1 / w[~y].sum()) * np.abs(w)
    clf = HistGradientBoostingClassifier(max_iter=200, random_state=seed)
    clf.fit(x[train], y[train], sample_weight=balance[train])
    score = clf.predict_proba(x[~train])[:, 1]
    yt, wt = y[~train], 2 * w[~train]
    edges = equal_signal_bins(score, np.where(yt, wt, 0), 15)
    s = weighted_hist(score[yt], wt[yt], edges)[0]
    b = weighted_hist(score[~yt], wt[~yt], edges)[0]
    return {
        "significance": asimov_significance(s, b),
        "signal_yield": float(w[y].sum()),
        "background_yield": float(w[~y].sum()),
        "bins": len(s),
    }


if __name__ == "__main__":  # pragma: no cover
    import sys
    from pathlib import Path

    from vhbb.config.loading import load_config

    logging.basicConfig(level=logging.INFO)
    cfg = load_config(sys.argv[1:] or [Path("config") / "config.yaml"])
    log.info("toy significance: %s", toy_significance(cfg))
