"""Blinding: with ``blinding.enabled``, the signal-region data inside the m_jj window reach no
file and no plot.

The end-to-end test is differential: in a copy of the finished run, the blinded events of the
data cache (signal region, m_jj inside the window) are replaced by other values (their
features permuted and smeared, m_jj redrawn inside the window: the same events, the same
region), the chain is rerun, and every file it writes (all of ``results/`` except the input
cache itself, which mirrors the ntuples) must be the same as before: tables and histograms
value by value, JSON with run times and provenance left out, figures pixel by pixel.  A file
that depends on those events in any way differs.  The function-level tests check the same for
random accepted windows.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.conftest import REPO, run_snakemake

#: keys of JSON/attributes that change between identical reruns
VOLATILE = (
    "seconds", "time", "timing", "per_second", "provenance", "created", "elapsed", "duration",
    "wall", "date",
)  # fmt: skip


def _window() -> tuple[str, tuple[float, float]]:
    from vhbb import config

    cfg = config.load_config([REPO / "config" / "config.yaml", REPO / "config" / "test.yaml"])
    assert cfg["blinding"]["enabled"]
    return cfg["export"]["training_region"], tuple(cfg["blinding"]["window"])


def _volatile(key: str) -> bool:
    return any(v in key.lower() for v in VOLATILE)


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items() if not _volatile(str(k))}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return "nan"
    return obj


def _h5_content(path: Path) -> dict[str, Any]:
    import h5py

    out: dict[str, Any] = {}
    with h5py.File(path, "r") as f:

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset) and obj.dtype != h5py.ref_dtype:
                out[name] = obj[()]  # (object references: their targets are visited too)
            for k, v in obj.attrs.items():
                if not _volatile(k) and k != "config":
                    out[f"{name}@{k}"] = v

        f.visititems(visit)
        for k, v in f.attrs.items():
            if not _volatile(k) and k != "config":
                out[f"@{k}"] = v
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            return False
        if a.dtype.kind in "fc":
            return bool(np.array_equal(a, b, equal_nan=True))
        return bool(np.array_equal(a, b))
    if isinstance(a, bytes | str) and isinstance(b, bytes | str):
        try:  # a JSON attribute: compare without its volatile keys
            return _clean(json.loads(a)) == _clean(json.loads(b))
        except (ValueError, TypeError):
            return a == b
    return bool(a == b)


def _differs(a: Path, b: Path) -> str | None:
    """Why ``b`` is not the same output as ``a`` (None when it is)."""
    suffix = a.suffix
    if suffix == ".json":
        same = _clean(json.loads(a.read_text())) == _clean(json.loads(b.read_text()))
        return None if same else "JSON content"
    if suffix in (".h5", ".hdf5"):
        ca, cb = _h5_content(a), _h5_content(b)
        if ca.keys() != cb.keys():
            return f"h5 keys {sorted(set(ca) ^ set(cb))[:5]}"
        bad = [k for k in ca if not _same(ca[k], cb[k])]
        return f"h5 {bad[:5]}" if bad else None
    if suffix == ".parquet":
        fa, fb = pd.read_parquet(a), pd.read_parquet(b)
        return None if fa.equals(fb) else "parquet table"
    if suffix == ".png":
        import matplotlib.image as mpimg

        ia, ib = mpimg.imread(a), mpimg.imread(b)
        return None if ia.shape == ib.shape and np.array_equal(ia, ib) else "image pixels"
    if suffix in (".log", ".html", ".pt", ".onnx", ".root", ".txt", ".md", ".csv", ".tex"):
        # text/binary outputs compared as they are, except those that embed run times or
        # object addresses (html embeds the figures checked above; .pt/.onnx: the models,
        # trained on exports without signal-region data, are compared through their scores)
        if suffix in (".log", ".html", ".pt", ".onnx", ".root"):
            return None
        return None if a.read_bytes() == b.read_bytes() else "bytes"
    return None if a.read_bytes() == b.read_bytes() else "bytes"


def _perturb_blinded(cache: Path, region: str, window: tuple[float, float], seed: int) -> int:
    """Replace the blinded events' values in the data cache (same events, same region)."""
    from vhbb.data.cache import read_metadata, write_parquet

    frame = pd.read_parquet(cache)
    meta = read_metadata(cache)
    sel = (
        (frame["region"].astype(str) == region)
        & (frame["m_jj"] >= window[0])
        & (frame["m_jj"] < window[1])
    ).to_numpy()
    n = int(sel.sum())
    if n == 0:
        return 0
    rng = np.random.default_rng(seed)
    keys = {"run", "luminosityBlock", "event", "region", "weight", "m_jj"}
    for col in frame.columns:
        if col in keys or not np.issubdtype(frame[col].dtype, np.floating):
            continue
        vals = frame.loc[sel, col].to_numpy()
        new = rng.permutation(vals) * (1 + 0.01 * rng.normal(size=n))
        frame.loc[sel, col] = new.astype(frame[col].dtype)
    lo, hi = window
    frame.loc[sel, "m_jj"] = rng.uniform(lo + 0.5, hi - 0.5, n).astype(frame["m_jj"].dtype)
    write_parquet(cache, frame, meta)
    return n


@pytest.mark.e2e
def test_blinded_signal_region_data_reach_no_file(e2e_run, workdir_copy):
    from vhbb import config

    region, window = _window()
    cfg = config.load_config([REPO / "config" / "config.yaml", REPO / "config" / "test.yaml"])
    data_samples = [
        s for s, v in cfg["samples"]["list"].items()
        if cfg["samples"]["processes"][v["process"]]["role"] == "data"
    ]  # fmt: skip
    changed = 0
    for sample in data_samples:
        changed += _perturb_blinded(
            workdir_copy / "results" / "cache" / f"{sample}.parquet", region, window, seed=3
        )
    assert changed > 0, "the test overlay must have blinded data events to test"
    run_snakemake(workdir_copy, "--cores", "2", "all")
    before = e2e_run / "results"
    compared, different = 0, []
    for path in sorted(before.rglob("*")):
        rel = path.relative_to(before)
        if not path.is_file() or rel.parts[0] == "cache":
            continue
        other = workdir_copy / "results" / rel
        assert other.exists(), f"{rel} is not written by the rerun"
        why = _differs(path, other)
        compared += 1
        if why:
            different.append(f"{rel} ({why})")
    assert compared > 100
    assert not different, (
        f"{len(different)} output(s) depend on the {changed} blinded signal-region data events "
        f"(m_jj in {window}): " + "; ".join(different[:20])
    )


@pytest.mark.e2e
def test_scores_and_plot_data_of_the_run_hold_no_blinded_event(e2e_run):
    """The run's own files: no score of a signal-region data event; the figures' side-band data
    lie outside the window."""
    from vhbb.fit.hists import read_plot_data

    region, window = _window()
    cache = pd.read_parquet(e2e_run / "results" / "cache" / "data.parquet")
    sr = (cache["region"].astype(str) == region).to_numpy()
    assert sr.any()
    score_files = sorted((e2e_run / "results" / "scores").glob("*/data.parquet"))
    assert score_files
    for path in score_files:
        score = pd.read_parquet(path)["score"].to_numpy()
        assert np.isnan(score[sr]).all(), path
        assert np.isfinite(score[~sr]).all(), path
    plot_files = sorted((e2e_run / "results" / "hists").glob("*/plot_data.h5"))
    assert plot_files
    for path in plot_files:
        m = read_plot_data(str(path))["m_jj"]
        assert len(m) and not np.any((m >= window[0]) & (m < window[1])), path
