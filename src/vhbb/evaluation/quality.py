"""Model-quality figures a referee asks for: collapse judged on discrimination, the gain over the
m_jj-only baseline, a data/MC test with statistical meaning, and the VZ-peak verdict.

* **Collapse** (:func:`discrimination`): the weighted ROC AUC over the signal region and inside
  each m_jj slice (``evaluation.collapse.mjj_slices``), with bootstrap errors, and the
  class-balanced cross-entropy of the score against the class prior (``ln 2``).  A model is
  collapsed when no AUC (overall or in any slice) reaches ``evaluation.collapse.min_auc``, or
  when its cross-entropy is no better than the prior; the training's score-spread flag stays as
  one more reason.
* **Baseline** (:func:`baseline_gain`): the fast-fit significance of a constant score is the
  significance of a fit in m_jj alone.  Every model reports its gain over it with the error of a
  paired bootstrap: the same Poisson(1) event multiplicities reweight model and baseline, so the
  error is that of the difference, not of either figure.
* **Data/MC** (:func:`data_mc_chi2`): per control region, Pearson's chi2 of the pseudo-data score
  histogram (the fit half: the data the scale factors were fitted on) against the
  scale-factor-corrected MC, with the MC statistical variance added; score bins are merged from
  the top until each has at least ``min_expected`` expected events; one degree of freedom per
  region is taken off for its fitted normalisation.  ``chi2_ndf_ref`` (chi2/ndf at a reference
  data count) is the effect size that does not grow with the count.
* **VZ peak** (:func:`vz_verdict`): ``visible`` means a significant excess over the sideband fit
  *with* VZ in the highest score quantile and none *without* it.  For a model that sees m_jj
  the test does not apply: ``null`` with the reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from vhbb.core.errors import DataError
from vhbb.evaluation.measurements import measurement
from vhbb.stats import metrics as mt
from vhbb.stats.histograms import weighted_hist

#: Training features that hand the classifier m_jj itself (the VZ test does not apply).  pT_jj
#: and dR_jj only approximate it (m_jj ~ pT_jj dR_jj / 2): a model seeing them can still
#: sculpt a fake peak, which is what the test is there to catch.
MJJ_FEATURES = ("m_jj",)


# --------------------------------------------------------------------------- collapse
def class_balanced_bce(y: np.ndarray, score: np.ndarray, weight: np.ndarray) -> float:
    """Weighted cross-entropy with each class normalised to half the total weight.

    The class prior is then 1/2 and the prior's cross-entropy ``ln 2``.
    """
    y = np.asarray(y, bool)
    w = np.clip(np.asarray(weight, dtype=np.float64), 0.0, None)
    ws, wb = w[y].sum(), w[~y].sum()
    if ws <= 0 or wb <= 0:
        raise DataError("cross-entropy: a class has no positive weight")
    wn = np.where(y, 0.5 * w / ws, 0.5 * w / wb)
    p = np.clip(np.asarray(score, dtype=np.float64), 1e-7, 1 - 1e-7)
    return float(-np.sum(wn * np.where(y, np.log(p), np.log1p(-p))))


def _auc_with_error(
    y: np.ndarray, score: np.ndarray, w: np.ndarray, replicas: int, rng: np.random.Generator
) -> dict[str, Any]:
    try:
        central = mt.roc_auc(y, score, w)
    except (DataError, ValueError) as exc:
        return measurement(None, None, str(exc))
    reps = []
    for _ in range(replicas):
        f = rng.poisson(1.0, len(w))
        try:
            reps.append(mt.roc_auc(y, score, w * f))
        except (DataError, ValueError):
            continue
    err = float(np.std(reps, ddof=1)) if len(reps) > 1 else None
    return measurement(central, err)


def discrimination(
    ev: Mapping[str, np.ndarray],
    settings: Mapping[str, Any],
    *,
    training_collapsed: bool,
    seed: int,
) -> dict[str, Any]:
    """AUC overall and in m_jj slices, cross-entropy vs the prior, and the collapse verdict."""
    cfg = settings["collapse"]
    min_auc = float(cfg["min_auc"])
    replicas = int(settings["bootstrap"])
    rng = np.random.default_rng(seed)
    role = ev["role"]
    sig = role == "signal"
    sb = sig | (role == "nonresonant") | (role == "resonant")
    y, s, w, m = sig[sb], ev["score"][sb], ev["weight"][sb], ev["m_jj"][sb]
    overall = _auc_with_error(y, s, w, replicas, rng)
    slices = []
    for lo, hi in cfg["mjj_slices"]:
        inside = (m >= lo) & (m < hi)
        entry = {"mjj": [float(lo), float(hi)], "n_signal": int((inside & y).sum())}
        entry["auc"] = _auc_with_error(y[inside], s[inside], w[inside], replicas, rng)
        slices.append(entry)
    try:
        bce = class_balanced_bce(y, s, ev["pos_weight"][sb])
    except DataError as exc:
        bce = None
        bce_reason = str(exc)
    else:
        bce_reason = None
    prior = math.log(2.0)
    aucs = [overall["value"]] + [e["auc"]["value"] for e in slices]
    defined = [a for a in aucs if a is not None]
    reasons = []
    if training_collapsed:
        reasons.append("score spread below the training's collapse threshold")
    if not defined or max(defined) < min_auc:
        best = "undefined" if not defined else f"{max(defined):.3f}"
        reasons.append(f"no AUC (overall or in an m_jj slice) reaches {min_auc:g} (best {best})")
    if bce is not None and bce >= prior:
        reasons.append(f"cross-entropy {bce:.4f} no better than the class prior ln 2 = {prior:.4f}")
    return {
        "min_auc": min_auc,
        "auc": overall,
        "mjj_slices": slices,
        "cross_entropy": measurement(bce, None, bce_reason),
        "prior_cross_entropy": prior,
        "collapsed": bool(reasons),
        "reasons": reasons,
    }


# --------------------------------------------------------------------------- baseline
def baseline_gain(
    fast_fit: Callable[[np.ndarray, np.ndarray], float | None],
    score: np.ndarray,
    weight: np.ndarray,
    *,
    replicas: int,
    seed: int,
) -> dict[str, Any]:
    """Fast-fit Z of the model and of a constant score (m_jj only), and the paired gain.

    ``fast_fit(score, weight)`` returns the significance (None when undefined).  The same
    ``replicas`` Poisson(1) multiplicity vectors reweight both; the gain's error is the spread of
    the replica differences.
    """
    constant = np.full(len(score), 0.5)
    z_model = fast_fit(score, weight)
    z_base = fast_fit(constant, weight)
    out: dict[str, Any] = {
        "baseline": measurement(
            z_base, None, None if z_base is not None else "baseline fit failed"
        ),
        "replicas": int(replicas),
    }
    if z_model is None or z_base is None:
        reason = "model fast fit undefined" if z_model is None else "baseline fit failed"
        out["gain"] = measurement(None, None, reason)
        out["gain_significance"] = measurement(None, None, reason)
        return out
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(replicas):
        f = rng.poisson(1.0, len(weight)).astype(np.float64)
        zm, zb = fast_fit(score, weight * f), fast_fit(constant, weight * f)
        if zm is not None and zb is not None:
            diffs.append(zm - zb)
    gain = z_model - z_base
    err = float(np.std(diffs, ddof=1)) if len(diffs) > 1 else None
    out["gain"] = measurement(gain, err)
    out["gain_significance"] = (
        measurement(gain / err) if err else measurement(None, None, "no bootstrap error")
    )
    out["replicas_used"] = len(diffs)
    return out


# --------------------------------------------------------------------------- data / MC
def merge_from_top(expected: np.ndarray, minimum: float) -> list[list[int]]:
    """Groups of adjacent bins, from the highest down, each with ``expected >= minimum``.

    A remainder that does not reach the minimum joins the last group.
    """
    groups: list[list[int]] = []
    current: list[int] = []
    total = 0.0
    for i in range(len(expected) - 1, -1, -1):
        current.append(i)
        total += float(expected[i])
        if total >= minimum:
            groups.append(sorted(current))
            current, total = [], 0.0
    if current:
        if groups:
            groups[-1] = sorted(groups[-1] + current)
        else:
            groups.append(sorted(current))
    return groups


def data_mc_chi2(
    data_score: np.ndarray,
    mc_score: np.ndarray,
    mc_weight: np.ndarray,
    *,
    n_bins: int,
    min_expected: float,
    reference_count: float,
    fitted_parameters: int = 1,
) -> dict[str, Any]:
    """Pearson chi2 of data against MC (MC variance included) on merged score bins."""
    from vhbb.stats.metrics import chi2_prob

    edges = np.linspace(0.0, 1.0, n_bins + 1)
    d, _ = weighted_hist(data_score, np.ones(len(data_score)), edges)
    m, m2 = weighted_hist(mc_score, mc_weight, edges)
    groups = merge_from_top(m, min_expected)
    dg = np.array([d[g].sum() for g in groups])
    mg = np.array([m[g].sum() for g in groups])
    m2g = np.array([m2[g].sum() for g in groups])
    ndf = len(groups) - int(fitted_parameters)
    out: dict[str, Any] = {
        "n_data": len(data_score),
        "n_bins": len(groups),
        "ndf": ndf,
        "expected": float(m.sum()),
    }
    if ndf < 1 or np.any(mg <= 0):
        reason = "too few merged bins" if ndf < 1 else "a merged bin has no positive MC"
        for key in ("chi2", "p_value", "chi2_ndf", "chi2_ndf_ref"):
            out[key] = measurement(None, None, reason)
        return out
    chi2 = float(np.sum((dg - mg) ** 2 / (mg + m2g)))
    p = chi2_prob(chi2, ndf) if ndf > 0 else float("nan")
    n = float(len(data_score))
    ref = 1.0 + (chi2 - ndf) / ndf * reference_count / n if n > 0 else None
    out.update(
        {
            "chi2": measurement(chi2),
            "p_value": measurement(p),
            "chi2_ndf": measurement(chi2 / ndf),
            "chi2_ndf_ref": measurement(ref),
        }
    )
    return out


# --------------------------------------------------------------------------- VZ
def sees_mjj(features: Sequence[str] | None) -> list[str]:
    """The model's training features from which it can learn m_jj."""
    return [f for f in (features or ()) if f in MJJ_FEATURES]


def vz_verdict(
    z_with: float | None, z_without: float | None, min_significance: float, seen: Sequence[str]
) -> dict[str, Any]:
    """``visible``: a significant excess with VZ and none without; null where not applicable."""
    if seen:
        reason = f"the model sees {', '.join(seen)}: a peak in m_jj does not test sculpting"
        return {
            "visible": None,
            "disappears_without_vz": None,
            "applicable": False,
            "reason": reason,
        }
    with_ok = z_with is not None and z_with >= min_significance
    gone = z_without is None or z_without < min_significance
    return {
        "visible": bool(with_ok and gone),
        "disappears_without_vz": bool(gone),
        "applicable": True,
        "reason": None
        if with_ok and gone
        else ("no significant excess with VZ" if not with_ok else "the excess stays without VZ"),
    }
