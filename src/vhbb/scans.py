"""Hyperparameter scans: static expansion into ordinary models, summaries and selection.

``scans.<name>`` in the config names a ``base`` model and one of

* ``grid`` -- path -> values; the cartesian product (in the order the paths are written);
* ``random`` -- ``n`` points drawn with a seeded generator (``values`` choice, ``uniform``,
  ``log_uniform``, ``int_uniform``; floats rounded to 3 significant digits);
* ``seeds`` -- ``N``: the base model with seed offsets 1..N (``<base>-seed<n>``).

Each point is an ordinary model with a readable name ``<base>-<key>_<value>-...`` where
``<key>`` is the last path component (the full dotted path where two scanned paths share it):
``disco-lambda_100-epochs_200``.  Expansion is static (a pure function of the config), so a dry
run lists every point's training jobs; :func:`vhbb.train.resolve_model` resolves point names
with ``scans=config["scans"]``.  Paths are checked against the model schema (an unknown path is
a config error naming it).

Summary (``results/scans/<scan>/``): ``summary.csv``/``summary.md`` (one row per model: the
points and the ``compare`` models), heatmaps of significance and sculpting over pairs of scanned
axes (best over the other axes), a Pareto plot of separation against decorrelation with the front
marked.  Selection (``best.json``): on the *validation* figures, the highest fast-fit
significance among the models whose decorrelation figure passes
``evaluation.sculpting.threshold`` and (if ``evaluation.vz_peak.required``) whose VZ peak is
visible; the out-of-fold figures of the choice are reported beside.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

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


@dataclass(frozen=True)
class ScanPoint:
    """One point: the scan, the base model and the overrides (dotted path -> value)."""

    scan: str
    base: str
    name: str
    overrides: Mapping[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------ expansion
@functools.lru_cache(maxsize=1)
def _model_schema() -> dict[str, Any]:
    """The model schema, parsed once per process (read only: expansion runs for every job)."""
    from .config import load_schema

    return load_schema()["$defs"]["model"]


def check_path(path: str, scan: str, schema: Mapping[str, Any] | None = None) -> None:
    """Raise :class:`ConfigError` unless ``path`` is a hyperparameter of the model schema."""
    node: Mapping[str, Any] = _model_schema() if schema is None else schema
    parts = path.split(".")
    for i, part in enumerate(parts):
        props = node.get("properties", {})
        if part not in props or part == "preset":
            import difflib

            known = sorted(props)
            close = difflib.get_close_matches(part, known, n=2)
            raise ConfigError(
                f"config error at 'scans.{scan}': unknown hyperparameter path '{path}'"
                + (f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else "")
                + f"; allowed here: {', '.join(known)}"
            )
        node = props[part]
        if i < len(parts) - 1 and node.get("type") != "object":
            raise ConfigError(
                f"config error at 'scans.{scan}': '{'.'.join(parts[: i + 1])}' is not a group "
                f"of hyperparameters (path '{path}')"
            )
    if node.get("type") == "object":
        raise ConfigError(
            f"config error at 'scans.{scan}': '{path}' is a group; scan one of its keys"
        )


def format_value(value: Any) -> str:
    """Path-safe text of a scanned value: ``100``, ``0.001``, ``1e-05``, ``true``, ``64x64``."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int):
        text = str(value)
    elif isinstance(value, float):
        text = f"{value:g}".replace("+", "")
    elif isinstance(value, list | tuple):
        text = "x".join(format_value(v) for v in value)
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def _keys(paths: Sequence[str]) -> dict[str, str]:
    last = [p.split(".")[-1] for p in paths]
    return {p: (k if last.count(k) == 1 else p) for p, k in zip(paths, last, strict=True)}


def point_name(base: str, overrides: Mapping[str, Any]) -> str:
    keys = _keys(list(overrides))
    return "-".join([base, *(f"{keys[p]}_{format_value(v)}" for p, v in overrides.items())])


def _round3(x: float) -> float:
    if x == 0:
        return 0.0
    return float(f"{x:.3g}")


def _draw(spec: Mapping[str, Any], rng: np.random.Generator) -> Any:
    if "values" in spec:
        values = list(spec["values"])
        return copy.deepcopy(values[int(rng.integers(len(values)))])
    if "uniform" in spec:
        lo, hi = spec["uniform"]
        return _round3(float(rng.uniform(lo, hi)))
    if "log_uniform" in spec:
        lo, hi = spec["log_uniform"]
        return _round3(float(math.exp(rng.uniform(math.log(lo), math.log(hi)))))
    lo, hi = spec["int_uniform"]
    return int(rng.integers(int(lo), int(hi) + 1))


