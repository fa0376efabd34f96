"""Negative-weight transformation at the chain's size and conditioning set.

``chain`` (the default): the stage's own computation (:func:`vhbb.ml.weights.transform_regions`
over the default chain's exports, ``results/export/*.h5``, made with ``snakemake export`` when
absent; the conditioning set and settings of ``config/config.yaml``) once with the default
``method: gbdt`` (the baseline) and once with the network (``method: classification``).  Per
method: the stage's MC events per second and its ratio to the gbdt baseline of the same run;
per process, the out-of-fold gain in weighted cross-entropy over the constant prediction (the
held-out events of each fold, paired per event) with its standard error, and the network's gain
as a fraction of the gbdt gain; per region, the smallest paired-test p-value and the largest
per-bin deviation in sigma.  ``--quick``: the known-answer toy of
:func:`vhbb.ml.weights.toy_events` (both formulations, small), a smoke run.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

log = logging.getLogger(__name__)

VARIABLES = ("m_jj", "pt_jj", "z")


def _rate(n: int, epochs: int, device: str) -> dict:
    from vhbb.ml import weights as W

    toy = W.toy_events(n, seed=3)
    settings = W.settings_with_defaults({"epochs": epochs})
    heldout = np.zeros(n, dtype=bool)
    fold = np.zeros(n, dtype=np.int8)
    fold[: n // 10] = 1  # fold 0 (90 %) trains the network of fold 1
    t0 = time.perf_counter()
    _, info = W.local_mean_weights(
        toy["x"], toy["w"], fold, settings=settings, heldout=heldout, device=device, seed=1
    )
    wall = time.perf_counter() - t0
    f = info["folds"]["1"]
    n_train = f["n_train"]
    return {
        "device": device,
        "events_train": n_train,
        "epochs": epochs,
        "train_seconds": f["seconds"],
        "events_per_s": n_train * epochs / f["seconds"],
        "wall_seconds_both_folds": wall,
    }


def compare(n: int, epochs: int, device: str = "cpu", seed: int = 5) -> dict:
    """Both formulations on the same toy events; validation numbers and the power check."""
    from vhbb.ml import weights as W

    toy = W.toy_events(n, seed=seed)
    w, x = toy["w"], toy["x"]
    variables = {name: x[:, i] for i, name in enumerate(VARIABLES)}
    variables["m_smeared"] = toy["m_smeared"]
    edges = {k: W.bin_edges(v, 20) for k, v in variables.items()}
    out: dict = {"events": n, "epochs": epochs, "negative_fraction": float((w < 0).mean())}
    exact = toy["expected"] * (w.sum() / toy["expected"].sum())
    for label, weight in (
        ("analytic", exact),
        ("analytic_tilted_5pct", W.tilt(exact, variables["m_jj"], 0.05)),
    ):
        out[label] = {
            k: W.summary(W.paired_test(v, w, weight, edges[k])) for k, v in variables.items()
        }
    for method in W.METHODS:
        t0 = time.perf_counter()
        new, rep = W.transform_process(
            x, w, toy["fold"], settings={"method": method, "epochs": epochs},
            device=device, seed=seed, name=method,
        )  # fmt: skip
        dev = (new - exact) / np.mean(np.abs(w))
        out[method] = {
            "seconds": time.perf_counter() - t0,
            "rms_deviation_from_analytic": float(np.sqrt(np.mean(dev**2))),
            "max_abs_deviation_from_analytic": float(np.max(np.abs(dev))),
            "clipped_fraction": rep["clipped_fraction"],
            "rescale_factor": rep["rescale_factor"],
            "variables": {
                k: W.summary(W.paired_test(v, w, new, edges[k])) for k, v in variables.items()
            },
        }
    return out


def pooled_gain(training: dict) -> dict:
    """The out-of-fold gain over the constant of one process (all folds' held-out events):
    the mean per-event gain and its standard error, combined over folds by event count."""
    folds = [f for f in training["folds"].values() if f.get("versus_constant")]
    n = np.array([f["n_heldout"] for f in folds], dtype=float)
    if not len(n) or n.sum() == 0:
        return {"gain": None, "gain_error": None, "events": 0}
    g = np.array([f["versus_constant"]["gain"] for f in folds])
    se = np.array([f["versus_constant"]["gain_error"] for f in folds])
    return {
        "gain": float(np.sum(n * g) / n.sum()),
        "gain_error": float(np.sqrt(np.sum((n * se) ** 2)) / n.sum()),
        "events": int(n.sum()),
    }


def _exports() -> dict:
    from vhbb import config
    from vhbb.config import params
    from vhbb.data.export import read_h5

    cfg = config.load_config([ROOT / "config" / "config.yaml"])
    regions = list(cfg["export"]["regions"])
    paths = {r: ROOT / "results" / "export" / f"{r}.h5" for r in regions}
    if not all(p.exists() for p in paths.values()):
        log.info("making the default chain's exports (snakemake export)")
        subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "export"],
                       cwd=ROOT, check=True)  # fmt: skip
    return {r: read_h5(p) for r, p in paths.items()}, params.weights(cfg)


def chain(device: str = "cpu") -> dict:
    from vhbb.ml import weights as W

    regions, spec = _exports()
    n_mc = sum(int((a["domain"] == 0).sum()) for a, _ in regions.values())
    out: dict = {"mc_events": n_mc, "regions": list(regions), "methods": {}}
    for method in ("gbdt", "classification"):
        settings = {**spec["settings"], "method": method}
        t0 = time.perf_counter()
        res = W.transform_regions(
            regions, settings=settings, roles=spec["roles"], device=device,
            seed=int(spec["seed"]) + int(settings["seed_offset"]),
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        first = next(iter(res.values()))[1]
        gains = {
            p: {**pooled_gain(rep["training"]), "negative_weight_fraction": None}
            for p, rep in first["processes"].items()
            if rep.get("transformed")
        }
        for p in gains:  # over all regions
            w = np.concatenate(
                [
                    a["weight"][(a["process"] == list(at["process_names"]).index(p))
                                & (a["domain"] == 0)]
                    for a, at in regions.values()
                ]
            )  # fmt: skip
            gains[p]["negative_weight_fraction"] = float(np.abs(w[w < 0]).sum() / np.abs(w).sum())
            gains[p]["process_events"] = len(w)
        validation = {}
        for r, (_, rep, _) in res.items():
            cells = [
                v
                for prep in rep["processes"].values()
                for v in (prep.get("variables") or {}).values()
            ]
            validation[r] = {
                "min_p_value": min(c["p_value"] for c in cells),
                "max_deviation_sigma": max(c["max_deviation_sigma"] for c in cells),
                "failed": sum(1 for c in W.validation_checks(rep, 1e-4) if c.failed),
            }
        out["methods"][method] = {
            "seconds": seconds, "events_per_s": n_mc / seconds, "gains": gains,
            "validation": validation,
        }  # fmt: skip
    base, net = out["methods"]["gbdt"], out["methods"]["classification"]
    net["ratio_events_per_s_to_gbdt"] = net["events_per_s"] / base["events_per_s"]
    for p, g in net["gains"].items():
        ref = base["gains"][p]["gain"]
        g["fraction_of_gbdt_gain"] = g["gain"] / ref if ref else None
        g["above_2se"] = bool(g["gain"] is not None and g["gain"] > 2 * g["gain_error"])
    log.info(
        "weights at chain size: %d MC events; gbdt %.0f ev/s, network %.0f ev/s (ratio %.2f)",
        n_mc, base["events_per_s"], net["events_per_s"], net["ratio_events_per_s_to_gbdt"],
    )  # fmt: skip
    for p, g in net["gains"].items():
        log.info(
            "  %-7s gain network %.5f +- %.5f, gbdt %.5f (fraction %.2f)", p, g["gain"],
            g["gain_error"], base["gains"][p]["gain"], g["fraction_of_gbdt_gain"] or 0,
        )  # fmt: skip
    return out


def run(quick: bool = False) -> dict:
    import torch

    if not quick:
        return {"torch_threads": torch.get_num_threads(), "chain": chain()}
    n, epochs = 20_000, 2
    result: dict = {"torch_threads": torch.get_num_threads(), "rate": [_rate(n, epochs, "cpu")]}
    result["comparison"] = compare(20_000, 2, "cpu")
    return result
