"""Plots of the workflow (matplotlib with the Agg backend and the mplhep CMS style).

matplotlib and mplhep are imported inside the functions, so importing :mod:`vhbb` stays light.
Every function writes one figure atomically (via :func:`vhbb.core.io.atomic_path`) and closes it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vhbb.core.io import atomic_path
from vhbb.stats.results import RegionHistogram, ScaleFactorFit

log = logging.getLogger(__name__)

AXIS_LABELS = {
    "m_jj": r"$m_{jj}$ [GeV]",
    "pt_jj": r"$p_{T}^{jj}$ [GeV]",
    "met_pt": r"$p_{T}^{miss}$ [GeV]",
    "dphi_jj_met": r"$\Delta\phi(jj, p_{T}^{miss})$",
    "j1_pt": r"leading jet $p_{T}$ [GeV]",
    "j2_pt": r"subleading jet $p_{T}$ [GeV]",
    "btag_max": "max b-tag score",
    "btag_min": "min b-tag score",
    "dr_jj": r"$\Delta R(j_1, j_2)$",
    "deta_jj": r"$|\Delta\eta(j_1, j_2)|$",
    "n_add_jets": "additional jets",
    "add_jet_max_pt": r"max additional-jet $p_{T}$ [GeV]",
    "min_dphi_jet_met": r"min $\Delta\phi(j, p_{T}^{miss})$",
    "pt_balance": r"$p_{T}^{jj} / p_{T}^{miss}$",
    "soft_activity": "soft-activity jets",
}


def axis_label(name: str) -> str:
    return AXIS_LABELS.get(name, name)


def draw_mc_stack(
    ax: Any,
    edges: np.ndarray,
    mc: Mapping[str, np.ndarray],
    mc_err: np.ndarray,
    styles: Mapping[str, Mapping[str, Any]],
) -> np.ndarray:
    """Stack the MC processes (smallest at the bottom; negative bins drawn at 0) with a hatched
    MC-statistics band; return the total MC per bin.  Shared by every stacked data/MC plot."""
    import mplhep

    order = sorted((p for p in mc if np.any(mc[p] != 0)), key=lambda p: float(np.sum(mc[p])))
    total = np.sum([mc[p] for p in mc], axis=0) if mc else np.zeros(len(edges) - 1)
    if order:
        mplhep.histplot(
            [np.clip(mc[p], 0, None) for p in order],
            edges,
            stack=True,
            histtype="fill",
            label=[styles.get(p, {}).get("label") or p for p in order],
            color=[styles.get(p, {}).get("color") or f"C{i}" for i, p in enumerate(order)],
            ax=ax,
        )
    ax.stairs(
        total + mc_err,
        edges,
        baseline=total - mc_err,
        fill=True,
        hatch="////",
        facecolor="none",
        edgecolor="0.3",
        linewidth=0,
        label="MC stat. unc.",
    )
    return total


def pyplot() -> Any:
    """matplotlib.pyplot with the Agg backend and the mplhep CMS style."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mplhep

    plt.style.use(mplhep.style.CMS)
    return plt