def scan_points(config: Mapping[str, Any], scan: str) -> list[ScanPoint]:
    """The points of one scan, in a stable order (checked: paths, names, collisions)."""
    spec = config["scans"][scan]
    base = spec["base"]
    models = config.get("models", {}).get("list", {})
    if base not in models:
        raise ConfigError(
            f"config error at 'scans.{scan}.base': unknown model '{base}'; defined: "
            f"{', '.join(sorted(models))}"
        )
    overrides: list[dict[str, Any]] = []
    if "grid" in spec:
        schema = _model_schema()
        paths = list(spec["grid"])
        for p in paths:
            check_path(p, scan, schema)
        for combo in itertools.product(*(spec["grid"][p] for p in paths)):
            overrides.append(dict(zip(paths, combo, strict=True)))
    elif "random" in spec:
        schema = _model_schema()
        rnd = spec["random"]
        paths = list(rnd["parameters"])
        for p in paths:
            check_path(p, scan, schema)
        # the points depend on the scan's own seed only (not the global seed), so that the
        # point names are a function of the scan section alone (find_point relies on it)
        rng = np.random.default_rng(int(rnd.get("seed", 0)))
        seen: set[str] = set()
        for _ in range(int(rnd["n"])):
            point = {p: _draw(rnd["parameters"][p], rng) for p in paths}
            key = point_name(base, point)
            if key in seen:
                log.info("scan %s: duplicate random point %s dropped", scan, key)
                continue
            seen.add(key)
            overrides.append(point)
    elif "seeds" in spec:
        return [
            ScanPoint(scan, base, f"{base}-seed{n}", {"seed": n})
            for n in range(1, int(spec["seeds"]) + 1)
        ]
    else:
        raise ConfigError(f"config error at 'scans.{scan}': needs one of grid, random, seeds")
    return [ScanPoint(scan, base, point_name(base, o), o) for o in overrides]


def expand(config: Mapping[str, Any]) -> dict[str, ScanPoint]:
    """Every scan point of the config by model name (names checked to be unique and safe)."""
    out: dict[str, ScanPoint] = {}
    models = config.get("models", {}).get("list", {})
    for scan in config.get("scans", {}) or {}:
        if scan.startswith("best"):
            raise ConfigError(
                f"config error at 'scans.{scan}': scan names may not start with 'best'"
            )
        for point in scan_points(config, scan):
            if not NAME_RE.match(point.name):
                raise ConfigError(f"config error at 'scans.{scan}': bad point name '{point.name}'")
            if point.name in models:
                raise ConfigError(
                    f"config error at 'scans.{scan}': point '{point.name}' collides with "
                    "models.list"
                )
            if point.name in out and out[point.name].overrides != point.overrides:
                raise ConfigError(
                    f"config error at 'scans.{scan}': point '{point.name}' is also a point of "
                    f"scan '{out[point.name].scan}' with other values"
                )
            out.setdefault(point.name, point)
    return out


def apply_overrides(spec: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(spec))
    for path, value in overrides.items():
        node = out
        parts = path.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = copy.deepcopy(value)
    return out


def find_point(
    scans: Mapping[str, Any], models_cfg: Mapping[str, Any], name: str
) -> ScanPoint | None:
    """The scan point called ``name`` (None if it is none)."""
    if not scans:
        return None
    # memoised: this runs for every job of every point (quadratic in the points otherwise)
    key = json.dumps([scans, sorted(models_cfg.get("list", {}))], sort_keys=True, default=str)
    return _expand_cached(key).get(name)


@functools.lru_cache(maxsize=8)
def _expand_cached(key: str) -> dict[str, ScanPoint]:
    scans, names = json.loads(key)
    return expand({"scans": scans, "models": {"list": {n: {} for n in names}}})


def points_of(config: Mapping[str, Any], scan: str) -> list[str]:
    if scan not in (config.get("scans") or {}):
        raise ConfigError(
            f"config error: unknown scan '{scan}' (in best:{scan}); defined: "
            f"{', '.join(sorted(config.get('scans') or {}))}"
        )
    return [p.name for p in scan_points(config, scan)]


