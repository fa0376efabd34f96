"""Negative-weight transformation: replace each MC weight by the local mean weight ``E[w | x]``.

NLO generators give some events negative weights.  Replacing every weight ``w_i`` by the local
mean weight ``w'(x_i) = E[w | x = x_i]`` keeps, in expectation, the weighted distribution of
*every function of the conditioning variables x*: for any ``g``,
``E[g(x) w'(x)] = E[g(x) E[w|x]] = E[g(x) w]``.  Nothing is promised for a variable outside
``x``, so ``x`` must hold every variable that is later cut on, trained on or histogrammed (by
default: the training features, ``m_jj`` and ``pt_jj``).  Exact example (a per-value mean,
:func:`exact_local_mean`): ``x = [15, 23, 15, 15, 90]``, ``w = [1, 1, 1, -1, 1]`` gives
``[1/3, 1, 1/3, 1/3, 1]``, and the histogram of ``x`` is unchanged.

For continuous ``x`` a cross-fitted estimator gives ``E[w | x]`` per process with negative
weights, from the events of all exported regions (``pool_regions``; the estimate is applied and
rescaled per region, ``results/weights/{region}.h5``), in one of three forms
(``weights.method``):

``gbdt`` (default)
    scikit-learn's ``HistGradientBoostingClassifier`` of the sign, ``|w|`` as sample weight,
    its iterations stopped on a split of the training events of its own (``stopping_fraction``,
    ``gbdt.patience``), estimates ``p(x) = P(w > 0 | x)`` in the ``|w|``-weighted sense; then
    ``w'_i = |w_i| (2 p(x_i) - 1)``, whose conditional mean is ``E[|w| (2p - 1) | x] = E[w|x]``.
    Not recalibrated by default: the boosted log-loss probability is calibrated, an isotonic map
    on the held-out events only adds its step noise.  Learning rate 0.2 with patience 20: at
    0.05 with patience 10 boosting stopped after ~40 iterations with the tails of ``p`` still
    shrunk towards the mean (where ``p`` is near 0 or 1 the log-loss gradient is small), and the
    paired test failed (p ~ 1e-16 on a 2 x 10^4-event toy; 0.3-0.9 over six seeds now).
``classification``
    The same with a dense network on the training engine (early-stopped on its own split),
    calibrated by isotonic regression on the held-out part (``calibration_fraction``, chosen by
    event key).
``regression``
    The network regresses ``w`` (scaled by the mean ``|w|``) with a mean-squared-error loss,
    whose minimiser is ``E[w | x]`` itself; ``w'_i = f(x_i)``.  The held-out part only
    monitors the loss (no calibration).

``benchmarks/bench_weights.py`` compares the network with the gbdt baseline at the chain's size.

Then, per process: where the estimate is ``<= 0`` it is set to 0 (the fraction of ``|w|``
affected is reported), and the weights are rescaled so that the process keeps its total yield
exactly (the factor is reported).  A process without negative weights is a documented no-op (its
weights are copied); a process whose weights sum to ``<= 0`` or that holds non-finite weights is
an error naming it.  Data events keep their weight 1.

Cross-fitting: with ``k`` folds (the export's ``fold`` column), the model that gives an event
its weight was trained on the other folds only; isotonic calibration uses that model's
held-out events (in the other folds but outside its training set) and the validation runs on the
out-of-fold weights, so no event's own sign enters its weight.

Validation (:func:`paired_test`): for each bin of a variable, ``D = sum(w - w')`` and its
variance if ``w' = E[w|x]``, ``V = sum (w^2 - w'^2)``; the rescaling makes ``sum D = 0``, so
``chi2 = D^T Cov(D)^+ D`` with the constrained covariance and ``ndf = (bins used) - 1``.  It is
run for every conditioning variable, every training feature, ``m_jj``, ``pt_jj`` and variables
outside ``x`` (``validation.extra_variables``, default ``m_jj_jes_*``: the JES-varied ``m_jj`` of
every source of the export; a name with ``*`` / ``?`` matches export columns), over all MC and per
transformed process; a process gets fewer bins when it has fewer than 25 negative weights per
bin (:func:`process_bins`).  The null variance, not the empirical ``sum (w - w')^2``: the two
agree on average, but in a bin that holds no negative weight by chance the empirical one is
tiny and the bin alone gives ``chi2 ~ N_b`` (measured with exact ``E[w|x]``, 400 events, 400
replicas: 17 % false alarms at the 1 % level with the empirical variance, 12 % below 1e-4;
1 % and 0 with this test; ``tests/test_weights.py`` checks the calibration).

Pooling: with ``pool_regions`` (default) the estimate of each process comes from the events of
all exported regions (a region's own events are often a few hundred: too few for any
estimator) and is clipped and rescaled per region.  Valid when every variable that defines a
region is in ``x`` (checked at config time).

Fit templates always use the original signed weights; the training stage picks a strategy per
model with :func:`training_weights` (``raw``, ``abs``, ``drop_negative``, ``transformed``).

Output ``results/weights/{region}.h5``: ``weight_transformed`` (f8), ``weight`` (the original),
and the event key ``run``, ``luminosityBlock``, ``event``, ``sample`` (plus ``process``), one
row per exported event in the export's order; attributes ``region``, ``sample_names``,
``process_names``, ``method``, ``config`` and ``provenance``.
"""

from __future__ import annotations

import difflib
import logging
import time
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vhbb.core.errors import ConfigError, DataError

log = logging.getLogger(__name__)

METHODS = ("classification", "regression", "gbdt")
STRATEGIES = ("raw", "abs", "drop_negative", "transformed")
SALT_CALIBRATION = 0xCA11B
#: gbdt: fewer training events of the rarer weight sign than this give the constant estimate
MIN_MINORITY = 20

# defaults of the settings (the schema's defaults; used when a caller passes a partial dict)
DEFAULTS: dict[str, Any] = {
    "method": "classification",
    "conditioning": None,
    "pool_regions": True,
    "layers": [128, 128, 128, 128, 128],
    "epochs": 20,
    "batch_size": 2048,
    "learning_rate": 1e-3,
    "optimizer": "adam",
    "weight_decay": 0.0,
    "calibration_fraction": 0.2,
    "stopping_fraction": 0.2,
    "early_stopping": {"patience": 3, "min_delta": 0.0},
    "seed_offset": 7001,
    "gbdt": {
        "max_iter": 300,
        "learning_rate": 0.2,
        "max_leaf_nodes": 15,
        "min_samples_leaf": 200,
        "patience": 20,
        "calibration": "none",
    },
    "validation": {
        "bins": 20,
        "extra_variables": ["m_jj_jes_*"],
        "min_p_value": 1e-4,
        "on_failure": "fail",
    },
}


