"""Ntuple caching: read ROOT files with uproot, derive analysis variables, select, assign regions.

Two input layouts are supported through the config, with no code change:

* ``flat``: the toy trees (one branch per quantity: ``Jet1_pt``, ``AddJet2_eta``, ``MET_pt``,
  JES variations as ``<branch>_jesUp/_jesDown``);
* ``nanoaod``: CMS NanoAOD (jagged ``Jet_*`` collections).  The two b-jet candidates are the
  two selected jets with the highest b-tag score; additional jets are the other selected jets.
  JES variations are made by scaling every jet with the parametrised uncertainty and
  propagating the change to MET.

Both layouts are first brought to one standard structure (:class:`JetEvent`), from which
:func:`derive` computes the same columns; regions are then evaluated per JES variation with the
safe expression evaluator, so events migrate between regions under JES shifts.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vhbb.core.errors import ConfigError, DataError, InputError, VhbbError
from vhbb.core.io import atomic_path
from vhbb.data import expressions
from vhbb.data.toy import jes_uncertainty

log = logging.getLogger(__name__)

VARIATIONS = ("jesUp", "jesDown")
KEY_COLUMNS = ("run", "luminosityBlock", "event")
NO_REGION = "none"
N_ADD_SLOTS = 6

# columns that change under a JES variation (stored as <name>_<variation>)
VARIED_COLUMNS = (
    "m_jj",
    "pt_jj",
    "j1_pt",
    "j2_pt",
    "met_pt",
    "dphi_jj_met",
    "n_add_jets",
    "add_jet_max_pt",
    "min_dphi_jet_met",
    "pt_balance",
)
NOMINAL_ONLY_COLUMNS = (
    "dr_jj",
    "deta_jj",
    "btag_max",
    "btag_min",
    "j1_eta",
    "j2_eta",
    "soft_activity",
)
DERIVED_COLUMNS = VARIED_COLUMNS + NOMINAL_ONLY_COLUMNS


@dataclass
class JetEvent:
    """The standard per-event structure both layouts are reduced to (one JES variation)."""

    jet_pt: np.ndarray  # (N, 2) the two b-jet candidates
    jet_eta: np.ndarray
    jet_phi: np.ndarray
    jet_mass: np.ndarray
    jet_btag: np.ndarray
    add_pt: np.ndarray  # (N, K) additional jets, pT = 0 for empty slots
    add_eta: np.ndarray
    add_phi: np.ndarray
    met_pt: np.ndarray
    met_phi: np.ndarray
    soft_activity: np.ndarray


def _dphi(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs((a - b + np.pi) % (2 * np.pi) - np.pi)


def derive(ev: JetEvent, add_jet_pt_min: float = 30.0, add_jet_eta_max: float = 2.5) -> dict:
    """Analysis columns from the standard structure (vectorised, with the ``vector`` package)."""
    import vector

    j1 = vector.array(
        {
            "pt": ev.jet_pt[:, 0],
            "eta": ev.jet_eta[:, 0],
            "phi": ev.jet_phi[:, 0],
            "mass": ev.jet_mass[:, 0],
        }
    )
    j2 = vector.array(
        {
            "pt": ev.jet_pt[:, 1],
            "eta": ev.jet_eta[:, 1],
            "phi": ev.jet_phi[:, 1],
            "mass": ev.jet_mass[:, 1],
        }
    )
    pair = j1 + j2
    counted = (ev.add_pt > add_jet_pt_min) & (np.abs(ev.add_eta) < add_jet_eta_max)
    n_add = counted.sum(axis=1)
    add_max = np.where(counted, ev.add_pt, 0.0).max(axis=1, initial=0.0)
    dphi_jets = np.concatenate(
        [
            _dphi(ev.jet_phi, ev.met_phi[:, None]),
            np.where(counted, _dphi(ev.add_phi, ev.met_phi[:, None]), np.pi),
        ],
        axis=1,
    )
    pt_jj = np.asarray(pair.pt)
    out = {
        "m_jj": np.asarray(pair.mass),
        "pt_jj": pt_jj,
        "j1_pt": ev.jet_pt.max(axis=1),
        "j2_pt": ev.jet_pt.min(axis=1),
        "met_pt": ev.met_pt,
        "dphi_jj_met": _dphi(np.asarray(pair.phi), ev.met_phi),
        "n_add_jets": n_add.astype(np.float64),
        "add_jet_max_pt": add_max,
        "min_dphi_jet_met": dphi_jets.min(axis=1),
        "pt_balance": pt_jj / np.maximum(ev.met_pt, 1e-6),
        "dr_jj": np.asarray(j1.deltaR(j2)),
        "deta_jj": np.abs(ev.jet_eta[:, 0] - ev.jet_eta[:, 1]),
        "btag_max": ev.jet_btag.max(axis=1),
        "btag_min": ev.jet_btag.min(axis=1),
        "j1_eta": np.where(ev.jet_pt[:, 0] >= ev.jet_pt[:, 1], ev.jet_eta[:, 0], ev.jet_eta[:, 1]),
        "j2_eta": np.where(ev.jet_pt[:, 0] >= ev.jet_pt[:, 1], ev.jet_eta[:, 1], ev.jet_eta[:, 0]),
        "soft_activity": ev.soft_activity.astype(np.float64),
    }
    return out


# ---------------------------------------------------------------------------- layouts
def flat_branches(layout: Mapping[str, Any], is_mc: bool) -> list[str]:
    """Branches the flat layout reads."""
    names = [
        *KEY_COLUMNS,
        layout["weight_branch"],
        layout["soft_activity_branch"],
        "MET_pt",
        "MET_phi",
    ]
    for slot in (1, 2):
        names += [f"Jet{slot}_{q}" for q in ("pt", "eta", "phi", "mass")]
        names.append(f"Jet{slot}_{layout['btag_branch']}")
    for i in range(1, layout["n_add_jet_slots"] + 1):
        names += [f"AddJet{i}_{q}" for q in ("pt", "eta", "phi")]
    if is_mc:
        for var in VARIATIONS:
            names += [f"Jet{s}_{q}_{var}" for s in (1, 2) for q in ("pt", "mass")]
            names += [f"AddJet{i}_pt_{var}" for i in range(1, layout["n_add_jet_slots"] + 1)]
            names += [f"MET_pt_{var}", f"MET_phi_{var}"]
    return names


def flat_events(
    arrays: Mapping[str, np.ndarray], layout: Mapping[str, Any], variation: str | None
) -> JetEvent:
    sfx = "" if variation is None else f"_{variation}"
    k = layout["n_add_jet_slots"]
    f8 = np.float64

    def stack(fmt: str, idx) -> np.ndarray:  # type: ignore[no-untyped-def]
        return np.stack([np.asarray(arrays[fmt.format(i)], dtype=f8) for i in idx], axis=1)

    return JetEvent(
        jet_pt=stack("Jet{}_pt" + sfx, (1, 2)),
        jet_eta=stack("Jet{}_eta", (1, 2)),
        jet_phi=stack("Jet{}_phi", (1, 2)),
        jet_mass=stack("Jet{}_mass" + sfx, (1, 2)),
        jet_btag=stack("Jet{}_" + layout["btag_branch"], (1, 2)),
        add_pt=stack("AddJet{}_pt" + sfx, range(1, k + 1)),
        add_eta=stack("AddJet{}_eta", range(1, k + 1)),
        add_phi=stack("AddJet{}_phi", range(1, k + 1)),
        met_pt=np.asarray(arrays["MET_pt" + sfx], dtype=f8),
        met_phi=np.asarray(arrays["MET_phi" + sfx], dtype=f8),
        soft_activity=np.asarray(arrays[layout["soft_activity_branch"]], dtype=f8),
    )


def nanoaod_branches(layout: Mapping[str, Any], is_mc: bool) -> list[str]:
    names = [
        *KEY_COLUMNS,
        "Jet_pt",
        "Jet_eta",
        "Jet_phi",
        "Jet_mass",
        layout["btag_branch"],
        "MET_pt",
        "MET_phi",
        layout["soft_activity_branch"],
    ]
    if layout.get("jet_id_min", 0) > 0:
        names.append("Jet_jetId")
    if is_mc:
        names.append(layout["weight_branch"])
    return names


def nanoaod_events(
    arrays, layout: Mapping[str, Any]
) -> tuple[dict[str | None, JetEvent], np.ndarray]:  # type: ignore[no-untyped-def]
    """Reduce jagged NanoAOD arrays to :class:`JetEvent` per variation.

    Returns the events per variation (None = nominal) and the mask of events with at least two
    selected jets (events with fewer cannot form a b-jet pair and are dropped).
    """
    from vhbb.data import layouts

    red = layouts.reduce_custom(arrays, layouts.nanoaod_preset(layout), is_mc=False)
    base = jet_event(red)
    out: dict[str | None, JetEvent] = {None: base}
    for var, sign in (("jesUp", 1.0), ("jesDown", -1.0)):
        out[var] = scale_jes(base, sign, layout["jes_uncertainty"])
    return out, red.has_pair


def jet_event(red) -> JetEvent:  # type: ignore[no-untyped-def]
    """The standard structure from a reduced chunk (:class:`vhbb.data.layouts.Reduced`)."""
    from vhbb.data.layouts import pad, two

    return JetEvent(
        jet_pt=two(red.pair.pt),
        jet_eta=two(red.pair.eta),
        jet_phi=two(red.pair.phi),
        jet_mass=two(red.pair.mass),
        jet_btag=two(red.pair.btag),
        add_pt=pad(red.add.pt, N_ADD_SLOTS),
        add_eta=pad(red.add.eta, N_ADD_SLOTS),
        add_phi=pad(red.add.phi, N_ADD_SLOTS),
        met_pt=red.met_pt,
        met_phi=red.met_phi,
        soft_activity=np.asarray(red.soft_activity, dtype=np.float64),
    )


def flat_jet_set(ev: JetEvent, name: str):  # type: ignore[no-untyped-def]
    """A jet set of the flat layout as awkward records (additional jets: mass and b-tag 0)."""
    import awkward as ak

    def reg(x: np.ndarray):  # type: ignore[no-untyped-def]
        return ak.from_regular(ak.Array(np.asarray(x, dtype=np.float64)), axis=1)

    pair = ak.zip(
        {
            "pt": reg(ev.jet_pt),
            "eta": reg(ev.jet_eta),
            "phi": reg(ev.jet_phi),
            "mass": reg(ev.jet_mass),
            "btag": reg(ev.jet_btag),
        }
    )
    if name == "pair":
        return pair
    keep = ak.Array(ev.add_pt > 0)
    zero = np.zeros_like(ev.add_pt)
    add = ak.zip(
        {
            "pt": reg(ev.add_pt),
            "eta": reg(ev.add_eta),
            "phi": reg(ev.add_phi),
            "mass": reg(zero),
            "btag": reg(zero),
        }
    )[ak.from_regular(keep, axis=1)]
    return ak.concatenate([pair, add], axis=1)


def scale_jes(ev: JetEvent, sign: float, unc: Mapping[str, float]) -> JetEvent:
    """Scale every jet by ``1 + sign * jes_uncertainty(pT)`` and propagate to MET."""
    s_pair = 1.0 + sign * jes_uncertainty(ev.jet_pt, unc["constant"], unc["over_pt"])
    s_add = 1.0 + sign * jes_uncertainty(ev.add_pt, unc["constant"], unc["over_pt"])
    dpx = (ev.jet_pt * (s_pair - 1) * np.cos(ev.jet_phi)).sum(1) + (
        ev.add_pt * (s_add - 1) * np.cos(ev.add_phi)
    ).sum(1)
    dpy = (ev.jet_pt * (s_pair - 1) * np.sin(ev.jet_phi)).sum(1) + (
        ev.add_pt * (s_add - 1) * np.sin(ev.add_phi)
    ).sum(1)
    mx = ev.met_pt * np.cos(ev.met_phi) - dpx
    my = ev.met_pt * np.sin(ev.met_phi) - dpy
    return JetEvent(
        jet_pt=ev.jet_pt * s_pair,
        jet_eta=ev.jet_eta,
        jet_phi=ev.jet_phi,
        jet_mass=ev.jet_mass * s_pair,
        jet_btag=ev.jet_btag,
        add_pt=ev.add_pt * s_add,
        add_eta=ev.add_eta,
        add_phi=ev.add_phi,
        met_pt=np.hypot(mx, my),
        met_phi=np.arctan2(my, mx),
        soft_activity=ev.soft_activity,
    )


# ---------------------------------------------------------------------------- regions
def variation_namespace(columns: Mapping[str, np.ndarray], variation: str | None) -> dict:
    """Columns as seen by a selection under ``variation`` (varied columns replace nominal)."""
    if variation is None:
        return {k: v for k, v in columns.items() if k in DERIVED_COLUMNS}
    ns = {k: columns[k] for k in DERIVED_COLUMNS if k in columns}
    for name in VARIED_COLUMNS:
        ns[name] = columns[f"{name}_{variation}"]
    return ns


def assign_regions(
    ns: Mapping[str, np.ndarray], preselection: str, definitions: Mapping[str, str]
) -> tuple[np.ndarray, np.ndarray]:
    """Preselection mask and region name per event (``"none"`` outside every region).

    Raises :class:`~vhbb.core.errors.ConfigError`-like :class:`DataError` if two regions overlap.
    """
    presel = expressions.evaluate(preselection, ns).astype(bool)
    n = presel.size
    region = np.full(n, NO_REGION, dtype=object)
    taken = np.zeros(n, dtype=bool)
    for name, expr in definitions.items():
        mask = presel & expressions.evaluate(expr, ns).astype(bool)
        overlap = mask & taken
        if overlap.any():
            others = sorted({str(r) for r in region[overlap]})
            raise DataError(
                f"regions overlap: {int(overlap.sum())} events pass both '{name}' and "
                f"{', '.join(repr(o) for o in others)}; regions must be mutually exclusive "
                "(fix their selections under regions.definitions)"
            )
        region[mask] = name
        taken |= mask
    return presel, region


# ---------------------------------------------------------------------------- reading
def _open_tree(path: str, tree: str):  # type: ignore[no-untyped-def]
    import uproot

    is_remote = "://" in path
    if not is_remote and not Path(path).exists():
        raise InputError(f"input file not found: {path} (check the sample's 'files' list)")
    try:
        fin = uproot.open(path)
    except Exception as exc:  # uproot raises many types for corrupt files
        raise InputError(
            f"cannot open ROOT file {path}: {type(exc).__name__}: {exc}. The file may be "
            "truncated or corrupt: copy or regenerate it."
        ) from None
    try:
        keys = [k.split(";")[0] for k in fin.keys(recursive=False)]
    except Exception as exc:
        raise InputError(f"cannot read the directory of ROOT file {path}: {exc}") from None
    if tree not in keys:
        close = difflib.get_close_matches(tree, keys, n=3)
        raise InputError(
            f"tree '{tree}' not found in {path}"
            + (f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else "")
            + f"; the file holds: {', '.join(keys) or 'nothing'}. Set the layout's 'tree'."
        )
    try:
        return fin[tree]
    except Exception as exc:
        raise InputError(
            f"cannot read tree '{tree}' from {path}: {exc}. The file may be corrupt."
        ) from None


def _check_branches(ttree, path: str, needed: list[str]) -> None:  # type: ignore[no-untyped-def]
    try:
        available = set(ttree.keys())
    except Exception as exc:
        raise InputError(
            f"cannot read the branches of {path}: {type(exc).__name__}: {exc}. The file may be "
            "truncated or corrupt: copy or regenerate it."
        ) from None
    for name in needed:
        if name not in available:
            close = difflib.get_close_matches(name, sorted(available), n=3)
            raise InputError(
                f"branch '{name}' missing in {path}"
                + (f" (close matches: {', '.join(close)})" if close else "")
                + "; check the sample's layout (samples.layouts) or the input file."
            )


def cache_file(
    path: str,
    *,
    sample: str,
    is_mc: bool,
    layout: Mapping[str, Any],
    preselection: str,
    regions: Mapping[str, str],
    nan_policy: str = "drop",
    chunk_size: int = 200_000,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read one ROOT file in bounded-memory chunks; return the selected events and statistics.

    The statistics hold the signed sum of generator weights over *all* events read (needed for
    the sigma*L normalisation), the counts read / with a b-jet pair / dropped for NaN / kept.
    """
    from tqdm import tqdm

    from vhbb.data import layouts

    kind = layout["kind"]
    ttree = _open_tree(path, layout["tree"])
    if kind == "nanoaod":
        layout, kind = layouts.nanoaod_preset(layout), "custom"
    if kind == "flat":
        needed = flat_branches(layout, is_mc)
        weight_branch = layout["weight_branch"]
    else:
        needed = layouts.custom_branches(layout, is_mc)
        weight_branch = str(layout.get("weight", "genWeight"))
    _check_branches(ttree, path, needed)
    extra = _correction_branches(ttree, path, layout, is_mc)
    needed = list(dict.fromkeys([*needed, *extra]))
    norm = dict(layout.get("normalisation") or {}) if kind == "custom" else {}
    stats = {
        "input": path,
        "n_read": 0,
        "sum_gen_weight": 0.0,
        "n_pair": 0,
        "n_nan_dropped": 0,
        "n_selected": 0,
    }
    frames: list[pd.DataFrame] = []
    library = "np" if kind == "flat" else "ak"
    columns = _extra_column_names(layout, is_mc)
    try:
        chunks = ttree.iterate(needed, step_size=chunk_size, library=library)
        for arrays in tqdm(
            chunks, desc=Path(path).name, unit="chunk", mininterval=10, disable=None
        ):
            frame = _process_chunk(
                arrays,
                kind,
                layout,
                is_mc,
                weight_branch,
                preselection,
                regions,
                stats,
                nan_policy,
                path,
                extra_branches=extra,
            )
            frames.append(frame)
    except VhbbError:
        raise
    except Exception as exc:
        raise InputError(
            f"failed reading {path} ({sample}): {type(exc).__name__}: {exc}. The file may be "
            "truncated or corrupt: copy or regenerate it."
        ) from None
    frame = (
        pd.concat(frames, ignore_index=True)
        if frames
        else _empty_frame(is_mc, list(regions), columns)
    )
    stats["n_selected"] = len(frame)
    if is_mc and norm.get("from") == "runs":
        stats["sum_gen_weight_events"] = stats["sum_gen_weight"]
        stats["sum_gen_weight"] = layouts.sum_of_weights(path, norm)
    elif is_mc and norm.get("from") == "value":
        if "value" not in norm:
            raise ConfigError(
                "config error at 'samples.layouts.<name>.normalisation': 'from: value' needs "
                "'value' (the sample's total sum of generator weights)"
            )
        stats["sum_gen_weight_fixed"] = float(norm["value"])
    if stats["n_read"] == 0:
        log.warning("%s (%s): tree '%s' holds no events", path, sample, layout["tree"])
    return frame, stats


