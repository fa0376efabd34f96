"""Evaluation of a trained classifier: separation, significance, sculpting, data/MC, VZ peak.

``results/evaluation/{model}/metrics.json`` (schema: ``vhbb/config/schemas/metrics.schema.json``)
holds two *variants* of every signal-region figure:

* ``out_of_fold`` -- every cached signal-region event scored by the fold model that did not
  see it (``results/scores/{model}``): the reported figures;
* ``validation`` -- the validation events inside the training folds (export flag
  ``validation``), scored by each fold model on its own validation events, weights scaled by
  the inverse of the fraction they represent: the figures scans *select* on.

Every figure is a *measurement* ``{"value", "error", "reason"}``: ``error`` is the standard
deviation over Poisson bootstrap replicas of the events (``evaluation.bootstrap``), ``value``
is ``null`` with a one-line ``reason`` where the figure is undefined (never 0).

Weights (see the README table): distribution distances (sculpting chi2/KS, JSD, dCor, CvM,
Pearson, data/MC KS) use the positive weight -- the transformed weight of
``results/weights/{region}.h5`` when available, else ``|w|`` (flagged); yields, significances
and ROC use the signed sigma*L weights.  Sculpting figures use the non-resonant background
only (VZ, role ``resonant``, is excluded); the VZ-peak test uses all background.

Everything here is numpy except :func:`dcor_sq` (torch, :mod:`vhbb.stats.disco`), imported lazily.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vhbb.config.loading import METRICS_SCHEMA_PATH
from vhbb.core.errors import DataError, InputError
from vhbb.evaluation.measurements import measurement, undefined
from vhbb.stats import metrics as mt
from vhbb.stats.histograms import quantile_inner_edges, weighted_hist

log = logging.getLogger(__name__)

Events = dict[str, np.ndarray]

#: Bootstrapped scalar figures: name -> path inside a variant's metrics.
BOOTSTRAPPED = (
    ("separation", "auc"),
    ("separation", "auc_truncated"),
    ("separation", "r50"),
    ("significance", "asimov"),
    ("significance", "simple"),
    ("sculpting", "mean", "chi2_ndf"),
    ("sculpting", "mean", "chi2_ndf_ref"),
    ("sculpting", "mean", "ks_distance"),
    ("sculpting", "highest", "chi2_ndf"),
    ("sculpting", "highest", "chi2_ndf_ref"),
    ("sculpting", "highest", "ks_distance"),
    ("jsd", "inverse_jsd"),
    ("decorrelation", "cvm"),
    ("decorrelation", "pearson"),
)


def _get(tree: Mapping[str, Any], path: Sequence[str]) -> Any:
    node: Any = tree
    for key in path:
        node = node[key]
    return node


# --------------------------------------------------------------------------- weights, bins
def positive_weight(weight: np.ndarray, transformed: np.ndarray | None) -> tuple[np.ndarray, str]:
    """The positive weight of distribution distances: transformed (if given) else ``|w|``."""
    if transformed is None:
        return np.abs(np.asarray(weight, dtype=np.float64)), "abs"
    wt = np.asarray(transformed, dtype=np.float64)
    if np.any(wt < 0) or not np.all(np.isfinite(wt)):
        raise DataError("transformed weights must be finite and >= 0")
    return wt, "transformed"


def weighted_quantile_edges(score: np.ndarray, weight: np.ndarray, n: int) -> np.ndarray:
    """``n + 1`` edges splitting ``score`` into ``n`` bins of equal positive weight.

    Inner edges: :func:`vhbb.stats.histograms.quantile_inner_edges`; the outer edges span at
    least the score range [0, 1].
    """
    inner = quantile_inner_edges(score, weight, n)
    s = np.asarray(score, dtype=np.float64)[np.asarray(weight) > 0]
    lo = min(0.0, float(np.min(s)))
    hi = max(1.0, float(np.max(s)))
    return np.concatenate([[lo], inner, [hi]])


def quantile_index(score: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Quantile bin of each score: bin ``i`` is ``edges[i] < s <= edges[i+1]`` (bin 0 closed)."""
    return np.clip(np.searchsorted(edges[1:-1], score, side="left"), 0, len(edges) - 2)


def n_effective(w: np.ndarray) -> float:
    w = np.asarray(w, dtype=np.float64)
    s2 = float(np.sum(w * w))
    return float(w.sum()) ** 2 / s2 if s2 > 0 else 0.0


# --------------------------------------------------------------------------- separation
def separation(y: np.ndarray, score: np.ndarray, weight: np.ndarray) -> dict[str, Any]:
    """Weighted ROC AUC, truncated AUC (Flavours of Physics) and R50 on signed weights."""
    out: dict[str, Any] = {}
    for key, fn in (
        ("auc", mt.roc_auc),
        ("auc_truncated", mt.roc_auc_truncated),
        ("r50", mt.r50),
    ):
        try:
            out[key] = measurement(fn(y, score, weight))
        except (DataError, ValueError) as exc:
            out[key] = undefined(str(exc))
    return out


def merge_significance_bins(
    s: np.ndarray, b: np.ndarray, b2: np.ndarray, min_mc_effective: float
) -> list[list[int]]:
    """Group score bins from the highest down until ``b > 0`` and ``n_eff(b) >= minimum``
    (the fit's merging rule, :func:`vhbb.fit.templates.greedy_groups`, with no yield minimum).

    A failing remainder (lowest scores) joins its neighbour group.
    """
    from vhbb.fit.templates import greedy_groups

    return greedy_groups(
        np.asarray(b, float),
        np.asarray(b2, float),
        range(len(b) - 1, -1, -1),
        0.0,
        min_mc_effective,
    )


