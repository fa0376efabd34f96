"""Negative-weight transformation: training rate of the weight network and the formulation choice.

``rate``: events per second of the weight-network training on the CPU (one fold of
:func:`vhbb.ml.weights.local_mean_weights`, the default 5x128 network, event-passes over training
time; also on CUDA when present).  ``comparison``: both formulations (classification with
isotonic calibration, MSE regression) on the known-answer toy of :func:`vhbb.ml.weights.toy_events`
with identical settings: paired-test p-values and maximum ratio deviations per variable (m_jj,
pt_jj, z in x; m_smeared outside x), the RMS and maximum deviation from the analytic ``E[w|x]``
(in units of the mean weight), and the power check (a +-5% linear tilt in m_jj of the
exact weights must fail the paired test).
"""

from __future__ import annotations

import logging
import time

import numpy as np

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


def run(quick: bool = False) -> dict:
    import torch

    n, epochs = (20_000, 2) if quick else (400_000, 5)
    result: dict = {"torch_threads": torch.get_num_threads(), "rate": [_rate(n, epochs, "cpu")]}
    if torch.cuda.is_available():
        result["rate"].append(_rate(n, epochs, "cuda"))
    cn, ce = (20_000, 2) if quick else (300_000, 20)
    result["comparison"] = compare(cn, ce, "cuda" if torch.cuda.is_available() else "cpu")
    return result
