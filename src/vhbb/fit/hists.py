"""The 2D-histogram stage of the signal-strength fit (rule ``hists``).

Reads the cached events joined with a model's scores (:func:`vhbb.data.events.read_events`),
fills the m_jj x score histograms of the signal region and the control regions, merges the
signal-region bins and writes ``hists.h5``/``hists.root`` (:func:`vhbb.fit.templates.write_hists`)
and ``binning.json`` (the edges, the merging summary and the yields).  The histogram content,
edges and merging are documented in :mod:`vhbb.fit.templates`.  The weight systematics
histogrammed (``fit.systematics.weights``: ``auto`` or a list,
:func:`resolve_weight_systematics`) are listed in the metadata (``weight_systematics``), and so
are the JES sources of the caches (``jes_sources``, :func:`common_jes_sources`: every MC cache
must have the same); the fit turns each into a shape nuisance.

The figures (templates, stacked data/MC per region) are drawn by the rule ``hists_plots``
(:func:`vhbb.fit.figures.run_hists_plots`) from ``hists.h5`` and ``plot_data.h5``: while blinding is
enabled the signal-region data are not in ``hists.h5``, and the plots show them outside the m_jj
window only.  ``plot_data.h5`` (rule ``hists_plot_data``: :func:`vhbb.ml.scoring.sideband_scores`
and :func:`write_plot_data`; its params hold the window) holds those signal-region data events
outside the window (``m_jj`` and ``score`` only): a window change reruns that small job and the
figures, not the histograms.  The scores files hold no score of signal-region data while
blinded.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vhbb.core.errors import ConfigError, InputError
from vhbb.core.io import atomic_path, write_json
from vhbb.core.provenance import provenance
from vhbb.data.events import (
    jes_sources,
    read_events,
    reweighting_entries,
    reweighting_warnings,
    weight_variations,
)
from vhbb.fit import templates as bn
from vhbb.fit.templates import RegionHists

log = logging.getLogger(__name__)

PLOT_COLUMNS = ("m_jj", "score")


RESERVED_NAMES = ("mu", "jes")
RESERVED_PREFIXES = ("jes_", "sf_", "gamma_", "staterror_")


def resolve_weight_systematics(
    setting: str | Sequence[str], available: Mapping[str, Sequence[str]]
) -> list[str]:
    """The weight systematics to histogram from ``fit.systematics.weights``.

    ``available[sample]`` are the weight systematics of each MC cache (names with both
    ``weight_<name>Up`` and ``Down`` columns).  ``"auto"``: the names present in **every** MC
    cache, sorted (a name in only some caches is left out with a warning); a list: those names,
    in order, each required in every MC cache (else :class:`~vhbb.core.errors.InputError`).
    Names that would clash with other fit parameters raise
    :class:`~vhbb.core.errors.ConfigError`.
    """
    sets = {sample: set(names) for sample, names in available.items()}
    common = set.intersection(*sets.values()) if sets else set()
    if setting == "auto":
        partial = sorted(set().union(*sets.values()) - common) if sets else []
        if partial:
            log.warning(
                "weight systematics %s are not in every MC cache: left out of the fit",
                ", ".join(partial),
            )
        names = sorted(common)
    elif isinstance(setting, str):
        raise ConfigError(
            f"config error at 'fit.systematics.weights': 'auto' or a list of names, got {setting!r}"
        )
    else:
        names = list(setting)
        for name in names:
            lacking = sorted(s for s, have in sets.items() if name not in have)
            if lacking:
                raise InputError(
                    f"weight systematic '{name}' (fit.systematics.weights): no columns "
                    f"weight_{name}Up/Down in the cache of {', '.join(lacking)}"
                )
    bad = [n for n in names if n in RESERVED_NAMES or n.startswith(RESERVED_PREFIXES)]
    if bad:
        raise ConfigError(
            f"config error at 'fit.systematics.weights': the weight systematic(s) "
            f"{', '.join(bad)} clash with fit parameter names (mu, jes, jes_*, sf_*, gamma_*, "
            "staterror_*); rename the weight_<name>Up/Down columns or list other names"
        )
    return names


def available_weight_systematics(
    cache_files: Mapping[str, str], spec: Mapping[str, Any]
) -> dict[str, list[str]]:
    """The weight systematics of each MC sample's cache (from the parquet schema)."""
    samples, processes = spec["samples"], spec["processes"]
    return {
        sample: weight_variations(path)
        for sample, path in cache_files.items()
        if processes[samples[sample]["process"]]["role"] != "data"
    }