def binned_significance(
    s_score: np.ndarray,
    s_weight: np.ndarray,
    b_score: np.ndarray,
    b_weight: np.ndarray,
    *,
    n_bins: int,
    min_mc_effective: float,
) -> dict[str, Any]:
    """Binned Asimov Z and ``sqrt(sum s^2/(s+b))`` over score bins of equal signal yield."""
    from vhbb.fit.templates import score_edges

    edges = score_edges(s_score, s_weight, mode="quantile", count=n_bins)
    s, _ = weighted_hist(s_score, s_weight, edges)
    b, b2 = weighted_hist(b_score, b_weight, edges)
    groups = merge_significance_bins(s, b, b2, min_mc_effective)
    sm = np.array([s[g].sum() for g in groups])
    bm = np.array([b[g].sum() for g in groups])
    out: dict[str, Any] = {"n_bins": len(groups), "n_bins_before_merging": len(edges) - 1}
    if np.any(sm < 0):
        log.warning("significance: %d merged bins with negative signal set to 0", (sm < 0).sum())
        sm = np.clip(sm, 0.0, None)
    for key, fn in (("asimov", mt.asimov_significance), ("simple", mt.simple_significance)):
        try:
            out[key] = measurement(fn(sm, bm))
        except DataError as exc:
            out[key] = undefined(str(exc))
    return out


# --------------------------------------------------------------------------- sculpting
def _chi2_ref(chi2: float, ndf: int, n1: float, n2: float, n_ref: float) -> float | None:
    """chi2/ndf expected at a fixed effective count: ``1 + (chi2 - ndf)/ndf * n_ref/n_comb``.

    For two samples of effective sizes n1, n2 the homogeneity chi2 grows as
    ``ndf + n_comb * D`` (``n_comb = n1 n2 / (n1 + n2)``, ``D`` the chi-square divergence of
    the two shapes), so this is an estimate of the effect size independent of the sample size.
    """
    if n1 <= 0 or n2 <= 0 or ndf <= 0:
        return None
    n_comb = n1 * n2 / (n1 + n2)
    return 1.0 + (chi2 - ndf) / ndf * n_ref / n_comb


def sculpting(
    score: np.ndarray,
    m_jj: np.ndarray,
    weight: np.ndarray,
    *,
    mjj_edges: np.ndarray,
    n_quantiles: int,
    reference_count: float,
) -> dict[str, Any]:
    """m_jj of the background in each score quantile against the rest (disjoint samples).

    Quantile bins have equal (positive-weight) background yield.  Per quantile: ROOT's
    ``Chi2Test("WW")`` (chi2, ndf, p, chi2/ndf, chi2/ndf at ``reference_count``) and
    ``KolmogorovTest`` (p, ``M`` distance, effective entries).  Negative bins (signed weights)
    or an empty quantile give null with the reason.  ``mean`` averages the defined quantiles,
    ``highest`` is the highest-score quantile.
    """
    score = np.asarray(score, dtype=np.float64)
    m_jj = np.asarray(m_jj, dtype=np.float64)
    w = np.asarray(weight, dtype=np.float64)
    try:
        edges = weighted_quantile_edges(score, w, n_quantiles)
    except DataError as exc:
        reason = f"no background for the score quantiles: {exc}"
        empty = [_undefined_quantile(i, reason) for i in range(n_quantiles)]
        return _sculpting_summary([], empty, reason)
    q = quantile_index(score, edges)
    quantiles = []
    for i in range(n_quantiles):
        inside = q == i
        h_in, e_in = weighted_hist(m_jj[inside], w[inside], mjj_edges)
        h_out, e_out = weighted_hist(m_jj[~inside], w[~inside], mjj_edges)
        entry: dict[str, Any] = {
            "index": i,
            "score_range": [float(edges[i]), float(edges[i + 1])],
            "yield_in": float(w[inside].sum()),
            "n_eff_in": n_effective(w[inside]),
            "n_eff_out": n_effective(w[~inside]),
        }
        guard = mt.check_nonnegative(h_in, f"quantile {i}") or mt.check_nonnegative(
            h_out, f"outside quantile {i}"
        )
        if guard is not None:
            entry.update(_undefined_quantile(i, guard))
            entry["index"], entry["score_range"] = i, [float(edges[i]), float(edges[i + 1])]
            quantiles.append(entry)
            continue
        chi2 = mt.chi2_test(h_in, h_out, "WW", w2_1=e_in, w2_2=e_out)
        ks = mt.kolmogorov_test(h_in, h_out, w2_1=e_in, w2_2=e_out)
        entry["chi2"] = measurement(chi2.statistic, None, chi2.reason)
        entry["ndf"] = chi2.ndf
        entry["p_value"] = measurement(chi2.p_value, None, chi2.reason)
        entry["chi2_ndf"] = measurement(chi2.chi2_ndf, None, chi2.reason)
        ref = (
            None
            if chi2.statistic is None or chi2.ndf is None
            else _chi2_ref(
                chi2.statistic, chi2.ndf, entry["n_eff_in"], entry["n_eff_out"], reference_count
            )
        )
        entry["chi2_ndf_ref"] = measurement(
            ref, None, chi2.reason or (None if ref is not None else "no effective entries")
        )
        entry["ks_p_value"] = measurement(ks.p_value, None, ks.reason)
        entry["ks_distance"] = measurement(ks.max_distance, None, ks.reason)
        entry["reason"] = chi2.reason or ks.reason
        quantiles.append(entry)
    return _sculpting_summary(edges.tolist(), quantiles, None)


_QUANTILE_FIGURES = ("chi2", "p_value", "chi2_ndf", "chi2_ndf_ref", "ks_p_value", "ks_distance")
_SUMMARY_FIGURES = ("chi2_ndf", "chi2_ndf_ref", "p_value", "ks_distance", "ks_p_value")


def _undefined_quantile(i: int, reason: str) -> dict[str, Any]:
    out: dict[str, Any] = {"index": i, "score_range": None, "yield_in": 0.0}
    out.update({"n_eff_in": 0.0, "n_eff_out": 0.0, "ndf": None, "reason": reason})
    for key in _QUANTILE_FIGURES:
        out[key] = undefined(reason)
    return out


def _sculpting_summary(
    edges: list[float], quantiles: list[dict[str, Any]], reason: str | None
) -> dict[str, Any]:
    mean: dict[str, Any] = {}
    for key in _SUMMARY_FIGURES:
        values = [q[key]["value"] for q in quantiles if q[key]["value"] is not None]
        if values:
            mean[key] = measurement(float(np.mean(values)))
        else:
            mean[key] = undefined(reason or "no quantile with a defined test")
    mean["n_defined"] = sum(q["reason"] is None for q in quantiles)
    highest = {key: dict(quantiles[-1][key]) for key in _SUMMARY_FIGURES} if quantiles else {}
    return {"quantile_edges": edges, "quantiles": quantiles, "mean": mean, "highest": highest}


