"""Per-event reader of a cached sample joined with its classifier scores.

The cache (``results/cache/<sample>.parquet``) and the out-of-fold scores
(``results/scores/<model>/<sample>.parquet``) hold one row per cached event, in the same order;
:func:`read_events` joins them row by row after checking the event keys.  Used by the 2D
histograms (:mod:`vhbb.fit.hists`), the binning scan and the evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vhbb.core.errors import DataError, InputError
from vhbb.data import jes as jesmod

KEYS = ("run", "luminosityBlock", "event")
WEIGHT_SIDES = ("Up", "Down")


def weight_variation_columns(name: str) -> list[str]:
    """The cache columns of the weight systematic ``name``: ``weight_<name>Up/Down``."""
    return [f"weight_{name}{side}" for side in WEIGHT_SIDES]


def weight_variations(cache_path: str) -> list[str]:
    """Names of the weight systematics of a cache: every ``<name>`` with both
    ``weight_<name>Up`` and ``weight_<name>Down`` columns (sorted).  Reads the schema only."""
    import re

    pattern = re.compile(r"^weight_([A-Za-z][A-Za-z0-9_]*?)(Up|Down)$")
    sides: dict[str, set[str]] = {}
    for col in _schema_names(cache_path):
        m = pattern.match(col)
        if m:
            sides.setdefault(m.group(1), set()).add(m.group(2))
    return sorted(n for n, s in sides.items() if len(s) == 2)


def jes_sources(cache_path: str) -> list[str]:
    """The JES sources of a cache, in order: its metadata's ``jes_sources`` (written by
    :mod:`vhbb.data.cache`), else those with both ``region_jes_<s>Up`` and ``Down`` columns."""
    from vhbb.data.cache import read_metadata

    meta = read_metadata(cache_path)
    if "jes_sources" in meta:
        return [str(s) for s in meta["jes_sources"]]
    return jesmod.sources_in(_schema_names(cache_path), prefix="region_")


def _schema_names(cache_path: str) -> list[str]:
    import pyarrow.parquet as pq

    return list(pq.read_schema(cache_path).names)


def _unblinded_rows(score_path: str, region: np.ndarray, is_mc: bool) -> np.ndarray:
    """Rows to read: all, except (data only) those of the region the scoring stage blinded
    (its ``blinded_region`` metadata: those events have no score and are not returned)."""
    keep = np.ones(len(region), dtype=bool)
    if is_mc:
        return keep
    from vhbb.data.cache import read_metadata

    blinded = read_metadata(score_path).get("blinded_region")
    if blinded is not None:
        keep &= region != str(blinded)
    return keep


def reweighting_factors(
    entry: Mapping[str, Any], x: np.ndarray, process: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nominal, up and down factors of a derived reweighting (``entry``: ``file``, ``name``;
    the correctionlib file of :mod:`vhbb.fit.reweighting`) for events of ``process`` at ``x``."""
    import correctionlib

    path = str(entry["file"])
    try:
        corr = correctionlib.CorrectionSet.from_file(path)[str(entry["name"])]
    except Exception as exc:
        raise InputError(
            f"cannot read the reweighting '{entry['name']}' from {path}: {type(exc).__name__}: "
            f"{exc} (rerun the rule derive_reweighting)"
        ) from None
    x = np.asarray(x, dtype=np.float64)
    try:
        return tuple(corr.evaluate(side, process, x) for side in ("nominal", "up", "down"))  # type: ignore[return-value]
    except Exception as exc:
        raise InputError(
            f"{path}: the reweighting '{entry['name']}' has no factors for process '{process}' "
            f"({type(exc).__name__}: {exc}); rerun the rule derive_reweighting"
        ) from None


def reweighting_entries(spec: Mapping[str, Any], files: Mapping[str, str]) -> list[dict[str, Any]]:
    """The derived reweightings of ``spec["reweighting"]`` with their correction files."""
    entries = []
    for entry in spec.get("reweighting", []):
        if entry["name"] not in files:
            raise InputError(f"no correction file for the reweighting '{entry['name']}'")
        entries.append({**entry, "file": files[entry["name"]]})
    return entries


def reweighting_validation_path(correction_path: str) -> str:
    """``results/reweighting/<name>.json`` -> ``results/reweighting/<name>/validation.json``
    (written by the same job as the correction)."""
    stem = (
        correction_path[: -len(".json")] if correction_path.endswith(".json") else correction_path
    )
    return f"{stem}/validation.json"