def common_jes_sources(cache_files: Mapping[str, str], spec: Mapping[str, Any]) -> list[str]:
    """The JES sources of the MC caches (their metadata, :func:`vhbb.data.events.jes_sources`);
    caches that differ are a :class:`~vhbb.core.errors.DataError`."""
    from vhbb.data.export import common_jes_sources as common

    samples, processes = spec["samples"], spec["processes"]
    return common(
        {
            sample: jes_sources(path)
            for sample, path in cache_files.items()
            if processes[samples[sample]["process"]]["role"] != "data"
        }
    )


def read_samples(
    cache_files: Mapping[str, str],
    score_files: Mapping[str, str],
    spec: Mapping[str, Any],
    weight_systematics: Sequence[str] = (),
    reweighting: Sequence[Mapping[str, Any]] = (),
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray] | None]:
    """MC events per process (samples of one process concatenated, with the ratio columns of
    ``weight_systematics``) and the data events with their ``fit_half`` flag (``cr_split ==
    1``); data None without data samples."""
    from vhbb.data.export import cr_fit_half

    samples, processes = spec["samples"], spec["processes"]
    fraction = float(spec["cr_data_fit_fraction"])
    mc_events: dict[str, dict[str, list[np.ndarray]]] = {}
    data_parts: list[dict[str, np.ndarray]] = []
    for sample, cache_path in cache_files.items():
        proc = samples[sample]["process"]
        is_mc = processes[proc]["role"] != "data"
        ev = read_events(
            cache_path,
            score_files[sample],
            sample,
            is_mc,
            weight_systematics if is_mc else (),
            reweighting=reweighting,
            process=proc,
        )
        if is_mc:
            bucket = mc_events.setdefault(proc, {})
            for k, v in ev.items():
                bucket.setdefault(k, []).append(v)
        else:
            ev["fit_half"] = cr_fit_half(
                sample, ev["run"], ev["luminosityBlock"], ev["event"], fraction, spec["seed"]
            )
            data_parts.append(ev)
    mc = {p: {k: np.concatenate(v) for k, v in cols.items()} for p, cols in mc_events.items()}
    for p in mc_processes(spec):
        if p not in mc:
            raise InputError(f"no sample provides MC process '{p}'")
    data = (
        {k: np.concatenate([d[k] for d in data_parts]) for k in data_parts[0]}
        if data_parts
        else None
    )
    return mc, data


def mc_processes(spec: Mapping[str, Any]) -> list[str]:
    return [p for p, v in spec["processes"].items() if v["role"] != "data"]


def signal_processes(spec: Mapping[str, Any]) -> list[str]:
    return [p for p in mc_processes(spec) if spec["processes"][p]["role"] == "signal"]


def fill_regions(
    mc: Mapping[str, Mapping[str, np.ndarray]],
    data: Mapping[str, np.ndarray] | None,
    *,
    signal_region: str,
    control_regions: Sequence[str],
    mjj_edges: np.ndarray,
    score_edges: np.ndarray,
    blinded: bool,
    weight_systematics: Sequence[str] = (),
    jes_sources: Sequence[str] | None = None,
) -> dict[str, RegionHists]:
    """Histograms of the signal region (data only when unblinded) and the control regions (the
    fit half of the data); MC with the variations of ``jes_sources`` (default: found in the
    events' columns) and ``weight_systematics`` too."""

    def data_columns(select: np.ndarray | None) -> dict[str, np.ndarray] | None:
        if data is None:
            return None
        return {
            k: data[k] if select is None else data[k][select] for k in ("region", *PLOT_COLUMNS)
        }

    sr_data = None if blinded else data_columns(None)
    regions = {
        signal_region: bn.fill_region(
            signal_region,
            mc,
            mjj_edges=mjj_edges,
            score_edges=score_edges,
            data_events=sr_data,
            data_label="data" if sr_data is not None else "",
            weight_systematics=weight_systematics,
            jes_sources=jes_sources,
        )
    }
    cr_data = None if data is None else data_columns(data["fit_half"])
    for cr in control_regions:
        regions[cr] = bn.fill_region(
            cr,
            mc,
            mjj_edges=mjj_edges,
            score_edges=score_edges,
            data_events=cr_data,
            data_label="data, fit half (cr_split == 1)",
            weight_systematics=weight_systematics,
            jes_sources=jes_sources,
        )
    return regions


def signal_score_edges(
    mc: Mapping[str, Mapping[str, np.ndarray]],
    signal: Sequence[str],
    signal_region: str,
    score: Mapping[str, Any],
) -> np.ndarray:
    """Score edges (``fit.binning.score``) from the signal-region signal MC."""
    sel = [mc[p]["region"] == signal_region for p in signal]
    return bn.score_edges(
        np.concatenate([mc[p]["score"][s] for p, s in zip(signal, sel, strict=True)]),
        np.concatenate([mc[p]["weight"][s] for p, s in zip(signal, sel, strict=True)]),
        mode=score["mode"],
        count=int(score["count"]),
    )