def signal_threshold(score: np.ndarray, weight: np.ndarray, efficiency: float) -> float:
    """Score cut keeping ``efficiency`` of the (signed, clipped at 0) signal yield."""
    s = np.asarray(score, dtype=np.float64)
    w = np.clip(np.asarray(weight, dtype=np.float64), 0.0, None)
    if w.sum() <= 0:
        raise DataError("no positive signal yield for the signal-efficiency cut")
    order = np.argsort(s)[::-1]
    cum = np.cumsum(w[order]) / w.sum()
    if len(s) == 0 or not np.isfinite(cum[-1]):
        raise DataError("no positive signal yield for the signal-efficiency cut")
    k = int(np.searchsorted(cum, efficiency, side="left"))
    return float(s[order][min(k, len(s) - 1)])


def jsd_pass_fail(
    b_score: np.ndarray,
    b_mjj: np.ndarray,
    b_weight: np.ndarray,
    threshold: float,
    mjj_edges: np.ndarray,
) -> dict[str, Any]:
    """JSD (base 2) of the normalised background m_jj passing/failing ``score > threshold``."""
    passing = b_score > threshold
    h_pass, _ = weighted_hist(b_mjj[passing], b_weight[passing], mjj_edges)
    h_fail, _ = weighted_hist(b_mjj[~passing], b_weight[~passing], mjj_edges)
    out: dict[str, Any] = {
        "threshold": float(threshold),
        "n_eff_pass": n_effective(b_weight[passing]),
        "n_eff_fail": n_effective(b_weight[~passing]),
    }
    try:
        jsd = mt.jensen_shannon_divergence(h_pass, h_fail)
    except DataError as exc:
        out["jsd"] = undefined(str(exc))
        out["inverse_jsd"] = undefined(str(exc))
        return out
    out["jsd"] = measurement(jsd)
    out["inverse_jsd"] = (
        measurement(1.0 / jsd) if jsd > 0 else undefined("JSD = 0: identical histograms")
    )
    return out


def dcor_sq(
    score: np.ndarray,
    m_jj: np.ndarray,
    weight: np.ndarray,
    *,
    max_events: int,
    seed: int,
    replicas: int = 0,
) -> dict[str, Any]:
    """Weighted dCor^2(score, m_jj) (:func:`vhbb.stats.disco.distance_corr_sq_values`, float64).

    O(N^2) time: above ``max_events`` a seeded random subsample is used (recorded).  ``error``
    is the spread over ``replicas`` Poisson-bootstrap replicas of that set.
    """
    import torch

    from vhbb.stats.disco import distance_corr_sq_values

    keep = np.flatnonzero(np.asarray(weight) > 0)
    if len(keep) < 2:
        return {"n_events": len(keep), "subsampled": False, **undefined("fewer than 2 events")}
    rng = np.random.default_rng(seed)
    subsampled = len(keep) > max_events
    if subsampled:
        keep = np.sort(rng.choice(keep, size=max_events, replace=False))
    x = torch.as_tensor(np.asarray(m_jj, dtype=np.float64)[keep])
    y = torch.as_tensor(np.asarray(score, dtype=np.float64)[keep])
    w = np.asarray(weight, dtype=np.float64)[keep]
    # the central value and every replica in one sweep over the pairs
    columns = [w, *(w * rng.poisson(1.0, len(w)) for _ in range(replicas))]
    values = distance_corr_sq_values(x, y, torch.as_tensor(np.stack(columns, axis=1)))
    central, reps = float(values[0]), values[1:].tolist()
    error = float(np.nanstd(reps, ddof=1)) if len(reps) > 1 else None
    return {
        "n_events": len(keep),
        "subsampled": bool(subsampled),
        **measurement(central, error),
    }


# --------------------------------------------------------------------------- VZ peak
def peak_excess(
    m_jj: np.ndarray,
    weight: np.ndarray,
    *,
    window: Sequence[float],
    sidebands: Sequence[Sequence[float]],
    bin_width: float,
    order: int,
) -> dict[str, Any]:
    """Excess in an m_jj window over a polynomial fitted to the sidebands.

    Histogram of bin width ``bin_width`` over the sidebands' span; weighted least squares
    (variance = sum w^2 per bin) of a polynomial of ``order`` to the sideband bins; excess =
    window yield - fitted yield; significance = excess / sqrt(fitted yield (expected-data
    Poisson) + window sum w^2 (MC statistics) + fit variance).
    """
    lo = min(min(s) for s in sidebands)
    hi = max(max(s) for s in sidebands)
    edges = np.arange(lo, hi + 0.5 * bin_width, bin_width)
    sel = (m_jj >= lo) & (m_jj < hi)
    h, h2 = weighted_hist(np.asarray(m_jj)[sel], np.asarray(weight)[sel], edges)
    centres = 0.5 * (edges[1:] + edges[:-1])
    in_sb = np.zeros(len(centres), bool)
    for a, b in sidebands:
        in_sb |= (centres >= a) & (centres < b)
    in_win = (centres >= window[0]) & (centres < window[1])
    out: dict[str, Any] = {
        "edges": edges.tolist(),
        "content": h.tolist(),
        "sumw2": h2.tolist(),
        "window": [float(v) for v in window],
        "sidebands": [[float(a), float(b)] for a, b in sidebands],
    }
    if in_sb.sum() <= order + 1 or not in_win.any():
        return {
            **out,
            "excess": undefined("too few sideband bins"),
            "significance": undefined("too few sideband bins"),
            "fit": None,
        }
    if float(h[in_win].sum()) <= 0 and float(h[in_sb].sum()) <= 0:
        reason = "no background in the window and sidebands"
        return {**out, "excess": undefined(reason), "significance": undefined(reason), "fit": None}
    var = np.where(h2 > 0, h2, max(float(np.mean(h2[h2 > 0])) if np.any(h2 > 0) else 1.0, 1e-12))
    xs = (centres - centres.mean()) / (hi - lo)
    design = np.vander(xs, order + 1)
    a = design[in_sb] / np.sqrt(var[in_sb])[:, None]
    rhs = h[in_sb] / np.sqrt(var[in_sb])
    coef, *_ = np.linalg.lstsq(a, rhs, rcond=None)
    cov = np.linalg.pinv(a.T @ a)
    pred_bins = design @ coef
    g = design[in_win].sum(axis=0)
    pred = float(g @ coef)
    pred_var = float(g @ cov @ g)
    observed = float(h[in_win].sum())
    excess = observed - pred
    sigma = math.sqrt(max(pred, 0.0) + float(h2[in_win].sum()) + pred_var)
    out["fit"] = pred_bins.tolist()
    out["observed"] = observed
    out["predicted"] = pred
    out["excess"] = measurement(excess, sigma)
    out["significance"] = (
        measurement(excess / sigma) if sigma > 0 else undefined("zero uncertainty")
    )
    return out


