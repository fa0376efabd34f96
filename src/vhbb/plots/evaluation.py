"""Plots of the evaluation stage (matplotlib Agg + mplhep CMS style, imported lazily).

Inputs are the small ``plot_data.json`` written by :func:`vhbb.evaluation.evaluate.run_evaluate`,
the metrics and the scan summary rows; every function writes its figures atomically.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vhbb.plots.style import cms_label, pyplot, save

log = logging.getLogger(__name__)

ROLE_COLORS = {"signal": "#e42536", "resonant": "#f89c20", "nonresonant": "#5790fc"}


def _step(ax: Any, edges: Sequence[float], values: Sequence[float], **kw: Any) -> None:
    ax.stairs(np.asarray(values, dtype=float), np.asarray(edges, dtype=float), **kw)


def score_distributions(data: Mapping[str, Any], out_dir: str | Path, model: str) -> list[Path]:
    """Normalised score distributions per process, linear and log (signal region, OOF)."""
    plt = pyplot()
    edges = data["score_edges"]
    paths = []
    for scale in ("linear", "log"):
        fig, ax = plt.subplots(figsize=(8, 6))
        for proc, h in sorted(data["processes"].items()):
            v = np.clip(np.asarray(h["sumw"]), 0, None)
            if v.sum() <= 0:
                continue
            _step(ax, edges, v / v.sum(), label=proc, linewidth=1.8)
        ax.set_yscale(scale)
        ax.set_xlabel(f"score ({model})")
        ax.set_ylabel("fraction of events")
        ax.legend(fontsize=12, ncols=2)
        cms_label(ax, None)
        path = Path(out_dir) / f"score_{scale}.png"
        save(fig, path)
        paths.append(path)
    return paths


def _ratio_panels(plt: Any, n: int) -> tuple[Any, Any]:
    fig, axes = plt.subplots(
        2, n, figsize=(5 * n, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}, squeeze=False
    )
    return fig, axes


def sculpting(data: Mapping[str, Any], path: str | Path, model: str) -> None:
    """Non-resonant m_jj in each score quantile against the rest, normalised, with ratios."""
    plt = pyplot()
    sc = data["sculpting"]
    edges = np.asarray(sc["mjj_edges"])
    quant = sc["quantiles"]
    fig, axes = _ratio_panels(plt, max(len(quant), 1))
    for i, q in enumerate(quant):
        top, bottom = axes[0, i], axes[1, i]
        h_in, h_out = np.asarray(q["in"]), np.asarray(q["out"])
        n_in, n_out = h_in.sum(), h_out.sum()
        if n_in <= 0 or n_out <= 0:
            top.text(0.5, 0.5, "empty quantile", transform=top.transAxes, ha="center")
            continue
        width = np.diff(edges)
        d_in, d_out = h_in / n_in / width, h_out / n_out / width
        e_in = np.sqrt(np.asarray(q["in_w2"])) / n_in / width
        _step(top, edges, d_out, label="rest", color="black")
        centres = 0.5 * (edges[1:] + edges[:-1])
        top.errorbar(centres, d_in, e_in, fmt="o", ms=3, label=f"quantile {i + 1}")
        top.set_title(f"score quantile {i + 1}/{len(quant)}", fontsize=14)
        top.legend(fontsize=11)
        ratio = np.divide(d_in, d_out, out=np.full_like(d_in, np.nan), where=d_out > 0)
        rerr = np.divide(e_in, d_out, out=np.full_like(d_in, np.nan), where=d_out > 0)
        bottom.errorbar(centres, ratio, rerr, fmt="o", ms=3, color="C0")
        bottom.axhline(1.0, color="black", lw=1)
        bottom.set_ylim(0.5, 1.5)
        bottom.set_xlabel(r"$m_{jj}$ [GeV]")
    axes[0, 0].set_ylabel("normalised / GeV")
    axes[1, 0].set_ylabel("quantile / rest")
    fig.suptitle(f"{model}: non-resonant background", fontsize=16)
    save(fig, path)


def vz_peak(data: Mapping[str, Any], path: str | Path, model: str) -> None:
    """Background m_jj in the highest score quantile with and without VZ, sideband fits."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 6))
    for key, label, color in (
        ("with_vz", "all background", "C1"),
        ("without_vz", "without VZ", "C0"),
    ):
        d = data.get("vz_peak", {}).get(key)
        if not d or not d.get("edges"):
            continue
        edges = np.asarray(d["edges"])
        _step(ax, edges, d["content"], label=label, color=color, linewidth=2)
        if d.get("fit") is not None:
            centres = 0.5 * (edges[1:] + edges[:-1])
            ax.plot(centres, d["fit"], "--", color=color, label=f"{label}: sideband fit")
        lo, hi = d["window"]
        ax.axvspan(lo, hi, color="grey", alpha=0.15)
    ax.set_xlabel(r"$m_{jj}$ [GeV]")
    ax.set_ylabel(r"events ($\sigma \cdot L$)")
    ax.set_title(f"{model}: highest score quantile", fontsize=14)
    ax.legend(fontsize=11)
    save(fig, path)