def outside_window(m_jj: np.ndarray, window: Sequence[float]) -> np.ndarray:
    """Events outside the blinding window ``[low, high)`` (the figures' convention)."""
    m = np.asarray(m_jj, dtype=np.float64)
    return (m < float(window[0])) | (m >= float(window[1]))


def write_plot_data(
    path: str,
    data: Mapping[str, np.ndarray] | None,
    signal_region: str,
    blinded: bool,
    window: Sequence[float],
) -> None:
    """``plot_data.h5``: the signal-region data events of the blinded figures, **outside the
    m_jj window only** (the blinded events reach no file); attributes ``has_data``,
    ``blinded`` and ``window``."""
    import h5py

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as fout:
        fout.attrs["has_data"] = data is not None
        fout.attrs["blinded"] = bool(blinded)
        fout.attrs["window"] = np.asarray(window, dtype=np.float64)
        if blinded and data is not None:
            sel = (data["region"] == signal_region) & outside_window(data["m_jj"], window)
            grp = fout.create_group("signal_region_data")
            for key in PLOT_COLUMNS:
                grp.create_dataset(key, data=np.asarray(data[key])[sel])


def read_plot_data(path: str) -> dict[str, np.ndarray] | None:
    """The signal-region data events of :func:`write_plot_data` (None when not stored)."""
    import h5py

    with h5py.File(path, "r") as fin:
        if "signal_region_data" not in fin:
            return None
        return {k: fin["signal_region_data"][k][()] for k in PLOT_COLUMNS}


def run_hists(
    cache_files: Mapping[str, str],
    score_files: Mapping[str, str],
    *,
    h5_path: str,
    root_path: str,
    binning_json: str,
    spec: Mapping[str, Any],
    reweighting_files: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Rule driver: read the events, fill and merge the histograms of one model, write them
    (MC reweighted by the derived corrections ``reweighting_files``: name -> correctionlib file)."""
    settings = spec["binning"]
    sr, crs = spec["signal_region"], list(spec["control_regions"])
    blinded = bool(spec["blinding"]["enabled"])
    rew = reweighting_entries(spec, reweighting_files or {})
    available = available_weight_systematics(cache_files, spec)
    for names in available.values():  # a derived reweighting's nuisance is in every MC sample
        names.extend(e["name"] for e in rew if e["uncertainty"])
    weights = resolve_weight_systematics(spec.get("weight_systematics", "auto"), available)
    sources = common_jes_sources(cache_files, spec)
    mc, data = read_samples(cache_files, score_files, spec, weights, rew)
    procs, signal = mc_processes(spec), signal_processes(spec)
    background = [p for p in procs if p not in signal]
    mjj_edges = np.asarray(settings["mjj_edges"], dtype=np.float64)
    s_edges = signal_score_edges(mc, signal, sr, settings["score"])
    where: dict[str, Any] = {
        "signal_region": sr,
        "control_regions": crs,
        "mjj_edges": mjj_edges,
        "score_edges": s_edges,
        "weight_systematics": weights,
        "jes_sources": sources,
    }
    regions = fill_regions(mc, data, blinded=blinded, **where)
    b, b2 = regions[sr].total(background)
    binning = bn.merge_bins(
        b,
        b2,
        min_background=float(settings["merge"]["min_background"]),
        min_mc_effective=float(settings["merge"]["min_mc_effective"]),
    )
    meta = {
        "model": spec["model"],
        "signal_region": sr,
        "control_regions": crs,
        "mc_processes": procs,
        "signal_processes": signal,
        "cr_data_fit_fraction": float(spec["cr_data_fit_fraction"]),
        "blinded": blinded,
        "weight_systematics": weights,
        "jes_sources": sources,
        "reweighting": [e["name"] for e in rew],
        "warnings": reweighting_warnings(rew),
        "score_edges_mode": settings["score"]["mode"],
        "provenance": provenance(dict(spec)),
    }
    noise = bn.channel_diff_sumw2(mc, binning=binning, **where)  # what pruning compares with
    bn.write_hists(h5_path, root_path, regions, binning, meta, channel_noise=noise)
    summary = {
        **meta,
        "mjj_edges": mjj_edges.tolist(),
        "score_edges": s_edges.tolist(),
        "merging": dict(binning.summary),
        "bin_map": binning.bin_map.tolist(),
        "yields": {
            r: {p: float(rh.mc[p]["nominal"][0].sum()) for p in procs}
            | ({"data": float(rh.data.sum())} if rh.data is not None else {})
            for r, rh in regions.items()
        },
    }
    write_json(binning_json, summary)
    log.info("%s: %d -> %d signal-region bins", spec["model"], b.size, binning.n_bins)
    return summary