# --------------------------------------------------------------------------- data / MC
# --------------------------------------------------------------------------- core figures
def sr_metrics(
    ev: Events,
    settings: Mapping[str, Any],
    *,
    factor: np.ndarray | None = None,
    full: bool = True,
) -> dict[str, Any]:
    """Signal-region figures of one event set (``factor``: bootstrap multiplicities).

    ``ev`` holds ``score``, ``m_jj``, ``weight`` (signed), ``pos_weight`` and ``role`` of the
    signal-region MC.  ``full`` adds the figures that are not bootstrapped (VZ peak).
    """
    f = np.ones(len(ev["score"])) if factor is None else factor
    w = ev["weight"] * f
    pw = ev["pos_weight"] * f
    role = ev["role"]
    sig = role == "signal"
    bkg = (role == "nonresonant") | (role == "resonant")
    nonres = role == "nonresonant"
    mjj_edges = np.asarray(settings["mjj_edges"], dtype=np.float64)
    score, m_jj = ev["score"], ev["m_jj"]
    out: dict[str, Any] = {
        "n_events": {
            "signal": int(sig.sum()),
            "background": int(bkg.sum()),
            "nonresonant": int(nonres.sum()),
        },
        "yields": {
            "signal": float(w[sig].sum()),
            "background": float(w[bkg].sum()),
            "nonresonant": float(w[nonres].sum()),
        },
    }
    sb = sig | bkg
    out["separation"] = separation(sig[sb], score[sb], w[sb])
    out["significance"] = binned_significance(
        score[sig],
        w[sig],
        score[bkg],
        w[bkg],
        n_bins=int(settings["significance_bins"]),
        min_mc_effective=float(settings["min_mc_effective"]),
    )
    out["sculpting"] = sculpting(
        score[nonres],
        m_jj[nonres],
        pw[nonres],
        mjj_edges=mjj_edges,
        n_quantiles=int(settings["score_quantiles"]),
        reference_count=float(settings["sculpting"]["reference_count"]),
    )
    try:
        thr = signal_threshold(score[sig], w[sig], float(settings["jsd_signal_efficiency"]))
        out["jsd"] = jsd_pass_fail(score[nonres], m_jj[nonres], pw[nonres], thr, mjj_edges)
    except DataError as exc:
        out["jsd"] = {"threshold": None, "n_eff_pass": 0.0, "n_eff_fail": 0.0}
        out["jsd"].update({"jsd": undefined(str(exc)), "inverse_jsd": undefined(str(exc))})
    deco: dict[str, Any] = {}
    try:
        deco["pearson"] = measurement(
            mt.pearson_correlation(score[nonres], m_jj[nonres], pw[nonres])
        )
    except (DataError, ValueError) as exc:
        deco["pearson"] = undefined(str(exc))
    cvm = settings["cvm"]
    n_nonres = int(nonres.sum()) if factor is None else int(f[nonres].sum())
    if n_nonres >= int(cvm["n_neighbours"]):
        s_c, m_c = score[nonres], m_jj[nonres]
        if factor is not None:
            reps = f[nonres].astype(np.int64)
            s_c, m_c = np.repeat(s_c, reps), np.repeat(m_c, reps)
        deco["cvm"] = measurement(
            mt.cvm_flatness(s_c, m_c, int(cvm["n_neighbours"]), int(cvm["step"]))
        )
    else:
        deco["cvm"] = undefined(
            f"{n_nonres} non-resonant events < n_neighbours {cvm['n_neighbours']}"
        )
    out["decorrelation"] = deco
    if full:
        vz = settings["vz_peak"]
        top = _top_quantile_mask(score, pw, nonres, int(settings["score_quantiles"]))
        kw = {
            "window": vz["window"],
            "sidebands": vz["sidebands"],
            "bin_width": float(vz["bin_width"]),
            "order": int(vz["order"]),
        }
        with_vz = peak_excess(m_jj[top & bkg], w[top & bkg], **kw)
        without = peak_excess(m_jj[top & nonres], w[top & nonres], **kw)
        thr_z = float(vz["min_significance"])
        z_with = with_vz["significance"]["value"]
        z_without = without["significance"]["value"]
        out["vz_peak"] = {
            "with_vz": with_vz,
            "without_vz": without,
            "min_significance": thr_z,
            "visible": bool(z_with is not None and z_with >= thr_z),
            "disappears_without_vz": bool(z_without is None or z_without < thr_z),
        }
    return out


def _top_quantile_mask(
    score: np.ndarray, pos_weight: np.ndarray, nonres: np.ndarray, n: int
) -> np.ndarray:
    try:
        edges = weighted_quantile_edges(score[nonres], pos_weight[nonres], n)
    except DataError:
        return np.zeros(len(score), bool)
    return quantile_index(score, edges) == n - 1


def bootstrap(
    ev: Events,
    settings: Mapping[str, Any],
    result: dict[str, Any],
    *,
    replicas: int,
    seed: int,
) -> None:
    """Fill ``error`` of the bootstrapped figures (Poisson(1) event multiplicities)."""
    if replicas < 2:
        for path in BOOTSTRAPPED:
            node = _get(result, path)
            if node.get("value") is not None:
                node["error"] = None
        return
    rng = np.random.default_rng(seed)
    samples: dict[tuple[str, ...], list[float]] = {p: [] for p in BOOTSTRAPPED}
    for _ in range(replicas):
        factor = rng.poisson(1.0, len(ev["score"])).astype(np.float64)
        rep = sr_metrics(ev, settings, factor=factor, full=False)
        for path in BOOTSTRAPPED:
            v = _get(rep, path)["value"]
            if v is not None:
                samples[path].append(v)
    for path, values in samples.items():
        node = _get(result, path)
        if node["value"] is not None and len(values) >= 2:
            node["error"] = float(np.std(values, ddof=1))