def settings_with_defaults(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    out = {**DEFAULTS, **dict(settings or {})}
    out["validation"] = {**DEFAULTS["validation"], **dict(out.get("validation") or {})}
    out["early_stopping"] = {**DEFAULTS["early_stopping"], **dict(out.get("early_stopping") or {})}
    out["gbdt"] = {**DEFAULTS["gbdt"], **dict(out.get("gbdt") or {})}
    if out["method"] not in METHODS:
        raise ConfigError(
            f"config error at 'weights.method': unknown method '{out['method']}' "
            f"(use {' or '.join(METHODS)})"
        )
    return out


# ------------------------------------------------------------------ training-stage interface
def training_weights(
    strategy: str, weight: np.ndarray, weight_transformed: np.ndarray | None = None
) -> np.ndarray:
    """Per-event training weights of one strategy (fit templates always use ``weight``).

    ``raw``: the signed weights; ``abs``: ``|w|``; ``drop_negative``: negative weights set to 0
    (the events stay, weightless); ``transformed``: ``weight_transformed`` from this stage
    (required, same length).
    """
    w = np.asarray(weight, dtype=np.float64)
    if strategy == "raw":
        return w.copy()
    if strategy == "abs":
        return np.abs(w)
    if strategy == "drop_negative":
        return np.where(w < 0, 0.0, w)
    if strategy == "transformed":
        if weight_transformed is None:
            raise ConfigError(
                "weight strategy 'transformed' needs the transformed weights "
                "(results/weights/{region}.h5)"
            )
        wt = np.asarray(weight_transformed, dtype=np.float64)
        if wt.shape != w.shape:
            raise DataError(
                f"transformed weights have {wt.shape[0]} rows, the export {w.shape[0]}: "
                "not the same events"
            )
        return wt.copy()
    close = difflib.get_close_matches(str(strategy), STRATEGIES, n=1)
    raise ConfigError(
        f"unknown weight strategy '{strategy}' (use {', '.join(STRATEGIES)})"
        + (f"; did you mean '{close[0]}'?" if close else "")
    )


# ------------------------------------------------------------------ exact estimator
def exact_local_mean(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``E[w | x]`` as the per-value mean of ``w`` for discrete ``x`` (rows of a 2-D ``x``)."""
    x = np.asarray(x)
    w = np.asarray(w, dtype=np.float64)
    rows = x.reshape(len(x), -1)
    _, inverse = np.unique(rows, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    sums = np.bincount(inverse, weights=w)
    counts = np.bincount(inverse)
    return (sums / counts)[inverse]


# ------------------------------------------------------------------ validation
def bin_edges(values: np.ndarray, bins: int) -> np.ndarray:
    """Edges of at most ``bins`` equal-population bins (one bin per value if few distinct)."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return np.array([0.0, 1.0])
    distinct = np.unique(v)
    if len(distinct) <= bins:
        mids = (distinct[1:] + distinct[:-1]) / 2
        return (
            np.concatenate([[distinct[0]], mids, [distinct[-1]]]) if len(mids) else distinct[[0, 0]]
        )
    return np.unique(np.quantile(v, np.linspace(0.0, 1.0, bins + 1)))


#: per-process validation: at least this many negative-weight events expected per bin, so that
#: each bin's D_b is close to Gaussian (a small process gets fewer, wider bins)
MIN_NEGATIVE_PER_BIN = 25


def process_bins(weight: np.ndarray, bins: int) -> int:
    """Bins of a process's paired test: ``bins``, fewer when the process has fewer than
    ``MIN_NEGATIVE_PER_BIN`` negative weights per bin (at least 2)."""
    n_neg = int(np.sum(np.asarray(weight) < 0))
    return int(min(bins, max(2, n_neg // MIN_NEGATIVE_PER_BIN)))


def _bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.searchsorted(edges[1:-1], values, side="right")


def paired_test(
    values: np.ndarray, weight: np.ndarray, weight_new: np.ndarray, edges: np.ndarray
) -> dict[str, Any]:
    """Paired per-bin test of ``weight_new`` against ``weight`` in bins of ``values``.

    ``D_b = sum(w - w')``; ``V_b = sum (w^2 - w'^2)`` is the variance of the bin sum when
    ``w' = E[w|x]`` (``Var(w|x) = E[w^2|x] - E[w|x]^2``); the yield constraint ``sum D = 0``
    gives ``Cov(D) = M diag(V) M^T`` with ``M = 1 - u 1^T``, ``u_b = sum_b w' / sum w'``, and
    ``chi2 = D^T Cov(D)^+ D`` with ``ndf`` = bins with ``V_b > 0`` minus one; ``var`` is the
    diagonal of ``Cov(D)``;
    ``max_ratio_deviation`` = ``max |sum w' / sum w - 1|`` over bins with ``sum w > 0``.
    Every event is counted (the outer bins are open-ended).
    """
    from vhbb.stats.metrics import chi2_prob

    edges = np.asarray(edges, dtype=np.float64)
    nb = max(len(edges) - 1, 1)
    idx = _bin_index(np.asarray(values, dtype=np.float64), edges)
    w = np.asarray(weight, dtype=np.float64)
    wn = np.asarray(weight_new, dtype=np.float64)
    d = w - wn
    sum_w = np.bincount(idx, weights=w, minlength=nb)
    sum_wn = np.bincount(idx, weights=wn, minlength=nb)
    sum_w2 = np.bincount(idx, weights=w**2, minlength=nb)
    sum_wn2 = np.bincount(idx, weights=wn**2, minlength=nb)
    diff = np.bincount(idx, weights=d, minlength=nb)
    # the variance of D_b if w' = E[w|x]: sum Var(w|x) = sum (E[w^2|x] - w'^2), with w^2 an
    # unbiased estimate of E[w^2|x].  (The empirical sum (w - w')^2 has the same expectation
    # but collapses when a bin happens to hold no negative weight: then D_b^2 / var_b ~ N_b.)
    var_free = np.clip(sum_w2 - sum_wn2, 0.0, None)
    # the rescaling to the yield ties the bins (sum D = 0): D = (1 - u 1^T) A with A_b the
    # independent bin sums and u_b = sum_b w' / sum w', so Cov(D) = M diag(var) M^T, of rank
    # (bins - 1); chi2 = D^T Cov(D)^+ D.  (Dividing each D_b^2 by its own variance instead is
    # not chi2(bins - 1) when the bins' variances differ: 2.5 % false alarms at the 1 % level.)
    used = var_free > 1e-12 * np.maximum(sum_w2, 1e-300)
    k = int(used.sum())
    if k >= 2 and sum_wn[used].sum() != 0:
        u = sum_wn[used] / sum_wn[used].sum()
        m = np.eye(k) - np.outer(u, np.ones(k))
        cov = m @ np.diag(var_free[used]) @ m.T
        d_used = diff[used]
        chi2 = float(d_used @ np.linalg.pinv(cov, rcond=1e-10, hermitian=True) @ d_used)
        var = np.zeros(nb)
        var[used] = np.clip(np.diag(cov), 0.0, None)
    else:
        chi2, var = 0.0, var_free
    ndf = max(k - 1, 1)
    p_value = chi2_prob(chi2, ndf) if ndf > 0 else float("nan")
    ok = sum_w > 0
    ratio = np.where(ok, sum_wn / np.where(ok, sum_w, 1.0), np.nan)
    max_dev = float(np.nanmax(np.abs(ratio - 1.0))) if ok.any() else float("nan")
    return {
        "chi2": chi2,
        "ndf": ndf,
        "p_value": p_value,
        "max_ratio_deviation": max_dev,
        "edges": edges,
        "sum_w": sum_w,
        "sum_w_new": sum_wn,
        "sum_w2": sum_w2,
        "sum_w_new2": sum_wn2,
        "diff": diff,
        "var": var,
    }


#: per-bin tolerance of the transformed yield: |w'/w - 1| <= max(RATIO_TOLERANCE, N_SIGMA sigma)
RATIO_TOLERANCE = 0.03
N_SIGMA = 4.0


def summary(result: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON part of a :func:`paired_test` result, with the per-bin deviation in units of
    the paired uncertainty and the bins outside ``max(3 %, 4 sigma)``."""
    keys = ("chi2", "ndf", "p_value", "max_ratio_deviation")
    out = {k: result[k] for k in keys}
    sw, var = np.asarray(result["sum_w"]), np.asarray(result["var"])
    ok = (sw > 0) & (var > 0)
    dev = np.abs(np.asarray(result["sum_w_new"])[ok] / sw[ok] - 1.0)
    sigma = np.sqrt(var[ok]) / sw[ok]
    out["max_deviation_sigma"] = float(np.max(dev / sigma)) if ok.any() else 0.0
    out["bins_outside_tolerance"] = int(np.sum(dev > np.maximum(RATIO_TOLERANCE, N_SIGMA * sigma)))
    return out


def validation_checks(report: Mapping[str, Any], min_p_value: float) -> list[Any]:
    """Shared check records of one region: per transformed process and validation variable,
    the paired-test p-value (> ``min_p_value``) and the per-bin tolerance."""
    from vhbb.core.checks import Check, compare

    region = report["region"]
    out = []
    for pname, prep in sorted(report["processes"].items()):
        for var, res in sorted((prep.get("variables") or {}).items()):
            where = f"{region}/{pname}/{var}"
            out.append(compare("weights", "paired test p-value", where, res["p_value"],
                               min_p_value, ">"))  # fmt: skip
            n_out = res.get("bins_outside_tolerance", 0)
            out.append(
                Check(
                    stage="weights",
                    name="per-bin ratio within max(3 %, 4 sigma)",
                    status="pass" if n_out == 0 else "fail",
                    where=where,
                    value=float(res.get("max_deviation_sigma", 0.0)),
                    threshold=N_SIGMA,
                    comparison="<=",
                    message=f"{n_out} bin(s) outside; max |w'/w - 1| "
                    f"{res['max_ratio_deviation']:.3%}",
                )
            )
        vc = [
            f.get("versus_constant", {})
            for f in (prep.get("training") or {}).get("folds", {}).values()
        ]
        for k, v in enumerate(vc):
            if v.get("gain") is not None and not v.get("beats_constant", True):
                out.append(
                    Check(
                        stage="weights",
                        name="network beats the constant estimate",
                        status="warn",
                        where=f"{region}/{pname}/fold{k}",
                        value=v.get("gain"),
                        message="held-out loss not below the constant's: the constant E[w|x] "
                        "is used for this fold",
                    )
                )
    return out


def tilt(weight: np.ndarray, values: np.ndarray, amplitude: float = 0.05) -> np.ndarray:
    """``weight * (1 + amplitude * t)`` with ``t`` linear from -1 to +1 over the range of
    ``values``, rescaled to the original total: a deliberately distorted weight (power checks)."""
    v = np.asarray(values, dtype=np.float64)
    lo, hi = float(v.min()), float(v.max())
    t = 2.0 * (v - lo) / (hi - lo if hi > lo else 1.0) - 1.0
    out = np.asarray(weight, dtype=np.float64) * (1.0 + amplitude * t)
    return out * (np.sum(weight) / np.sum(out))


# ------------------------------------------------------------------ the network
def build_network(n_inputs: int, layers: Sequence[int]):  # type: ignore[no-untyped-def]
    """Dense ReLU network ``n_inputs -> layers... -> 1`` (a logit or a regression value)."""
    from vhbb.ml.networks import dense

    return dense(n_inputs, layers, 1)


def _sigmoid(raw: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-np.clip(raw, -50, 50)))


def _seed(seed: int, *parts: Any) -> int:
    tag = "/".join(str(p) for p in parts)
    return int((int(seed) * 1_000_003 + zlib.crc32(tag.encode())) % (2**31 - 1))


def _start_constant(net, method: str, w_train: np.ndarray, scale: float) -> None:  # type: ignore[no-untyped-def]
    """Set the output bias to the constant solution (the overall fraction or mean weight)."""
    import torch

    final = net[-1]
    with torch.no_grad():
        if method == "classification":
            a = np.abs(w_train)
            frac = float(np.clip(a[w_train > 0].sum() / a.sum(), 1e-4, 1 - 1e-4))
            final.bias.fill_(float(np.log(frac / (1 - frac))))
        else:
            final.bias.fill_(float(np.mean(w_train) / scale))


def _training_set(method: str, x_train: np.ndarray, w_train: np.ndarray, scale: float, device):  # type: ignore[no-untyped-def]
    """The engine dataset (``x``, target ``y``, per-event factor ``a``) and the objective.

    classification: ``|w|``-weighted BCE of ``w > 0``; regression: MSE of ``w / scale``.
    """
    import torch
    import torch.nn.functional as F

    xt = torch.as_tensor(x_train, dtype=torch.float32, device=device)
    if method == "classification":
        target = torch.as_tensor((w_train > 0).astype(np.float32), device=device)
        aux = torch.as_tensor((np.abs(w_train) / scale).astype(np.float32), device=device)

        def objective(nets, batch):  # type: ignore[no-untyped-def]
            logit = nets["weights"](batch["x"]).squeeze(-1)
            bce = F.binary_cross_entropy_with_logits(logit, batch["y"], reduction="none")
            return {"total": (batch["a"] * bce).mean()}

    else:
        target = torch.as_tensor((w_train / scale).astype(np.float32), device=device)
        aux = torch.ones_like(target)

        def objective(nets, batch):  # type: ignore[no-untyped-def]
            pred = nets["weights"](batch["x"]).squeeze(-1)
            return {"total": ((pred - batch["y"]) ** 2).mean()}

    return {"x": xt, "y": target, "a": aux}, objective


def _event_losses(method: str, raw: np.ndarray, w_hold: np.ndarray, scale: float) -> np.ndarray:
    """Per-event training loss of the network outputs ``raw`` (logit or scaled estimate)."""
    if method == "classification":
        ah = np.abs(w_hold) / scale
        y = (w_hold > 0).astype(np.float64)
        p = _sigmoid(raw)
        eps = 1e-7
        return ah * -(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps))
    return (raw - w_hold / scale) ** 2


def _heldout_loss(method: str, raw: np.ndarray, w_hold: np.ndarray, scale: float) -> float:
    """The training loss of the network outputs ``raw`` on the held-out events."""
    return float(np.mean(_event_losses(method, raw, w_hold, scale)))


def _constant_raw(method: str, w_train: np.ndarray, scale: float) -> float:
    """The constant prediction (logit of the |w|-weighted positive fraction, or mean w)."""
    if method == "classification":
        a = np.abs(w_train)
        frac = float(np.clip(a[w_train > 0].sum() / a.sum(), 1e-6, 1 - 1e-6))
        return float(np.log(frac / (1 - frac)))
    return float(np.mean(w_train) / scale)


def versus_constant(
    method: str, raw: np.ndarray, w_hold: np.ndarray, w_train: np.ndarray, scale: float
) -> dict[str, Any]:
    """Held-out loss of the network and of the constant prediction, and the paired gain.

    ``gain = L(constant) - L(network)`` (mean over held-out events; > 0: the network is
    better); its standard error is that of the per-event differences (paired).  The network
    counts as better only when the gain exceeds twice that error.
    """
    net = _event_losses(method, raw, w_hold, scale)
    const = _event_losses(method, np.full(len(w_hold), _constant_raw(method, w_train, scale)),
                          w_hold, scale)  # fmt: skip
    d = const - net
    n = len(d)
    se = float(np.std(d, ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return {
        "heldout_loss": float(net.mean()) if n else float("nan"),
        "heldout_loss_constant": float(const.mean()) if n else float("nan"),
        "gain": float(d.mean()) if n else float("nan"),
        "gain_error": se,
        # better by more than twice its paired standard error: a gain within the noise is
        # not evidence that the network knows more about E[w|x] than the constant does
        "beats_constant": bool(n > 1 and d.mean() > 2 * se),
    }


def _calibrated(p_apply: np.ndarray, p_hold: np.ndarray, w_hold: np.ndarray) -> np.ndarray:
    """Isotonic calibration of ``p`` on the held-out signs (``|w|``-weighted), applied."""
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    iso.fit(p_hold, (w_hold > 0).astype(np.float64), sample_weight=np.abs(w_hold))
    return np.asarray(iso.predict(p_apply), dtype=np.float64)


def _fit_fold(
    x_train: np.ndarray,
    w_train: np.ndarray,
    x_hold: np.ndarray,
    w_hold: np.ndarray,
    x_apply: np.ndarray,
    *,
    settings: Mapping[str, Any],
    device: Any,
    seed: int,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Train one network on ``(x_train, w_train)``; return ``(p or f on x_apply, info)``.

    classification: returns the isotonic-calibrated ``p(x)`` on ``x_apply`` (calibrated on the
    held-out events); regression: returns ``f(x)`` in weight units.
    """
    if settings["method"] == "gbdt":
        return _fit_fold_gbdt(
            x_train, w_train, x_hold, w_hold, x_apply, settings=settings, seed=seed
        )
    import torch

    from vhbb.ml import engine
    from vhbb.ml.networks import predict

    method = settings["method"]
    scale = float(np.mean(np.abs(w_train)))
    # the epoch is chosen on a split of the training events of its own: never on the events
    # that calibrate (that would bias the calibration) nor on those that are weighted
    stop = np.random.default_rng(seed).random(len(w_train)) < float(settings["stopping_fraction"])
    if stop.all() or not stop.any():
        stop = np.zeros(len(w_train), bool)
    x_fit, w_fit = x_train[~stop], w_train[~stop]
    torch.manual_seed(seed)
    net = build_network(x_train.shape[1], settings["layers"]).to(device)
    _start_constant(net, method, w_fit, scale)
    train_set, objective = _training_set(method, x_fit, w_fit, scale, device)
    xs_stop = torch.as_tensor(x_train[stop], dtype=torch.float32, device=device)
    ws_stop = np.asarray(w_train[stop], dtype=np.float64)
    xh = torch.as_tensor(x_hold, dtype=torch.float32, device=device)
    wh = np.asarray(w_hold, dtype=np.float64)

    def validate() -> dict[str, Any]:
        if len(ws_stop) == 0:
            return {}
        return {"stopping/total": _heldout_loss(method, predict(net, xs_stop), ws_stop, scale)}

    es = settings["early_stopping"]
    rule = (
        engine.EarlyStopping(
            objective=lambda e: e["stopping/total"],
            monitor="stopping/objective",
            patience=int(es["patience"]),
            min_delta=float(es["min_delta"]),
        )
        if len(ws_stop)
        else None
    )

    lr = float(settings["learning_rate"])
    opt = engine.make_optimizer(
        list(net.parameters()), settings["optimizer"], lr,
        weight_decay=float(settings.get("weight_decay", 0.0)),
    )  # fmt: skip
    phase = engine.Phase(
        "weights", int(settings["epochs"]), [engine.Step("weights", objective, name="weights")],
        lr={"weights": lr},
    )  # fmt: skip
    t0 = time.perf_counter()
    history = engine.train(
        {"weights": net}, {"weights": opt}, {"train": train_set}, [phase],
        batch_size=int(settings["batch_size"]), seed=seed, validate=validate, progress=False,
        early_stopping=rule,
    )  # fmt: skip
    best = [e for e in history.epochs if e["epoch"] == history.best_epoch]
    kept = best[0] if best else (history.epochs[-1] if history.epochs else {})
    info: dict[str, Any] = {
        "n_train": len(w_fit),
        "n_stopping": int(stop.sum()),
        "n_heldout": len(wh),
        "seconds": time.perf_counter() - t0,
        "max_epochs": history.max_epochs,
        "stop_epoch": history.stop_epoch,
        "best_epoch": history.best_epoch,
        "stopped": history.stopped,
        "final_loss": kept.get("weights/total"),
        "final_stopping_loss": kept.get("stopping/total"),
    }
    raw_hold = predict(net, xh) if len(wh) else np.zeros(0)
    info["versus_constant"] = versus_constant(method, raw_hold, wh, w_train, scale)
    info["final_heldout_loss"] = info["versus_constant"]["heldout_loss"]
    use_constant = len(wh) > 1 and not info["versus_constant"]["beats_constant"]
    info["estimate"] = "constant" if use_constant else "network"
    if use_constant:
        # the network does not beat the constant on held-out events: the honest E[w|x] is
        # the constant (classification: p(x) = the overall |w|-weighted positive fraction)
        const = _constant_raw(method, w_train, scale)
        log.warning("weight network does not beat the constant prediction: constant used")
        if method == "regression":
            return np.full(len(x_apply), const * scale), info
        info["calibrated"] = False
        return np.full(len(x_apply), _sigmoid(np.array([const]))[0]), info
    raw = predict(net, x_apply, device=device)
    if method == "regression":
        return raw * scale, info
    p_apply = _sigmoid(raw)
    info["calibrated"] = len(wh) > 0
    if not info["calibrated"]:
        log.warning("no held-out events for the isotonic calibration: uncalibrated p(x) used")
        return p_apply, info
    return _calibrated(p_apply, _sigmoid(raw_hold), wh), info


def _fit_fold_gbdt(
    x_train: np.ndarray,
    w_train: np.ndarray,
    x_hold: np.ndarray,
    w_hold: np.ndarray,
    x_apply: np.ndarray,
    *,
    settings: Mapping[str, Any],
    seed: int,
) -> tuple[np.ndarray, dict[str, Any]]:
    """``weights.method: gbdt``: scikit-learn's HistGradientBoostingClassifier of the sign,
    ``|w|`` as sample weight, its iterations stopped on a ``stopping_fraction`` split of the
    training events (its own early stopping); calibrated on the held-out events and compared
    with the constant as the network is."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    g = settings["gbdt"]
    t0 = time.perf_counter()
    frac = float(settings["stopping_fraction"])
    clf = HistGradientBoostingClassifier(
        max_iter=int(g["max_iter"]), learning_rate=float(g["learning_rate"]),
        max_leaf_nodes=int(g["max_leaf_nodes"]), min_samples_leaf=int(g["min_samples_leaf"]),
        early_stopping=frac > 0, validation_fraction=frac if frac > 0 else None,
        n_iter_no_change=int(g["patience"]), random_state=seed % (2**31 - 1),
    )  # fmt: skip
    y = (w_train > 0).astype(np.int8)
    minority = int(min(y.sum(), len(y) - y.sum()))
    if minority < MIN_MINORITY:  # too few events of one sign to learn how p depends on x
        info = {"n_train": len(w_train), "n_heldout": len(w_hold), "seconds": 0.0,
                "estimate": "constant", "final_heldout_loss": None,
                "stopped": f"{minority} training events of the rarer sign (< {MIN_MINORITY}): "
                "the constant estimate"}  # fmt: skip
        a = np.abs(w_train)
        return np.full(len(x_apply), float(a[w_train > 0].sum() / a.sum())), info
    clf.fit(x_train, y, sample_weight=np.abs(w_train))
    logit = lambda p: np.log(np.clip(p, 1e-7, 1 - 1e-7) / (1 - np.clip(p, 1e-7, 1 - 1e-7)))  # noqa: E731
    p_hold = clf.predict_proba(x_hold)[:, 1] if len(w_hold) else np.zeros(0)
    scale = float(np.mean(np.abs(w_train)))
    vc = versus_constant("classification", logit(p_hold), np.asarray(w_hold), w_train, scale)
    info: dict[str, Any] = {
        "n_train": len(w_train),
        "n_heldout": len(w_hold),
        "seconds": time.perf_counter() - t0,
        "max_epochs": int(g["max_iter"]),
        "stop_epoch": int(clf.n_iter_),
        "best_epoch": int(clf.n_iter_),
        "stopped": f"gradient boosting stopped after {clf.n_iter_} iterations",
        "versus_constant": vc,
        "final_heldout_loss": vc["heldout_loss"],
    }
    if len(w_hold) > 1 and not vc["beats_constant"]:
        info["estimate"] = "constant"
        return np.full(
            len(x_apply), _sigmoid(np.array([_constant_raw("classification", w_train, scale)]))[0]
        ), info
    info["estimate"] = "gbdt"
    p_apply = clf.predict_proba(x_apply)[:, 1]
    # the log-loss boosting, stopped on its own split, is calibrated already: an isotonic map
    # fitted on the held-out events adds its step noise (measured: paired-test p-values
    # 4e-4..0.02 with it, 0.45..0.94 without, 2e4 events; docs/STATUS.md)
    info["calibrated"] = len(w_hold) > 0 and g.get("calibration", "none") == "isotonic"
    if not info["calibrated"]:
        return p_apply, info
    return _calibrated(p_apply, p_hold, np.asarray(w_hold)), info


def local_mean_weights(
    x: np.ndarray,
    w: np.ndarray,
    fold: np.ndarray,
    *,
    settings: Mapping[str, Any] | None = None,
    heldout: np.ndarray | None = None,
    device: Any = "cpu",
    seed: int = 0,
    name: str = "process",
) -> tuple[np.ndarray, dict[str, Any]]:
    """Cross-fitted network estimate of ``E[w | x]`` per event (before clipping and rescaling).

    For each fold value ``k``: a network trained on events with ``fold != k`` outside
    ``heldout`` (default: a seeded ``calibration_fraction`` of the events), calibrated (method
    classification) on the events with ``fold != k`` inside ``heldout``, gives the weights of
    the events with ``fold == k``.
    """
    from vhbb.ml import engine

    settings = settings_with_defaults(settings)
    x = np.asarray(x, dtype=np.float64).reshape(len(w), -1)
    w = np.asarray(w, dtype=np.float64)
    fold = np.asarray(fold)
    if heldout is None:
        rng = np.random.default_rng(_seed(seed, name, "heldout"))
        heldout = rng.random(len(w)) < float(settings["calibration_fraction"])
    heldout = np.asarray(heldout, dtype=bool)
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    xs = ((x - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)
    dev = engine.resolve_device(device) if isinstance(device, str) else device
    folds = np.unique(fold)
    if len(folds) < 2:
        raise DataError(
            f"{name}: all {len(w)} events are in fold {folds.tolist()}: cross-fitting needs "
            "events in at least two folds"
        )
    estimate = np.empty(len(w), dtype=np.float64)
    info: dict[str, Any] = {"method": settings["method"], "folds": {}}
    for k in folds:
        apply = fold == k
        train_mask = ~apply & ~heldout
        hold_mask = ~apply & heldout
        if not train_mask.any():
            raise DataError(
                f"{name}: no training events outside fold {int(k)} (events: {len(w)}); "
                "cannot cross-fit its weights"
            )
        out, fold_info = _fit_fold(
            xs[train_mask],
            w[train_mask],
            xs[hold_mask],
            w[hold_mask],
            xs[apply],
            settings=settings,
            device=dev,
            seed=_seed(seed, name, int(k)),
        )
        if settings["method"] in ("classification", "gbdt"):
            estimate[apply] = np.abs(w[apply]) * (2.0 * out - 1.0)
        else:
            estimate[apply] = out
        info["folds"][str(int(k))] = fold_info
        log.info(
            "%s fold %d: trained on %d events (%d held out) in %.1f s, held-out loss %s",
            name, int(k), fold_info["n_train"], fold_info["n_heldout"], fold_info["seconds"],
            fold_info["final_heldout_loss"],
        )  # fmt: skip
    return estimate, info


def _yields(w: np.ndarray) -> dict[str, Any]:
    return {
        "events": len(w),
        "negative_events": int((w < 0).sum()),
        "negative_weight_fraction": float(np.abs(w[w < 0]).sum() / max(np.abs(w).sum(), 1e-300)),
        "yield_before": float(w.sum()),
    }


def _copied(w: np.ndarray, report: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    report.update(
        transformed=False,
        note="no negative weights: weights copied unchanged",
        yield_after=float(w.sum()),
        clipped_fraction=0.0,
        clipped_event_fraction=0.0,
        rescale_factor=1.0,
    )
    return w.copy(), report


def clip_and_rescale(
    estimate: np.ndarray, w: np.ndarray, name: str
) -> tuple[np.ndarray, dict[str, Any]]:
    """The estimate of one process (in one region) clipped at 0 and rescaled to its yield.

    Errors (naming ``name``): the weights sum to ``<= 0``, or the estimate is ``<= 0``
    everywhere.
    """
    w = np.asarray(w, dtype=np.float64)
    report = _yields(w)
    total = report["yield_before"]
    if total <= 0:
        raise DataError(
            f"{name}: the weights sum to {total:.6g} <= 0 ({report['negative_events']} of "
            f"{len(w)} events negative): no positive local mean weight can keep this yield"
        )
    clipped = estimate <= 0
    est = np.where(clipped, 0.0, estimate)
    if est.sum() <= 0:
        raise DataError(f"{name}: the estimated local mean weight is <= 0 everywhere")
    factor = total / float(est.sum())
    out = est * factor
    report.update(
        transformed=True,
        yield_after=float(out.sum()),
        clipped_fraction=float(np.abs(w[clipped]).sum() / np.abs(w).sum()),
        clipped_event_fraction=float(clipped.mean()),
        rescale_factor=factor,
    )
    log.info(
        "%s: %d events, %d negative; clipped %.4f of |w|; rescale factor %.5f",
        name, len(w), report["negative_events"], report["clipped_fraction"], factor,
    )  # fmt: skip
    return out, report


def _check_finite(w: np.ndarray, name: str) -> np.ndarray:
    w = np.asarray(w, dtype=np.float64)
    bad = ~np.isfinite(w)
    if bad.any():
        raise DataError(f"{name}: {int(bad.sum())} non-finite weight(s) (NaN or inf)")
    return w


def transform_process(
    x: np.ndarray, w: np.ndarray, fold: np.ndarray, *, name: str = "process", **options: Any
) -> tuple[np.ndarray, dict[str, Any]]:
    """Positive weights of one process: cross-fitted ``E[w|x]``, clipped at 0, yield kept.

    ``options``: those of :func:`local_mean_weights` (``settings``, ``heldout``, ``device``,
    ``seed``).  Returns ``(weight_transformed, report)``; the report has the yields
    before/after, the fraction of ``|w|`` (and of events) whose estimate was clipped, the
    rescale factor.
    Errors: non-finite weights, a total ``<= 0``.  No negative weight: the weights are copied.
    """
    w = _check_finite(w, name)
    if not (w < 0).any():
        return _copied(w, _yields(w))
    if w.sum() <= 0:
        clip_and_rescale(w, w, name)  # raises, naming the process
    estimate, info = local_mean_weights(x, w, fold, name=name, **options)
    out, report = clip_and_rescale(estimate, w, name)
    report["training"] = info
    return out, report


def transform_pooled(
    cells: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    *,
    process: str,
    settings: Mapping[str, Any],
    device: Any = "cpu",
    seed: int = 0,
) -> list[tuple[np.ndarray, dict[str, Any]]]:
    """One process in several regions: one cross-fitted estimate of ``E[w|x]`` from the events
    of all of them, then clipped and rescaled per region (each region keeps its yield).

    ``cells``: ``(region, x, w, fold, heldout)`` per region.  Valid when every variable that
    defines a region is in ``x`` (then ``E[w | x, region] = E[w | x]``; checked at config time
    by :func:`vhbb.config.params.weights`).  Returns ``(weight_transformed, report)`` per cell;
    a process without negative weights in any region is copied.
    """
    names = [f"region '{c[0]}', process '{process}'" for c in cells]
    ws = [_check_finite(c[2], n) for c, n in zip(cells, names, strict=True)]
    if not any((w < 0).any() for w in ws):
        return [_copied(w, _yields(w)) for w in ws]
    for w, n in zip(ws, names, strict=True):
        if w.sum() <= 0:
            clip_and_rescale(w, w, n)  # raises, naming region and process
    regions = [c[0] for c in cells]
    sizes = [len(w) for w in ws]
    estimate, info = local_mean_weights(
        np.concatenate([np.asarray(c[1], dtype=np.float64) for c in cells]),
        np.concatenate(ws),
        np.concatenate([np.asarray(c[3]) for c in cells]),
        settings=settings,
        heldout=np.concatenate([np.asarray(c[4], dtype=bool) for c in cells]),
        device=device,
        seed=_seed(seed, "pooled", process),
        name=f"process '{process}' ({sum(sizes)} events in {', '.join(regions)})",
    )
    info["regions"] = dict(zip(regions, sizes, strict=True))
    out = []
    for piece, w, n in zip(np.split(estimate, np.cumsum(sizes)[:-1]), ws, names, strict=True):
        new, report = clip_and_rescale(piece, w, n)
        report["training"] = info
        out.append((new, report))
    return out


# ------------------------------------------------------------------ export columns
def column(arrays: Mapping[str, np.ndarray], feature_names: Sequence[str], name: str) -> np.ndarray:
    """A per-event variable of an export by name: a 1-D dataset (``m_jj``,
    ``m_jj_jes_absoluteUp``), a training feature, or a feature's JES variation
    ``{feature}_jes_<source>Up`` / ``Down`` (a ``features/jes_<source>Up`` dataset)."""
    from vhbb.data import jes as jesmod

    features = list(feature_names)
    if name in arrays and np.ndim(arrays[name]) == 1:
        return np.asarray(arrays[name])
    if name in features:
        return np.asarray(arrays["features/nominal"][:, features.index(name)])
    for feature in features:
        var = name[len(feature) + 1 :] if name.startswith(f"{feature}_") else ""
        if jesmod.source_of(var) is not None and f"features/{var}" in arrays:
            return np.asarray(arrays[f"features/{var}"][:, features.index(feature)])
    known = sorted({*features, "m_jj", "pt_jj"})
    close = difflib.get_close_matches(name, known, n=2)
    raise ConfigError(
        f"weights: unknown variable '{name}' (export features: {', '.join(features)}"
        + (f"; did you mean {' or '.join(close)}?" if close else "")
        + ")"
    )


def conditioning_variables(
    conditioning: Sequence[str] | None, features: Sequence[str]
) -> list[str]:
    """``conditioning`` or, if ``None``, the training features plus ``m_jj`` and ``pt_jj``."""
    names = list(conditioning) if conditioning else [*features, "m_jj", "pt_jj"]
    return list(dict.fromkeys(names))


def validation_variables(
    settings: Mapping[str, Any],
    features: Sequence[str],
    arrays: Mapping[str, np.ndarray] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> list[str]:
    """The conditioning variables, the training features, ``m_jj``, ``pt_jj`` and
    ``validation.extra_variables``; with the export (``arrays``, ``attrs``) an extra name with
    ``*`` / ``?`` is replaced by the export variables it matches (:func:`expand_variables`)."""
    cond = conditioning_variables(settings.get("conditioning"), features)
    extra = list(settings["validation"]["extra_variables"])
    if arrays is not None:
        extra = expand_variables(extra, arrays, attrs or {}, features)
    return list(dict.fromkeys([*cond, *features, "m_jj", "pt_jj", *extra]))


def expand_variables(
    names: Sequence[str],
    arrays: Mapping[str, np.ndarray],
    attrs: Mapping[str, Any],
    features: Sequence[str],
) -> list[str]:
    """``names`` with every pattern (``*`` / ``?``, e.g. ``m_jj_jes_*``) replaced by the
    JES-varied export variables it matches (``m_jj``, ``pt_jj`` and each feature under each JES
    variation of the export, in source order); a pattern that matches none is dropped (logged)."""
    import fnmatch

    from vhbb.data import jes as jesmod
    from vhbb.data.export import export_jes_sources

    varied = jesmod.jes_variations(export_jes_sources(arrays, attrs))
    bases = list(dict.fromkeys(["m_jj", "pt_jj", *features]))
    candidates = [f"{b}_{v}" for b in bases for v in varied]
    out: list[str] = []
    for name in names:
        if not any(c in name for c in "*?["):
            out.append(name)
            continue
        hits = [c for c in candidates if fnmatch.fnmatchcase(c, name)]
        if not hits:
            log.info("weights.validation.extra_variables: '%s' matches no export variable", name)
        out.extend(hits)
    return out


# ------------------------------------------------------------------ one region
def _mc_mask(
    arrays: Mapping[str, np.ndarray],
    attrs: Mapping[str, Any],
    weight: np.ndarray,
    roles: Mapping[str, str] | None,
) -> np.ndarray:
    """The region's MC events (not data, nor a process of role ``data``); a non-finite MC
    weight is an error naming its samples and processes."""
    region = str(attrs.get("region", "region"))
    process_names = list(attrs["process_names"])
    sample_names = list(attrs["sample_names"])
    mc = np.asarray(arrays["domain"]) == 0
    if roles is not None:
        data_procs = [i for i, p in enumerate(process_names) if roles.get(p) == "data"]
        mc &= ~np.isin(arrays["process"], data_procs)
    bad = mc & ~np.isfinite(weight)
    if bad.any():
        proc, sample = np.asarray(arrays["process"])[bad], np.asarray(arrays["sample"])[bad]
        where = sorted(
            {(sample_names[s], process_names[p]) for s, p in zip(sample, proc, strict=True)}
        )
        named = ", ".join(f"sample '{s}' (process '{p}')" for s, p in where)
        raise DataError(f"region '{region}': {int(bad.sum())} non-finite MC weight(s) in {named}")
    return mc


def _conditioning_matrix(
    arrays: Mapping[str, np.ndarray],
    features: Sequence[str],
    cond: Sequence[str],
    mc: np.ndarray,
    region: str,
) -> np.ndarray:
    """The conditioning variables as columns; a non-finite value of an MC event is an error."""
    n = len(mc)
    x = (
        np.column_stack([column(arrays, features, c).astype(np.float64) for c in cond])
        if n
        else np.zeros((0, len(cond)))
    )
    bad_x = mc & ~np.all(np.isfinite(x), axis=1)
    if bad_x.any():
        raise DataError(
            f"region '{region}': {int(bad_x.sum())} MC event(s) with non-finite conditioning "
            f"variables ({', '.join(cond)})"
        )
    return x


def _calibration_heldout(
    arrays: Mapping[str, np.ndarray], sample_names: Sequence[str], fraction: float, salt: int
) -> np.ndarray:
    """The held-out (calibration) events, chosen by event key: ``u(key) < fraction``."""
    from vhbb.data import keys as keymod

    sample = np.asarray(arrays["sample"])
    n = len(sample)
    if not n:
        return np.zeros(0, dtype=bool)
    names = np.array(sample_names, dtype=object)
    u = np.empty(n)
    for s in np.unique(sample):
        sel = sample == s
        u[sel] = keymod.unit_uniform(
            str(names[s]), arrays["run"][sel], arrays["luminosityBlock"][sel],
            arrays["event"][sel], salt,
        )  # fmt: skip
    return u < fraction


def _validate_region(
    arrays: Mapping[str, np.ndarray],
    attrs: Mapping[str, Any],
    settings: Mapping[str, Any],
    weights: tuple[np.ndarray, np.ndarray],
    mc: np.ndarray,
    report: dict[str, Any],
) -> dict[str, dict[str, Any]]:
    """Paired tests of the transformed against the original MC weights (``weights``), per
    validation variable, overall (``report["variables"]``) and per transformed process."""
    features = list(attrs["feature_names"])
    process_names = list(attrs["process_names"])
    w, out = weights[0][mc], weights[1][mc]
    proc = np.asarray(arrays["process"])[mc]
    tests: dict[str, dict[str, Any]] = {}
    bins = int(settings["validation"]["bins"])
    for var in validation_variables(settings, features, arrays, attrs):
        values = column(arrays, features, var).astype(np.float64)[mc]
        edges = bin_edges(values, bins)
        res = paired_test(values, w, out, edges)
        tests[var] = res
        in_cond = var in report["conditioning"]
        report["variables"][var] = {**summary(res), "in_conditioning": in_cond}
        res["processes"] = {}
        for pname, prep in report["processes"].items():
            if not prep.get("transformed"):
                continue
            sel = proc == process_names.index(pname)
            nb = process_bins(w[sel], bins)
            own = edges if nb == bins else bin_edges(values[sel], nb)
            res["processes"][pname] = paired_test(values[sel], w[sel], out[sel], own)
            prep.setdefault("variables", {})[var] = summary(res["processes"][pname])
    return tests


def transform_regions(
    regions: Mapping[str, tuple[Mapping[str, np.ndarray], Mapping[str, Any]]],
    *,
    settings: Mapping[str, Any],
    roles: Mapping[str, str] | None = None,
    device: Any = "cpu",
    seed: int = 0,
    calibration_salt: int = SALT_CALIBRATION,
) -> dict[str, tuple[np.ndarray, dict[str, Any], dict[str, dict[str, Any]]]]:
    """Transformed weights of exported regions (each aligned 1:1 with its ``arrays``).

    ``regions``: region name -> ``(arrays, attrs)`` of its export.  Per process, one estimate
    from the events of all given regions (:func:`transform_pooled`), rescaled per region; pass
    one region at a time for separate estimates.  Returns, per region, ``(weight_transformed,
    report, tests)``: ``report`` is the validation JSON body (per process and per variable),
    ``tests`` the full paired-test results (for plots; ``tests[var]["processes"]`` per
    transformed process).
    """
    settings = settings_with_defaults(settings)
    frac = float(settings["calibration_fraction"])
    cells: dict[str, dict[str, Any]] = {}
    features: list[str] | None = None
    for region, (arrays, attrs) in regions.items():
        names = list(attrs["feature_names"])
        if features is not None and names != features:
            raise DataError(
                f"weights: the exports of '{next(iter(cells))}' and '{region}' have different "
                "features: rerun the export stage"
            )
        features = names
        w = np.asarray(arrays["weight"], dtype=np.float64)
        mc = _mc_mask(arrays, {**attrs, "region": region}, w, roles)
        cond = conditioning_variables(settings.get("conditioning"), names)
        cells[region] = {
            "w": w, "mc": mc, "proc": np.asarray(arrays["process"]),
            "x": _conditioning_matrix(arrays, names, cond, mc, region),
            "heldout": _calibration_heldout(
                arrays, list(attrs["sample_names"]), frac, calibration_salt + int(seed)
            ),
            "out": w.copy(),  # data (and MC without negative weights) keep their weights
            "report": {"region": region, "method": settings["method"], "conditioning": cond,
                       "pooled_regions": list(regions), "processes": {}, "variables": {}},
        }  # fmt: skip
    processes = list(dict.fromkeys(p for _, a in regions.values() for p in a["process_names"]))
    for pname in processes:
        where = []
        for region, (_arrays, attrs) in regions.items():
            c = cells[region]
            if pname not in attrs["process_names"]:
                continue
            sel = c["mc"] & (c["proc"] == list(attrs["process_names"]).index(pname))
            if sel.any():
                where.append((region, sel))
        results = transform_pooled(
            [(r, cells[r]["x"][s], cells[r]["w"][s], regions[r][0]["fold"][s],
              cells[r]["heldout"][s]) for r, s in where],
            process=pname, settings=settings, device=device, seed=seed,
        )  # fmt: skip
        for (region, sel), (new, prep) in zip(where, results, strict=True):
            cells[region]["out"][sel] = new
            cells[region]["report"]["processes"][pname] = prep
    out = {}
    for region, (arrays, attrs) in regions.items():
        c = cells[region]
        tests = _validate_region(arrays, attrs, settings, (c["w"], c["out"]), c["mc"], c["report"])
        out[region] = (c["out"], c["report"], tests)
    return out


def transform_region(
    arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any], **options: Any
) -> tuple[np.ndarray, dict[str, Any], dict[str, dict[str, Any]]]:
    """:func:`transform_regions` of one region (its own estimate)."""
    region = str(attrs.get("region", "region"))
    return transform_regions({region: (arrays, attrs)}, **options)[region]


# ------------------------------------------------------------------ the stage
#: the per-bin arrays of a paired test that the figures draw
PLOT_KEYS = ("edges", "sum_w", "sum_w_new", "sum_w2", "var", "chi2", "ndf", "p_value")


def plot_data(tests: Mapping[str, Mapping[str, Any]], region: str, method: str) -> dict[str, Any]:
    """The figures' data of one region (``results/weights/{region}/plot_data.json``, drawn by
    the rule ``weights_plots``): per variable the paired test of all MC and of each process."""

    def arrays(res: Mapping[str, Any]) -> dict[str, Any]:
        return {k: np.asarray(res[k]).tolist() for k in PLOT_KEYS}

    return {
        "region": region,
        "method": method,
        "variables": {
            var: {**arrays(res), "processes": {p: arrays(r) for p, r in res["processes"].items()}}
            for var, res in tests.items()
        },
    }


def write_weights(
    path: str | Path,
    arrays: Mapping[str, np.ndarray],
    weight_transformed: np.ndarray,
    attrs: Mapping[str, Any],
) -> None:
    from vhbb.data.export import write_h5

    table = {
        "weight_transformed": np.asarray(weight_transformed, dtype=np.float64),
        "weight": np.asarray(arrays["weight"], dtype=np.float64),
        "run": arrays["run"],
        "luminosityBlock": arrays["luminosityBlock"],
        "event": arrays["event"],
        "sample": arrays["sample"],
        "process": arrays["process"],
    }
    write_h5(path, table, attrs)


def run_weights(
    exports: Mapping[str, str | Path],
    *,
    outputs: Mapping[str, Mapping[str, str | Path]],
    spec: Mapping[str, Any],
) -> dict[str, dict[str, Any]]:
    """The stage: read the exports (region -> path), transform (one estimate per process from
    all regions when ``weights.pool_regions``, else one per region), gate on the validation,
    write per region the weights, the check records, the JSON and the figures' data.

    ``outputs``: region -> ``{"h5", "validation", "plot_data", "checks"}`` paths.  When the gate
    fails nothing is written: the message names region, process and variable.
    """
    from vhbb.core import checks as chk
    from vhbb.core.io import write_json
    from vhbb.core.provenance import provenance
    from vhbb.data.export import read_h5

    settings = settings_with_defaults(spec["settings"])
    read = {r: read_h5(path) for r, path in exports.items()}
    t0 = time.perf_counter()
    groups = [list(read)] if settings.get("pool_regions", True) else [[r] for r in read]
    results: dict[str, tuple[np.ndarray, dict[str, Any], dict[str, dict[str, Any]]]] = {}
    for group in groups:
        results.update(
            transform_regions(
                {r: read[r] for r in group}, settings=settings, roles=spec.get("roles"),
                device=spec.get("device", "cpu"),
                seed=int(spec.get("seed", 0)) + int(settings["seed_offset"]),
            )
        )  # fmt: skip
    seconds = time.perf_counter() - t0
    prov = provenance(dict(spec))
    # the gate: the stage's own validation fails the job (naming region, process and
    # variable) or, with validation.on_failure: warn, every output carries the warning
    records = {
        r: validation_checks(rep, float(settings["validation"]["min_p_value"]))
        for r, (_, rep, _) in results.items()
    }
    gated = chk.gate(
        [c for r in records for c in records[r]], settings["validation"]["on_failure"],
        context="weights",
    )  # fmt: skip
    for region, (out, report, tests) in results.items():
        mine = [c for c in gated if c.where.startswith(f"{region}/")]
        report.update(
            seconds=seconds, provenance=prov, warnings=chk.warnings_of(mine),
            checks=chk.summary(mine),
        )  # fmt: skip
        paths = outputs[region]
        chk.write_checks(paths["checks"], mine)
        arrays, attrs = read[region]
        write_weights(
            paths["h5"], arrays, out,
            {
                "region": region,
                "sample_names": list(attrs["sample_names"]),
                "process_names": list(attrs["process_names"]),
                "method": settings["method"],
                "config": dict(spec),
                "warnings": report["warnings"],
                "provenance": prov,
            },
        )  # fmt: skip
        write_json(paths["plot_data"], plot_data(tests, region, settings["method"]))
        write_json(paths["validation"], report)
        worst = min(report["variables"].items(), key=lambda kv: kv[1]["p_value"], default=None)
        if worst is not None:
            log.info("%s: smallest paired-test p-value %.4g (%s)", region, worst[1]["p_value"],
                     worst[0])  # fmt: skip
    return {r: rep for r, (_, rep, _) in results.items()}


# ------------------------------------------------------------------ known-answer toy
def toy_events(n: int, seed: int = 1, negative_scale: float = 1.0) -> dict[str, np.ndarray]:
    """Events with an analytic ``P(w < 0 | x)``: x = (m_jj, pt_jj, z); ``m_smeared`` is outside x.

    ``|w| = 1``, ``P(w<0|x) = negative_scale * (0.04 + 0.2 sigmoid((pt_jj - 230)/60)
    (1 + 0.35 tanh((m_jj - 120)/50)) + 0.05 tanh(z)^2)`` and ``E[w|x] = 1 - 2 P``.
    """
    rng = np.random.default_rng(seed)
    m_jj = 50 + 200 * rng.beta(2.0, 3.0, n)
    pt_jj = 120 + rng.exponential(90.0, n)
    z = rng.normal(0.0, 1.0, n)
    p_neg = negative_scale * (
        0.04
        + 0.2 / (1 + np.exp(-(pt_jj - 230) / 60)) * (1 + 0.35 * np.tanh((m_jj - 120) / 50))
        + 0.05 * np.tanh(z) ** 2
    )
    w = np.where(rng.random(n) < p_neg, -1.0, 1.0)
    return {
        "x": np.column_stack([m_jj, pt_jj, z]),
        "names": np.array(["m_jj", "pt_jj", "z"]),
        "w": w,
        "expected": 1.0 - 2.0 * p_neg,
        "m_smeared": m_jj * (1 + 0.1 * rng.normal(size=n)),
        "fold": (rng.random(n) < 0.5).astype(np.int8),
    }