def variation_ratio(data: Mapping[str, Any], path: str | Path, model: str, kind: str) -> None:
    """Nominal vs JES-varied MC scores (``kind='jes'``: one panel per JES source, its
    ``score_jes_<source>Up`` / ``Down`` histograms) or data vs MC per control region."""
    plt = pyplot()
    edges = np.asarray(data["score_edges"])
    if kind == "jes":
        var = data["variations"]
        ups = [k[: -len("Up")] for k in var if k.startswith("score_jes_") and k.endswith("Up")]
        sources = [k[len("score_jes_") :] for k in ups if f"{k}Down" in var]
        panels = {
            f"signal region MC: jes_{s}": (
                var["score"]["sumw"],
                {f"jes_{s}{side}": var[f"score_jes_{s}{side}"]["sumw"] for side in ("Up", "Down")},
            )
            for s in sources
        }
    else:
        panels = {
            r: (h["mc"], {"data (fit half)": h["data"]})
            for r, h in (data.get("data_mc") or {}).items()
        }
    if not panels:
        panels = {"no control region": ([0.0] * (len(edges) - 1), {})}
    fig, axes = _ratio_panels(plt, len(panels))
    for i, (title, (ref, others)) in enumerate(panels.items()):
        top, bottom = axes[0, i], axes[1, i]
        ref = np.asarray(ref, dtype=float)
        nref = ref.sum() if ref.sum() > 0 else 1.0
        _step(
            top,
            edges,
            ref / nref,
            label="nominal MC" if kind == "jes" else "MC x SF",
            color="black",
        )
        for j, (lab, h) in enumerate(others.items()):
            h = np.asarray(h, dtype=float)
            n = h.sum() if h.sum() > 0 else 1.0
            _step(top, edges, h / n, label=lab, color=f"C{j}")
            r = np.divide(h / n, ref / nref, out=np.full(len(h), np.nan), where=ref > 0)
            _step(bottom, edges, r, color=f"C{j}")
        bottom.axhline(1.0, color="black", lw=1)
        bottom.set_ylim(0.5, 1.5)
        bottom.set_xlabel(f"score ({model})")
        top.set_title(title, fontsize=14)
        top.legend(fontsize=11)
    axes[0, 0].set_ylabel("normalised")
    axes[1, 0].set_ylabel("ratio")
    save(fig, path)