# --------------------------------------------------------------------------- inputs
def read_sample_events(
    cache_path: str,
    score_path: str,
    sample: str,
    is_mc: bool,
    reweighting: Sequence[Mapping[str, Any]] = (),
    process: str | None = None,
) -> dict[str, np.ndarray]:
    """Cache joined with the out-of-fold scores (keys and lengths checked), MC reweighted by
    the derived corrections ``reweighting`` (:mod:`vhbb.fit.reweighting`)."""
    from vhbb.data.events import read_events

    return read_events(
        cache_path, score_path, sample, is_mc, reweighting=reweighting, process=process
    )


def _key_frame(sample: np.ndarray, run: np.ndarray, lumi: np.ndarray, event: np.ndarray) -> Any:
    import pandas as pd

    return pd.DataFrame(
        {
            "sample": np.asarray(sample).astype(str),
            "run": np.asarray(run).astype(np.int64),
            "luminosityBlock": np.asarray(lumi).astype(np.int64),
            "event": np.asarray(event).astype(np.uint64),
        }
    )


def read_transformed(paths: Sequence[str]) -> Any:
    """Key frame (sample name, run, lumi, event) -> weight_transformed of the weights files."""
    import pandas as pd

    from vhbb.data.export import read_h5

    frames = []
    for path in paths:
        arrays, attrs = read_h5(path)
        names = np.asarray(list(attrs["sample_names"]))
        frame = _key_frame(
            names[arrays["sample"]], arrays["run"], arrays["luminosityBlock"], arrays["event"]
        )
        frame["weight_transformed"] = arrays["weight_transformed"]
        frames.append(frame)
    if not frames:
        return None
    return pd.concat(frames, ignore_index=True).drop_duplicates(
        ["sample", "run", "luminosityBlock", "event"]
    )


def load_oof_events(
    cache_files: Mapping[str, str],
    score_files: Mapping[str, str],
    *,
    samples: Mapping[str, Mapping[str, Any]],
    processes: Mapping[str, Mapping[str, Any]],
    regions: Sequence[str],
    weights_files: Sequence[str] = (),
    cr_data_fit_fraction: float,
    seed: int,
    reweighting: Sequence[Mapping[str, Any]] = (),
) -> tuple[Events, str]:
    """Out-of-fold events of ``regions`` (all samples), with the positive weight.

    Returns ``(events, positive_weight_kind)``: ``transformed`` when every MC event found its
    transformed weight, else ``abs`` (flagged in the metrics).  With ``reweighting`` the MC
    weight and positive weight carry the derived corrections' nominal factors.
    """
    from vhbb.data.export import common_jes_sources, cr_fit_half

    parts: list[dict[str, np.ndarray]] = []
    mc_varied: dict[str, list[str]] = {}  # MC sample -> its score_jes_* columns
    for sample, cache_path in cache_files.items():
        proc = samples[sample]["process"]
        role = processes[proc]["role"]
        is_mc = role != "data"
        ev = read_sample_events(
            cache_path, score_files[sample], sample, is_mc, reweighting, process=proc
        )
        sel = np.isin(ev["region"], list(regions))
        n = int(sel.sum())
        part = {
            "score": ev["score"][sel],
            "m_jj": ev["m_jj"][sel].astype(np.float64),
            "weight": ev["weight"][sel].astype(np.float64),
            "region": ev["region"][sel],
            "process": np.full(n, proc, dtype=object),
            "role": np.full(n, role, dtype=object),
            "sample": np.full(n, sample, dtype=object),
            "run": ev["run"][sel],
            "luminosityBlock": ev["luminosityBlock"][sel],
            "event": ev["event"][sel],
            "reweighting_factor": ev["reweighting_factor"][sel],
        }
        if is_mc:
            mc_varied[sample] = [k for k in ev if k.startswith("score_jes_")]
            for key in mc_varied[sample]:  # the JES-varied scores (score_jes_<source>Up/Down)
                part[key] = ev[key][sel]
            part["fit_half"] = np.zeros(n, bool)
        else:
            part["fit_half"] = cr_fit_half(
                sample,
                part["run"],
                part["luminosityBlock"],
                part["event"],
                cr_data_fit_fraction,
                seed,
            )
        parts.append(part)
    if not parts:
        raise InputError("evaluation: no sample given")
    varied = common_jes_sources(mc_varied, "the MC scores (score_jes_<source>Up/Down columns)")
    for part in parts:  # data: the nominal score under every JES variation
        for key in varied:
            part.setdefault(key, part["score"])
    events: Events = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    for k in ("region", "process", "role", "sample"):
        events[k] = events[k].astype(str)
    mc = events["role"] != "data"
    transformed = read_transformed(list(weights_files)) if weights_files else None
    kind = "abs"
    pos = np.abs(events["weight"])
    if transformed is not None:
        keys = _key_frame(
            events["sample"], events["run"], events["luminosityBlock"], events["event"]
        )
        merged = keys.merge(
            transformed, how="left", on=["sample", "run", "luminosityBlock", "event"]
        )
        wt = merged["weight_transformed"].to_numpy(np.float64)
        missing = mc & ~np.isfinite(wt)
        if missing.any():
            log.warning(
                "%d MC events without a transformed weight: using |w| for all (flagged)",
                int(missing.sum()),
            )
        else:
            pos = np.where(mc, wt, 1.0)
            kind = "transformed"
    else:
        log.warning("no transformed weights: distribution distances use |w| (flagged)")
    events["pos_weight"] = np.where(mc, pos * events["reweighting_factor"], 1.0)
    return events, kind


