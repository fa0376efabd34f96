"""Plots of the signal-strength stage: 2D templates, stacked data/MC, scans, pulls.

Built on :mod:`vhbb.plots.style` (style, CMS header, atomic saving); matplotlib is imported lazily.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vhbb.plots.style import axis_label, cms_label, draw_mc_stack, pyplot, save


def hist2d(
    path: str | Path,
    values: np.ndarray,
    mjj_edges: np.ndarray,
    score_edges: np.ndarray,
    *,
    title: str,
    lumi: float | None = None,
) -> None:
    """One process's 2D template (m_jj x score), colour = expected events per bin."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 8))
    mesh = ax.pcolormesh(mjj_edges, score_edges, np.asarray(values).T, cmap="viridis")
    fig.colorbar(mesh, ax=ax, label="Expected events / bin")
    ax.set_xlabel(axis_label("m_jj"))
    ax.set_ylabel("Classifier score")
    ax.text(
        0.03, 0.95, title, transform=ax.transAxes, ha="left", va="top", color="white", fontsize=16
    )
    cms_label(ax, lumi)
    save(fig, path)


def stacked(
    path: str | Path,
    edges: np.ndarray,
    mc: Mapping[str, np.ndarray],
    mc_sumw2: np.ndarray,
    data: np.ndarray | None,
    *,
    styles: Mapping[str, Mapping[str, Any]],
    xlabel: str,
    title: str,
    log: bool = False,
    hidden: tuple[float, float] | None = None,
    data_label: str = "Data",
    lumi: float | None = None,
) -> None:
    """Stacked MC with data points and a ratio panel; data in the ``hidden`` window not shown."""

    plt = pyplot()
    fig, (ax, rax) = plt.subplots(
        2, 1, figsize=(10, 9), gridspec_kw={"height_ratios": [3, 1], "hspace": 0.06}, sharex=True
    )
    edges = np.asarray(edges, dtype=np.float64)
    err = np.sqrt(np.clip(mc_sumw2, 0, None))
    total = draw_mc_stack(ax, edges, mc, err, styles)
    centres = 0.5 * (edges[1:] + edges[:-1])
    shown = np.ones(len(centres), dtype=bool)
    if hidden is not None:
        lo, hi = hidden
        shown = (edges[1:] <= lo) | (edges[:-1] >= hi)
        for a in (ax, rax):
            a.axvspan(max(lo, edges[0]), min(hi, edges[-1]), color="0.85", zorder=0)
        ax.text(
            0.5 * (lo + hi),
            0.02,
            "blinded",
            transform=ax.get_xaxis_transform(),
            ha="center",
            fontsize=13,
            color="0.4",
        )
    if data is not None:
        d = np.asarray(data, dtype=np.float64)
        ax.errorbar(
            centres[shown],
            d[shown],
            yerr=np.sqrt(d[shown]),
            fmt="o",
            color="black",
            ms=5,
            label=data_label,
        )
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(total > 0, d / total, np.nan)
            rerr = np.where(total > 0, np.sqrt(d) / total, np.nan)
        rax.errorbar(centres[shown], ratio[shown], yerr=rerr[shown], fmt="o", color="black", ms=5)
    with np.errstate(divide="ignore", invalid="ignore"):
        band = np.where(total > 0, err / total, 0.0)
    rax.stairs(1 + band, edges, baseline=1 - band, fill=True, color="0.75")
    rax.axhline(1.0, color="0.3", linestyle="--", linewidth=1)
    rax.set_ylim(0.5, 1.5)
    rax.set_ylabel("Data / MC")
    rax.set_xlabel(xlabel)
    rax.set_xlim(edges[0], edges[-1])
    ymax = max(
        float(np.max(total + err, initial=0)),
        float(np.max(data, initial=0)) if data is not None else 0,
    )
    if log:
        positive = total[total > 0]
        ymin = float(positive.min()) * 0.3 if len(positive) else 0.1
        ax.set_yscale("log")
        ax.set_ylim(ymin, max(ymax, ymin * 10) * 100)
    else:
        ax.set_ylim(0, 1.5 * ymax if ymax > 0 else 1)
    ax.set_ylabel("Events / bin")
    ax.text(0.04, 0.95, title, transform=ax.transAxes, ha="left", va="top", fontsize=16)
    ax.legend(fontsize=12, ncol=2, loc="upper right")
    cms_label(ax, lumi)
    save(fig, path)


def likelihood_scan(
    path: str | Path,
    points: np.ndarray,
    values: np.ndarray,
    *,
    mu_hat: float,
    interval: tuple[float, float],
    title: str,
    lumi: float | None = None,
) -> None:
    """``-2 Delta ln L`` versus the signal strength with the MINOS interval."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 7.5))
    ax.plot(points, values, "-", color="black", linewidth=2, label="profile likelihood")
    for level in (1.0, 4.0):
        ax.axhline(level, color="0.5", linestyle=":", linewidth=1)
    lo, hi = interval
    ax.axvspan(
        mu_hat + lo,
        mu_hat + hi,
        color="C0",
        alpha=0.2,
        label=rf"$\hat\mu = {mu_hat:.3f}^{{+{hi:.3f}}}_{{{lo:.3f}}}$ (MINOS)",
    )
    ax.set_xlabel(r"Signal strength $\mu$")
    ax.set_ylabel(r"$-2\,\Delta\ln L$")
    ax.set_ylim(0, max(5.0, float(np.max(values, initial=0)) * 1.1))
    ax.text(0.04, 0.95, title, transform=ax.transAxes, ha="left", va="top", fontsize=15)
    ax.legend(fontsize=13, loc="upper right")
    cms_label(ax, lumi)
    save(fig, path)


def pulls(
    path: str | Path,
    names: Sequence[str],
    pull: np.ndarray,
    constraint: np.ndarray,
    *,
    title: str,
    lumi: float | None = None,
) -> None:
    """Nuisance pulls ``(theta - theta0) / sigma0`` with post-fit constraints as error bars."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, max(4.0, 0.5 * len(names) + 2)))
    y = np.arange(len(names))
    ax.axvspan(-1, 1, color="0.9")
    ax.errorbar(pull, y, xerr=constraint, fmt="o", color="black", ms=6)
    ax.set_yticks(y, list(names), fontsize=12)
    ax.axvline(0, color="0.4", linestyle="--", linewidth=1)
    ax.set_xlim(-2.5, 2.5)
    ax.set_xlabel(r"$(\hat\theta - \theta_0) / \Delta\theta$")
    ax.set_title(title, fontsize=15, loc="left", pad=30)
    cms_label(ax, lumi)
    save(fig, path)
