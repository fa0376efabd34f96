"""correctionlib scale factors named by a layout (``samples.layouts.<name>.corrections``).

Each entry names a correctionlib JSON file (``.json`` or ``.json.gz``), a correction in it, the
scope and the correction's inputs::

    corrections:
      - file: corrections/btag.json
        correction: deepJet_shape          # the correction's name in the file
        name: btag                         # cache columns weight_btagUp / weight_btagDown
        scope: jet                         # jet: product over a jet set; event: one per event
        jets: pair                         # pair (the two b-jet candidates), selected, all
        inputs: {pt: pt, abseta: abs(eta)} # input -> safe expression (or literal for strings)
        systematic: {input: systematic, nominal: central, up: up, down: down}

Per-jet expressions see the jet fields (``pt``, ``eta``, ``phi``, ``mass``, ``btag`` and the
layout's ``jets.fields``) and, broadcast to every jet, the event columns; per-event expressions
see the event columns (the derived nominal columns and the layout's event-level branches).
The nominal factors multiply the event weight (``gen_weight``; the sigma*L normalisation sums
the weights *before* corrections).  The variations are stored as **ratios to the nominal
weight**: ``weight_<name>Up = SF_up / SF_nominal`` (1 where the nominal is 0), so the varied
weight of an event is ``weight * weight_<name>Up``.  Only MC gets corrections; JES variations
reuse the nominal factors.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vhbb.core.errors import ConfigError, InputError
from vhbb.data import expressions

SCOPES = ("event", "jet")


@functools.lru_cache(maxsize=32)
def _load_set(path: str, mtime: float):  # type: ignore[no-untyped-def]
    import correctionlib

    try:
        return correctionlib.CorrectionSet.from_file(path)
    except Exception as exc:
        raise InputError(
            f"cannot read correctionlib file {path}: {type(exc).__name__}: {exc}"
        ) from None


def load(spec: Mapping[str, Any]):  # type: ignore[no-untyped-def]
    """The correctionlib ``Correction`` an entry names (errors name the file)."""
    path = str(spec["file"])
    if not Path(path).exists():
        raise InputError(
            f"correction file not found: {path} (samples.layouts.<name>.corrections, "
            f"correction '{spec.get('correction')}'); paths are relative to the working directory"
        )
    cset = _load_set(path, Path(path).stat().st_mtime)
    name = spec["correction"]
    held = sorted(cset)
    if name not in held:
        close = difflib.get_close_matches(name, held, n=3)
        raise ConfigError(
            f"correction '{name}' not in {path}"
            + (f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else "")
            + f"; the file holds: {', '.join(held) or 'nothing'}"
        )
    return cset[name]


def label(spec: Mapping[str, Any]) -> str:
    return str(spec.get("name") or spec["correction"])


def variation_columns(specs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The cache columns of the variations (``weight_<name>Up/Down``)."""
    out = []
    for spec in specs:
        if spec.get("systematic"):
            out += [f"weight_{label(spec)}Up", f"weight_{label(spec)}Down"]
    return out


def event_names(specs: Sequence[Mapping[str, Any]]) -> set[str]:
    """Every name the numeric input expressions read (jet fields, event columns or branches);
    string inputs are literals and the systematic input is set by the cache."""
    out: set[str] = set()
    for spec in specs:
        corr = load(spec)
        types = {v.name: v.type for v in corr.inputs}
        syst = (spec.get("systematic") or {}).get("input", "systematic")
        for key, value in (spec.get("inputs") or {}).items():
            if isinstance(value, str) and types.get(key) != "string" and key != syst:
                out |= expressions.names(value)
    return out


def _inputs(
    spec: Mapping[str, Any], corr, ns: Mapping[str, np.ndarray], systematic: str | None
) -> list[Any]:  # type: ignore[no-untyped-def]
    path = spec["file"]
    given = dict(spec.get("inputs") or {})
    syst = spec.get("systematic") or {}
    args: list[Any] = []
    for var in corr.inputs:
        if syst and var.name == syst.get("input", "systematic"):
            args.append(systematic)
            continue
        if var.name not in given:
            raise ConfigError(
                f"correction '{corr.name}' of {path} needs the input '{var.name}' ({var.type}): "
                f"map it under inputs (the correction's inputs: "
                f"{', '.join(v.name for v in corr.inputs)})"
            )
        value = given[var.name]
        if var.type == "string":
            args.append(str(value))
            continue
        if isinstance(value, int | float):
            args.append(float(value))
            continue
        missing = sorted(expressions.names(str(value)) - set(ns))
        if missing:
            hints = []
            for name in missing:
                close = difflib.get_close_matches(name, list(ns), n=3)
                hints.append(
                    f"'{name}'" + (f" (did you mean {', '.join(close)}?)" if close else "")
                )
            raise ConfigError(
                f"correction '{corr.name}' of {path}: input '{var.name}' = '{value}' uses the "
                f"missing column(s) {', '.join(hints)}; available: {', '.join(sorted(ns))}"
            )
        values = np.asarray(expressions.evaluate(str(value), ns), dtype=np.float64)
        args.append(values.astype(np.int64) if var.type == "int" else values)
    return args


def _factors(spec: Mapping[str, Any], corr, ns, counts, systematic):  # type: ignore[no-untyped-def]
    """Per-event factor (product over the jets for the jet scope)."""
    args = _inputs(spec, corr, ns, systematic)
    n = len(next(iter(ns.values()))) if ns else 0
    values = np.broadcast_to(np.asarray(corr.evaluate(*args), dtype=np.float64), (n,))
    if counts is None:
        return np.array(values)
    import awkward as ak

    return ak.to_numpy(ak.prod(ak.unflatten(np.asarray(values), counts), axis=1)).astype(np.float64)


def evaluate(
    specs: Sequence[Mapping[str, Any]],
    event_ns: Mapping[str, np.ndarray],
    jet_set,  # type: ignore[no-untyped-def]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Nominal weight factor per event and the variation ratios ``weight_<name>Up/Down``.

    ``event_ns``: event columns (equal-length arrays); ``jet_set(name)``: the awkward jet
    records of a jet set (``pair``, ``selected``, ``all``) for those events.
    """
    import awkward as ak

    n = len(next(iter(event_ns.values()))) if event_ns else 0
    nominal = np.ones(n)
    ratios: dict[str, np.ndarray] = {}
    for spec in specs:
        corr = load(spec)
        scope = spec.get("scope", "event")
        if scope not in SCOPES:
            raise ConfigError(f"correction '{corr.name}': scope must be one of {SCOPES}")
        counts = None
        ns: Mapping[str, np.ndarray] = event_ns
        if scope == "jet":
            jets = jet_set(spec.get("jets", "pair"))
            counts = ak.to_numpy(ak.num(jets))
            ns = {k: np.repeat(np.asarray(v), counts) for k, v in event_ns.items()}
            for name in jets.fields:
                ns[name] = np.asarray(ak.flatten(jets[name]), dtype=np.float64)
        syst = spec.get("systematic") or {}
        nom = _factors(spec, corr, ns, counts, syst.get("nominal", "central") if syst else None)
        nominal = nominal * nom
        if syst:
            safe = np.where(nom != 0, nom, 1.0)
            for suffix, key, default in (("Up", "up", "up"), ("Down", "down", "down")):
                varied = _factors(spec, corr, ns, counts, syst.get(key, default))
                ratios[f"weight_{label(spec)}{suffix}"] = np.where(nom != 0, varied / safe, 1.0)
    return nominal, ratios