def _correction_branches(ttree, path: str, layout: Mapping[str, Any], is_mc: bool) -> list[str]:  # type: ignore[no-untyped-def]
    """Branches the correction inputs read (names that are no cached column or jet field)."""
    from vhbb.data import corrections

    specs = list(layout.get("corrections") or []) if is_mc else []
    if not specs:
        return []
    jet_fields = {"pt", "eta", "phi", "mass", "btag"} | set(
        (layout.get("jets") or {}).get("fields") or {}
    )
    extra = set(_extra_column_names(layout, is_mc))
    names = sorted(corrections.event_names(specs) - set(DERIVED_COLUMNS) - jet_fields - extra)
    available = set(ttree.keys())
    for name in names:
        if name not in available:
            close = difflib.get_close_matches(name, sorted(available | jet_fields), n=3)
            raise InputError(
                f"correction input column '{name}' (samples.layouts.<name>.corrections) is "
                f"neither a cached column, a jet field ({', '.join(sorted(jet_fields))}) nor a "
                f"branch of {path}" + (f" (close matches: {', '.join(close)})" if close else "")
            )
    return names


def _extra_column_names(layout: Mapping[str, Any], is_mc: bool) -> list[str]:
    from vhbb.data import corrections

    names = list(layout.get("columns") or {}) if layout.get("kind") == "custom" else []
    if is_mc:
        names += corrections.variation_columns(layout.get("corrections") or [])
    return names