def validation_events(
    export_path: str,
    weights_path: str | None,
    model_paths: Sequence[str],
    roles: Mapping[str, str],
) -> tuple[Events, dict[str, Any]]:
    """Signal-region MC validation events scored by their own fold models.

    Model ``k`` (trained on folds != k) scores the events with ``fold != k`` and
    ``validation`` set -- the events it held out for validation.  Their weights are scaled by
    ``1 / (K * fraction_k)`` (``fraction_k``: their share of the signal-region MC) so that
    the pooled yields equal the full sample's.
    """
    from vhbb.data.export import read_h5
    from vhbb.ml.train import load_model, predict

    arrays, attrs = read_h5(export_path)
    mc = arrays["domain"] == 0
    names = list(attrs["process_names"])
    transformed = None
    if weights_path is not None:
        wa, _ = read_h5(weights_path)
        for key in ("run", "luminosityBlock", "event"):
            if not np.array_equal(wa[key], arrays[key]):
                raise InputError(f"{weights_path} is not aligned with {export_path} ({key})")
        transformed = wa["weight_transformed"]
    k_folds = len(model_paths)
    parts: list[dict[str, np.ndarray]] = []
    info: dict[str, Any] = {"folds": []}
    n_mc = int(mc.sum())
    for k, path in enumerate(model_paths):
        sel = mc & (arrays["fold"] != k) & arrays["validation"].astype(bool)
        n = int(sel.sum())
        if n == 0:
            info["folds"].append({"fold": k, "events": 0, "scale": None})
            continue
        scale = n_mc / (k_folds * n)
        clf = load_model(path)
        score = predict(clf, arrays["features/nominal"][sel])
        proc = np.asarray(names)[arrays["process"][sel]]
        w = arrays["weight"][sel].astype(np.float64)
        pw, _ = positive_weight(w, None if transformed is None else transformed[sel])
        parts.append(
            {
                "score": score,
                "m_jj": arrays["m_jj"][sel].astype(np.float64),
                "weight": w * scale,
                "pos_weight": pw * scale,
                "process": proc,
                "role": np.array([roles[p] for p in proc], dtype=object),
            }
        )
        info["folds"].append({"fold": k, "events": n, "scale": scale})
    if not parts:
        raise InputError(f"{export_path}: no validation events")
    ev: Events = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    ev["role"] = ev["role"].astype(str)
    ev["process"] = ev["process"].astype(str)
    info["positive_weight"] = "abs" if transformed is None else "transformed"
    return ev, info


