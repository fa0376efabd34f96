"""Toy throughput of the diagnostics: generate + fit (MIGRAD + HESSE) Poisson pseudo-experiments.

The model is ``vhbb.stats.likelihood.toy_model`` at the default binning's size (11 m_jj x 15 score
bins before merging, ~100 after: here 10 x 10 unmerged, three control regions, free scale factors,
lnN, JES and per-bin MC statistics, profiled analytically).  Reports toys per second on 1 and 2
workers and the projected time of 1000 toys (the ``config/full.yaml`` closure test).
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)


def run(quick: bool = False) -> dict:
    from vhbb.fit import diagnostics as dg
    from vhbb.stats import likelihood as lk

    model, _ = lk.toy_model(10, 10, stat="profile")
    x = dg.truth_point(model, {"mu": 1.0})
    n = 40 if quick else 400
    dg.run_toys(model, x, 4, 0)  # warm-up
    out: dict = {"model": "toy_model(10, 10, stat='profile'): 103 bins, 8 parameters", "cases": []}
    for workers in (1, 2):
        t0 = time.perf_counter()
        fits = dg.run_toys(model, x, n, 1, workers=workers)
        seconds = time.perf_counter() - t0
        rate = n / seconds
        case = {
            "workers": workers,
            "toys": n,
            "seconds": seconds,
            "toys_per_second": rate,
            "valid_fraction": fits.n_valid / n,
            "projected_1000_toys_s": 1000 / rate,
        }
        out["cases"].append(case)
        log.info("toys: %d workers, %.1f toys/s (1000 toys: %.0f s)", workers, rate, 1000 / rate)
    return out
