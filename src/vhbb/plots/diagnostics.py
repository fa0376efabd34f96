"""Plots of the fit diagnostics (impacts, correlations, GoF, injection, pulls) and binning scan.

Built on :mod:`vhbb.plots.style` (style, CMS header, atomic saving); matplotlib is imported lazily.
Inputs are the JSON-ready dictionaries of :mod:`vhbb.fit.diagnostics` and
:mod:`vhbb.fit.binning_scan`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vhbb.plots.style import cms_label, pyplot, save

FLAG_COLOR = "red"  # nuisances flagged as constrained in the impact figure


def _title(ax: Any, title: str) -> None:
    ax.text(0.02, 0.98, title, transform=ax.transAxes, ha="left", va="top", fontsize=14)


def impacts(
    path: str | Path, doc: Mapping[str, Any], *, title: str, lumi: float | None = None
) -> None:
    """Ranking plot: post-fit (filled) and pre-fit (open) +-1 sigma impacts on the POI.

    Nuisances flagged as constrained (``constrained``: post-fit error below
    ``constraint_flag_fraction`` of the prior) get a red label with their ratio and a marker."""
    plt = pyplot()
    names: Sequence[str] = list(doc["ranking"])
    flagged = {n for n in names if doc["nuisances"][n].get("constrained")}
    n = max(len(names), 1)
    fig, ax = plt.subplots(figsize=(10, max(4.0, 0.6 * n + 2.5)))
    y = np.arange(len(names))[::-1]
    for k, name in enumerate(names):
        e = doc["nuisances"][name]
        up, down = e["postfit"]
        ax.barh(y[k], up, color="C3", alpha=0.7, label="post-fit $+1\\sigma$" if k == 0 else None)
        ax.barh(y[k], down, color="C0", alpha=0.7, label="post-fit $-1\\sigma$" if k == 0 else None)
        if e.get("prefit") is not None:
            pu, pd = e["prefit"]
            for v in (pu, pd):
                ax.barh(y[k], v, fill=False, edgecolor="k", linewidth=1.2)
    from matplotlib.patches import Patch

    handles, _ = ax.get_legend_handles_labels()
    handles.append(Patch(fill=False, edgecolor="k", label="pre-fit $\\pm1\\sigma$"))
    labels = [
        f"{n} (post/pre {doc['nuisances'][n]['constraint_ratio']:.2f})" if n in flagged else n
        for n in names
    ]
    ax.set_yticks(y, labels, fontsize=12)
    for k, tick in enumerate(ax.get_yticklabels()):
        if names[k] in flagged:
            tick.set_color(FLAG_COLOR)
    if flagged:
        from matplotlib.lines import Line2D

        ky = [y[k] for k, n in enumerate(names) if n in flagged]
        ax.plot(
            [0.985] * len(ky),
            ky,
            "<",
            color=FLAG_COLOR,
            markersize=10,
            transform=ax.get_yaxis_transform(),
            clip_on=False,
        )
        frac = doc.get("constraint_flag_fraction", 0.5)
        handles.append(
            Line2D(
                [],
                [],
                marker="<",
                color=FLAG_COLOR,
                linestyle="none",
                label=f"constrained: post/pre-fit $\\sigma$ < {frac:g}",
            )
        )
    ax.axvline(0, color="0.3", linewidth=1)
    ax.set_xlabel(f"impact on {doc['poi']}")
    ax.legend(handles=handles, fontsize=11, loc="lower right")
    data = f" ({doc['data']})" if doc.get("data") else ""
    ax.set_title(
        f"{title}{data}; total {doc['total_error']:.3f}, stat-only {doc['stat_only_error']:.3f}",
        fontsize=13,
        loc="left",
        pad=28,
    )
    cms_label(ax, lumi)
    save(fig, path)


def correlation(
    path: str | Path, doc: Mapping[str, Any], *, title: str, lumi: float | None = None
) -> None:
    """Post-fit correlation matrix of the free parameters."""
    plt = pyplot()
    names = list(doc["parameters"])
    corr = np.asarray(doc["matrix"], dtype=np.float64)
    n = max(len(names), 1)
    fig, ax = plt.subplots(figsize=(max(8.0, 0.8 * n + 4), max(7.0, 0.8 * n + 3)))
    mesh = ax.imshow(corr, cmap="RdBu_r", vmin=-1, vmax=1)
    fig.colorbar(mesh, ax=ax, label="correlation")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=11)
    ax.set_yticks(range(len(names)), names, fontsize=11)
    if n <= 15:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{corr[i, j]:.2f}", ha="center", va="center", fontsize=9)
    ax.set_title(title, fontsize=13, loc="left", pad=28)
    cms_label(ax, lumi)
    save(fig, path)


def goodness_of_fit(
    path: str | Path, doc: Mapping[str, Any], *, title: str, lumi: float | None = None
) -> None:
    """Toy distribution of the saturated statistic, the observed value and the chi2 curve."""
    from scipy import stats

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 7.5))
    q = np.asarray(doc["q_toys"], dtype=np.float64)
    q_obs = float(doc["q_observed"])
    hi = max(float(q.max()) if len(q) else 1.0, q_obs) * 1.15
    bins = np.linspace(0, hi, 31)
    if len(q):
        ax.hist(q, bins=bins, histtype="stepfilled", color="C0", alpha=0.5, label="toys")
        x = np.linspace(0, hi, 200)
        ax.plot(
            x,
            stats.chi2.pdf(x, doc["ndf"]) * len(q) * (bins[1] - bins[0]),
            "--",
            color="0.3",
            label=rf"$\chi^2$, ndf = {doc['ndf']}",
        )
    ax.axvline(q_obs, color="C3", linewidth=2, label=f"observed, p = {doc['p_value']:.3f}")
    ax.set_xlabel(r"saturated-model $q = -2\ln(L/L_{sat})$")
    ax.set_ylabel("toys")
    ax.legend(fontsize=12)
    _title(ax, title)
    cms_label(ax, lumi)
    save(fig, path)


def injection(
    path: str | Path, points: Sequence[Mapping[str, Any]], *, title: str, lumi: float | None = None
) -> None:
    """Mean fitted versus injected POI (spread as error bars) and the pull widths."""
    plt = pyplot()
    fig, (ax, rax) = plt.subplots(
        2, 1, figsize=(10, 9), gridspec_kw={"height_ratios": [2, 1], "hspace": 0.08}, sharex=True
    )
    ok = [p for p in points if p.get("mean_fitted") is not None]
    x = np.array([p["injected"] for p in ok])
    mean = np.array([p["mean_fitted"] for p in ok])
    std = np.array([p["std_fitted"] for p in ok])
    n = np.array([max(p["n_valid"], 1) for p in ok])
    ax.errorbar(x, mean, yerr=std, fmt="o", color="black", capsize=4, label="toys: mean, std")
    ax.errorbar(x, mean, yerr=std / np.sqrt(n), fmt="none", color="C3", capsize=6, linewidth=3)
    lo, hi = (x.min() - 0.5, x.max() + 0.5) if len(x) else (-0.5, 2.5)
    ax.plot([lo, hi], [lo, hi], "--", color="0.4", label="fitted = injected")
    ax.set_ylabel("fitted signal strength")
    ax.legend(fontsize=12, loc="upper left", bbox_to_anchor=(0.0, 0.9))
    _title(ax, title)
    width = np.array([p["pull_width"] for p in ok])
    pmean = np.array([p["pull_mean"] for p in ok])
    rax.errorbar(x, width, yerr=1 / np.sqrt(2 * n), fmt="s", color="C0", label="pull width")
    rax.errorbar(x, pmean, yerr=1 / np.sqrt(n), fmt="o", color="C1", label="pull mean")
    rax.axhline(1, color="0.4", linestyle="--", linewidth=1)
    rax.axhline(0, color="0.4", linestyle=":", linewidth=1)
    rax.set_ylim(-1, 2)
    rax.set_xlim(lo, hi)
    rax.set_xlabel("injected signal strength")
    rax.legend(fontsize=11, ncol=2, loc="upper right")
    cms_label(ax, lumi)
    save(fig, path)


def pulls_histograms(
    path: str | Path,
    pulls: Mapping[str, Mapping[str, Any]],
    *,
    title: str,
    lumi: float | None = None,
) -> None:
    """Pull distribution of each parameter over toys with a unit Gaussian."""
    plt = pyplot()
    names = [n for n, p in pulls.items() if p.get("pulls")]
    n = max(len(names), 1)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 5.5 * rows), squeeze=False)
    bins = np.linspace(-4, 4, 25)
    x = np.linspace(-4, 4, 200)
    for k, name in enumerate(names):
        ax = axes[k // cols, k % cols]
        p = np.asarray(pulls[name]["pulls"])
        ax.hist(p, bins=bins, histtype="stepfilled", alpha=0.5, color="C0")
        ax.plot(x, len(p) * (bins[1] - bins[0]) * np.exp(-0.5 * x**2) / math.sqrt(2 * math.pi))
        s = pulls[name]
        ax.set_title(
            f"{name}: mean {s['mean']:.2f}, width {s['width']:.2f} (N = {s['n']})", fontsize=12
        )
        ax.set_xlabel("pull")
    for k in range(len(names), rows * cols):
        axes[k // cols, k % cols].axis("off")
    fig.suptitle(title, fontsize=14)
    cms_label(axes[0, 0], lumi)
    save(fig, path)


def binning_scan(
    path: str | Path, doc: Mapping[str, Any], *, title: str, lumi: float | None = None
) -> None:
    """sigma_mu and the expected significance versus the number of 2D bins, with and without
    MC-statistics terms; the best binning (with MC statistics) is marked."""
    plt = pyplot()
    pts = [p for p in doc["points"] if p.get("sigma_mu") is not None]
    fig, (ax, rax) = plt.subplots(
        2, 1, figsize=(10, 10), gridspec_kw={"height_ratios": [1, 1], "hspace": 0.08}, sharex=True
    )
    n2 = np.array([p["fine_bins"] for p in pts], dtype=np.float64)
    for key, style, label in (
        ("", "o-", "MC stat. on"),
        ("_no_mc_stat", "s--", "MC stat. off (ideal)"),
    ):
        sig = np.array([p.get(f"sigma_mu{key}") or np.nan for p in pts], dtype=np.float64)
        z = np.array([p.get(f"significance{key}") or np.nan for p in pts], dtype=np.float64)
        ax.plot(n2, sig, style, label=label)
        rax.plot(n2, z, style, label=label)
    best = doc.get("best")
    if best is not None:
        for a in (ax, rax):
            a.axvline(best["fine_bins"], color="C3", linestyle=":", linewidth=2)
        rax.text(
            best["fine_bins"],
            0.05,
            f" best: {best['n_mjj']}x{best['n_score']}",
            transform=rax.get_xaxis_transform(),
            color="C3",
            fontsize=12,
        )
    ax.set_xscale("log")
    ax.set_ylabel(r"expected $\sigma_\mu$ (Asimov)")
    rax.set_ylabel("expected significance")
    rax.set_xlabel("2D bins before merging ($n_{m_{jj}} \\times n_{score}$)")
    ax.legend(fontsize=12)
    for p in pts:
        ax.annotate(
            f"{p['merged_bins']}",
            (p["fine_bins"], p["sigma_mu"]),
            textcoords="offset points",
            xytext=(0, 8),
            fontsize=9,
            ha="center",
        )
    _title(ax, f"{title} (labels: merged bins)")
    cms_label(ax, lumi)
    save(fig, path)


def _param_label(name: str) -> str:
    return {"mu": r"$\mu_{ZH}$", "mu_VZ": r"$\mu_{VZ}$"}.get(name, name)


def scan_2d(
    path: str | Path, doc: Mapping[str, Any], *, title: str, lumi: float | None = None
) -> None:
    """2 Delta NLL of a two-parameter profile scan (colour), its 68 % and 95 % contours
    (bicubic interpolation of the grid), the best fit, the HESSE ellipses and the SM point."""
    from vhbb.stats.histograms import upsample_2d

    plt = pyplot()
    p1, p2 = doc["parameters"]
    x = np.asarray(doc["values"][p1], dtype=np.float64)
    y = np.asarray(doc["values"][p2], dtype=np.float64)
    z = np.array(
        [[np.nan if v is None else v for v in row] for row in doc["twice_delta_nll"]],
        dtype=np.float64,
    )
    levels = dict(doc["levels"])
    fig, ax = plt.subplots(figsize=(10, 8.5))
    top = max(float(np.nanmax(z)) if np.isfinite(z).any() else 1.0, 1.0)
    mesh = ax.pcolormesh(x, y, z.T, shading="nearest", cmap="viridis_r", vmin=0, vmax=top)
    fig.colorbar(mesh, ax=ax, label=r"$-2\Delta\ln L$")
    if np.isfinite(z).any():
        fx, fy, fz = upsample_2d(x, y, z)
        styles = {"68%": "-", "95%": "--"}
        for name, level in levels.items():
            ax.contour(fx, fy, fz.T, levels=[level], colors="k", linestyles=styles.get(name, ":"))
            ax.plot([], [], styles.get(name, ":"), color="k", label=f"{name} CL")
    cov = np.asarray(doc.get("hesse_covariance") or np.zeros((2, 2)), dtype=np.float64)
    bx, by = doc["best_fit"][p1], doc["best_fit"][p2]
    if np.all(np.isfinite(cov)) and np.linalg.det(cov) > 0:
        vals, vecs = np.linalg.eigh(cov)
        t = np.linspace(0, 2 * np.pi, 200)
        circle = np.stack([np.cos(t), np.sin(t)])
        for k, level in enumerate(levels.values()):
            pts = vecs @ (np.sqrt(vals * level)[:, None] * circle)
            ax.plot(
                bx + pts[0],
                by + pts[1],
                ":",
                color="C1",
                linewidth=1.5,
                label="HESSE ellipses" if k == 0 else None,
            )
    ax.plot(bx, by, "P", color="C3", markersize=13, label="best fit")
    if x[0] <= 1.0 <= x[-1] and y[0] <= 1.0 <= y[-1]:
        ax.plot(1.0, 1.0, "*", color="k", markersize=14, label="SM")
    ax.set_xlabel(_param_label(p1))
    ax.set_ylabel(_param_label(p2))
    ax.set_xlim(x[0], x[-1])
    ax.set_ylim(y[0], y[-1])
    ax.legend(fontsize=12, loc="upper right", framealpha=0.8)
    data = f" ({doc['data']})" if doc.get("data") else ""
    ax.set_title(f"{title}{data}", fontsize=13, loc="left", pad=28)
    cms_label(ax, lumi)
    save(fig, path)