# --------------------------------------------------------------------------- whole model
def data_mc_agreement(
    events: Events,
    regions: Sequence[str],
    scale_factors: Mapping[str, float],
    threshold: float,
    *,
    replicas: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """KS distance of pseudo-data (fit half) and scale-factor-corrected MC scores per region."""
    out: dict[str, Any] = {"threshold": float(threshold), "regions": {}}
    rng = np.random.default_rng(seed)
    values = []
    for region in regions:
        in_region = events["region"] == region
        data = in_region & (events["role"] == "data") & events["fit_half"]
        mc = in_region & (events["role"] != "data")
        sf = np.array([scale_factors.get(p, 1.0) for p in events["process"][mc]])
        w_mc = events["pos_weight"][mc] * sf
        entry: dict[str, Any] = {"n_data": int(data.sum()), "n_eff_mc": n_effective(w_mc)}
        if not data.any() or not mc.any() or w_mc.sum() <= 0:
            reason = "no pseudo-data (fit half) in the region" if not data.any() else "no MC"
            entry["ks_distance"] = undefined(reason)
            entry["passes"] = None
        else:
            s_d, s_m = events["score"][data], events["score"][mc]
            ks = mt.ks_distance(s_d, np.ones(len(s_d)), s_m, w_mc)
            reps = [
                mt.ks_distance(
                    s_d, rng.poisson(1.0, len(s_d)), s_m, w_mc * rng.poisson(1.0, len(s_m))
                )
                for _ in range(replicas)
            ]
            entry["ks_distance"] = measurement(
                ks, float(np.std(reps, ddof=1)) if replicas > 1 else None
            )
            entry["passes"] = bool(ks < threshold)
            values.append(ks)
        out["regions"][region] = entry
    out["max_ks_distance"] = (
        measurement(max(values)) if values else undefined("no region with data and MC")
    )
    out["passes"] = bool(values) and all(v < threshold for v in values)
    return out


def add_data_mc_chi2(
    data_mc: dict[str, Any],
    events: Events,
    regions: Sequence[str],
    scale_factors: Mapping[str, float],
    cfg: Mapping[str, Any],
    data_fraction: float,
) -> None:
    """Per control region, the chi2 test of :func:`vhbb.evaluation.quality.data_mc_chi2` (data:
    the fit half, MC corrected by the scale factors and scaled to that half's share
    ``data_fraction`` of the data, one dof off for the fitted normalisation);
    ``passes_chi2``: every region's p-value above ``min_p_value``."""
    from vhbb.evaluation import quality

    ps = []
    for region in regions:
        r = events["region"] == region
        d = r & (events["role"] == "data") & events["fit_half"]
        m = r & (events["role"] != "data")
        sf = np.array([scale_factors.get(p, 1.0) for p in events["process"][m]])
        entry = data_mc["regions"].setdefault(region, {})
        entry["chi2"] = quality.data_mc_chi2(
            events["score"][d],
            events["score"][m],
            events["weight"][m] * sf * data_fraction,
            n_bins=int(cfg["bins"]),
            min_expected=float(cfg["min_expected"]),
            reference_count=float(cfg["reference_count"]),
        )
        ps.append(entry["chi2"]["p_value"]["value"])
    data_mc["min_p_value"] = float(cfg["min_p_value"])
    data_mc["passes_chi2"] = bool(ps) and all(p is not None and p > cfg["min_p_value"] for p in ps)


def upstream_warnings(weights_files: Sequence[str]) -> list[str]:
    """The warnings upstream stages in warn mode attached to their outputs (weights files)."""
    from vhbb.data.export import read_h5

    out: list[str] = []
    for path in weights_files:
        stored = read_h5(path)[1].get("warnings")  # an empty list reads back as an empty array
        out += [str(x) for x in (stored if stored is not None else [])]
    return out


def read_collapse(history_paths: Sequence[str]) -> dict[str, Any]:
    import json

    folds = []
    for k, path in enumerate(history_paths):
        hist = json.loads(Path(path).read_text())
        folds.append({"fold": k, "collapsed": bool(hist.get("collapsed", False))})
    return {"collapsed": any(f["collapsed"] for f in folds), "folds": folds}


def evaluate_variant(
    ev: Events,
    settings: Mapping[str, Any],
    *,
    signal_processes: Sequence[str],
    fit_settings: Mapping[str, Any],
    scale_factors: Mapping[str, float],
    collapsed: bool,
    seed: int,
    sees_mjj: Sequence[str] = (),
) -> dict[str, Any]:
    """All signal-region figures of one variant: bootstrap errors, the collapse verdict on
    discrimination, the fast fit and its gain over the m_jj-only baseline, the VZ verdict."""
    from vhbb.evaluation import quality

    result = sr_metrics(ev, settings)
    bootstrap(ev, settings, result, replicas=int(settings["bootstrap"]), seed=seed)
    nonres = ev["role"] == "nonresonant"
    dc = settings["dcor"]
    result["decorrelation"]["dcor2"] = dcor_sq(
        ev["score"][nonres],
        ev["m_jj"][nonres],
        ev["pos_weight"][nonres],
        max_events=int(dc["max_events"]),
        seed=seed + 1,
        replicas=int(dc["bootstrap"]),
    )
    disc = quality.discrimination(ev, settings, training_collapsed=collapsed, seed=seed + 4)
    result["discrimination"] = disc
    fast_fit = _fast_fit_of(ev, signal_processes, fit_settings, scale_factors)
    fast = fast_fit(ev["score"], ev["weight"], detail=True)
    if disc["collapsed"]:
        fast = {"significance": None, "reason": "collapsed: " + "; ".join(disc["reasons"])}
    result["significance"]["fast_fit"] = {
        **measurement(fast["significance"], None, fast["reason"] or None),
        "n_bins": int(fast.get("n_bins", 0)),
        "method": fast.get("method"),
    }
    base = settings["baseline"]
    score = ev["score"] if not disc["collapsed"] else np.full(len(ev["score"]), np.nan)
    result["baseline"] = quality.baseline_gain(
        lambda s, w: None if not np.all(np.isfinite(s)) else fast_fit(s, w),
        score,
        ev["weight"],
        replicas=int(base["bootstrap"]),
        seed=seed + 5,
    )
    vz = result["vz_peak"]
    vz.update(
        quality.vz_verdict(
            vz["with_vz"]["significance"]["value"],
            vz["without_vz"]["significance"]["value"],
            float(vz["min_significance"]),
            quality.sees_mjj(sees_mjj),
        )
    )
    return result


def _fast_fit_of(
    ev: Events,
    signal_processes: Sequence[str],
    fit_settings: Mapping[str, Any],
    scale_factors: Mapping[str, float],
) -> Any:
    """``fast_fit(score, weight)``: the fast-fit significance of these MC events with the given
    score and (reweighted) event weights; ``detail=True`` returns the whole result dict."""
    from vhbb.fit.fast_fit import fast_significance

    mc = ev["role"] != "data"
    index = {p: ev["process"] == p for p in np.unique(ev["process"][mc])}

    def fast_fit(score: np.ndarray, weight: np.ndarray, detail: bool = False) -> Any:
        per_proc = {
            p: {"m_jj": ev["m_jj"][sel], "score": score[sel], "weight": weight[sel]}
            for p, sel in index.items()
        }
        out = fast_significance(
            per_proc,
            signal=list(signal_processes),
            settings=fit_settings,
            scale_factors=scale_factors,
        )
        return out if detail else out["significance"]

    return fast_fit


def plot_data(
    ev: Events, cr_events: Events | None, result: Mapping[str, Any], settings: Mapping[str, Any]
) -> dict[str, Any]:
    """Histograms the plots need (kept small: the plot job does not reread the events)."""
    edges = np.linspace(0.0, 1.0, int(settings["plot_score_bins"]) + 1)
    out: dict[str, Any] = {"score_edges": edges.tolist(), "processes": {}, "variations": {}}
    for p in np.unique(ev["process"]):
        sel = ev["process"] == p
        h, h2 = weighted_hist(ev["score"][sel], ev["weight"][sel], edges)
        out["processes"][str(p)] = {
            "role": str(ev["role"][sel][0]),
            "sumw": h.tolist(),
            "sumw2": h2.tolist(),
        }
    mc = ev["role"] != "data"
    for var in ("score", *(k for k in ev if k.startswith("score_jes_"))):
        if var in ev:
            h, h2 = weighted_hist(ev[var][mc], ev["weight"][mc], edges)
            out["variations"][var] = {"sumw": h.tolist(), "sumw2": h2.tolist()}
    sig = ev["role"] == "signal"
    bkg = (ev["role"] == "nonresonant") | (ev["role"] == "resonant")
    try:
        fpr, tpr, _ = mt.roc_curve(sig[sig | bkg], ev["score"][sig | bkg], ev["weight"][sig | bkg])
        idx = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), 400)).astype(int))
        out["roc"] = {"fpr": fpr[idx].tolist(), "tpr": tpr[idx].tolist()}
    except DataError:
        out["roc"] = None
    nonres = ev["role"] == "nonresonant"
    mjj_edges = np.asarray(settings["mjj_edges"], dtype=np.float64)
    sc = result["sculpting"]
    quant = []
    if sc["quantile_edges"]:
        q = quantile_index(ev["score"][nonres], np.asarray(sc["quantile_edges"]))
        m, w = ev["m_jj"][nonres], ev["pos_weight"][nonres]
        for i in range(len(sc["quantile_edges"]) - 1):
            h_in, e_in = weighted_hist(m[q == i], w[q == i], mjj_edges)
            h_out, e_out = weighted_hist(m[q != i], w[q != i], mjj_edges)
            quant.append(
                {
                    "in": h_in.tolist(),
                    "in_w2": e_in.tolist(),
                    "out": h_out.tolist(),
                    "out_w2": e_out.tolist(),
                }
            )
    out["sculpting"] = {"mjj_edges": mjj_edges.tolist(), "quantiles": quant}
    vz = result.get("vz_peak", {})
    out["vz_peak"] = {
        k: {kk: vz[k].get(kk) for kk in ("edges", "content", "sumw2", "fit", "window", "sidebands")}
        for k in ("with_vz", "without_vz")
        if k in vz
    }
    if cr_events is not None:
        out["data_mc"] = {}
        for region in np.unique(cr_events["region"]):
            r = cr_events["region"] == region
            d = r & (cr_events["role"] == "data") & cr_events["fit_half"]
            m = r & (cr_events["role"] != "data")
            hd, _ = weighted_hist(cr_events["score"][d], np.ones(int(d.sum())), edges)
            hm, hm2 = weighted_hist(cr_events["score"][m], cr_events["sf_weight"][m], edges)
            out["data_mc"][str(region)] = {
                "data": hd.tolist(),
                "mc": hm.tolist(),
                "mc_w2": hm2.tolist(),
            }
    return out


