"""2D histograms in m_jj x classifier score for the signal-strength fit, and bin merging.

**Histograms.** Per region (the signal region ``export.training_region`` and the control regions
``fit.scale_factors.regions``) and per MC process, weighted 2D histograms of (m_jj, score) with
the original signed sigma*L weights and their sums of squared weights, for the nominal and the
JES-varied columns of every JES source ``s`` (variations ``jes_<s>Up`` / ``Down``: the columns
``region_jes_<s>Up``, ``m_jj_jes_<s>Up``, ``score_jes_<s>Up``; events migrate between regions)
and, per weight systematic ``<name>`` (``fit.systematics.weights``), the variations
``<name>Up`` / ``<name>Down``: the nominal regions, m_jj and score with the weight multiplied by
the cached ratio ``weight_<name>Up`` / ``weight_<name>Down`` (:func:`variations`).  Data: the
signal region only when ``blinding.enabled`` is false; the control regions
with the fit half of the data only (``cr_split == 1``, :func:`vhbb.data.export.cr_fit_half`).  MC in
the control regions is stored with sigma*L weights; the fit multiplies it by
``export.cr_data_fit_fraction``.  Values outside the edges go to the first/last bin (m_jj is
inside the preselection window, scores in [0, 1]).

**Score edges** are ``uniform`` in [0, 1] or ``quantile``: equal expected signal per score bin
(weighted quantiles of the signal-region signal score, negative weights ignored; repeated edges
dropped).

**Unrolling.** A 2D histogram (``n_mjj x n_score``) is unrolled to 1D in C order: fine bin
``i * n_score + j`` is (m_jj bin ``i``, score bin ``j``).

**Merging** (before any fit, signal region): rows of m_jj bins are grouped from low to high m_jj
until each group passes the criteria; then within each group score bins are merged from the
highest score down until each merged bin passes; a remainder that fails is added to its
neighbour.  Criteria per merged bin: total expected background ``b >= min_background`` (and
``b > 0``) and effective MC count ``(sum w)^2 / sum w^2 >= min_mc_effective`` of the
background.  The result is a ``bin_map`` (``n_mjj x n_score`` integers): merged bin of each
fine bin; merged bins are numbered in the order of their first fine bin in the unrolled order.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vhbb.core.errors import DataError
from vhbb.data import jes as jesmod

log = logging.getLogger(__name__)

NOMINAL = "nominal"
WEIGHT_SIDES = ("Up", "Down")
NOISE_GROUP = "channel_diff_sumw2"


def variations(
    weight_systematics: Sequence[str] = (), jes_sources: Sequence[str] = ()
) -> tuple[str, ...]:
    """The histogram variations: nominal, the JES ones (``jes_<source>Up``, ``Down`` per
    source), then ``<name>Up``, ``<name>Down`` per weight systematic (in the given orders)."""
    return (
        NOMINAL,
        *jesmod.jes_variations(jes_sources),
        *(f"{n}{side}" for n in weight_systematics for side in WEIGHT_SIDES),
    )


def variation_columns(variation: str, weight_systematics: Sequence[str] = ()) -> dict[str, str]:
    """The event columns a variation is filled from: ``region``, ``m_jj``, ``score`` and
    ``ratio`` (the weight-ratio column; empty for the nominal weight)."""
    for name in weight_systematics:
        for side in WEIGHT_SIDES:
            if variation == f"{name}{side}":
                ratio = f"weight_{name}{side}"
                return {"region": "region", "m_jj": "m_jj", "score": "score", "ratio": ratio}
    if variation != NOMINAL and jesmod.source_of(variation) is None:
        raise ValueError(f"unknown histogram variation '{variation}'")
    sfx = "" if variation == "nominal" else f"_{variation}"
    return {"region": f"region{sfx}", "m_jj": f"m_jj{sfx}", "score": f"score{sfx}", "ratio": ""}


# ---------------------------------------------------------------------------- edges and filling
def score_edges(score: np.ndarray, weight: np.ndarray, *, mode: str, count: int) -> np.ndarray:
    """Score bin edges in [0, 1]: ``uniform`` or ``quantile`` (equal weighted content)."""
    if count < 1:
        raise ValueError(f"score bin count must be >= 1, got {count}")
    if mode == "uniform":
        return np.linspace(0.0, 1.0, count + 1)
    if mode != "quantile":
        raise ValueError(f"score edges mode must be 'uniform' or 'quantile', got {mode!r}")
    s = np.asarray(score, dtype=np.float64)
    w = np.clip(np.asarray(weight, dtype=np.float64), 0.0, None)
    keep = np.isfinite(s) & (w > 0)
    s, w = s[keep], w[keep]
    if len(s) == 0 or w.sum() <= 0:
        log.warning("quantile score edges: no positive-weight signal; using uniform edges")
        return np.linspace(0.0, 1.0, count + 1)
    order = np.argsort(s, kind="stable")
    s, cum = s[order], np.cumsum(w[order])
    targets = cum[-1] * np.arange(1, count) / count
    inner = s[np.searchsorted(cum, targets, side="left").clip(0, len(s) - 1)]
    edges = np.unique(np.concatenate([[0.0], np.clip(inner, 0.0, 1.0), [1.0]]))
    if len(edges) < count + 1:
        log.warning(
            "quantile score edges: %d of %d bins left (repeated quantiles)", len(edges) - 1, count
        )
    return edges


def histogram2d(
    x: np.ndarray,
    y: np.ndarray,
    weight: np.ndarray,
    x_edges: np.ndarray,
    y_edges: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """``(sum w, sum w^2)`` of shape ``(len(x_edges) - 1, len(y_edges) - 1)``; flow clipped in."""
    nx, ny = len(x_edges) - 1, len(y_edges) - 1
    ix = np.clip(np.searchsorted(x_edges, x, side="right") - 1, 0, nx - 1)
    iy = np.clip(np.searchsorted(y_edges, y, side="right") - 1, 0, ny - 1)
    flat = ix * ny + iy
    w = np.asarray(weight, dtype=np.float64)
    sumw = np.bincount(flat, weights=w, minlength=nx * ny).reshape(nx, ny)
    sumw2 = np.bincount(flat, weights=w * w, minlength=nx * ny).reshape(nx, ny)
    return sumw, sumw2


# ---------------------------------------------------------------------------- containers
@dataclass(frozen=True)
class RegionHists:
    """2D histograms of one region: ``mc[process][variation] = (sumw, sumw2)``, data counts."""

    region: str
    mjj_edges: np.ndarray
    score_edges: np.ndarray
    mc: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]]
    data: np.ndarray | None
    data_label: str = ""

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.mjj_edges) - 1, len(self.score_edges) - 1

    def total(
        self, processes: Sequence[str], variation: str = "nominal"
    ) -> tuple[np.ndarray, np.ndarray]:
        w = np.zeros(self.shape)
        w2 = np.zeros(self.shape)
        for p in processes:
            a, b = self.mc[p][variation]
            w, w2 = w + a, w2 + b
        return w, w2


@dataclass(frozen=True)
class Binning:
    """The merged signal-region binning (``bin_map``) and the merging summary."""

    bin_map: np.ndarray  # (n_mjj, n_score) int
    n_bins: int
    summary: Mapping[str, Any] = field(default_factory=dict)

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Sum a fine (n_mjj, n_score) array into the merged 1D bins."""
        return np.bincount(self.bin_map.ravel(), weights=np.ravel(values), minlength=self.n_bins)