def compare_models(config: Mapping[str, Any], scan: str) -> list[str]:
    spec = config["scans"][scan]
    compare = spec.get("compare")
    names = list(config.get("models", {}).get("enabled", [])) if compare is None else list(compare)
    points = set(points_of(config, scan))
    return [n for n in names if n not in points]


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

    from .io import atomic_path

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
    path = "sculpting.mean.chi2_ndf_ref" if metric == "chi2_ndf_ref" else "jsd.inverse_jsd"
    return _value(metrics, variant, path)[0]


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
) -> dict[str, Any]:
    """The selection rule on ``variant`` figures (see the module docstring).

    Models without a fast-fit significance (collapsed, failed) are never chosen.  If no model
    passes the cuts, the most significant one is chosen with ``passes_cuts: false`` (warned).
    """
    candidates = []
    for name, m in metrics.items():
        z = _value(m, variant, "significance.fast_fit")[0]
        deco = decorrelation_figure(m, variant, metric)
        vz = bool(m["variants"][variant]["vz_peak"]["visible"])
        reasons = []
        if m.get("collapsed"):
            reasons.append("collapsed")
        if z is None:
            reasons.append(
                "no fast-fit significance: "
                + str(m["variants"][variant]["significance"]["fast_fit"].get("reason"))
            )
        if not passes_decorrelation(deco, metric, threshold):
            reasons.append(f"{metric} = {_fmt(deco)} fails the threshold {threshold:g}")
        if require_vz and not vz:
            reasons.append("VZ peak not visible")
        candidates.append(
            {
                "model": name,
                "significance": z,
                metric: deco,
                "vz_visible": vz,
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
    from . import eval_plots
    from .io import write_json

    metrics = {n: json.loads(Path(p).read_text()) for n, p in metrics_files.items()}
    rows = summary_rows(metrics, points)
    write_tables(rows, outputs["csv"], outputs["md"], f"Scan {scan}")
    scan_metrics = {n: m for n, m in metrics.items() if n in points}
    best = select(
        scan_metrics,
        metric=selection["metric"],
        threshold=float(selection["threshold"]),
        require_vz=bool(selection["require_vz"]),
    )
    best["scan"] = scan
    if best["selected"] is not None:
        chosen = metrics[best["selected"]]
        best["reported"] = {
            col: dict(zip(("value", "error"), _value(chosen, "out_of_fold", path), strict=True))
            for col, (variant, path) in SUMMARY_COLUMNS.items()
            if variant == "out_of_fold"
        }
        best["overrides"] = dict(points[best["selected"]])
    best["spread"] = seed_spread(rows)
    axes = list(dict.fromkeys(p for ov in points.values() for p in ov))
    eval_plots.scan_heatmaps(rows, axes, outputs["heatmaps"], scan)
    eval_plots.pareto(rows, outputs["pareto"], scan, metric=selection["metric"])
    write_json(outputs["best"], best)
    return best


def resolve_best(best_json: str | Path) -> str:
    """The model chosen in a scan's ``best.json`` (raises if there is none)."""
    from .errors import DataError

    data = json.loads(Path(best_json).read_text())
    if data.get("selected") is None:
        raise DataError(f"{best_json}: no model selected ({data.get('reason')})")
    return str(data["selected"])


def run_best_copy(
    best_json: str, sources: Mapping[str, Sequence[str]], outputs: Sequence[str]
) -> str:
    """Copy the chosen model's files (``sources[model]``, in ``outputs`` order) to ``outputs``."""
    import shutil

    from .io import atomic_path

    chosen = resolve_best(best_json)
    files = list(sources[chosen])
    if len(files) != len(outputs):
        raise ValueError("best copy: sources and outputs differ in length")
    for src, dst in zip(files, outputs, strict=True):
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
    log.info("best of %s: %s", best_json, chosen)
    return chosen


def point_overrides(config: Mapping[str, Any], scan: str) -> dict[str, dict[str, Any]]:
    """Model name -> overrides of every point of ``scan`` (for the summary job's params)."""
    from .config import canonical

    return canonical({p.name: dict(p.overrides) for p in scan_points(config, scan)})


def run_best_metrics(
    best_json: str,
    sources: Mapping[str, Sequence[str]],
    outputs: Sequence[str],
    scan: str,
) -> str:
    """Copy the chosen model's ``metrics.json`` and ``plot_data.json``, marked as the choice."""
    from .io import write_json

    chosen = resolve_best(best_json)
    for src, dst in zip(sources[chosen], outputs, strict=True):
        data = json.loads(Path(src).read_text())
        if isinstance(data, dict) and "variants" in data:
            data["selected_from"] = scan
        data["model"] = f"best-{scan}"
        data["chosen_model"] = chosen
        write_json(dst, data)
    return chosen
