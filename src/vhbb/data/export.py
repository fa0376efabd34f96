"""HDF5 export of the analysis regions for training and fits (one file per region).

Layout of ``results/export/{region}.h5`` (all datasets have one row per event):

=====================  ===========  =====================================================
dataset                dtype        meaning
=====================  ===========  =====================================================
features/nominal       f4 (N, F)    training features, raw (not standardised)
features/jes_<s>Up     f4 (N, F)    the same under the JES variation of source ``<s>`` (Up and
                                    Down, every source; data: nominal)
label                  i1           1 signal, 0 background, -1 data
weight                 f8           signed sigma*L-normalised MC weight (data: 1)
process                i1           index into the ``process_names`` attribute
sample                 i2           index into the ``sample_names`` attribute
domain                 i1           0 MC, 1 data
m_jj, pt_jj            f4           dijet mass and pT (also ``m_jj_jes_<s>Up`` ... per source)
run, luminosityBlock,  u4, u4, u8   the event key (with ``sample``)
event
fold                   i1           hash(event key) mod k
validation             bool         validation event inside the training folds
cr_split               i1           data only: 0 domain-adaptation training, 1 fits; MC -1
=====================  ===========  =====================================================

Attributes: ``feature_names``, ``process_names``, ``sample_names``, ``region``, ``n_folds``,
``jes_sources`` (the JES sources of the MC caches, in order: every MC sample must have the same;
:mod:`vhbb.data.jes`), ``standardisation_mean`` / ``standardisation_std`` (from training-region
MC, unweighted), ``config`` (JSON of the sections used) and ``provenance`` (JSON).
"""

from __future__ import annotations

import difflib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vhbb.core.errors import ConfigError, DataError
from vhbb.core.io import atomic_path
from vhbb.data import jes as jesmod
from vhbb.data import keys as keymod
from vhbb.data.cache import VARIED_COLUMNS

log = logging.getLogger(__name__)


def cr_fit_half(
    sample: str,
    run: np.ndarray,
    lumi: np.ndarray,
    event: np.ndarray,
    fraction: float,
    seed: int,
) -> np.ndarray:
    """True for data events reserved for fits (``cr_split == 1``): a key hash below ``fraction``."""
    u_cr = keymod.unit_uniform(sample, run, lumi, event, keymod.SALT_CR_SPLIT + seed)
    return u_cr < fraction


def common_jes_sources(
    sources: Mapping[str, Sequence[str]], what: str = "the MC caches"
) -> list[str]:
    """The JES sources shared by every MC sample (``sources[sample]``, in order); samples that
    differ are a :class:`~vhbb.core.errors.DataError` (their varied columns would not line up)."""
    lists = {name: list(got) for name, got in sources.items()}
    if not lists:
        return []
    first, ref = next(iter(lists.items()))
    odd = sorted(n for n, got in lists.items() if got != ref)
    if odd:
        raise DataError(
            f"{what} differ in their JES sources: {first} has {ref or 'none'}, "
            + ", ".join(f"{n} has {lists[n] or 'none'}" for n in odd)
            + "; every MC sample needs the same sources (toy.jes_sources, the layouts' "
            "jes_sources or jes.sources): recache the samples"
        )
    return ref


def frame_jes_sources(
    frames: Mapping[str, pd.DataFrame],
    samples: Mapping[str, Mapping[str, Any]],
    processes: Mapping[str, Mapping[str, Any]],
) -> list[str]:
    """The JES sources of the MC frames, found in their columns (``region_jes_<s>Up/Down``)."""
    return common_jes_sources(
        {
            name: jesmod.sources_in(frame.columns, prefix="region_")
            for name, frame in frames.items()
            if processes[samples[name]["process"]]["role"] != "data"
        }
    )


def export_jes_sources(arrays: Mapping[str, Any], attrs: Mapping[str, Any]) -> list[str]:
    """The JES sources of an export: its ``jes_sources`` attribute, else those with both
    ``features/jes_<s>Up`` and ``Down`` datasets."""
    if "jes_sources" in attrs:
        return [str(s) for s in attrs["jes_sources"]]
    names = [k[len("features/") :] for k in arrays if str(k).startswith("features/")]
    return jesmod.sources_in(names)