def fill_region(
    region: str,
    events: Mapping[str, Mapping[str, np.ndarray]],
    *,
    mjj_edges: np.ndarray,
    score_edges: np.ndarray,
    data_events: Mapping[str, np.ndarray] | None,
    data_label: str = "",
    weight_systematics: Sequence[str] = (),
    jes_sources: Sequence[str] | None = None,
) -> RegionHists:
    """Histograms of one region from per-process event arrays.

    ``events[process]`` holds ``weight``, and per variation ``v`` (nominal and ``jes_<s>Up`` /
    ``Down`` per JES source ``s`` of ``jes_sources``; default: the sources with both
    ``region_jes_<s>Up`` and ``Down`` columns in the events of every process) the columns
    ``region``/``m_jj``/``score`` (nominal) or ``region_<v>``/``m_jj_<v>``/``score_<v>``; per
    weight systematic ``<name>`` the ratios ``weight_<name>Up/Down``
    (:func:`variations`).  ``data_events`` holds ``region``, ``m_jj``, ``score`` of the selected
    data.
    """
    if jes_sources is None:
        jes_sources = events_jes_sources(events)
    mc: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for proc, ev in events.items():
        mc[proc] = {}
        for var in variations(weight_systematics, jes_sources):
            cols = variation_columns(var, weight_systematics)
            sel = np.asarray(ev[cols["region"]]).astype(str) == region
            weight = np.asarray(ev["weight"], dtype=np.float64)[sel]
            if cols["ratio"]:
                weight = weight * np.asarray(ev[cols["ratio"]], dtype=np.float64)[sel]
            mc[proc][var] = histogram2d(
                np.asarray(ev[cols["m_jj"]])[sel],
                np.asarray(ev[cols["score"]])[sel],
                weight,
                mjj_edges,
                score_edges,
            )
    data = None
    if data_events is not None:
        sel = np.asarray(data_events["region"]).astype(str) == region
        data, _ = histogram2d(
            np.asarray(data_events["m_jj"])[sel],
            np.asarray(data_events["score"])[sel],
            np.ones(int(sel.sum())),
            mjj_edges,
            score_edges,
        )
    return RegionHists(region, np.asarray(mjj_edges), np.asarray(score_edges), mc, data, data_label)


