"""Out-of-fold scoring: every cached event of every sample, scored by the model that did not see it.

``results/scores/{model}/{sample}.parquet`` holds one row per row of
``results/cache/{sample}.parquet`` (same order): the event key, ``fold`` (= hash(key) mod k, the
export's definition) and ``score``; MC samples also get ``score_jes_<s>Up`` / ``Down`` per JES
source ``s`` of the cache (the model applied to the JES-varied features, for the fits' shape
variations; the sources from the cache's metadata, :func:`vhbb.data.events.jes_sources`): one
forward pass of every event per variation, ``1 + 2 x (number of sources)`` in all.  Evaluation
and fits share this one scoring path.

Blinding: with ``blinding.enabled`` the data events of the signal region get no score (NaN; the
rows stay, aligned with the cache), so no file downstream holds anything computed from them.
The blinded figures' side-band data are scored by :func:`sideband_scores` (rule
``hists_plot_data``), outside the m_jj window only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vhbb.data import jes as jesmod
from vhbb.data import keys
from vhbb.data.cache import VARIED_COLUMNS

log = logging.getLogger(__name__)


def feature_matrix(
    frame: pd.DataFrame, feature_names: Sequence[str], variation: str | None
) -> np.ndarray:
    cols = [
        f"{f}_{variation}" if (variation is not None and f in VARIED_COLUMNS) else f
        for f in feature_names
    ]
    return frame[cols].to_numpy(np.float32)


def score_frame(
    frame: pd.DataFrame,
    sample: str,
    models: Sequence[Any],
    feature_names: Sequence[str],
    is_mc: bool,
    jes_sources: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Scores of one sample's cached events with their out-of-fold models (``models[k]``); MC
    also under every JES variation of ``jes_sources`` (default: found in the frame's columns)."""
    from vhbb.ml.train import predict

    k = len(models)
    fold = keys.fold(
        sample,
        frame["run"].to_numpy(),
        frame["luminosityBlock"].to_numpy(),
        frame["event"].to_numpy(),
        k,
    )
    out = pd.DataFrame(
        {
            "run": frame["run"].to_numpy(),
            "luminosityBlock": frame["luminosityBlock"].to_numpy(),
            "event": frame["event"].to_numpy(),
            "fold": fold,
        }
    )
    if jes_sources is None:
        jes_sources = jesmod.sources_in(frame.columns, prefix="region_")
    variations: list[str | None] = [None]
    if is_mc:
        variations += list(jesmod.jes_variations(jes_sources))
    for var in variations:
        x = feature_matrix(frame, feature_names, var)
        score = np.full(len(frame), np.nan)
        for i, model in enumerate(models):
            sel = fold == i
            if sel.any():
                score[sel] = predict(model, x[sel])
        out["score" if var is None else f"score_{var}"] = score
    return out


def run_scores(
    model_paths: Sequence[str],
    cache_paths: Mapping[str, str],
    outputs: Mapping[str, str],
    is_mc: Mapping[str, bool],
    blinding: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Score every sample with the fold models (``model_paths`` in fold order).

    ``blinding``: ``{"enabled", "signal_region"}``; when enabled, the data events of the signal
    region are not scored (NaN)."""
    from vhbb.data.cache import write_parquet
    from vhbb.data.events import jes_sources
    from vhbb.ml.train import load_model

    models = [load_model(p) for p in model_paths]
    feature_names = models[0].feature_names
    summary = {}
    for sample, path in cache_paths.items():
        frame = pd.read_parquet(path)
        sources = jes_sources(path) if is_mc[sample] else []
        scored = score_frame(frame, sample, models, feature_names, is_mc[sample], sources)
        meta: dict[str, Any] = {"sample": sample, "n_folds": len(models), "jes_sources": sources}
        if blinding and blinding.get("enabled") and not is_mc[sample]:
            blind = (frame["region"].astype(str) == str(blinding["signal_region"])).to_numpy()
            scored.loc[blind, "score"] = np.nan
            meta["blinded_region"] = str(blinding["signal_region"])  # readers drop its rows
            log.info("%s: %d signal-region data events blinded (no score)", sample, blind.sum())
        write_parquet(outputs[sample], scored, meta)
        summary[sample] = len(scored)
        log.info("%s: scored %d events -> %s", sample, len(scored), Path(outputs[sample]))
    return summary


def sideband_scores(
    model_paths: Sequence[str],
    cache_paths: Mapping[str, str],
    signal_region: str,
    window: Sequence[float],
) -> dict[str, np.ndarray] | None:
    """``region``, ``m_jj`` and ``score`` of the signal-region data events outside the m_jj
    ``window`` (``[low, high)``, as the figures draw it), scored by their out-of-fold models; the
    events inside the window are neither read into the result nor scored.  None without data."""
    from vhbb.ml.train import load_model

    if not cache_paths:
        return None
    models = [load_model(p) for p in model_paths]
    parts = []
    for sample, path in cache_paths.items():
        frame = pd.read_parquet(path)
        m = frame["m_jj"].to_numpy(np.float64)
        keep = (frame["region"].astype(str) == signal_region).to_numpy() & (
            (m < float(window[0])) | (m >= float(window[1]))
        )
        side = frame[keep]
        scored = score_frame(side, sample, models, models[0].feature_names, False)
        parts.append({
            "region": side["region"].astype(str).to_numpy(),
            "m_jj": side["m_jj"].to_numpy(),
            "score": scored["score"].to_numpy(),
        })  # fmt: skip
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