def region_table(
    frames: Mapping[str, pd.DataFrame],
    *,
    region: str,
    samples: Mapping[str, Mapping[str, Any]],
    processes: Mapping[str, Mapping[str, Any]],
    features: list[str],
    export_cfg: Mapping[str, Any],
    blinded: bool,
    seed: int,
    jes_sources: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Arrays of one region's export (pure function of the cached frames; ``jes_sources``:
    the MC caches' JES sources, by default found in the MC frames' columns)."""
    process_names = list(processes)
    sample_names = list(samples)
    if jes_sources is None:
        jes_sources = frame_jes_sources(frames, samples, processes)
    varied = jesmod.jes_variations(jes_sources)
    pieces: list[dict[str, np.ndarray]] = []
    for name, frame in frames.items():
        spec = samples[name]
        role = processes[spec["process"]]["role"]
        is_data = role == "data"
        if is_data and blinded and region == export_cfg["training_region"]:
            log.info("blinded: %s data in %s not exported", name, region)
            continue
        sel = frame[frame["region"].astype(str) == region]
        n = len(sel)
        missing = [f for f in features if f not in sel.columns]
        if missing:
            close = difflib.get_close_matches(missing[0], list(sel.columns), n=3)
            raise ConfigError(
                f"features.training: unknown feature '{missing[0]}' (sample {name})"
                + (f"; did you mean {', '.join(close)}?" if close else "")
            )
        piece: dict[str, np.ndarray] = {
            "features/nominal": sel[features].to_numpy(np.float32).reshape(n, len(features)),
        }
        for var in varied:
            cols = [f"{f}_{var}" if (f in VARIED_COLUMNS and not is_data) else f for f in features]
            piece[f"features/{var}"] = sel[cols].to_numpy(np.float32).reshape(n, len(features))
        piece["label"] = np.full(n, -1 if is_data else (1 if role == "signal" else 0), np.int8)
        piece["weight"] = sel["weight"].to_numpy(np.float64)
        piece["process"] = np.full(n, process_names.index(spec["process"]), np.int8)
        piece["sample"] = np.full(n, sample_names.index(name), np.int16)
        piece["domain"] = np.full(n, 1 if is_data else 0, np.int8)
        for col in ("m_jj", "pt_jj"):
            piece[col] = sel[col].to_numpy(np.float32)
            for var in varied:
                src = f"{col}_{var}" if not is_data else col
                piece[f"{col}_{var}"] = sel[src].to_numpy(np.float32)
        run = sel["run"].to_numpy(np.uint32)
        lumi = sel["luminosityBlock"].to_numpy(np.uint32)
        event = sel["event"].to_numpy(np.uint64)
        piece["run"], piece["luminosityBlock"], piece["event"] = run, lumi, event
        k = export_cfg["folds"]
        piece["fold"] = keymod.fold(name, run, lumi, event, k)
        u_val = keymod.unit_uniform(name, run, lumi, event, keymod.SALT_VALIDATION + seed)
        piece["validation"] = u_val < export_cfg["validation_fraction"]
        if is_data:
            fit_half = cr_fit_half(name, run, lumi, event, export_cfg["cr_data_fit_fraction"], seed)
            piece["cr_split"] = fit_half.astype(np.int8)
        else:
            piece["cr_split"] = np.full(n, -1, np.int8)
        pieces.append(piece)
    if not pieces:
        raise ConfigError(f"export: no sample provides region '{region}'")
    out = {key: np.concatenate([p[key] for p in pieces]) for key in pieces[0]}
    if len(out["label"]) == 0:
        log.warning("region '%s' selects no event: writing a valid empty export", region)
    return out


def check_samples(
    frames: Mapping[str, pd.DataFrame],
    *,
    regions: list[str],
    samples: Mapping[str, Mapping[str, Any]],
    processes: Mapping[str, Mapping[str, Any]],
    blinded: bool,
    training_region: str,
) -> None:
    """Fail (naming the sample and the regions) when a sample contributes nothing.

    A sample whose every event failed the preselection (an empty cache), or none of whose
    events falls in an exported region, would silently be missing from the export and from the
    fits downstream.  Data samples are compared by event key: an event in two data samples is
    an error unless ``samples.overlap_removal`` removed it at caching.
    """
    for name, frame in frames.items():
        process = samples[name]["process"]
        is_data = processes[process]["role"] == "data"
        visible = [r for r in regions if not (is_data and blinded and r == training_region)]
        if not visible:
            continue
        if len(frame) == 0:
            raise DataError(
                f"export: sample '{name}' (process '{process}') has no event passing "
                f"regions.preselection (results/cache/{name}.parquet is empty), so regions "
                f"{', '.join(visible)} would have no '{process}' events and the fits would run "
                f"without it: check regions.preselection and the sample's input files (logs/"
                f"cache/{name}.log), or remove '{name}' from samples.list"
            )
        in_region = frame["region"].astype(str).isin(visible)
        if not in_region.any():
            raise DataError(
                f"export: sample '{name}' (process '{process}') has {len(frame)} events after "
                f"the preselection but none in the exported regions {', '.join(visible)}: check "
                "regions.definitions and export.regions, or remove the sample from samples.list"
            )
    data = [n for n in frames if processes[samples[n]["process"]]["role"] == "data"]
    if len(data) > 1:
        keys = pd.concat(
            [frames[n][["run", "luminosityBlock", "event"]].assign(_sample=n) for n in data],
            ignore_index=True,
        )
        shared = keys.duplicated(["run", "luminosityBlock", "event"], keep=False).to_numpy()
        if shared.any():
            names = sorted(set(keys["_sample"][shared]))
            first = keys[shared].iloc[0]
            raise DataError(
                f"export: data samples {', '.join(names)} share "
                f"{int(keys.duplicated(['run', 'luminosityBlock', 'event']).sum())} events (same "
                f"run, luminosityBlock, event; e.g. {int(first['run'])}:"
                f"{int(first['luminosityBlock'])}:{int(first['event'])}): enable "
                "samples.overlap_removal (with a priority order) to keep each event once, or "
                "remove the duplicated sample"
            )


def standardisation(table: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of the nominal features over MC events (unweighted)."""
    x = table["features/nominal"][table["domain"] == 0].astype(np.float64)
    if len(x) == 0:
        n_features = table["features/nominal"].shape[1]
        return np.zeros(n_features), np.ones(n_features)
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    return mean, np.where(std > 0, std, 1.0)