def _process_chunk(
    arrays,
    kind,
    layout,
    is_mc,
    weight_branch,
    preselection,
    regions,
    stats,
    nan_policy,
    path,
    *,
    extra_branches=(),
):  # type: ignore[no-untyped-def]
    from vhbb.data import corrections, layouts

    if kind == "nanoaod":
        layout, kind = layouts.nanoaod_preset(layout), "custom"
    extras: dict[str, np.ndarray] = {}
    if kind == "flat":
        n = len(arrays["event"])
        gen_weight = np.asarray(arrays[weight_branch], dtype=np.float64) if is_mc else np.ones(n)
        variations = {None: flat_events(arrays, layout, None)}
        if is_mc:
            for var in VARIATIONS:
                variations[var] = flat_events(arrays, layout, var)
        has_pair = np.ones(n, dtype=bool)
        keys = {k: np.asarray(arrays[k]) for k in KEY_COLUMNS}
        event_ns = {k: np.asarray(arrays[k], dtype=np.float64) for k in extra_branches}

        def jet_set(name: str):  # type: ignore[no-untyped-def]
            return flat_jet_set(variations[None], name)
    else:
        red = layouts.reduce_custom(
            arrays, layout, is_mc, path, stats["n_read"], extra=list(extra_branches)
        )
        n = len(red.has_pair)
        gen_weight = red.gen_weight
        base = jet_event(red)
        variations = {None: base}
        if is_mc:
            for var, sign in (("jesUp", 1.0), ("jesDown", -1.0)):
                variations[var] = scale_jes(base, sign, layout["jes_uncertainty"])
        has_pair = red.has_pair
        keys = dict(red.keys)
        event_ns = red.namespace
        extras = layouts.extra_columns(layout, red.namespace)
        jet_set = red.jet_set
    if is_mc:
        bad_weight = ~np.isfinite(gen_weight)
        if bad_weight.any():
            first = stats["n_read"] + int(np.flatnonzero(bad_weight)[0])
            raise DataError(
                f"{int(bad_weight.sum())} non-finite generator weight(s) in branch "
                f"'{weight_branch}' of {path} (first at entry {first}): the sigma*L "
                "normalisation sums every generated event's weight, so they cannot be dropped; "
                "fix or regenerate the file, or remove it from the sample's files"
            )
    stats["n_read"] += n
    stats["sum_gen_weight"] += float(gen_weight.sum())
    stats["n_pair"] += int(has_pair.sum())
    columns: dict[str, np.ndarray] = dict(keys)  # already restricted to the events with a pair
    columns["gen_weight"] = gen_weight[has_pair]
    columns.update(derive(variations[None], layout["add_jet_pt_min"], layout["add_jet_eta_max"]))
    specs = list(layout.get("corrections") or []) if is_mc else []
    if specs:
        ns = {**event_ns, **{k: columns[k] for k in DERIVED_COLUMNS}, **extras}
        factor, ratios = corrections.evaluate(specs, ns, jet_set)
        columns["gen_weight"] = columns["gen_weight"] * factor
        columns.update(ratios)
    columns.update(extras)
    for var in VARIATIONS:
        if var in variations:
            derived = derive(variations[var], layout["add_jet_pt_min"], layout["add_jet_eta_max"])
            for name in VARIED_COLUMNS:
                columns[f"{name}_{var}"] = derived[name]
    # non-finite values
    bad = np.zeros(len(columns["gen_weight"]), dtype=bool)
    for name, values in columns.items():
        if values.dtype.kind == "f":
            col_bad = ~np.isfinite(values)
            if col_bad.any():
                if nan_policy == "error":
                    raise DataError(
                        f"{int(col_bad.sum())} non-finite values of '{name}' in {path}; "
                        "fix the input or set samples.nan_policy: drop"
                    )
                log.warning(
                    "%s: %d non-finite values of '%s' (dropped)", path, int(col_bad.sum()), name
                )
                bad |= col_bad
    if bad.any():
        stats["n_nan_dropped"] += int(bad.sum())
        columns = {k: v[~bad] for k, v in columns.items()}
    keep = np.zeros(len(columns["gen_weight"]), dtype=bool)
    region_cols = {}
    for var in [None, *[v for v in VARIATIONS if v in variations]]:
        ns = variation_namespace(columns, var)
        presel, region = assign_regions(ns, preselection, regions)
        keep |= presel
        region_cols["region" if var is None else f"region_{var}"] = region
    columns.update(region_cols)
    columns = {k: v[keep] for k, v in columns.items()}
    return _frame(columns, is_mc, list(regions))


