"""Stability of the decorrelated methods over random initialisations (issue #13).

A small toy (about 20 k events of the training region of the built-in toy: ZH signal, VZ
resonant, Z+jets, ttbar and others non-resonant; the default config's training features) is
generated once.  Each decorrelated method of the default config (``disco``, ``adversarial``,
``disco_adversarial``: the default presets, only the seed changed) is then trained from N
initialisations (seeds 0..N-1; 20, or 3 with ``--quick``) through the chain's own code path
(:func:`vhbb.ml.train.build_and_train`: the method classes and :func:`vhbb.ml.engine.train`,
the default maximum of epochs and early stopping; one CPU thread).  Per run:

* ``converged``: the stopping criterion ended the training before the maximum of epochs;
* ``collapsed``: the project's verdict (:func:`vhbb.evaluation.quality.discrimination`) on the
  validation scores: no AUC overall or in an m_jj slice reaches ``evaluation.collapse.min_auc``,
  a cross-entropy no better than the prior, or the training's score-spread flag;
* the validation AUC overall and in the m_jj window 110-130 GeV;
* sculpting: chi2/ndf at the reference count (``evaluation.sculpting.reference_count``) of the
  non-resonant m_jj in the highest score quantile against the rest
  (:func:`vhbb.evaluation.evaluate.sculpting`), and its mean over the quantiles.

Printed per method: the fraction that converged without collapse, mean / std / min / max of
the AUCs and sculpting figures, and the stopping epochs.  The acceptance figure of the issue:
``adversarial`` converges without collapse in at least 17 of 20 initialisations (a benchmark
figure, not a test).  Full-size scans over the seeds of the default models are in
``config/full.yaml`` (``seeds_<model>``).

Differences from the chain, on purpose (to keep 60 trainings affordable on a CPU): the toy's
events are generated with positive weights (sigma * L / N per process), so the transformed
weights of the weights stage equal the weights themselves; the training is the fold-0 model of
every event (no k-fold); the JES variations are left out (no method here reads them).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("disco", "adversarial", "disco_adversarial")  # models.list names of the config
#: events generated per process at scale 1 (about 50 k pass the training region's selection)
GENERATED = {"ZH": 60_000, "VZ": 30_000, "Zlf": 200_000, "Zhf": 150_000, "TT": 200_000,
             "others": 100_000}  # fmt: skip
#: the scale of GENERATED used (about 20 k training-region events: ~10-40 s per training on one
#: CPU thread; quick and full modes train on the same toy, quick from fewer seeds)
TOY_SCALE = 0.4
WINDOW = (110.0, 130.0)  # GeV: the m_jj window of the signal AUC
TARGET = (17, 20)  # the acceptance: adversarial without collapse in 17 of 20


def load_default_config() -> dict[str, Any]:
    from vhbb.config import load_config

    return load_config([ROOT / "config" / "config.yaml"])


def make_toy(config: Mapping[str, Any], scale: float = 1.0, seed: int = 13) -> dict[str, Any]:
    """The training region's events of a small toy: the arrays of ``build_and_train`` plus
    ``process`` and ``role`` (strings) and the export's standardisation."""
    from vhbb.data import cache, toy

    layout = config["samples"]["layouts"]["flat"]
    regions = config["regions"]
    region = config["export"]["training_region"]
    features = list(config["features"]["training"])
    processes = config["samples"]["processes"]
    samples = {s["process"]: s for s in config["samples"]["list"].values()}
    lumi_pb = float(config["lumi"]) * 1000.0
    rng = np.random.default_rng(seed)
    parts: list[dict[str, np.ndarray]] = []
    for process, n_gen in GENERATED.items():
        n = max(1000, int(n_gen * scale))
        ev = toy.generate_events(process, n, rng)
        cols = cache.derive(cache.flat_events(ev, layout, None))
        _, names = cache.assign_regions(
            cache.variation_namespace(cols, None), regions["preselection"], regions["definitions"]
        )
        keep = names == region
        k = int(keep.sum())
        parts.append(
            {
                "x": np.stack([cols[f][keep] for f in features], axis=1).astype(np.float32),
                "m_jj": cols["m_jj"][keep].astype(np.float64),
                "pt_jj": cols["pt_jj"][keep].astype(np.float64),
                "weight": np.full(k, float(samples[process]["xsec_pb"]) * lumi_pb / n),
                "process": np.full(k, process, dtype=object),
            }
        )
    data = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    role = np.array([processes[p]["role"] for p in data["process"]], dtype=object)
    n = len(role)
    split = np.random.default_rng(seed + 1)
    data.update(
        {
            "role": role,
            "label": (role == "signal").astype(np.int64),
            "fold": np.ones(n, dtype=np.int8),  # every event trains the fold-0 model
            "validation": split.random(n) < float(config["export"]["validation_fraction"]),
        }
    )
    x = data["x"].astype(np.float64)
    data["mean"] = x.mean(axis=0).tolist()
    data["std"] = np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0).tolist()
    data["features"] = features
    return data