def write_h5(path: str | Path, table: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> None:
    """Write one region's arrays atomically.

    Uncompressed: the float columns compress by only ~35 % (gzip, shuffle), and every training,
    evaluation and weight job reads the whole file, which gzip made 14x slower (SR region of the
    default run: 0.68 s against 0.05 s a read).
    """
    import h5py

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as fout:
            for key, values in table.items():
                fout.create_dataset(key, data=values)
            for key, value in attrs.items():
                if isinstance(value, dict | list) and not (
                    isinstance(value, list) and value and isinstance(value[0], int | float)
                ):
                    fout.attrs[key] = json.dumps(value) if isinstance(value, dict) else value
                else:
                    fout.attrs[key] = value


def read_h5(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read an export file back into (arrays, attributes)."""
    import h5py

    arrays: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as fin:
        fin.visititems(
            lambda name, obj: (
                arrays.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None
            )
        )
        attrs = {}
        for key, value in fin.attrs.items():
            if isinstance(value, bytes | str) and key in ("config", "provenance"):
                attrs[key] = json.loads(value)
            elif isinstance(value, np.ndarray) and value.dtype.kind in "OSU":
                attrs[key] = [v.decode() if isinstance(v, bytes) else str(v) for v in value]
            else:
                attrs[key] = value
    return arrays, attrs


def run_export(
    cache_files: Mapping[str, str],
    outputs: Mapping[str, str],
    summary_path: str,
    spec: Mapping[str, Any],
) -> dict[str, Any]:
    """Write every exported region (standardisation from the training region's MC)."""
    from vhbb.core.io import write_json
    from vhbb.core.provenance import provenance
    from vhbb.data.events import jes_sources as cache_jes_sources

    frames = {name: pd.read_parquet(path) for name, path in cache_files.items()}
    sources = common_jes_sources(
        {
            name: cache_jes_sources(path)
            for name, path in cache_files.items()
            if spec["processes"][spec["samples"][name]["process"]]["role"] != "data"
        }
    )
    export_cfg = spec["export"]
    check_samples(
        frames,
        regions=list(outputs),
        samples=spec["samples"],
        processes=spec["processes"],
        blinded=spec["blinded"],
        training_region=export_cfg["training_region"],
    )
    tables = {
        region: region_table(
            frames,
            region=region,
            samples=spec["samples"],
            processes=spec["processes"],
            features=list(spec["features"]),
            export_cfg=export_cfg,
            blinded=spec["blinded"],
            seed=spec["seed"],
            jes_sources=sources,
        )
        for region in outputs
    }
    mean, std = standardisation(tables[export_cfg["training_region"]])
    prov = provenance(dict(spec))
    process_names = list(spec["processes"])
    summary: dict[str, Any] = {"regions": {}, "jes_sources": list(sources), "provenance": prov}
    for region, path in outputs.items():
        table = tables[region]
        attrs = {
            "region": region,
            "feature_names": list(spec["features"]),
            "process_names": process_names,
            "sample_names": list(spec["samples"]),
            "n_folds": int(export_cfg["folds"]),
            "jes_sources": list(sources),
            "standardisation_mean": mean,
            "standardisation_std": std,
            "config": dict(spec),
            "provenance": prov,
        }
        write_h5(path, table, attrs)
        yields = {}
        for i, proc in enumerate(process_names):
            sel = table["process"] == i
            if sel.any():
                yields[proc] = {
                    "events": int(sel.sum()),
                    "yield": float(table["weight"][sel].sum()),
                    "sum_w2": float((table["weight"][sel] ** 2).sum()),
                }
        summary["regions"][region] = {"n_events": len(table["label"]), "processes": yields}
        log.info("%s: %d events -> %s", region, len(table["label"]), path)
    write_json(summary_path, summary)
    return summary
