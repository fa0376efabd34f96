"""Binning scan: expected sigma_mu and significance versus the number of 2D bins.

For each ``n`` in ``fit.binning_scan.counts`` the signal region is binned in ``n x n`` bins of
m_jj (equal width over the ``fit.binning.mjj_edges`` range) and classifier score (the
``fit.binning.score.mode`` edges with ``n`` bins), the bins are merged with the configured rule
(:func:`vhbb.fit.templates.merge_bins`), and the Asimov data set at ``mu = 1`` is fitted with the
signal-region likelihood of the ``fixed`` mode (scale factors of the control-region fit applied,
lnN terms, Barlow-Beeston-lite MC statistics; JES is left out: it needs the varied columns and
does not change where the MC statistics take over).  Each point reports the HESSE ``sigma_mu``
and the discovery significance ``sqrt(q0)``, with and without the MC-statistics terms: finer bins
gain until the MC-statistics terms eat the gain; the difference of the two curves shows where.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vhbb.core.io import write_json
from vhbb.core.provenance import provenance
from vhbb.core.results import read_scale_factors
from vhbb.data.events import read_events
from vhbb.fit.fast_fit import signal_region_model, signal_region_templates
from vhbb.stats import likelihood as lk

log = logging.getLogger(__name__)


def scan_point(
    events: Mapping[str, Mapping[str, np.ndarray]],
    *,
    signal: Sequence[str],
    n_mjj: int,
    n_score: int,
    mjj_range: tuple[float, float],
    score_mode: str,
    merge: Mapping[str, float],
    lnn: Mapping[str, Mapping[str, Any]] | None = None,
    poi_bounds: tuple[float, float] = (-20.0, 20.0),
) -> dict[str, Any]:
    """sigma_mu and Z (Asimov) for one ``n_mjj x n_score`` binning, with and without MC stat."""
    events = {p: ev for p, ev in events.items() if len(ev["weight"])}
    nominal, sumw2, binning, s_edges = signal_region_templates(
        events,
        signal=signal,
        mjj_edges=np.linspace(mjj_range[0], mjj_range[1], n_mjj + 1),
        score={"mode": score_mode, "count": n_score},
        merge=merge,
    )
    out: dict[str, Any] = {
        "n_mjj": n_mjj,
        "n_score": len(s_edges) - 1,
        "fine_bins": n_mjj * (len(s_edges) - 1),
        "merged_bins": binning.n_bins,
    }
    for key, stat in (("", "profile"), ("_no_mc_stat", None)):
        model = signal_region_model(
            nominal, sumw2, signal=signal, poi_bounds=poi_bounds, lnn=lnn, stat=stat
        )
        asimov = lk.asimov(model)
        try:
            best = lk.fit(model, asimov, label=f"binning {n_mjj}x{n_score}")
            _, z = lk.discovery_significance(model, asimov, best)
            out[f"sigma_mu{key}"] = best.error(lk.POI)
            out[f"significance{key}"] = z
        except lk.FitError as exc:
            log.warning("binning %dx%d: %s", n_mjj, n_score, exc)
            out[f"sigma_mu{key}"] = out[f"significance{key}"] = None
    s = sum(nominal[p] for p in nominal if p in signal)
    out["closed_form_significance_no_syst"] = lk.closed_form_asimov_z(s, lk.asimov(model) - s)
    return out


def scan(
    events: Mapping[str, Mapping[str, np.ndarray]],
    counts: Sequence[int],
    *,
    signal: Sequence[str],
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    """The scan over ``counts`` (``n x n`` bins each); ``settings`` is the ``fit`` section."""
    binning = settings["binning"]
    edges = binning["mjj_edges"]
    points = []
    for n in counts:
        point = scan_point(
            events,
            signal=signal,
            n_mjj=int(n),
            n_score=int(n),
            mjj_range=(float(edges[0]), float(edges[-1])),
            score_mode=binning["score"]["mode"],
            merge=binning["merge"],
            lnn=settings["systematics"].get("lnN"),
            poi_bounds=tuple(settings["poi_bounds"]),  # type: ignore[arg-type]
        )
        log.info(
            "binning %dx%d -> %d merged: sigma_mu %.4g (no MC stat %.4g), Z %.3g",
            point["n_mjj"],
            point["n_score"],
            point["merged_bins"],
            point["sigma_mu"] or math.nan,
            point["sigma_mu_no_mc_stat"] or math.nan,
            point["significance"] or math.nan,
        )
        points.append(point)
    good = [p for p in points if p["significance"] is not None]
    best = max(good, key=lambda p: p["significance"]) if good else None
    return {
        "points": points,
        "best": best,
        "mc_stat_loss": [
            None
            if p["significance"] is None or not p["significance_no_mc_stat"]
            else 1.0 - p["significance"] / p["significance_no_mc_stat"]
            for p in points
        ],
    }


def read_signal_region(
    cache_files: Mapping[str, str],
    score_files: Mapping[str, str],
    spec: Mapping[str, Any],
    scale_factors: Mapping[str, float],
) -> dict[str, dict[str, np.ndarray]]:
    """Signal-region MC events (m_jj, score, weight times the CR scale factor) per process."""
    samples, processes = spec["samples"], spec["processes"]
    sr = spec["signal_region"]
    parts: dict[str, list[dict[str, np.ndarray]]] = {}
    for sample, cache_path in cache_files.items():
        proc = samples[sample]["process"]
        if processes[proc]["role"] == "data":
            continue
        ev = read_events(cache_path, score_files[sample], sample, True, jes=False)  # nominal
        sel = ev["region"] == sr
        parts.setdefault(proc, []).append(
            {
                "m_jj": ev["m_jj"][sel],
                "score": ev["score"][sel],
                "weight": ev["weight"][sel] * scale_factors.get(proc, 1.0),
            }
        )
    return {p: {k: np.concatenate([d[k] for d in v]) for k in v[0]} for p, v in parts.items()}


def run_binning_scan(
    cache_files: Mapping[str, str],
    score_files: Mapping[str, str],
    sf_path: str,
    *,
    json_path: str,
    spec: Mapping[str, Any],
) -> dict[str, Any]:
    """Rule driver: read the signal-region MC, scan, write the JSON (drawn by the rule
    ``binning_scan_plot``, :func:`vhbb.fit.figures.run_binning_scan_plot`)."""
    sf = read_scale_factors(sf_path)
    events = read_signal_region(cache_files, score_files, spec, sf.values)
    signal = [p for p, v in spec["processes"].items() if v["role"] == "signal"]
    result = scan(events, spec["counts"], signal=signal, settings=spec["fit"])
    doc = {
        "model": spec["model"],
        **result,
        "method": __doc__.split("\n\n", 1)[1].strip() if __doc__ else "",
        "provenance": provenance(dict(spec)),
    }
    write_json(json_path, doc)
    return doc
