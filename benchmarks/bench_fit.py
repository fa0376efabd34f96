"""Signal-strength fit: the hand-written likelihood (analytic gradient and Hessian) vs pyhf.

Both fit the same model (``vhbb.stats.likelihood.toy_model``: an n x n m_jj x score signal region
and three one-bin control regions with free scale factors, lnN and JES) exported with
``vhbb.fit.workspace.to_workspace``: one ML fit + covariance (here the inverse analytic Hessian,
pyhf Minuit's HESSE) from the same initial values, the same
Minuit tolerance (0.1, pyhf's default), in one process.  Goals: >= 10x faster than pyhf (numpy
backend) without MC-statistics terms, >= 1000x with per-bin MC-stat terms (pyhf: one staterror
parameter per bin; here analytically profiled, which gives the same numbers).  The fitted mu and
HESSE error of both are reported so that "same numbers" is checked, not assumed.

A second baseline, a bare MIGRAD on the same NLL: ``iminuit.Minuit`` on
``vhbb.stats.likelihood.Likelihood`` with its analytic gradient (no vhbb wrapper, the same start
values, steps, limits, tolerance and strategy 1), timed without the likelihood's construction.
Sizes: 5 x 5, 10 x 10 and 30 x 30 SR bins, with and without MC statistics, all in one run.  pyhf
at 30 x 30 with MC statistics (911 parameters, numerical gradients: about an hour) only with
``VHBB_BENCH_PYHF_30_MCSTAT=1``.
"""

from __future__ import annotations

import logging
import os
import time
import warnings

import numpy as np

log = logging.getLogger(__name__)
TOLERANCE = 0.1


def _medians(funcs: dict, repeat: int) -> dict[str, float]:  # type: ignore[type-arg]
    """Median (and, as ``<name>_min``, fastest) wall time of each function, called in turn (a
    busy machine slows all alike; a fit of a few ms that loses a scheduler slice to another
    process takes ~4 ms longer, which the median absorbs while fewer than half do)."""
    for func in funcs.values():
        func()  # warm-up (imports, caches)
    times: dict[str, list[float]] = {name: [] for name in funcs}
    for _ in range(repeat):
        for name, func in funcs.items():
            t0 = time.perf_counter()
            func()
            times[name].append(time.perf_counter() - t0)
    out = {name: float(np.median(t)) for name, t in times.items()}
    return out | {f"{name}_min": float(np.min(t)) for name, t in times.items()}


def _ours_and_bare(n: int, stat: str | None, repeat: int) -> tuple[dict, dict]:
    """vhbb's fit (MIGRAD + analytic-Hessian covariance) and a bare MIGRAD on the same NLL and
    gradient (``iminuit.Minuit`` on the likelihood, no covariance, no vhbb wrapper)."""
    from iminuit import Minuit

    from vhbb.stats import likelihood as lk

    model, asimov = lk.toy_model(n, n, stat=stat)
    lik = lk.Likelihood(model, asimov)
    steps = [lk._step(model, i) for i in range(model.n_params)]
    box: dict = {}

    def ours() -> None:
        box["res"] = lk.fit(model, asimov, tolerance=TOLERANCE)

    def bare() -> None:
        m = Minuit(lik, model.init.copy(), grad=lik.grad, name=list(model.names))
        m.errordef, m.tol, m.strategy = Minuit.LIKELIHOOD, TOLERANCE, 1
        m.limits, m.errors = list(model.bounds), steps
        m.migrad()
        box["m"] = m

    seconds = _medians({"ours": ours, "bare": bare}, repeat)
    res, m = box["res"], box["m"]
    return (
        {
            "seconds": seconds["ours"],
            "seconds_min": seconds["ours_min"],
            "mu": res.value("mu"),
            "sigma_mu": res.error("mu"),
            "nfcn": res.status.nfcn,
        },
        {
            "seconds": seconds["bare"],
            "seconds_min": seconds["bare_min"],
            "mu": float(m.values["mu"]),
            "nfcn": int(m.fmin.nfcn),
        },
    )


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
    sizes = [5, 10, 30]
    pyhf_sizes = {None: [5, 10, 30], "profile": [5, 10]}
    if os.environ.get("VHBB_BENCH_PYHF_30_MCSTAT") == "1":
        pyhf_sizes["profile"].append(30)
    repeat = 15 if quick else 40
    out: dict = {"tolerance": TOLERANCE, "cases": []}
    for stat in (None, "profile"):
        for n in sizes:
            ours, bare = _ours_and_bare(n, stat, repeat)
            case = {
                "size": f"{n}x{n} SR + 3 CR",
                "mc_stat": stat is not None,
                "vhbb": ours,
                "bare_migrad": bare,
                "speedup_vs_bare_migrad": bare["seconds"] / ours["seconds"],
            }
            if n in pyhf_sizes[stat]:
                theirs = _pyhf(n, stat)
                case["pyhf"] = theirs
                case["speedup"] = theirs["seconds"] / ours["seconds"]
                case["sigma_mu_rel_diff"] = ours["sigma_mu"] / theirs["sigma_mu"] - 1
            log.info(
                "%s mc_stat=%s: vhbb %.4f s (%d calls), bare MIGRAD %.4f s (%d calls) -> %.1fx; "
                "pyhf %s -> %s (sigma_mu %.5f vs %s)",
                case["size"], case["mc_stat"], ours["seconds"], ours["nfcn"], bare["seconds"],
                bare["nfcn"], case["speedup_vs_bare_migrad"],
                f"{case['pyhf']['seconds']:.3f} s" if "pyhf" in case else "not run",
                f"{case['speedup']:.0f}x" if "pyhf" in case else "-", ours["sigma_mu"],
                f"{case['pyhf']['sigma_mu']:.5f}" if "pyhf" in case else "-",
            )  # fmt: skip
            out["cases"].append(case)
    out["min_speedup_no_mc_stat"] = min(
        (c["speedup"] for c in out["cases"] if "speedup" in c and not c["mc_stat"]), default=None
    )
    out["min_speedup_mc_stat_from_10x10"] = min(
        (
            c["speedup"]
            for c in out["cases"]
            if "speedup" in c and c["mc_stat"] and not c["size"].startswith("5x5")
        ),
        default=None,
    )
    out["goals"] = {"no_mc_stat": 10, "mc_stat_from_10x10": 1000}
    for c in out["cases"]:
        log.info(
            "%-16s mc_stat=%-5s  vs pyhf %8s  vs bare MIGRAD %5.1fx",
            c["size"], c["mc_stat"], f"{c['speedup']:.0f}x" if "speedup" in c else "-",
            c["speedup_vs_bare_migrad"],
        )  # fmt: skip
    return out