def save(fig: Any, path: str | Path, tight: bool = True) -> None:
    """Write ``fig`` atomically (format from the suffix, 100 dpi) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fmt = path.suffix.lstrip(".") or "png"
    with atomic_path(path) as tmp:  # a tight bounding box costs one more rendering
        fig.savefig(tmp, format=fmt, dpi=100, bbox_inches="tight" if tight else None)
    plt.close(fig)
    log.debug("wrote %s", path)


def cms_label(ax: Any, lumi: float | None) -> None:
    """CMS-style header (drawn as plain text: mplhep's label re-renders the figure, ~1 s)."""
    ax.text(
        0.0,
        1.01,
        "CMS",
        transform=ax.transAxes,
        ha="left",
        va="bottom",
        fontsize=20,
        fontweight="bold",
    )
    ax.annotate(
        "Private Work",
        xy=(0.0, 1.01),
        xycoords="axes fraction",
        xytext=(52, 0),
        textcoords="offset points",
        ha="left",
        va="bottom",
        fontsize=17,
        style="italic",
    )
    right = "(13 TeV)" if lumi is None else f"{lumi:g} fb$^{{-1}}$ (13 TeV)"
    ax.text(1.0, 1.01, right, transform=ax.transAxes, ha="right", va="bottom", fontsize=16)


@dataclass(frozen=True)
class Panel:
    """One data/MC comparison: a region histogram (edges required) and its title."""

    hist: RegionHistogram
    title: str


def data_mc(
    path: str | Path,
    panels: Sequence[Panel],
    *,
    styles: Mapping[str, Mapping[str, Any]],
    xlabel: str,
    lumi: float | None = None,
) -> None:
    """Stacked MC (largest process on top) with data points, MC-stat band and a ratio panel.

    Several panels are drawn side by side (e.g. pre-fit | post-fit).
    """

    plt = pyplot()
    n = len(panels)
    fig, axes = plt.subplots(
        2,
        n,
        figsize=(9 * n, 9),
        gridspec_kw={"height_ratios": [3, 1], "hspace": 0.06, "wspace": 0.3},
        sharex="col",
        squeeze=False,
    )
    width = 9.0 * n  # inches; fixed margins instead of a tight bounding box (faster)
    fig.subplots_adjust(left=1.5 / width, right=1 - 0.3 / width, bottom=0.1, top=0.94)
    for col, panel in enumerate(panels):
        h = panel.hist
        ax, rax = axes[0, col], axes[1, col]
        edges = h.edges if h.edges is not None else np.array([0.0, 1.0])
        mc_err = np.sqrt(np.sum([h.mc_sumw2[p] for p in h.mc_sumw2], axis=0))
        total = draw_mc_stack(ax, edges, h.mc, mc_err, styles)
        centres = 0.5 * (edges[1:] + edges[:-1])
        data_err = np.sqrt(h.data)
        ax.errorbar(
            centres, h.data, yerr=data_err, fmt="o", color="black", ms=5, label="Data (fit half)"
        )
        ymax = max(float(np.max(total + mc_err, initial=0)), float(np.max(h.data, initial=0)))
        ax.set_ylim(0, 1.45 * ymax if ymax > 0 else 1)
        ax.set_ylabel("Events / bin")
        ax.text(0.04, 0.95, panel.title, transform=ax.transAxes, ha="left", va="top", fontsize=16)
        ax.legend(fontsize=13, ncol=2, loc="upper right")
        cms_label(ax, lumi)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(total > 0, h.data / total, np.nan)
            ratio_err = np.where(total > 0, data_err / total, np.nan)
            band = np.where(total > 0, mc_err / total, 0.0)
        rax.stairs(
            1 + band, edges, baseline=1 - band, fill=True, color="0.75", label="MC stat. unc."
        )
        rax.errorbar(centres, ratio, yerr=ratio_err, fmt="o", color="black", ms=5)
        rax.axhline(1.0, color="0.3", linestyle="--", linewidth=1)
        finite = np.abs(ratio[np.isfinite(ratio)] - 1.0)
        span = float(np.clip(1.2 * np.max(finite, initial=0.0), 0.5, 1.0))
        rax.set_ylim(1.0 - span, 1.0 + span)
        rax.set_ylabel("Data / MC")
        rax.set_xlabel(xlabel)
        rax.set_xlim(edges[0], edges[-1])
    save(fig, path, tight=False)


def data_mc_batch(
    jobs: Sequence[tuple[str | Path, Sequence[Panel], str]],
    *,
    styles: Mapping[str, Mapping[str, Any]],
    lumi: float | None = None,
    workers: int = 1,
) -> None:
    """Draw many :func:`data_mc` figures ``(path, panels, variable)``, in ``workers`` processes.

    The worker processes are forked (a spawned one would re-run a Snakemake script's body).
    """
    if workers <= 1 or len(jobs) < 2 * workers:
        for path, panels, variable in jobs:
            data_mc(path, panels, styles=styles, xlabel=axis_label(variable), lumi=lumi)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [
            pool.submit(
                data_mc, path, panels, styles=styles, xlabel=axis_label(variable), lumi=lumi
            )
            for path, panels, variable in jobs
        ]
        for future in futures:
            future.result()


def scale_factor_slices(
    path: str | Path,
    slice_edges: np.ndarray,
    fits: Sequence[ScaleFactorFit],
    inclusive: ScaleFactorFit,
    *,
    styles: Mapping[str, Mapping[str, Any]],
    lumi: float | None = None,
) -> None:
    """Scale factors fitted in m_jj slices (points) against the inclusive fit (bands)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 7.5))
    names = inclusive.names
    width = np.diff(slice_edges)
    centres = 0.5 * (slice_edges[1:] + slice_edges[:-1])
    for i, name in enumerate(names):
        color = styles.get(name, {}).get("color") or f"C{i}"
        label = styles.get(name, {}).get("label") or name
        offset = (i - (len(names) - 1) / 2) * 0.12 * width
        values = np.array([f.values[name] for f in fits])
        errors = np.array([f.errors(name) for f in fits]).T
        ax.errorbar(
            centres + offset,
            values,
            yerr=errors,
            fmt="o",
            color=color,
            ms=6,
            capsize=0,
            label=f"{label} (m$_{{jj}}$ slices)",
        )
        value = inclusive.values[name]
        lo, hi = inclusive.errors(name)
        ax.fill_between(
            [slice_edges[0], slice_edges[-1]], value - lo, value + hi, color=color, alpha=0.2
        )
        ax.axhline(value, color=color, linestyle="--", linewidth=1, label=f"{label} inclusive")
    ax.axhline(1.0, color="0.3", linestyle=":", linewidth=1)
    for edge in slice_edges[1:-1]:
        ax.axvline(edge, color="0.6", linestyle=":", linewidth=1)
    ax.set_xlim(slice_edges[0], slice_edges[-1])
    ax.set_xlabel(axis_label("m_jj"))
    ax.set_ylabel("Scale factor")
    ax.legend(fontsize=12, ncol=2, loc="upper right")
    lows = [f.values[n] - f.errors(n)[0] for f in fits for n in names]
    highs = [f.values[n] + f.errors(n)[1] for f in fits for n in names]
    span = max(highs, default=1.5) - min(lows, default=0.5)
    ax.set_ylim(min(lows, default=0.5) - 0.1 * span, max(highs, default=1.5) + 0.6 * span)
    cms_label(ax, lumi)
    save(fig, path)