def run_evaluate(
    *,
    cache_files: Mapping[str, str],
    score_files: Mapping[str, str],
    export_path: str,
    model_paths: Sequence[str],
    history_paths: Sequence[str],
    scale_factors_path: str,
    weights_files: Mapping[str, str],
    metrics_path: str,
    plot_data_path: str,
    spec: Mapping[str, Any],
    model: str,
    reweighting_files: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Evaluate one model: write ``metrics.json`` (validated) and the plot data (MC reweighted
    by the derived corrections ``reweighting_files``: name -> correctionlib file)."""
    import time

    from vhbb.core.io import write_json
    from vhbb.core.provenance import provenance
    from vhbb.core.results import read_scale_factors
    from vhbb.data.events import reweighting_entries, reweighting_warnings

    t0 = time.perf_counter()
    rew = reweighting_entries(spec, reweighting_files or {})
    settings = spec["evaluation"]
    processes = spec["processes"]
    roles = {p: v["role"] for p, v in processes.items()}
    signal = [p for p, r in roles.items() if r == "signal"]
    sr = spec["signal_region"]
    crs = list(spec["control_regions"])
    seed = int(spec["seed"])
    collapse = read_collapse(history_paths)
    sfs = read_scale_factors(scale_factors_path).values
    use_transformed = settings["positive_weight"] == "transformed"
    events, kind = load_oof_events(
        cache_files,
        score_files,
        samples=spec["samples"],
        processes=processes,
        regions=[sr, *crs],
        weights_files=list(weights_files.values()) if use_transformed else [],
        cr_data_fit_fraction=float(spec["cr_data_fit_fraction"]),
        seed=seed,
        reweighting=rew,
    )
    in_sr = (events["region"] == sr) & (events["role"] != "data")
    sr_ev = {k: v[in_sr] for k, v in events.items()}
    in_cr = np.isin(events["region"], crs)
    cr_ev = {k: v[in_cr] for k, v in events.items()}
    common = {
        "signal_processes": signal,
        "fit_settings": spec["fit"],
        "scale_factors": sfs,
        "collapsed": collapse["collapsed"],
        "sees_mjj": spec.get("features_seen") or (),
    }
    oof = evaluate_variant(sr_ev, settings, seed=seed, **common)
    oof["data_mc"] = data_mc_agreement(
        cr_ev,
        crs,
        sfs,
        float(settings["data_mc_ks_threshold"]),
        replicas=int(settings["bootstrap"]),
        seed=seed + 2,
    )
    add_data_mc_chi2(
        oof["data_mc"], cr_ev, crs, sfs, settings["data_mc"], float(spec["cr_data_fit_fraction"])
    )
    val_ev, val_info = validation_events(
        export_path,
        weights_files.get(sr) if use_transformed else None,
        model_paths,
        roles,
    )
    val = evaluate_variant(val_ev, settings, seed=seed + 3, **common)
    val["data_mc"] = {
        "threshold": float(settings["data_mc_ks_threshold"]),
        "regions": {},
        "max_ks_distance": undefined(
            "out-of-fold only: control-region data are not part of the validation events"
        ),
        "passes": None,
    }
    val["folds"] = val_info["folds"]
    flagged = kind != "transformed"
    # collapse: the training's score-spread flag, or no discrimination (either variant)
    reasons = [f"{v}: {r}" for v, var in (("out of fold", oof), ("validation", val))
               for r in var["discrimination"]["reasons"]]  # fmt: skip
    collapse["reasons"] = list(dict.fromkeys(reasons))
    collapse["collapsed"] = bool(collapse["collapsed"] or reasons)
    result = {
        "model": model,
        "method": spec.get("method"),
        "collapsed": collapse["collapsed"],
        "collapse": collapse,
        "warnings": upstream_warnings(list(weights_files.values()) if use_transformed else [])
        + reweighting_warnings(rew),
        "weights": {
            "signed": "sigma*L (yields, significance, ROC)",
            "positive": kind,
            "positive_flagged": flagged,
            "note": "distribution distances use the positive weight; |w| is a flagged fallback"
            if flagged
            else "distribution distances use the transformed weights",
        },
        "settings": dict(settings),
        "variants": {"out_of_fold": oof, "validation": val},
        "seconds": time.perf_counter() - t0,
        "provenance": provenance({"evaluation": spec}),
    }
    cr_ev["sf_weight"] = cr_ev["pos_weight"] * np.array([sfs.get(p, 1.0) for p in cr_ev["process"]])
    validate_metrics(result)
    write_json(
        plot_data_path,
        {"model": model, "method": spec.get("method"), **plot_data(sr_ev, cr_ev, oof, settings)},
    )
    write_json(metrics_path, result)
    log.info(
        "%s: AUC %.4f, Z %s, sculpting chi2/ndf %s, 1/JSD %s (%.1f s)",
        model,
        oof["separation"]["auc"]["value"] or math.nan,
        oof["significance"]["asimov"]["value"],
        oof["sculpting"]["mean"]["chi2_ndf"]["value"],
        oof["jsd"]["inverse_jsd"]["value"],
        result["seconds"],
    )
    return result


# --------------------------------------------------------------------------- schema
def validate_metrics(result: Mapping[str, Any], schema_path: Any = METRICS_SCHEMA_PATH) -> None:
    """Validate a metrics dictionary (as written: NaN -> null) against the JSON schema."""
    import json

    import jsonschema

    from vhbb.core.io import dumps

    schema = json.loads(schema_path.read_text())
    instance = json.loads(dumps(result))
    errors = sorted(
        jsonschema.Draft202012Validator(schema).iter_errors(instance),
        key=lambda e: list(e.absolute_path),
    )
    if errors:
        where = ".".join(str(p) for p in errors[0].absolute_path)
        raise DataError(f"metrics do not follow {schema_path}: at '{where}': {errors[0].message}")


def get_figure(metrics: Mapping[str, Any], variant: str, path: str) -> float | None:
    """A measurement's value by dotted path, e.g. ``significance.fast_fit``."""
    node: Any = metrics["variants"][variant]
    for key in path.split("."):
        node = node[key]
    return node["value"] if isinstance(node, Mapping) else node