def _frame(columns: dict[str, np.ndarray], is_mc: bool, region_names: list[str]) -> pd.DataFrame:
    cats = pd.CategoricalDtype([NO_REGION, *region_names])
    data: dict[str, Any] = {}
    for k in KEY_COLUMNS:
        data[k] = np.asarray(columns[k]).astype(
            {"run": np.uint32, "luminosityBlock": np.uint32, "event": np.uint64}[k]
        )
    data["gen_weight"] = np.asarray(columns["gen_weight"], dtype=np.float64)
    for k, v in columns.items():
        if k in data:
            continue
        if k.startswith("region"):
            data[k] = pd.Categorical(v, dtype=cats)
        else:
            data[k] = np.asarray(v, dtype=np.float32)
    return pd.DataFrame(data)


def _empty_frame(
    is_mc: bool, region_names: list[str], extra: list[str] | tuple[str, ...] = ()
) -> pd.DataFrame:
    cols: dict[str, np.ndarray] = {k: np.zeros(0) for k in KEY_COLUMNS}
    cols["gen_weight"] = np.zeros(0)
    for name in DERIVED_COLUMNS:
        cols[name] = np.zeros(0)
    for name in extra:
        cols[name] = np.zeros(0)
    cols["region"] = np.zeros(0, dtype=object)
    if is_mc:
        for var in VARIATIONS:
            for name in VARIED_COLUMNS:
                cols[f"{name}_{var}"] = np.zeros(0)
            cols[f"region_{var}"] = np.zeros(0, dtype=object)
    return _frame(cols, is_mc, region_names)


