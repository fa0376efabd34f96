"""CLs upper limit on mu (q-tilde, asymptotic, observed + 5 expected): vhbb vs pyhf.

The same model (``vhbb.stats.likelihood.toy_model`` with an asymmetric JES and per-bin MC
statistics, a 3 % control-region excess) exported with ``vhbb.fit.workspace.to_workspace``;
pyhf runs ``pyhf.infer.intervals.upper_limits.upper_limit(scan=None)`` (its TOMS748 root finding)
with the POI bounded at 0 (q-tilde).  Reports both limits, their relative difference and the
speed ratio.
"""

from __future__ import annotations

import logging
import time
import warnings

import numpy as np

log = logging.getLogger(__name__)


def _case(n: int) -> dict:
    import pyhf

    from vhbb.fit.workspace import to_workspace
    from vhbb.stats import likelihood as lk
    from vhbb.stats import limits

    model, asimov = lk.toy_model(n, n, stat="profile", jes_asymmetry=0.03)
    observed = asimov.copy()
    observed[-3:] = np.round(observed[-3:] * 1.03)
    t0 = time.perf_counter()
    ours = limits.upper_limits(model, observed)
    ours_s = time.perf_counter() - t0
    ws = to_workspace(model, observed)
    for par in ws["measurements"][0]["config"]["parameters"]:
        if par["name"] == "mu":
            par["bounds"] = [[0.0, 20.0]]
    pyhf.set_backend("numpy", pyhf.optimize.minuit_optimizer(tolerance=1e-4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        workspace = pyhf.Workspace(ws)
        pdf = workspace.model()
        data = workspace.data(pdf)
    t0 = time.perf_counter()
    obs, exp = pyhf.infer.intervals.upper_limits.upper_limit(data, pdf, scan=None, level=0.05)
    pyhf_s = time.perf_counter() - t0
    exp = [float(e) for e in exp]
    return {
        "size": f"{n}x{n} SR + 3 CR, MC stat",
        "vhbb": {"seconds": ours_s, "observed": ours.observed, "expected": list(ours.expected)},
        "pyhf": {"seconds": pyhf_s, "observed": float(obs), "expected": exp},
        "speedup": pyhf_s / ours_s,
        "observed_rel_diff": ours.observed / float(obs) - 1,
        "expected_max_rel_diff": float(np.max(np.abs(np.array(ours.expected) / exp - 1))),
    }


def run(quick: bool = False) -> dict:
    out: dict = {"cases": []}
    for n in [3] if quick else [3, 5]:
        case = _case(n)
        out["cases"].append(case)
        log.info(
            "limits %s: vhbb %.2f s, pyhf %.1f s -> %.0fx (observed %.4f vs %.4f)",
            case["size"], case["vhbb"]["seconds"], case["pyhf"]["seconds"], case["speedup"],
            case["vhbb"]["observed"], case["pyhf"]["observed"],
        )  # fmt: skip
    return out
