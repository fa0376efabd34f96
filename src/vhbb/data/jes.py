"""Jet-energy-scale (JES) sources: their names, variation keys and relative uncertainties.

The JES uncertainty is a list of named sources (``toy.jes_sources``; a layout's
``jes_sources`` or ``jes: {from: branches, sources: ...}``), each one nuisance parameter
correlated across regions and processes, acting on the normalisation (events migrate between
regions) and on the shape.  For a source ``s`` (e.g. ``absolute``):

==============================  ==============================================================
``jes_<s>Up`` / ``jes_<s>Down``  the variation key (:func:`variation`, :func:`jes_variations`):
                                 the suffix of the toy's branches (``Jet1_pt_jes_absoluteUp``,
                                 ``MET_phi_jes_absoluteDown``), of the cached columns
                                 (``m_jj_jes_absoluteUp``, ``region_jes_absoluteUp``), of the
                                 export datasets (``features/jes_absoluteUp``) and scores
                                 (``score_jes_absoluteUp``), and the histogram variation
``jes_<s>``                      the fit parameter (:func:`parameter`; histosys)
==============================  ==============================================================

A parametrised source gives every jet the relative uncertainty (:func:`relative_uncertainty`)
``delta = constant + over_pt / max(pT, 1 GeV) + {b, c, l}[flavour]`` (absent terms are 0; the
flavour terms need the jet's true flavour: the toy only); the varied jet has pT and mass times
``1 +- delta`` and the change is propagated to MET.

The downstream stages do not read the configuration for the list: the cache records it in its
parquet metadata (``jes_sources``), the export in its HDF5 attributes, the histograms in their
metadata, and each stage reads it from its inputs (:func:`sources_in` finds it in column names).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from vhbb.core.errors import ConfigError

PREFIX = "jes_"
SIDES = (("Up", 1.0), ("Down", -1.0))
FLAVOURS = ("b", "c", "l")
TERMS = ("constant", "over_pt", *FLAVOURS)
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_VARIATION = re.compile(r"^jes_([A-Za-z][A-Za-z0-9_]*?)(Up|Down)$")


def variation(source: str, side: str) -> str:
    """The variation key of one side (``Up`` / ``Down``) of a source: ``jes_<source><side>``."""
    return f"{PREFIX}{source}{side}"


def parameter(source: str) -> str:
    """The fit parameter of a source: ``jes_<source>``."""
    return f"{PREFIX}{source}"


def jes_variations(sources: Iterable[str]) -> tuple[str, ...]:
    """Every variation key of ``sources``, in order, ``Up`` before ``Down``."""
    return tuple(variation(s, side) for s in sources for side, _ in SIDES)


def signed_variations(sources: Iterable[str]) -> list[tuple[str, str, float]]:
    """``(source, variation key, sign)`` of every side of ``sources`` (+1 up, -1 down)."""
    return [(s, variation(s, side), sign) for s in sources for side, sign in SIDES]


def source_of(name: str) -> str | None:
    """The source of a variation key (``jes_absoluteUp`` -> ``absolute``); None otherwise."""
    m = _VARIATION.match(name)
    return m.group(1) if m else None


def sources_in(names: Iterable[str], prefix: str = "") -> list[str]:
    """The sources with both ``<prefix>jes_<s>Up`` and ``<prefix>jes_<s>Down`` in ``names``, in
    the order of their first appearance (e.g. ``prefix="region_"`` on a cache's columns)."""
    sides: dict[str, set[str]] = {}
    for name in names:
        name = str(name)
        if not name.startswith(prefix):
            continue
        m = _VARIATION.match(name[len(prefix) :])
        if m:
            sides.setdefault(m.group(1), set()).add(m.group(2))
    return [s for s, got in sides.items() if len(got) == 2]


def as_mapping(sources: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None) -> dict[str, Any]:
    """Sources as an ordered ``{name: spec}`` mapping, from a mapping (a ``null`` spec, an
    overlay's way of dropping a source, is left out) or from the list form ``[{name: <name>,
    ...spec}]`` (:func:`as_list`: the rules' params keep the order that way, their canonical
    JSON sorts mapping keys)."""
    if not sources:
        return {}
    if isinstance(sources, Mapping):
        return {str(k): v for k, v in sources.items() if v is not None}
    return {str(e["name"]): {k: v for k, v in e.items() if k != "name"} for e in sources}


def as_list(sources: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None) -> list[dict]:
    """Sources in the order-keeping list form ``[{name: <name>, ...spec}]``."""
    return [{"name": n, **dict(spec)} for n, spec in as_mapping(sources).items()]


def check_names(sources: Iterable[str], where: str) -> list[str]:
    """The source names, checked (``[A-Za-z][A-Za-z0-9_]*``, each once); ``where``: the config
    key for the message."""
    names = [str(s) for s in sources]
    bad = [n for n in names if not NAME.match(n)]
    dupes = sorted({n for n in names if names.count(n) > 1})
    problems = []
    if bad:
        problems.append(
            f"bad JES source name(s) {', '.join(map(repr, bad))} (use [A-Za-z][A-Za-z0-9_]*)"
        )
    if dupes:
        problems.append(f"{', '.join(dupes)} listed twice")
    if problems:
        raise ConfigError(f"config error at '{where}': " + "; ".join(problems))
    return names


def needs_flavour(spec: Mapping[str, Any]) -> bool:
    """Whether a parametrised source has flavour terms (``b``, ``c``, ``l``)."""
    return any(f in spec for f in FLAVOURS)


def relative_uncertainty(
    spec: Mapping[str, Any], pt: np.ndarray, flavour: np.ndarray | None = None
) -> np.ndarray:
    """Relative uncertainty of a parametrised source: ``constant + over_pt / max(pT, 1)`` plus,
    with flavour terms, ``b`` / ``c`` / ``l`` by the jet's flavour (``flavour``: an array of
    ``'b'``, ``'c'``, ``'l'`` of the shape of ``pt``; needed only then)."""
    pt = np.asarray(pt)
    delta = float(spec.get("constant", 0.0)) + float(spec.get("over_pt", 0.0)) / np.maximum(pt, 1.0)
    if needs_flavour(spec):
        if flavour is None:
            raise ConfigError(
                "a JES source with flavour terms (b, c, l) needs the jets' true flavour (the "
                "toy only): give it constant / over_pt terms"
            )
        flav = np.broadcast_to(np.asarray(flavour), pt.shape)
        b, c, light = (float(spec.get(f, 0.0)) for f in FLAVOURS)
        delta = delta + np.where(flav == "b", b, np.where(flav == "c", c, light))
    return delta