# ---------------------------------------------------------------------------- parquet I/O
def write_parquet(path: str | Path, frame: pd.DataFrame, metadata: Mapping[str, Any]) -> None:
    """Write ``frame`` with JSON ``metadata`` (key ``vhbb``) atomically."""
    from vhbb.core.io import dumps

    table = pa.Table.from_pandas(frame, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[b"vhbb"] = dumps(metadata).encode()
    table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_metadata(path: str | Path) -> dict[str, Any]:
    import json

    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta.get(b"vhbb", b"{}"))


def _part_names(part_stats: list[dict[str, Any]]) -> list[str]:
    return [str(st.get("input") or f"part {i}") for i, st in enumerate(part_stats)]


def check_duplicate_keys(
    parts: list[pd.DataFrame], part_stats: list[dict[str, Any]], sample: str
) -> None:
    """Raise :class:`DataError` if an event key (run, luminosityBlock, event) repeats in a sample.

    The message names the files holding the repeated events (a file listed twice, two files
    with the same events).  Only events that passed the preselection are compared.
    """
    sizes = [len(p) for p in parts]
    if sum(sizes) < 2:
        return
    keys = pd.concat([p[list(KEY_COLUMNS)] for p in parts], ignore_index=True)
    repeated = keys.duplicated(keep=False).to_numpy()
    if not repeated.any():
        return
    part_of = np.repeat(np.arange(len(parts)), sizes)
    names = _part_names(part_stats)
    involved = sorted(set(part_of[repeated].tolist()))
    first = keys[repeated].iloc[0]
    n_extra = int(keys.duplicated(keep="first").sum())
    if len(involved) == 1:
        where = f"inside the file {names[involved[0]]}"
    else:
        where = f"in the files {', '.join(names[i] for i in involved)}"
    raise DataError(
        f"sample '{sample}': {n_extra} event(s) appear more than once {where} (same run, "
        f"luminosityBlock, event; e.g. {int(first['run'])}:{int(first['luminosityBlock'])}:"
        f"{int(first['event'])}): the same events would be counted twice; remove the duplicate "
        f"file from samples.list.{sample}.files (or fix the file)"
    )