def reweighting_warnings(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    """The warnings of the derived reweightings' validations (warn mode), for downstream files."""
    import json
    from pathlib import Path

    out: list[str] = []
    for entry in entries:
        path = Path(reweighting_validation_path(str(entry["file"])))
        if path.exists():
            out.extend(json.loads(path.read_text()).get("warnings", []))
    return out


def read_events(
    cache_path: str,
    score_path: str,
    sample: str,
    is_mc: bool,
    weights: Sequence[str] = (),
    reweighting: Sequence[Mapping[str, Any]] = (),
    process: str | None = None,
    jes: bool = True,
) -> dict[str, np.ndarray]:
    """Cached columns joined row by row with the out-of-fold scores (keys checked).

    Columns: the keys, ``weight``, ``region`` (str), ``m_jj``, ``score`` and, for MC, the JES
    variations ``region_<v>``, ``m_jj_<v>``, ``score_<v>`` of every source of the cache
    (:func:`jes_sources`; ``v = jes_<source>Up/Down``; not with ``jes=False``) and the ratio columns
    ``weight_<name>Up/Down`` of the weight systematics ``weights`` (a missing one raises
    :class:`~vhbb.core.errors.InputError`).  Scores must be finite.  Data events of a region
    blinded by the scoring stage (no score) are left out.

    ``reweighting``: derived reweightings (``name``, ``file``, ``variable``; see
    :mod:`vhbb.fit.reweighting`): MC ``weight`` is multiplied by each nominal factor
    (``reweighting_factor``: their product, 1 for data; ``process``: the sample's MC process,
    default its name) and the ratio columns
    ``weight_<name>Up/Down`` of a name listed in ``weights`` are computed from the file, not read.
    """
    import pandas as pd

    cols = [*KEYS, "weight", "region", "m_jj"]
    score_cols = [*KEYS, "score"]
    varied = jesmod.jes_variations(jes_sources(cache_path)) if is_mc and jes else ()
    if is_mc:
        cols += [f"region_{v}" for v in varied] + [f"m_jj_{v}" for v in varied]
        score_cols += [f"score_{v}" for v in varied]
        derived = {str(e["name"]) for e in reweighting}
        ratio_cols = [
            c for name in weights if name not in derived for c in weight_variation_columns(name)
        ]
        cols += [str(e["variable"]) for e in reweighting if str(e["variable"]) not in cols]
        if ratio_cols:
            missing = sorted(set(ratio_cols) - set(_schema_names(cache_path)))
            if missing:
                raise InputError(
                    f"{cache_path}: no column {', '.join(missing)} for the weight systematics "
                    f"(fit.systematics.weights) of sample '{sample}'"
                )
            cols += ratio_cols
    cache = pd.read_parquet(cache_path, columns=cols)
    try:
        scores = pd.read_parquet(score_path, columns=score_cols)
    except (KeyError, ValueError) as exc:
        raise InputError(f"{score_path}: needs columns {', '.join(score_cols)} ({exc})") from None
    if len(scores) != len(cache):
        raise InputError(
            f"{score_path}: {len(scores)} rows but {cache_path} has {len(cache)}; the scores "
            "must have one row per cached event, in the same order"
        )
    for key in KEYS:
        if not np.array_equal(cache[key].to_numpy(), scores[key].to_numpy()):
            raise InputError(f"{score_path}: event keys differ from {cache_path} (column {key})")
    out = {c: _column(cache[c]) for c in cols}
    keep = _unblinded_rows(score_path, out["region"], is_mc)
    for c in score_cols[len(KEYS) :]:
        values = scores[c].to_numpy(np.float64)
        if not np.all(np.isfinite(values[keep])):
            raise DataError(f"{score_path}: column {c} has non-finite scores ({sample})")
        out[c] = values
    if not keep.all():
        out = {c: v[keep] for c, v in out.items()}
    factor = np.ones(len(out["weight"]))
    for entry in reweighting if is_mc else ():
        nom, up, down = reweighting_factors(
            entry, out[str(entry["variable"])], sample if process is None else process
        )
        factor = factor * nom
        if entry["name"] in weights:
            safe = np.where(nom != 0, nom, 1.0)
            out[f"weight_{entry['name']}Up"] = np.where(nom != 0, up / safe, 1.0)
            out[f"weight_{entry['name']}Down"] = np.where(nom != 0, down / safe, 1.0)
    if reweighting and is_mc:
        out["weight"] = out["weight"] * factor
    out["reweighting_factor"] = factor
    return out


def _column(series: Any) -> np.ndarray:
    """A cached column as numpy; a categorical one (the regions) as an array of its names, by
    indexing the category names with the codes (the same values as ``astype(str)``, ~20x
    faster for the few categories of a region column)."""
    import pandas as pd

    if isinstance(series.dtype, pd.CategoricalDtype):
        codes = series.cat.codes.to_numpy()
        names = np.asarray([str(c) for c in series.cat.categories] + ["nan"])
        return names[codes]  # code -1 (missing): the last name, "nan"
    return series.to_numpy()
