"""Signal-strength fit: the hand-written likelihood (analytic gradient and Hessian) vs pyhf.

Both fit the same model (``vhbb.stats.likelihood.toy_model``: an n x n m_jj x score signal region
and three one-bin control regions with free scale factors, lnN and JES) exported with
``vhbb.fit.workspace.to_workspace``: one ML fit + covariance (here the inverse analytic Hessian,
pyhf Minuit's HESSE) from the same initial values, the same
Minuit tolerance (0.1, pyhf's default), in one process.  Goals: >= 10x faster than pyhf (numpy
backend) without MC-statistics terms, >= 1000x with per-bin MC-stat terms (pyhf: one staterror
parameter per bin; here analytically profiled, which gives the same numbers).  The fitted mu and
HESSE error of both are reported so that "same numbers" is checked, not assumed.
"""

from __future__ import annotations

import logging
import time
import warnings

import numpy as np

log = logging.getLogger(__name__)
TOLERANCE = 0.1


def _ours(n: int, stat: str | None, repeat: int) -> dict:
    from vhbb.stats import likelihood as lk

    model, asimov = lk.toy_model(n, n, stat=stat)
    lk.fit(model, asimov, tolerance=TOLERANCE)  # warm-up (imports, caches)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        res = lk.fit(model, asimov, tolerance=TOLERANCE)
        times.append(time.perf_counter() - t0)
    return {"seconds": float(np.median(times)), "mu": res.value("mu"), "sigma_mu": res.error("mu")}


def _pyhf(n: int, stat: str | None) -> dict:
    import pyhf

    from vhbb.fit.workspace import to_workspace
    from vhbb.stats import likelihood as lk

    model, asimov = lk.toy_model(n, n, stat=stat)
    pyhf.set_backend("numpy", pyhf.optimize.minuit_optimizer(tolerance=TOLERANCE))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ws = pyhf.Workspace(to_workspace(model, asimov))
        pmodel = ws.model()
        data = ws.data(pmodel)
    t0 = time.perf_counter()
    pars = pyhf.infer.mle.fit(data, pmodel, return_uncertainties=True)
    seconds = time.perf_counter() - t0
    poi = pmodel.config.poi_index
    return {"seconds": seconds, "mu": float(pars[poi, 0]), "sigma_mu": float(pars[poi, 1])}


def run(quick: bool = False) -> dict:
    pyhf_sizes = {
        None: [10, 30] if quick else [10, 30, 100],
        "profile": [5, 10] if quick else [10, 30],
    }
    own_sizes = {None: [10, 30, 100], "profile": [10, 30, 100]}
    out: dict = {"tolerance": TOLERANCE, "cases": []}
    for stat in (None, "profile"):
        for n in sorted(set(pyhf_sizes[stat]) | set(own_sizes[stat])):
            ours = _ours(n, stat, repeat=5)
            case = {"size": f"{n}x{n} SR + 3 CR", "mc_stat": stat is not None, "vhbb": ours}
            if n in pyhf_sizes[stat]:
                theirs = _pyhf(n, stat)
                case["pyhf"] = theirs
                case["speedup"] = theirs["seconds"] / ours["seconds"]
                case["sigma_mu_rel_diff"] = ours["sigma_mu"] / theirs["sigma_mu"] - 1
                log.info(
                    "%s mc_stat=%s: vhbb %.4f s, pyhf %.3f s -> %.0fx (sigma_mu %.5f vs %.5f)",
                    case["size"], case["mc_stat"], ours["seconds"], theirs["seconds"],
                    case["speedup"], ours["sigma_mu"], theirs["sigma_mu"],
                )  # fmt: skip
            else:
                log.info(
                    "%s mc_stat=%s: vhbb %.4f s", case["size"], case["mc_stat"], ours["seconds"]
                )
            out["cases"].append(case)
    ratios = [c["speedup"] for c in out["cases"] if "speedup" in c]
    out["min_speedup_no_mc_stat"] = min(
        (c["speedup"] for c in out["cases"] if "speedup" in c and not c["mc_stat"]), default=None
    )
    out["min_speedup_mc_stat"] = min(
        (c["speedup"] for c in out["cases"] if "speedup" in c and c["mc_stat"]), default=None
    )
    out["goals"] = {"no_mc_stat": 10, "mc_stat": 1000}
    log.info("speed-ups: %s", ", ".join(f"{r:.0f}x" for r in ratios))
    return out
