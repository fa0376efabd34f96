"""Evaluation time per model for 1 M signal-region events (synthetic, default settings).

Times the pieces of :func:`vhbb.evaluation.evaluate.evaluate_variant` on one event set: the figures
once (separation, binned significance, sculpting, JSD, CvM, Pearson, VZ peak), the Poisson
bootstrap (``evaluation.bootstrap`` replicas of the same), dCor^2 (O(N^2): the capped
subsample of ``evaluation.dcor.max_events`` plus its replicas) and the fast 2D fit.  The
default config's settings are used; ``quick`` runs 100 k events and 3 bootstrap replicas.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def synthetic_events(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n_s, n_v = n // 5, n // 10
    n_b = n - n_s - n_v
    m = np.concatenate(
        [rng.normal(125, 12, n_s), rng.normal(91, 10, n_v), 50 + rng.exponential(60, n_b)]
    )
    role = np.array(["signal"] * n_s + ["resonant"] * n_v + ["nonresonant"] * n_b)
    process = np.array(
        ["ZH"] * n_s + ["VZ"] * n_v + ["TT"] * (n_b // 2) + ["Zhf"] * (n_b - n_b // 2)
    )
    z = np.concatenate([rng.normal(1.2, 1, n_s), rng.normal(0.2, 1, n_v), rng.normal(0, 1, n_b)])
    w = np.concatenate([np.full(n_s, 0.01), np.full(n_v, 0.05), np.full(n_b, 0.3)])
    w *= rng.choice([1.0, 1.0, 1.0, -1.0], n)
    return {
        "score": 1 / (1 + np.exp(-z)),
        "m_jj": np.clip(m, 50, 250),
        "weight": w,
        "pos_weight": np.abs(w),
        "role": role,
        "process": process,
    }


def run(quick: bool = False) -> dict:
    import torch

    from vhbb.config import load_config
    from vhbb.evaluation import evaluate as ev
    from vhbb.fit.fast_fit import fast_significance

    torch.set_num_threads(2)
    config = load_config([Path(__file__).resolve().parents[1] / "config" / "config.yaml"])
    settings = {k: v for k, v in config["evaluation"].items() if k != "models"}
    n = 100_000 if quick else 1_000_000
    replicas = 3 if quick else int(settings["bootstrap"])
    e = synthetic_events(n)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    result = ev.sr_metrics(e, settings)
    timings["figures_once"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ev.bootstrap(e, settings, result, replicas=replicas, seed=1)
    timings["bootstrap"] = time.perf_counter() - t0
    nonres = e["role"] == "nonresonant"
    t0 = time.perf_counter()
    dc = ev.dcor_sq(e["score"][nonres], e["m_jj"][nonres], e["pos_weight"][nonres],
                    max_events=int(settings["dcor"]["max_events"]), seed=0,
                    replicas=int(settings["dcor"]["bootstrap"]))  # fmt: skip
    timings["dcor"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    per_proc = {
        p: {k: e[k][e["process"] == p] for k in ("m_jj", "score", "weight")}
        for p in np.unique(e["process"])
    }
    fast = fast_significance(per_proc, signal=["ZH"], settings=config["fit"], scale_factors={})
    timings["fast_fit"] = time.perf_counter() - t0
    total = sum(timings.values())
    out = {
        "events": n,
        "bootstrap_replicas": replicas,
        "dcor_events": dc["n_events"],
        "seconds": timings,
        "seconds_total": total,
        "seconds_per_million_events": total * 1e6 / n,
        "auc": result["separation"]["auc"]["value"],
        "fast_fit_significance": fast["significance"],
    }
    log.info("evaluation of %d events: %.1f s (%s)", n, total, timings)
    return out