def remove_overlap(
    frame: pd.DataFrame, higher: Mapping[str, pd.DataFrame], sample: str
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Drop the events of ``frame`` whose key is in a higher-priority data sample.

    ``higher`` maps each data sample ranked before ``sample`` in ``samples.overlap_removal``
    to its selected events' keys; an event is kept once, in the first sample of the priority
    order that holds it.
    """
    removed: dict[str, int] = {}
    if len(frame) == 0 or not higher:
        return frame, removed
    index = pd.MultiIndex.from_frame(frame[list(KEY_COLUMNS)])
    drop = np.zeros(len(frame), dtype=bool)
    for name, keys in higher.items():
        if len(keys) == 0:
            removed[name] = 0
            continue
        hit = index.isin(pd.MultiIndex.from_frame(keys[list(KEY_COLUMNS)]))
        removed[name] = int((hit & ~drop).sum())
        drop |= hit
    if drop.any():
        log.info(
            "sample '%s': %d events also in higher-priority data samples removed (%s)",
            sample,
            int(drop.sum()),
            ", ".join(f"{k}: {v}" for k, v in removed.items()),
        )
    return frame[~drop].reset_index(drop=True), removed


def merge_sample(
    parts: list[pd.DataFrame],
    part_stats: list[dict[str, Any]],
    *,
    sample: str,
    is_mc: bool,
    xsec_pb: float | None,
    lumi_fb: float,
    overlap: Mapping[str, pd.DataFrame] | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Concatenate one sample's files and normalise: ``w = sigma * L * genWeight / sum(genWeight)``.

    The sum runs over every generated event read (signed), so ``sum(w) = sigma * L`` before any
    selection.  Data get ``w = 1``.  A repeated event key inside the sample is an error naming
    the files; for data, ``overlap`` (keys of higher-priority data samples, see
    ``samples.overlap_removal``) removes the events already kept by another sample.

    Empty input is reported for what it is: no files, files holding no events, no event with a
    b-jet pair, every event dropped for non-finite values (errors); no event passing the
    preselection is a warning (the export then fails naming the sample).
    """
    if not parts:
        raise InputError(
            f"sample '{sample}' has no input files: list them under "
            f"samples.list.{sample}.files (or use source: toy)"
        )
    names = _part_names(part_stats)
    n_read = int(sum(int(s.get("n_read") or 0) for s in part_stats))
    if n_read == 0:
        raise InputError(
            f"sample '{sample}': its input files hold no events ({', '.join(names)} are "
            "empty trees); check the files (or the layout's 'tree') and samples.list."
            f"{sample}.files"
        )
    for name, st in zip(names, part_stats, strict=True):
        if not st.get("n_read"):
            log.warning("sample '%s': %s holds no events", sample, name)
    if is_mc and any(s.get("sum_gen_weight") is None for s in part_stats):
        bad = [n for n, s in zip(names, part_stats, strict=True) if s.get("sum_gen_weight") is None]
        raise DataError(
            f"sample '{sample}': the generator weights of {', '.join(bad)} are not finite; "
            "fix or regenerate the files"
        )
    check_duplicate_keys(parts, part_stats, sample)
    frame = pd.concat(parts, ignore_index=True)
    sum_gen = float(sum(float(s.get("sum_gen_weight") or 0.0) for s in part_stats))
    fixed = {s.get("sum_gen_weight_fixed") for s in part_stats}
    if is_mc and fixed != {None}:
        if len(fixed) != 1:
            raise ConfigError(
                f"sample '{sample}': its files disagree on the fixed sum of generator weights "
                f"(normalisation from: value): {sorted(map(str, fixed))}; use one layout"
            )
        sum_gen = float(next(iter(fixed)))  # type: ignore[arg-type]
    stats: dict[str, Any] = {
        "n_files": len(parts),
        "n_read": n_read,
        "n_pair": int(sum(s["n_pair"] for s in part_stats)),
        "n_nan_dropped": int(sum(s["n_nan_dropped"] for s in part_stats)),
        "n_selected": len(frame),
        "sum_gen_weight": sum_gen,
    }
    if not is_mc and overlap:
        frame, removed = remove_overlap(frame, overlap, sample)
        stats["n_overlap_removed"] = removed
        stats["n_selected"] = len(frame)
    if stats["n_pair"] == 0:
        raise DataError(
            f"sample '{sample}': none of the {n_read} events read has two selected jets (a "
            "b-jet pair); check the layout's jet_pt_min/jet_eta_max/jet_id_min "
            "(samples.layouts) and the input files"
        )
    if stats["n_nan_dropped"] >= stats["n_pair"]:
        raise DataError(
            f"sample '{sample}': every event with a b-jet pair ({stats['n_pair']}) was dropped "
            "for non-finite values (samples.nan_policy: drop; see the cache_file logs for the "
            "columns); fix the input files"
        )
    if is_mc:
        if not np.isfinite(sum_gen):
            raise DataError(
                f"sample '{sample}': generator weights contain NaN/inf; fix the input files"
            )
        if sum_gen <= 0:
            raise DataError(
                f"sample '{sample}': the signed sum of generator weights is {sum_gen:g} <= 0, so "
                "sigma*L normalisation is impossible; check the weight branch (samples.layouts)"
            )
        if xsec_pb is None:
            raise ConfigError(
                f"config error at 'samples.list.{sample}.xsec_pb': the MC sample '{sample}' "
                "needs a cross section (pb) for the sigma*L normalisation"
            )
        norm = xsec_pb * 1000.0 * lumi_fb / sum_gen
        frame["weight"] = frame["gen_weight"].to_numpy() * norm
        stats["sigma_l"] = xsec_pb * 1000.0 * lumi_fb
        stats["norm_factor"] = norm
    else:
        frame["weight"] = np.ones(len(frame))
    stats["n_negative"] = int((frame["gen_weight"] < 0).sum()) if len(frame) else 0
    if len(frame) == 0:
        log.warning(
            "sample '%s': %d events read, %d with a b-jet pair, none passes the preselection "
            "(regions.preselection) (empty output written; the export fails on it)",
            sample,
            n_read,
            stats["n_pair"],
        )
    else:
        for region, count in frame["region"].value_counts().items():
            stats.setdefault("n_region", {})[str(region)] = int(count)
    return frame, stats


def run_cache_file(
    path: str,
    output: str | Path,
    *,
    sample: str,
    is_mc: bool,
    layout: Mapping[str, Any],
    preselection: str,
    regions: Mapping[str, str],
    nan_policy: str,
    chunk_size: int,
) -> dict[str, Any]:
    """Cache one input file to parquet (statistics in the parquet metadata)."""
    frame, stats = cache_file(
        path,
        sample=sample,
        is_mc=is_mc,
        layout=layout,
        preselection=preselection,
        regions=regions,
        nan_policy=nan_policy,
        chunk_size=chunk_size,
    )
    stats["input"] = path
    log.info(
        "%s: read %d events, %d with a b-jet pair, %d dropped (non-finite), %d kept",
        path,
        stats["n_read"],
        stats["n_pair"],
        stats["n_nan_dropped"],
        stats["n_selected"],
    )
    write_parquet(output, frame, stats)
    return stats


def run_cache_sample(
    parts: list[str],
    output: str | Path,
    stats_output: str | Path,
    *,
    sample: str,
    is_mc: bool,
    xsec_pb: float | None,
    lumi: float | None,
    overlap_parts: Mapping[str, list[str]] | None = None,
) -> dict[str, Any]:
    """Merge one sample's cached files, normalise weights, write parquet + statistics JSON.

    ``overlap_parts`` (data with ``samples.overlap_removal``): the cached files of the data
    samples ranked before this one; their events are removed from this sample.
    """
    from vhbb.core.io import write_json
    from vhbb.core.provenance import provenance

    frames = [pd.read_parquet(p) for p in parts]
    part_stats = [read_metadata(p) for p in parts]
    overlap = {
        name: pd.concat(
            [pd.read_parquet(p, columns=list(KEY_COLUMNS)) for p in paths], ignore_index=True
        )
        if paths
        else pd.DataFrame({k: np.zeros(0, np.uint64) for k in KEY_COLUMNS})
        for name, paths in (overlap_parts or {}).items()
    }
    frame, stats = merge_sample(
        frames,
        part_stats,
        sample=sample,
        is_mc=is_mc,
        xsec_pb=xsec_pb,
        lumi_fb=lumi or 0.0,
        overlap=overlap or None,
    )
    stats["sample"] = sample
    prov = {"sample": sample, "is_mc": is_mc, "xsec_pb": xsec_pb, "lumi": lumi}
    if overlap_parts:
        prov["overlap_with"] = list(overlap_parts)
    stats["provenance"] = provenance(prov)
    write_parquet(output, frame, {k: v for k, v in stats.items() if k != "provenance"})
    write_json(stats_output, stats)
    return stats
