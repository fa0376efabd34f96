"""Model references: a model's full hyperparameters from its presets, scan points and overrides.

Pure configuration: never imports torch or the training code (the import contract in
``tests/test_layers.py`` holds this).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from vhbb.config.loading import load_schema
from vhbb.core.dicts import deep_update
from vhbb.core.errors import ConfigError


@functools.cache
def method_names() -> tuple[str, ...]:
    """The training methods the schema accepts (``$defs.model.properties.method.enum``)."""
    return tuple(load_schema()["$defs"]["model"]["properties"]["method"]["enum"])


def resolve_model(
    models_cfg: Mapping[str, Any], name: str, *, scans: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A model's full hyperparameters: its preset (recursively) deep-updated by its own keys.

    With ``scans`` (the config's ``scans`` section) a scan-point name (:mod:`vhbb.config.scans`)
    resolves to its base model with the point's overrides applied.
    """
    defs = models_cfg["list"]
    if name not in defs and scans:
        from vhbb.config.scans import apply_overrides, find_point

        point = find_point(scans, models_cfg, name)
        if point is not None:
            return apply_overrides(resolve_model(models_cfg, point.base), point.overrides)
    if name not in defs:
        raise ConfigError(f"unknown model '{name}'; defined: {', '.join(sorted(defs))}")
    spec = dict(defs[name])
    preset = spec.pop("preset", None)
    seen: dict[str, None] = {}
    base: dict[str, Any] = {}
    presets = models_cfg.get("presets", {})
    while preset is not None:
        if preset not in presets:
            raise ConfigError(
                f"model '{name}': unknown preset '{preset}'; defined presets (models.presets): "
                f"{', '.join(sorted(presets)) or 'none'}"
            )
        if preset in seen:
            raise ConfigError(
                f"model '{name}': circular preset chain through '{preset}' "
                f"({' -> '.join([*seen, preset])}); break the loop in models.presets"
            )
        seen[preset] = None
        p = dict(presets[preset])
        preset = p.pop("preset", None)
        base = deep_update(p, base)
    spec = deep_update(base, spec)
    methods = method_names()
    if spec.get("method") not in methods:
        raise ConfigError(
            f"model '{name}': unknown method '{spec.get('method')}'; "
            f"use one of {', '.join(methods)}"
        )
    return spec
