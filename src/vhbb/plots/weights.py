"""Validation figure of the negative-weight transformation: one per region and variable.

The top panel shows the region's MC with the original weights (points) and the transformed
weights (line); below it, one ratio panel ``w'/w`` per transformed process with its paired
per-bin uncertainty ``sqrt(sum (w - w')^2) / sum w`` as a grey band and the process's paired
test (chi2/ndf, p) in the corner, so a failing process is seen by name (a sum over processes
hides which one fails).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vhbb.plots.style import axis_label, pyplot, save


def _edges(test: Mapping[str, Any]) -> np.ndarray:
    edges = np.asarray(test["edges"], dtype=np.float64)
    if len(edges) < 2 or edges[-1] <= edges[0]:
        edges = np.array([edges[0] - 0.5, edges[0] + 0.5])
    return edges


def _ratio_panel(ax: Any, edges: np.ndarray, test: Mapping[str, Any], label: str) -> None:
    nb = len(edges) - 1
    sw = np.asarray(test["sum_w"])[:nb]
    swn = np.asarray(test["sum_w_new"])[:nb]
    ok = sw > 0
    ratio = np.where(ok, swn / np.where(ok, sw, 1), np.nan)
    err = np.where(ok, np.sqrt(np.asarray(test["var"])[:nb]) / np.where(ok, sw, 1), np.nan)
    ax.fill_between(
        edges, np.append(1 - err, (1 - err)[-1]), np.append(1 + err, (1 + err)[-1]),
        step="post", color="0.8",
    )  # fmt: skip
    centers = (edges[1:] + edges[:-1]) / 2
    ax.plot(centers, ratio, "o", color="#d62728", markersize=4)
    ax.axhline(1.0, color="k", lw=1)
    ax.set_ylim(0.8, 1.2)
    ax.set_ylabel("w'/w", fontsize=14)
    ax.text(
        0.01, 0.92,
        rf"{label}: $\chi^2$/ndf = {test['chi2']:.1f}/{test['ndf']}, p = {test['p_value']:.2g}",
        transform=ax.transAxes, ha="left", va="top", fontsize=12,
    )  # fmt: skip


def plot_ratio(
    path: str | Path,
    variable: str,
    test: Mapping[str, Any],
    region: str,
    method: str,
    labels: Mapping[str, str] | None = None,
) -> None:
    """The figure of one region and variable (``test``: a paired-test result of
    :func:`vhbb.ml.weights.paired_test`, with its per-process results in ``test["processes"]``)."""
    plt = pyplot()
    import mplhep

    labels = dict(labels or {})
    edges = _edges(test)
    nb = len(edges) - 1
    processes = dict(test.get("processes") or {})
    n = len(processes)
    fig, axes = plt.subplots(
        1 + n, 1, figsize=(9, 5 + 1.6 * n), sharex=True, squeeze=False,
        gridspec_kw={"height_ratios": [3] + [1] * n, "hspace": 0.08},
    )  # fmt: skip
    ax = axes[0][0]
    sw = np.asarray(test["sum_w"])[:nb]
    mplhep.histplot(
        np.asarray(test["sum_w_new"])[:nb], edges, ax=ax, label="transformed w'", color="#d62728"
    )
    ax.errorbar(
        (edges[1:] + edges[:-1]) / 2, sw, yerr=np.sqrt(np.asarray(test["sum_w2"])[:nb]),
        fmt="o", color="k", markersize=4, label="original w",
    )  # fmt: skip
    ax.set_ylabel("weighted events")
    ax.legend(title=f"{region}, all MC ({method})", fontsize=13, title_fontsize=13)
    ax.text(
        0.02, 0.95,
        rf"$\chi^2$/ndf = {test['chi2']:.1f}/{test['ndf']}, p = {test['p_value']:.2g}",
        transform=ax.transAxes, ha="left", va="top", fontsize=13,
    )  # fmt: skip
    for k, (pname, res) in enumerate(sorted(processes.items()), start=1):
        _ratio_panel(axes[k][0], _edges(res), res, labels.get(pname, pname))  # its own bins
    axes[-1][0].set_xlabel(axis_label(variable))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save(fig, path)


def run_weights_plots(
    plot_data_path: str | Path, plots_dir: str | Path, labels: Mapping[str, str] | None = None
) -> list[Path]:
    """Rule ``weights_plots``: one figure per variable of ``plot_data.json``."""
    import json

    data = json.loads(Path(plot_data_path).read_text())
    out = Path(plots_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for var, test in data["variables"].items():
        path = out / f"{var}.png"
        plot_ratio(path, var, test, data["region"], data["method"], labels)
        written.append(path)
    return written
