"""The one recursive dict merge (Snakemake's ``--configfile`` rule, presets, scan overrides)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any


def deep_update(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``base`` updated recursively with ``overlay``.

    Mappings merge key by key; every other value (lists included) in ``overlay`` replaces the
    value in ``base``.  Neither argument is modified.
    """
    out = copy.deepcopy(dict(base))
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