def events_jes_sources(events: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The JES sources whose ``region_jes_<s>Up`` / ``Down`` columns every process's events
    hold (in the first process's order)."""
    found = [jesmod.sources_in(ev, prefix="region_") for ev in events.values()]
    if not found:
        return []
    return [s for s in found[0] if all(s in f for f in found[1:])]


def region_jes_sources(rh: RegionHists) -> list[str]:
    """The JES sources of a region's histograms (``jes_<s>Up`` / ``Down`` variations of its
    first process), in order."""
    first = next(iter(rh.mc.values()), {})
    return jesmod.sources_in(first)


def channel_index(
    region: np.ndarray,
    m_jj: np.ndarray,
    score: np.ndarray,
    *,
    signal_region: str,
    control_regions: Sequence[str],
    mjj_edges: np.ndarray,
    score_edges: np.ndarray,
    binning: Binning,
) -> np.ndarray:
    """Per event its bin among the fit's channel bins: the merged signal-region bins
    (``binning``), then one bin per control region in order; -1 outside them all."""
    region = np.asarray(region).astype(str)
    out = np.full(len(region), -1, dtype=np.int64)
    in_sr = region == signal_region
    nx, ny = len(mjj_edges) - 1, len(score_edges) - 1
    ix = np.clip(np.searchsorted(mjj_edges, np.asarray(m_jj)[in_sr], side="right") - 1, 0, nx - 1)
    iy = np.clip(
        np.searchsorted(score_edges, np.asarray(score)[in_sr], side="right") - 1, 0, ny - 1
    )
    out[in_sr] = binning.bin_map[ix, iy]
    for k, cr in enumerate(control_regions):
        out[region == cr] = binning.n_bins + k
    return out


def diff_sumw2(
    nominal_bin: np.ndarray,
    varied_bin: np.ndarray,
    weight: np.ndarray,
    varied_weight: np.ndarray,
    n: int,
) -> np.ndarray:
    """The MC-noise variance of ``varied - nominal`` per bin when both are filled from the same
    events: ``sum_i (w'_i [b'_i = b] - w_i [b_i = b])^2`` (bins -1: outside every bin).  Events
    that neither move nor change weight contribute nothing."""
    w = np.asarray(weight, dtype=np.float64)
    wv = np.asarray(varied_weight, dtype=np.float64)
    inv, inn = varied_bin >= 0, nominal_bin >= 0
    same = inn & (nominal_bin == varied_bin)
    out = np.bincount(varied_bin[inv], weights=wv[inv] ** 2, minlength=n)
    out += np.bincount(nominal_bin[inn], weights=w[inn] ** 2, minlength=n)
    out -= 2.0 * np.bincount(nominal_bin[same], weights=(w * wv)[same], minlength=n)
    return np.maximum(out, 0.0)


def channel_diff_sumw2(
    events: Mapping[str, Mapping[str, np.ndarray]],
    *,
    signal_region: str,
    control_regions: Sequence[str],
    mjj_edges: np.ndarray,
    score_edges: np.ndarray,
    binning: Binning,
    weight_systematics: Sequence[str] = (),
    jes_sources: Sequence[str] = (),
) -> dict[str, dict[str, np.ndarray]]:
    """Per process and shape variation the MC-noise variance of ``varied - nominal`` on the
    fit's channel bins (:func:`channel_index`, :func:`diff_sumw2`): what pruning compares a
    variation's shape with (:func:`vhbb.stats.shapes.shape_test`)."""
    n = binning.n_bins + len(control_regions)
    where = {
        "signal_region": signal_region,
        "control_regions": control_regions,
        "mjj_edges": mjj_edges,
        "score_edges": score_edges,
        "binning": binning,
    }
    out: dict[str, dict[str, np.ndarray]] = {}
    for proc, ev in events.items():
        w = np.asarray(ev["weight"], dtype=np.float64)
        nom = channel_index(ev["region"], ev["m_jj"], ev["score"], **where)
        out[proc] = {}
        for var in variations(weight_systematics, jes_sources)[1:]:
            cols = variation_columns(var, weight_systematics)
            wv = w * np.asarray(ev[cols["ratio"]], dtype=np.float64) if cols["ratio"] else w
            vb = channel_index(ev[cols["region"]], ev[cols["m_jj"]], ev[cols["score"]], **where)
            out[proc][var] = diff_sumw2(nom, vb, w, wv, n)
    return out


# ---------------------------------------------------------------------------- merging
def _passes(b: float, b2: float, min_background: float, min_eff: float) -> bool:
    if b <= 0:
        return False
    n_eff = b * b / b2 if b2 > 0 else np.inf
    return b >= min_background and n_eff >= min_eff


def greedy_groups(
    sums: np.ndarray, sums2: np.ndarray, order: Sequence[int], min_b: float, min_eff: float
) -> list[list[int]]:
    """Group consecutive items of ``order`` so that every group passes; remainder joins the last."""
    groups: list[list[int]] = []
    cur: list[int] = []
    b = b2 = 0.0
    for i in order:
        cur.append(i)
        b += sums[i]
        b2 += sums2[i]
        if _passes(b, b2, min_b, min_eff):
            groups.append(cur)
            cur, b, b2 = [], 0.0, 0.0
    if cur:
        if groups:
            groups[-1].extend(cur)
        else:
            groups.append(cur)
    return groups


def merge_bins(
    background: np.ndarray,
    background_sumw2: np.ndarray,
    *,
    min_background: float,
    min_mc_effective: float,
) -> Binning:
    """Merged binning of a 2D background histogram (see the module docstring).

    Raises :class:`~vhbb.core.errors.DataError` when even the whole histogram fails (no background).
    """
    bkg = np.clip(np.asarray(background, dtype=np.float64), 0.0, None)
    bkg2 = np.asarray(background_sumw2, dtype=np.float64)
    nx, ny = bkg.shape
    if not _passes(float(bkg.sum()), float(bkg2.sum()), 0.0, 0.0):
        raise DataError("signal region has no positive expected background: nothing to fit")
    rows = greedy_groups(
        bkg.sum(axis=1), bkg2.sum(axis=1), range(nx), min_background, min_mc_effective
    )
    fine_map = np.full((nx, ny), -1, dtype=np.int64)
    label = 0
    for group in rows:
        cols = greedy_groups(
            bkg[group].sum(axis=0),
            bkg2[group].sum(axis=0),
            list(range(ny - 1, -1, -1)),
            min_background,
            min_mc_effective,
        )
        for col_group in cols:
            for r in group:
                fine_map[r, col_group] = label
            label += 1
    # renumber by first appearance in the unrolled (C) order
    flat = fine_map.ravel()
    _, first = np.unique(flat, return_index=True)
    order = np.argsort(first)
    relabel = np.empty(len(order), dtype=np.int64)
    relabel[order] = np.arange(len(order))
    bin_map = relabel[fine_map]
    n_bins = int(bin_map.max()) + 1
    merged_b = np.bincount(bin_map.ravel(), weights=bkg.ravel(), minlength=n_bins)
    merged_b2 = np.bincount(bin_map.ravel(), weights=bkg2.ravel(), minlength=n_bins)
    failing = [
        i
        for i in range(n_bins)
        if not _passes(merged_b[i], merged_b2[i], min_background, min_mc_effective)
    ]
    if failing:
        log.warning(
            "%d merged bins still fail the minimums (too little background in the whole region)",
            len(failing),
        )
    summary = {
        "fine_bins": nx * ny,
        "merged_bins": n_bins,
        "mjj_groups": [[int(r) for r in g] for g in rows],
        "min_background": float(min_background),
        "min_mc_effective": float(min_mc_effective),
        "min_merged_background": float(merged_b.min()),
        "min_merged_mc_effective": float(
            np.min(
                np.divide(merged_b**2, merged_b2, out=np.full(n_bins, np.inf), where=merged_b2 > 0)
            )
        ),
        "bins_failing": failing,
        "unrolling": "fine bin i_mjj * n_score + i_score (C order); merged bins numbered by "
        "their first fine bin in that order",
    }
    return Binning(bin_map, n_bins, summary)


# ---------------------------------------------------------------------------- storage
def to_hist(
    sumw: np.ndarray, sumw2: np.ndarray | None, mjj_edges: np.ndarray, score_edges: np.ndarray
) -> Any:
    """A ``hist.Hist`` (Weight storage, or Double for data) with the given contents."""
    import hist

    axes = (
        hist.axis.Variable(mjj_edges, name="m_jj", label="m_jj [GeV]", flow=False),
        hist.axis.Variable(score_edges, name="score", label="classifier score", flow=False),
    )
    if sumw2 is None:
        h = hist.Hist(*axes, storage=hist.storage.Double())
        h.view()[...] = sumw
    else:
        h = hist.Hist(*axes, storage=hist.storage.Weight())
        view = h.view()
        view.value = sumw
        view.variance = sumw2
    return h


def write_hists(
    h5_path: str | Path,
    root_path: str | Path,
    regions: Mapping[str, RegionHists],
    binning: Binning,
    attrs: Mapping[str, Any],
    channel_noise: Mapping[str, Mapping[str, np.ndarray]] | None = None,
) -> None:
    """HDF5 (``hist`` objects via uhi serialisation) and ROOT (TH2D via uproot), atomically.

    HDF5 layout: ``/{region}/{process}/{variation}``, ``/{region}/data``, ``/binning/bin_map``;
    ``/channel_diff_sumw2/{process}/{variation}`` (:func:`channel_diff_sumw2`, when given);
    attribute ``meta`` (JSON).  ROOT: ``{region}/{process}_{variation}`` and
    ``{region}/data_obs``; the merged signal-region bins as ``{region}/unrolled/...``.
    """
    import h5py
    import uhi.io.hdf5 as uhi_hdf5
    import uproot

    from vhbb.core.io import atomic_path

    with atomic_path(h5_path) as tmp:
        with h5py.File(tmp, "w") as fout:
            for region, rh in regions.items():
                grp = fout.create_group(region)
                grp.attrs["data_label"] = rh.data_label
                for proc, variations in rh.mc.items():
                    pgrp = grp.create_group(proc)
                    for var, (w, w2) in variations.items():
                        uhi_hdf5.write(
                            pgrp.create_group(var), to_hist(w, w2, rh.mjj_edges, rh.score_edges)
                        )
                if rh.data is not None:
                    uhi_hdf5.write(
                        grp.create_group("data"),
                        to_hist(rh.data, None, rh.mjj_edges, rh.score_edges),
                    )
            bgrp = fout.create_group("binning")
            bgrp.create_dataset("bin_map", data=binning.bin_map)
            bgrp.attrs["n_bins"] = binning.n_bins
            bgrp.attrs["summary"] = json.dumps(binning.summary)
            for proc, per_var in (channel_noise or {}).items():
                for var, arr in per_var.items():
                    fout.create_dataset(f"{NOISE_GROUP}/{proc}/{var}", data=arr)
            fout.attrs["meta"] = json.dumps(attrs, default=str)
    with atomic_path(root_path) as tmp:
        with uproot.recreate(tmp) as fout:
            for region, rh in regions.items():
                for proc, variations in rh.mc.items():
                    for var, (w, w2) in variations.items():
                        fout[f"{region}/{proc}_{var}"] = to_hist(
                            w, w2, rh.mjj_edges, rh.score_edges
                        )
                if rh.data is not None:
                    fout[f"{region}/data_obs"] = to_hist(
                        rh.data, None, rh.mjj_edges, rh.score_edges
                    )


def read_hists(path: str | Path) -> tuple[dict[str, RegionHists], Binning, dict[str, Any]]:
    """Read :func:`write_hists`' HDF5 back (regions, merged binning, metadata; the channel
    noise of the variations, when stored, as ``meta["channel_diff_sumw2"]``)."""
    import h5py
    import hist
    import uhi.io.hdf5 as uhi_hdf5
    from hist.serialization import from_uhi

    def load(group: Any) -> Any:
        return hist.Hist(from_uhi(uhi_hdf5.read(group)))

    regions: dict[str, RegionHists] = {}
    with h5py.File(path, "r") as fin:
        meta = json.loads(fin.attrs["meta"])
        bin_map = fin["binning/bin_map"][()]
        binning = Binning(
            bin_map,
            int(fin["binning"].attrs["n_bins"]),
            json.loads(fin["binning"].attrs["summary"]),
        )
        if NOISE_GROUP in fin:
            meta["channel_diff_sumw2"] = {
                p: {v: fin[NOISE_GROUP][p][v][()] for v in fin[NOISE_GROUP][p]}
                for p in fin[NOISE_GROUP]
            }
        for region in fin:
            if region in ("binning", NOISE_GROUP):
                continue
            grp = fin[region]
            mc: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
            data = None
            edges = None
            for name in grp:
                if name == "data":
                    data = np.asarray(load(grp[name]).values())
                    continue
                mc[name] = {}
                for var in grp[name]:
                    h = load(grp[name][var])
                    mc[name][var] = (np.asarray(h.values()), np.asarray(h.variances()))
                    edges = (h.axes[0].edges, h.axes[1].edges)
            assert edges is not None
            label = grp.attrs.get("data_label", "")
            regions[region] = RegionHists(region, edges[0], edges[1], mc, data, str(label))
    return regions, binning, meta
