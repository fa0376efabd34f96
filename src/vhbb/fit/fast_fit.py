"""The evaluation's fast fit: expected signal-region significance of one classifier from events.

:func:`fast_significance` bins the signal-region MC of a model like the signal-strength fit
(``fit.binning``: m_jj edges, score edges, bin merging; :mod:`vhbb.fit.templates`), builds the
signal-region likelihood of the ``fixed`` mode (scale factors fixed; lnN terms and
Barlow-Beeston-lite MC statistics when configured, no JES: it needs the varied scores) and returns
the Asimov (mu = 1) discovery significance.  The evaluation (:mod:`vhbb.evaluation.evaluate`)
calls it for every model and scan point; the binning scan (:mod:`vhbb.fit.binning_scan`) shares
its templates and model.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vhbb.core.errors import VhbbError
from vhbb.fit import templates as bn
from vhbb.fit.signal_fit import lnn_normsys
from vhbb.stats import likelihood as lk

log = logging.getLogger(__name__)


def signal_region_templates(
    events: Mapping[str, Mapping[str, np.ndarray]],
    *,
    signal: Sequence[str],
    mjj_edges: np.ndarray,
    score: Mapping[str, Any],
    merge: Mapping[str, Any],
    scale: Mapping[str, float] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], bn.Binning, np.ndarray]:
    """Merged signal-region templates of every process in ``events``.

    ``events[process]`` holds ``m_jj``, ``score`` and ``weight``; ``score`` is ``{mode, count}``
    of the score edges (from the signal processes' events), ``merge`` the merging minimums of
    the background; ``scale[process]`` multiplies the weights.  Returns the merged yields and
    sums of squared weights per process, the binning and the score edges.
    """
    scale = scale or {}
    procs = list(events)
    sig = [p for p in procs if p in signal]
    bkg = [p for p in procs if p not in signal]
    s_edges = bn.score_edges(
        np.concatenate([events[p]["score"] for p in sig]),
        np.concatenate([events[p]["weight"] for p in sig]),
        mode=score["mode"],
        count=int(score["count"]),
    )
    hists = {
        p: bn.histogram2d(
            events[p]["m_jj"],
            events[p]["score"],
            np.asarray(events[p]["weight"]) * scale.get(p, 1.0),
            mjj_edges,
            s_edges,
        )
        for p in procs
    }
    binning = bn.merge_bins(
        sum(hists[p][0] for p in bkg),
        sum(hists[p][1] for p in bkg),
        min_background=float(merge["min_background"]),
        min_mc_effective=float(merge["min_mc_effective"]),
    )
    nominal = {p: binning.apply(hists[p][0]) for p in procs}
    sumw2 = {p: binning.apply(hists[p][1]) for p in procs}
    return nominal, sumw2, binning, s_edges


def signal_region_model(
    nominal: Mapping[str, np.ndarray],
    sumw2: Mapping[str, np.ndarray],
    *,
    signal: Sequence[str],
    poi_bounds: Sequence[float],
    lnn: Mapping[str, Mapping[str, Any]] | None,
    stat: str | None,
) -> lk.Model:
    """One-channel (``SR``) model: ``mu`` on the signal, lnN terms, MC statistics ``stat``."""
    sig = tuple(p for p in nominal if p in signal)
    lo, hi = poi_bounds
    return lk.make_model(
        {"SR": len(next(iter(nominal.values())))},
        nominal,
        sumw2=sumw2,
        norm_factors={lk.POI: lk.NormFactor(sig, 1.0, (float(lo), float(hi)))},
        normsys=lnn_normsys(lnn, list(nominal)),
        stat=stat,
    )


def _check_events(
    events: Mapping[str, Mapping[str, np.ndarray]], signal: Sequence[str]
) -> str | None:
    """Why ``events`` cannot give a significance (None when they can)."""
    procs = list(events)
    if not procs:
        return "no signal-region MC events"
    for p in procs:
        if not np.all(np.isfinite(np.asarray(events[p]["score"], dtype=np.float64))):
            return f"non-finite scores for process '{p}'"
    sig = [p for p in procs if p in signal]
    bkg = [p for p in procs if p not in signal]
    if not sig or sum(float(np.sum(events[p]["weight"])) for p in sig) <= 0:
        return "no positive signal yield in the signal region"
    if not bkg or sum(float(np.sum(events[p]["weight"])) for p in bkg) <= 0:
        return "no positive background yield in the signal region"
    return None


def fast_significance(
    events: Mapping[str, Mapping[str, np.ndarray]],
    *,
    signal: Sequence[str],
    settings: Mapping[str, Any],
    scale_factors: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Expected (Asimov, mu = 1) discovery significance of one classifier, for scan points.

    ``events[process]`` holds the signal-region MC arrays ``m_jj``, ``score``, ``weight``
    (sigma*L); ``settings`` is the ``fit`` config section (binning, merging, systematics: lnN and
    MC statistics are included, JES is not: it needs the varied scores); the scale factors are
    fixed (``fixed`` mode).  Without nuisance parameters the closed form
    (:func:`vhbb.stats.likelihood.closed_form_asimov_z`) is used.  Never raises on bad input: a
    collapsed or empty model returns ``{"significance": None, "reason": ...}``.
    """

    def null(reason: str) -> dict[str, Any]:
        log.warning("fast significance: %s", reason)
        return {"significance": None, "reason": reason, "n_bins": 0}

    try:
        events = {p: ev for p, ev in events.items() if len(np.asarray(ev["weight"])) > 0}
        reason = _check_events(events, signal)
        if reason is not None:
            return null(reason)
        binning_cfg, syst = settings["binning"], settings["systematics"]
        nominal, sumw2, binning, _ = signal_region_templates(
            events,
            signal=signal,
            mjj_edges=np.asarray(binning_cfg["mjj_edges"], dtype=np.float64),
            score=binning_cfg["score"],
            merge=binning_cfg["merge"],
            scale=scale_factors,
        )
        stat = "profile" if syst["mc_stat"]["enabled"] else None
        model = signal_region_model(
            nominal,
            sumw2,
            signal=signal,
            poi_bounds=settings["poi_bounds"],
            lnn=syst.get("lnN"),
            stat=stat,
        )
        observed = lk.asimov(model)
        if not len(model.normsys_index) and stat is None:
            s = sum(nominal[p] for p in nominal if p in signal)
            z = lk.closed_form_asimov_z(s, observed - s)
            method = "closed form (no nuisance parameters)"
        else:
            best = lk.fit(model, observed, hesse=False, label="fast significance")
            _, z = lk.discovery_significance(model, observed, best)
            method = "profile likelihood q0 (lnN, MC stat)"
        if not math.isfinite(z):
            return null("non-finite significance")
        return {
            "significance": float(z),
            "reason": None,
            "n_bins": binning.n_bins,
            "method": method,
        }
    except (VhbbError, ValueError, FloatingPointError, np.linalg.LinAlgError) as exc:
        return null(f"{type(exc).__name__}: {exc}")