def training_arrays(spec: Mapping[str, Any], toy: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The arrays of :func:`vhbb.ml.train.build_and_train` (as ``load_training_data`` builds
    them; the weights are positive, so they are their own transformed weights)."""
    from vhbb.ml.weights import training_weights

    w = toy["weight"]
    nonres = toy["role"] == "nonresonant"
    positive = training_weights(spec["decorrelation_weight"], w, w)
    return {
        "x": toy["x"],
        "label": toy["label"],
        "loss_weight": training_weights(spec["weight_strategy"], w, w),
        "decorr_weight": np.where(nonres, positive, 0.0),
        "decorr_weight_all": positive,
        "m_jj": toy["m_jj"],
        "pt_jj": toy["pt_jj"],
        "fold": toy["fold"],
        "validation": toy["validation"],
    }


def figures(
    score: np.ndarray, toy: Mapping[str, Any], settings: Mapping[str, Any], *, collapsed: bool
) -> dict[str, Any]:
    """Collapse verdict, AUCs and sculpting of the validation scores (the project's functions)."""
    from vhbb.evaluation import quality
    from vhbb.evaluation.evaluate import sculpting
    from vhbb.stats.metrics import roc_auc

    val = toy["validation"]
    ev = {
        "score": score,
        "role": toy["role"][val],
        "weight": toy["weight"][val],
        "pos_weight": toy["weight"][val],
        "m_jj": toy["m_jj"][val],
    }
    disc = quality.discrimination(ev, settings, training_collapsed=collapsed, seed=0)
    window = [e for e in disc["mjj_slices"] if tuple(e["mjj"]) == WINDOW]
    if window:
        auc_window = window[0]["auc"]["value"]
    else:  # evaluation.collapse.mjj_slices without the window: the same AUC, directly
        inside = (ev["m_jj"] >= WINDOW[0]) & (ev["m_jj"] < WINDOW[1])
        auc_window = roc_auc((ev["role"] == "signal")[inside], score[inside], ev["weight"][inside])
    nonres = ev["role"] == "nonresonant"
    sc = sculpting(
        score[nonres],
        ev["m_jj"][nonres],
        ev["pos_weight"][nonres],
        mjj_edges=np.asarray(settings["mjj_edges"], dtype=np.float64),
        n_quantiles=int(settings["score_quantiles"]),
        reference_count=float(settings["sculpting"]["reference_count"]),
    )
    return {
        "collapsed": bool(disc["collapsed"]),
        "collapse_reasons": disc["reasons"],
        "auc": disc["auc"]["value"],
        "auc_window": auc_window,
        "sculpting_highest": sc["highest"]["chi2_ndf_ref"]["value"],
        "sculpting_mean": sc["mean"]["chi2_ndf_ref"]["value"],
    }


def train_one(
    spec: Mapping[str, Any], toy: Mapping[str, Any], settings: Mapping[str, Any], seed: int
) -> dict[str, Any]:
    """One training of ``spec`` (seed ``seed``, as the chain seeds fold 0) and its figures."""
    from vhbb.core.errors import VhbbError
    from vhbb.ml import train

    t0 = time.perf_counter()
    try:
        clf, hist = train.build_and_train(
            spec, training_arrays(spec, toy), feature_names=toy["features"], mean=toy["mean"],
            std=toy["std"], fold=0, device="cpu", seed=seed, progress=False,
        )  # fmt: skip
    except VhbbError as exc:  # a non-finite loss: neither converged nor usable
        return {"converged": False, "collapsed": True, "error": str(exc).splitlines()[0]}
    seconds = time.perf_counter() - t0
    score = train.predict(clf, toy["x"][toy["validation"]])
    out: dict[str, Any] = {
        # the criterion stopped it before the maximum (History: stop_epoch, max_epochs)
        "converged": bool(hist["stop_epoch"] < hist["max_epochs"]),
        "stop_epoch": hist["stop_epoch"],
        "best_epoch": hist["best_epoch"],
        "max_epochs": hist["max_epochs"],
        "stopped": hist["stopped"],
        "seconds": seconds,
    }
    out.update(figures(score, toy, settings, collapsed=bool(hist["collapsed"])))
    return out


def _spread(values: Sequence[float | None]) -> dict[str, Any]:
    v = np.array([x for x in values if x is not None], dtype=np.float64)
    if len(v) == 0:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
    return {
        "n": len(v),
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
        "min": float(v.min()),
        "max": float(v.max()),
    }


def summarise(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    ok = [r["converged"] and not r["collapsed"] for r in runs]
    return {
        "runs": len(runs),
        "converged": sum(bool(r["converged"]) for r in runs),
        "collapsed": sum(bool(r["collapsed"]) for r in runs),
        "converged_without_collapse": sum(ok),
        "fraction_ok": sum(ok) / len(runs) if runs else None,
        **{k: _spread([r.get(k) for r in runs]) for k in
           ("auc", "auc_window", "sculpting_highest", "sculpting_mean", "stop_epoch", "seconds")},
        "stop_epochs": [r.get("stop_epoch") for r in runs],
    }  # fmt: skip


def _fmt(s: Mapping[str, Any], digits: int = 4) -> str:
    if not s["n"]:
        return "undefined"
    return (
        f"{s['mean']:.{digits}g} +- {s['std']:.2g} [{s['min']:.{digits}g}, {s['max']:.{digits}g}]"
    )


def run(quick: bool = False) -> dict:
    import torch

    n_init = 3 if quick else TARGET[1]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small MLP: more threads only contend (8x slower on a busy CPU)
    config = load_default_config()
    settings = config["evaluation"]
    t0 = time.perf_counter()
    toy = make_toy(config, scale=TOY_SCALE)
    counts = {p: int((toy["process"] == p).sum()) for p in GENERATED}
    result: dict[str, Any] = {
        "initialisations": n_init,
        "torch_threads": torch.get_num_threads(),
        "toy": {
            "events": len(toy["label"]),
            "validation": int(toy["validation"].sum()),
            "per_process": counts,
            "seconds": time.perf_counter() - t0,
        },
        "methods": {},
    }
    log.info("stability toy: %d events (%s)", len(toy["label"]), counts)
    from vhbb.config.models import resolve_model

    quiet = logging.getLogger("vhbb")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # the engine's per-epoch lines
    try:
        for name in METHODS:
            base = resolve_model(config["models"], name)
            runs = []
            for s in range(n_init):
                spec = {**base, "seed": s}
                # the chain's seed of fold 0: config seed + the model's seed
                run_ = train_one(spec, toy, settings, int(config["seed"]) + s)
                run_["seed"] = s
                runs.append(run_)
            summary = summarise(runs)
            summary["method"] = base["method"]
            summary["max_epochs"] = runs[0].get("max_epochs")
            summary["early_stopping"] = base.get("early_stopping")
            summary["per_run"] = runs
            result["methods"][name] = summary
            log.info(
                "%s (%s): converged without collapse %d/%d (converged %d, collapsed %d) | "
                "AUC %s | AUC %g-%g GeV %s | sculpting chi2/ndf@ref highest %s, mean %s | "
                "stop epochs %s (max %s) | %.1f s per training",
                name, base["method"], summary["converged_without_collapse"], len(runs),
                summary["converged"], summary["collapsed"], _fmt(summary["auc"]), *WINDOW,
                _fmt(summary["auc_window"]), _fmt(summary["sculpting_highest"], 3),
                _fmt(summary["sculpting_mean"], 3), summary["stop_epochs"],
                summary["max_epochs"], summary["seconds"]["mean"] or 0.0,
            )  # fmt: skip
    finally:
        quiet.setLevel(level)
        torch.set_num_threads(threads)
    adv = result["methods"]["adversarial"]
    result["acceptance"] = {
        "figure": f"adversarial converged without collapse in >= {TARGET[0]} of {TARGET[1]}",
        "value": f"{adv['converged_without_collapse']}/{adv['runs']}",
        "met": bool(adv["converged_without_collapse"] >= TARGET[0])
        if n_init == TARGET[1]
        else None,
    }
    log.info("acceptance: %s: %s", result["acceptance"]["figure"], result["acceptance"]["value"])
    return result