def roc_all(curves: Mapping[str, Mapping[str, Any] | None], path: str | Path) -> None:
    """ROC curves (background rejection against signal efficiency) of all models."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 7))
    for i, (name, roc) in enumerate(sorted(curves.items())):
        if not roc:
            continue
        fpr, tpr = np.asarray(roc["fpr"]), np.asarray(roc["tpr"])
        ax.plot(tpr, 1.0 - fpr, label=name, color=f"C{i % 10}", ls="-" if i < 10 else "--")
    ax.plot([0, 1], [1, 0], color="grey", lw=1, ls=":")
    ax.set_xlabel("signal efficiency")
    ax.set_ylabel("background rejection (1 - efficiency)")
    ax.legend(fontsize=10, ncols=2)
    cms_label(ax, None)
    save(fig, path)


# ------------------------------------------------------------------------------ scans
def _num(v: Any) -> float:
    return math.nan if v is None else float(v)


def scan_heatmaps(
    rows: Sequence[Mapping[str, Any]], axes: Sequence[str], out_dir: str | Path, scan: str
) -> list[Path]:
    """Fast-fit significance and sculpting chi2/ndf over each pair of scanned axes.

    Cells hold the best over the other axes (highest significance, lowest chi2/ndf).  A scan
    with fewer than two axes gets one-dimensional strips.
    """
    plt = pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pts = [r for r in rows if r["point"]]
    pairs = list(itertools.combinations(axes, 2)) or ([(axes[0], None)] if axes else [])
    paths: list[Path] = []
    for figure, better in (("z_fast_fit", max), ("chi2_ndf_mean", min)):
        for ax_x, ax_y in pairs:
            xs = sorted({str(r[ax_x]) for r in pts}, key=_sort_key)
            ys = sorted({str(r[ax_y]) for r in pts}, key=_sort_key) if ax_y else [""]
            grid = np.full((len(ys), len(xs)), np.nan)
            for r in pts:
                v = _num(r[figure])
                if math.isnan(v):
                    continue
                i = ys.index(str(r[ax_y])) if ax_y else 0
                j = xs.index(str(r[ax_x]))
                grid[i, j] = v if math.isnan(grid[i, j]) else better(grid[i, j], v)
            fig, ax = plt.subplots(figsize=(1.6 * len(xs) + 4, 1.2 * len(ys) + 3))
            im = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis")
            for (i, j), v in np.ndenumerate(grid):
                ax.text(
                    j,
                    i,
                    "n/a" if math.isnan(v) else f"{v:.3g}",
                    ha="center",
                    va="center",
                    color="w",
                    fontsize=11,
                )
            ax.set_xticks(range(len(xs)), xs)
            ax.set_yticks(range(len(ys)), ys)
            ax.set_xlabel(ax_x)
            ax.set_ylabel(ax_y or "")
            label = (
                "fast-fit significance" if figure == "z_fast_fit" else "sculpting chi2/ndf (mean)"
            )
            fig.colorbar(im, ax=ax, label=label)
            ax.set_title(f"{scan}: {label}", fontsize=13)
            name = f"{figure}__{ax_x}" + (f"__{ax_y}" if ax_y else "") + ".png"
            save(fig, out / name)
            paths.append(out / name)
    if not paths:  # seeds scans: no axis
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.text(0.5, 0.5, "no scanned axis (seed scan)", ha="center", transform=ax.transAxes)
        ax.set_axis_off()
        save(fig, out / "no_axes.png")
        paths.append(out / "no_axes.png")
    return paths


def _sort_key(text: str) -> tuple[int, float, str]:
    try:
        return (0, float(text), text)
    except ValueError:
        return (1, 0.0, text)


def pareto_front(x: Sequence[float], y: Sequence[float]) -> list[int]:
    """Indices of the points not dominated when maximising both ``x`` and ``y``."""
    pts = [
        (i, a, b)
        for i, (a, b) in enumerate(zip(x, y, strict=True))
        if not (math.isnan(a) or math.isnan(b))
    ]
    front = []
    for i, a, b in pts:
        if not any((a2 >= a and b2 >= b) and (a2 > a or b2 > b) for _, a2, b2 in pts):
            front.append(i)
    return sorted(front, key=lambda k: x[k])


def pareto(rows: Sequence[Mapping[str, Any]], path: str | Path, scan: str, *, metric: str) -> None:
    """Separation (AUC) against decorrelation (1/JSD, or 1/(chi2/ndf at the reference count))."""
    plt = pyplot()
    col = "inverse_jsd" if metric == "inverse_jsd" else "chi2_ndf_ref_mean"
    x = [_num(r["auc"]) for r in rows]
    y = [
        _num(r[col]) if col == "inverse_jsd" else 1.0 / _num(r[col]) if r[col] else math.nan
        for r in rows
    ]
    front = pareto_front(x, y)
    fig, ax = plt.subplots(figsize=(8, 6))
    for i, r in enumerate(rows):
        if math.isnan(x[i]) or math.isnan(y[i]):
            continue
        marker = "o" if r["point"] else "s"
        ax.scatter(x[i], y[i], marker=marker, color="C0" if r["point"] else "C1", zorder=3)
        ax.annotate(
            str(r["model"]), (x[i], y[i]), fontsize=8, xytext=(3, 3), textcoords="offset points"
        )
    if front:
        ax.plot(
            [x[i] for i in front],
            [y[i] for i in front],
            "-",
            color="C3",
            label="Pareto front",
            zorder=2,
        )
        ax.legend(fontsize=11)
    ax.set_xlabel("ROC AUC (out of fold)")
    ax.set_ylabel("1/JSD" if col == "inverse_jsd" else r"1 / ($\chi^2$/ndf at reference count)")
    if col == "inverse_jsd":
        ax.set_yscale("log")
    ax.set_title(f"{scan}: separation vs decorrelation", fontsize=13)
    save(fig, path)


def run_model_plots(plot_data_path: str, out_dir: str, model: str) -> list[str]:
    """Every per-model evaluation plot into ``out_dir`` (method-specific ones by its method)."""
    import json

    data = json.loads(Path(plot_data_path).read_text())
    method = data.get("method")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [str(p) for p in score_distributions(data, out, model)]
    sculpting(data, out / "mjj_quantiles.png", model)
    vz_peak(data, out / "vz_peak.png", model)
    written += [str(out / "mjj_quantiles.png"), str(out / "vz_peak.png")]
    if method == "systematic_adversary":
        variation_ratio(data, out / "score_jes.png", model, "jes")
        written.append(str(out / "score_jes.png"))
    if method == "domain_adaptation":
        variation_ratio(data, out / "score_data_mc.png", model, "data_mc")
        written.append(str(out / "score_data_mc.png"))
    return written


def run_roc_all(plot_data_paths: Mapping[str, str], path: str) -> None:
    """The ROC curves of all evaluated models in one figure."""
    import json

    curves = {m: json.loads(Path(p).read_text()).get("roc") for m, p in plot_data_paths.items()}
    roc_all(curves, path)
