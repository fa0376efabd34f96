"""Scan summaries and model selection over the evaluated points of a scan.

Summary (``results/scans/<scan>/``): ``summary.csv``/``summary.md`` (one row per model: the
points and the ``compare`` models), heatmaps of significance and sculpting over pairs of scanned
axes (best over the other axes), a Pareto plot of separation against decorrelation with the front
marked.  Selection (``best.json``): on the *validation* figures, the highest fast-fit
significance among the models whose decorrelation figure passes
``evaluation.sculpting.threshold`` and (if ``evaluation.vz_peak.required``) whose VZ peak is
visible; the out-of-fold figures of the choice are reported beside.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: Columns of the summary table: name -> (variant, dotted path inside the variant).
SUMMARY_COLUMNS: dict[str, tuple[str, str]] = {
    "auc": ("out_of_fold", "separation.auc"),
    "auc_truncated": ("out_of_fold", "separation.auc_truncated"),
    "r50": ("out_of_fold", "separation.r50"),
    "z_asimov": ("out_of_fold", "significance.asimov"),
    "z_simple": ("out_of_fold", "significance.simple"),
    "z_fast_fit": ("out_of_fold", "significance.fast_fit"),
    "chi2_ndf_mean": ("out_of_fold", "sculpting.mean.chi2_ndf"),
    "chi2_ndf_ref_mean": ("out_of_fold", "sculpting.mean.chi2_ndf_ref"),
    "chi2_ndf_highest": ("out_of_fold", "sculpting.highest.chi2_ndf"),
    "ks_distance_mean": ("out_of_fold", "sculpting.mean.ks_distance"),
    "inverse_jsd": ("out_of_fold", "jsd.inverse_jsd"),
    "dcor2": ("out_of_fold", "decorrelation.dcor2"),
    "cvm": ("out_of_fold", "decorrelation.cvm"),
    "pearson": ("out_of_fold", "decorrelation.pearson"),
    "data_mc_ks_max": ("out_of_fold", "data_mc.max_ks_distance"),
    "vz_significance": ("out_of_fold", "vz_peak.with_vz.significance"),
    "vz_significance_without_vz": ("out_of_fold", "vz_peak.without_vz.significance"),
    "val_z_fast_fit": ("validation", "significance.fast_fit"),
    "val_chi2_ndf_ref_mean": ("validation", "sculpting.mean.chi2_ndf_ref"),
    "val_inverse_jsd": ("validation", "jsd.inverse_jsd"),
    "val_vz_significance": ("validation", "vz_peak.with_vz.significance"),
}


# ------------------------------------------------------------------------------ summary
def _value(metrics: Mapping[str, Any], variant: str, path: str) -> tuple[Any, Any]:
    node: Any = metrics["variants"][variant]
    for key in path.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return None, None
        node = node[key]
    if isinstance(node, Mapping):
        return node.get("value"), node.get("error")
    return node, None


def summary_rows(
    metrics: Mapping[str, Mapping[str, Any]], points: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """One row per model: scanned values, status and every summary column (value, error)."""
    params = sorted({p for ov in points.values() for p in ov})
    rows = []
    for name, m in metrics.items():
        row: dict[str, Any] = {"model": name, "point": name in points}
        for p in params:
            row[p] = points.get(name, {}).get(p)
        row["method"] = m.get("method")
        row["collapsed"] = bool(m.get("collapsed"))
        row["vz_visible"] = bool(m["variants"]["out_of_fold"]["vz_peak"]["visible"])
        row["val_vz_visible"] = bool(m["variants"]["validation"]["vz_peak"]["visible"])
        for col, (variant, path) in SUMMARY_COLUMNS.items():
            v, e = _value(m, variant, path)
            row[col] = v
            row[f"{col}_err"] = e
        rows.append(row)
    return rows


def seed_spread(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Mean and standard deviation over the scan points of every summary column."""
    out: dict[str, dict[str, float | None]] = {}
    pts = [r for r in rows if r["point"]]
    for col in SUMMARY_COLUMNS:
        vals = [r[col] for r in pts if r[col] is not None]
        out[col] = {
            "mean": float(np.mean(vals)) if vals else None,
            "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
            "n": len(vals),
        }
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_tables(
    rows: Sequence[Mapping[str, Any]], csv_path: str, md_path: str, title: str
) -> None:
    import pandas as pd

    from vhbb.core.io import atomic_path

    frame = pd.DataFrame(list(rows))
    with atomic_path(csv_path) as tmp:
        frame.to_csv(tmp, index=False)
    shown = [c for c in frame.columns if not c.endswith("_err")]
    lines = [f"# {title}", "", "| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    for r in rows:
        cells = []
        for c in shown:
            err = r.get(f"{c}_err")
            cells.append(_fmt(r[c]) + (f" ± {err:.2g}" if isinstance(err, float) else ""))
        lines.append("| " + " | ".join(cells) + " |")
    with atomic_path(md_path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------ selection
def decorrelation_figure(metrics: Mapping[str, Any], variant: str, metric: str) -> float | None:
    """chi2_ndf_ref: the worst (largest) score quantile's chi2/ndf at the reference count --
    "at most the threshold in every quantile" (the highest quantile is the one sculpting
    shows in); inverse_jsd as before."""
    if metric != "chi2_ndf_ref":
        return _value(metrics, variant, "jsd.inverse_jsd")[0]
    quantiles = metrics["variants"][variant]["sculpting"].get("quantiles") or []
    values = [q["chi2_ndf_ref"]["value"] for q in quantiles]
    if not values or any(v is None for v in values):
        return None
    return float(max(values))


def passes_decorrelation(value: float | None, metric: str, threshold: float) -> bool:
    if value is None:
        return False
    return value <= threshold if metric == "chi2_ndf_ref" else value >= threshold


def select(
    metrics: Mapping[str, Mapping[str, Any]],
    *,
    metric: str,
    threshold: float,
    require_vz: bool,
    variant: str = "validation",
    min_gain_significance: float | None = None,
    require_data_mc: bool = False,
) -> dict[str, Any]:
    """The selection rule on ``variant`` figures (see the module docstring).

    Cuts: not collapsed, a fast-fit significance, the decorrelation figure, the VZ peak
    (visible with VZ and gone without, where it applies), a gain over the m_jj-only baseline
    above ``min_gain_significance`` times its paired bootstrap error, and (if required) the
    out-of-fold data/MC chi2 test in every control region.  Models without a fast-fit
    significance are never chosen.  If no model passes every cut, the most significant one is
    named with ``passes_cuts: false`` and the selection is a failed check.
    """
    candidates = []
    for name, m in metrics.items():
        z = _value(m, variant, "significance.fast_fit")[0]
        deco = decorrelation_figure(m, variant, metric)
        vz_node = m["variants"][variant]["vz_peak"]
        vz = bool(vz_node.get("visible"))
        gain = (m["variants"][variant].get("baseline") or {}).get("gain_significance", {})
        gain_sig = gain.get("value") if isinstance(gain, Mapping) else None
        reasons = []
        if min_gain_significance is not None and (
            gain_sig is None or gain_sig <= min_gain_significance
        ):
            reasons.append(
                f"gain over the m_jj-only baseline {_fmt(gain_sig)} sigma <= "
                f"{min_gain_significance:g}"
            )
        if require_data_mc and not m["variants"]["out_of_fold"]["data_mc"].get("passes_chi2"):
            reasons.append("data/MC chi2 p-value below the minimum in a control region")
        if m.get("collapsed"):
            reasons.append("collapsed")
        if z is None:
            reasons.append(
                "no fast-fit significance: "
                + str(m["variants"][variant]["significance"]["fast_fit"].get("reason"))
            )
        if not passes_decorrelation(deco, metric, threshold):
            reasons.append(f"{metric} = {_fmt(deco)} fails the threshold {threshold:g}")
        if require_vz and vz_node.get("visible") is not None and not vz:
            reasons.append(f"VZ peak: {vz_node.get('reason') or 'not visible'}")
        candidates.append(
            {
                "model": name,
                "significance": z,
                metric: deco,
                "vz_visible": vz_node.get("visible"),
                "gain_significance": gain_sig,
                "passes": not reasons,
                "reasons": reasons,
            }
        )
    passing = [c for c in candidates if c["passes"]]
    usable = [
        c
        for c in candidates
        if c["significance"] is not None and not metrics[c["model"]].get("collapsed")
    ]
    if passing:
        best = max(passing, key=lambda c: c["significance"])
        passes = True
    elif usable:
        best = max(usable, key=lambda c: c["significance"])
        passes = False
        log.warning(
            "no model passes the selection cuts; choosing the most significant: %s", best["model"]
        )
    else:
        best, passes = None, False
    out: dict[str, Any] = {
        "selected": None if best is None else best["model"],
        "passes_cuts": passes,
        "rule": {
            "variant": variant,
            "maximise": "significance.fast_fit",
            "decorrelation_metric": metric,
            "threshold": threshold,
            "require_vz_peak": require_vz,
            "min_gain_significance": min_gain_significance,
            "require_data_mc": require_data_mc,
        },
        "candidates": candidates,
    }
    if best is None:
        out["reason"] = "no model has a fast-fit significance (all collapsed or failed)"
    return out


def run_scan_summary(
    *,
    scan: str,
    metrics_files: Mapping[str, str],
    points: Mapping[str, Mapping[str, Any]],
    selection: Mapping[str, Any],
    outputs: Mapping[str, str],
) -> dict[str, Any]:
    """Tables, heatmaps, Pareto plot and best.json of one scan."""
    from vhbb.core.io import write_json
    from vhbb.plots import evaluation as eval_plots

    metrics = {n: json.loads(Path(p).read_text()) for n, p in metrics_files.items()}
    rows = summary_rows(metrics, points)
    write_tables(rows, outputs["csv"], outputs["md"], f"Scan {scan}")
    pool = set(points) | set(selection.get("candidates") or [])
    scan_metrics = {n: m for n, m in metrics.items() if n in pool}
    best = select(
        scan_metrics,
        metric=selection["metric"],
        threshold=float(selection["threshold"]),
        require_vz=bool(selection["require_vz"]),
        min_gain_significance=selection.get("min_gain_significance"),
        require_data_mc=bool(selection.get("require_data_mc", False)),
    )
    best["scan"] = scan
    if best["selected"] is not None:
        chosen = metrics[best["selected"]]
        best["reported"] = {
            col: dict(zip(("value", "error"), _value(chosen, "out_of_fold", path), strict=True))
            for col, (variant, path) in SUMMARY_COLUMNS.items()
            if variant == "out_of_fold"
        }
        best["overrides"] = dict(points.get(best["selected"], {}))
    best["spread"] = seed_spread(rows)
    axes = list(dict.fromkeys(p for ov in points.values() for p in ov))
    eval_plots.scan_heatmaps(rows, axes, outputs["heatmaps"], scan)
    eval_plots.pareto(rows, outputs["pareto"], scan, metric=selection["metric"])
    if "checks" in outputs:
        from vhbb.core.checks import Check, write_checks

        reasons = [f"{c['model']}: {'; '.join(c['reasons'])}" for c in best["candidates"]]
        write_checks(
            outputs["checks"],
            [
                Check(
                    stage="selection",
                    name="a candidate passes every cut",
                    status="pass" if best["passes_cuts"] else "fail",
                    where=scan,
                    message=f"selected {best['selected']}"
                    + (
                        ""
                        if best["passes_cuts"]
                        else "; no candidate passes: " + " | ".join(reasons)
                    ),
                )
            ],
        )
        if not best["passes_cuts"]:
            log.warning("scan %s: no candidate passes every cut (a failed check)", scan)
    write_json(outputs["best"], best)
    return best


def resolve_best(best_json: str | Path) -> str:
    """The model chosen in a scan's ``best.json`` (raises if there is none)."""
    from vhbb.core.errors import DataError

    data = json.loads(Path(best_json).read_text())
    if data.get("selected") is None:
        raise DataError(f"{best_json}: no model selected ({data.get('reason')})")
    return str(data["selected"])


def chosen_files(
    best_json: str | Path, sources: Mapping[str, Sequence[str]]
) -> tuple[str, list[str]]:
    """The model ``best.json`` chose and its files among ``sources`` (every model the scan can
    choose: its points and its selection candidates)."""
    from vhbb.core.errors import DataError

    chosen = resolve_best(best_json)
    if chosen not in sources:
        raise DataError(
            f"{best_json} chose '{chosen}', which is neither a point nor a candidate of the scan "
            f"({', '.join(sources)}): rerun the scan's summary (its inputs changed)"
        )
    return chosen, list(sources[chosen])


def run_best_copy(
    best_json: str, sources: Mapping[str, Sequence[str]], outputs: Sequence[str]
) -> str:
    """Copy the chosen model's files (``sources[model]``, in ``outputs`` order) to ``outputs``."""
    from vhbb.core.io import copy_file

    chosen, files = chosen_files(best_json, sources)
    if len(files) != len(outputs):
        raise ValueError("best copy: sources and outputs differ in length")
    for src, dst in zip(files, outputs, strict=True):
        copy_file(src, dst)
    log.info("best of %s: %s", best_json, chosen)
    return chosen


def run_best_metrics(
    best_json: str,
    sources: Mapping[str, Sequence[str]],
    outputs: Sequence[str],
    scan: str,
) -> str:
    """Copy the chosen model's ``metrics.json`` and ``plot_data.json``, marked as the choice."""
    from vhbb.core.io import write_json

    chosen, files = chosen_files(best_json, sources)
    for src, dst in zip(files, outputs, strict=True):
        data = json.loads(Path(src).read_text())
        if isinstance(data, dict) and "variants" in data:
            data["selected_from"] = scan
        data["model"] = f"best-{scan}"
        data["chosen_model"] = chosen
        write_json(dst, data)
    return chosen
