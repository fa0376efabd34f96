"""Hyperparameter scans: static expansion of ``scans.<name>`` into ordinary models.

``scans.<name>`` in the config names a ``base`` model and one of

* ``grid`` -- path -> values; the cartesian product (in the order the paths are written);
* ``random`` -- ``n`` points drawn with a seeded generator (``values`` choice, ``uniform``,
  ``log_uniform``, ``int_uniform``; floats rounded to 3 significant digits);
* ``seeds`` -- ``N``: the base model with seed offsets 1..N (``<base>-seed<n>``).

Each point is an ordinary model with a readable name ``<base>-<key>_<value>-...`` where
``<key>`` is the last path component (the full dotted path where two scanned paths share it):
``disco-lambda_100-epochs_200``.  Expansion is static (a pure function of the config), so a dry
run lists every point's training jobs; :func:`vhbb.config.models.resolve_model` resolves point
names with ``scans=config["scans"]``.  Paths are checked against the model schema (an unknown
path is a config error naming it).  Summaries and selection: :mod:`vhbb.evaluation.scans`.
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
from typing import Any

import numpy as np

from vhbb.core.errors import ConfigError

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


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
    from vhbb.config.loading import load_schema

    return load_schema()["$defs"]["model"]


def check_path(path: str, scan: str, schema: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    """Raise :class:`ConfigError` unless ``path`` is a hyperparameter of the model schema.

    Returns the path's schema node (what :func:`check_value` validates scanned values with).
    """
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
    return node


def check_value(value: Any, node: Mapping[str, Any], where: str, path: str) -> None:
    """Validate a scanned ``value`` against the schema ``node`` of the key ``path`` it sets.

    ``where`` is the config location (``scans.<scan>.grid``); the message names the scan, the
    path and the value, as the schema validation of the same key in models.list would.
    """
    import jsonschema

    errors = list(jsonschema.Draft202012Validator(dict(node)).iter_errors(value))
    if errors:
        reason = min(errors, key=lambda e: len(list(e.absolute_path))).message
        description = node.get("description")
        raise ConfigError(
            f"config error at '{where}.{path}': scanned value {value!r} is not valid for "
            f"'{path}': {reason}" + (f" ({description})" if description else "")
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
            node = check_path(p, scan, schema)
            for value in spec["grid"][p]:
                check_value(value, node, f"scans.{scan}.grid", p)
        for combo in itertools.product(*(spec["grid"][p] for p in paths)):
            overrides.append(dict(zip(paths, combo, strict=True)))
    elif "random" in spec:
        schema = _model_schema()
        rnd = spec["random"]
        paths = list(rnd["parameters"])
        nodes = {p: check_path(p, scan, schema) for p in paths}
        for p in paths:
            for value in rnd["parameters"][p].get("values", []):
                check_value(value, nodes[p], f"scans.{scan}.random.parameters", p)
        # the points depend on the scan's own seed only (not the global seed), so that the
        # point names are a function of the scan section alone (find_point relies on it)
        rng = np.random.default_rng(int(rnd.get("seed", 0)))
        seen: set[str] = set()
        for _ in range(int(rnd["n"])):
            point = {p: _draw(rnd["parameters"][p], rng) for p in paths}
            for p, value in point.items():  # drawn from a range: may leave the key's domain
                check_value(value, nodes[p], f"scans.{scan}.random.parameters", p)
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


def point_overrides(config: Mapping[str, Any], scan: str) -> dict[str, dict[str, Any]]:
    """Model name -> overrides of every point of ``scan`` (for the summary job's params)."""
    from vhbb.core.provenance import canonical

    return canonical({p.name: dict(p.overrides) for p in scan_points(config, scan)})


def compare_models(config: Mapping[str, Any], scan: str) -> list[str]:
    spec = config["scans"][scan]
    compare = spec.get("compare")
    names = list(config.get("models", {}).get("enabled", [])) if compare is None else list(compare)
    names += list(spec.get("candidates") or [])  # competing in the selection: evaluated too
    points = set(points_of(config, scan))
    return list(dict.fromkeys(n for n in names if n not in points))
