"""Per-event reader of a cached sample joined with its classifier scores.

The cache (``results/cache/<sample>.parquet``) and the out-of-fold scores
(``results/scores/<model>/<sample>.parquet``) hold one row per cached event, in the same order;
:func:`read_events` joins them row by row after checking the event keys.  Used by the 2D
histograms (:mod:`vhbb.fit.hists`), the binning scan and the evaluation.
"""

from __future__ import annotations

import numpy as np

from vhbb.core.errors import DataError, InputError

KEYS = ("run", "luminosityBlock", "event")
JES_VARIATIONS = ("jesUp", "jesDown")


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


def read_events(
    cache_path: str, score_path: str, sample: str, is_mc: bool
) -> dict[str, np.ndarray]:
    """Cached columns joined row by row with the out-of-fold scores (keys checked).

    Columns: the keys, ``weight``, ``region`` (str), ``m_jj``, ``score`` and, for MC, the JES
    variations ``region_<v>``, ``m_jj_<v>``, ``score_<v>``.  Scores must be finite.  Data
    events of a region blinded by the scoring stage (no score) are left out.
    """
    import pandas as pd

    cols = [*KEYS, "weight", "region", "m_jj"]
    score_cols = [*KEYS, "score"]
    if is_mc:
        cols += [f"region_{v}" for v in JES_VARIATIONS] + [f"m_jj_{v}" for v in JES_VARIATIONS]
        score_cols += [f"score_{v}" for v in JES_VARIATIONS]
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
    out = {c: cache[c].to_numpy() for c in cols}
    keep = _unblinded_rows(score_path, cache["region"].astype(str).to_numpy(), is_mc)
    for c in score_cols[len(KEYS) :]:
        values = scores[c].to_numpy(np.float64)
        if not np.all(np.isfinite(values[keep])):
            raise DataError(f"{score_path}: column {c} has non-finite scores ({sample})")
        out[c] = values
    if not keep.all():
        out = {c: v[keep] for c, v in out.items()}
    out["region"] = out["region"].astype(str)
    if is_mc:
        for v in JES_VARIATIONS:
            out[f"region_{v}"] = out[f"region_{v}"].astype(str)
    return out
