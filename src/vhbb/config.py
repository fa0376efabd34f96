"""Configuration: loading with overlays, JSON-schema validation with defaults, model references.

The canonical schema is ``workflow/schemas/config.schema.yaml``; the Snakefile validates the
config against it before any rule runs, and :func:`load_config` does the same for Python users.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"

BEST_PREFIX = "best:"


def deep_update(base: dict, overlay: Mapping) -> dict:
    """Return ``base`` updated recursively with ``overlay`` (Snakemake's ``--configfile`` rule)."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _set_defaults_validator(cls: type) -> type:
    validate_properties = cls.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):  # type: ignore[no-untyped-def]
        if isinstance(instance, dict):
            for prop, subschema in properties.items():
                if "default" in subschema and prop not in instance:
                    instance[prop] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(cls, {"properties": set_defaults})


_DefaultValidator = _set_defaults_validator(jsonschema.Draft202012Validator)


def load_schema(path: str | Path = SCHEMA_PATH) -> dict:
    with open(path) as fh:
        return yaml.safe_load(fh)


def _format_error(error: jsonschema.ValidationError) -> str:
    where = ".".join(str(p) for p in error.absolute_path) or "<top level>"
    message = error.message
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        hints = []
        for key in extra:
            close = difflib.get_close_matches(str(key), allowed, n=2)
            hint = (
                f"unknown key '{where}.{key}'" if where != "<top level>" else f"unknown key '{key}'"
            )
            if close:
                hint += f" (did you mean {' or '.join(repr(c) for c in close)}?)"
            hints.append(hint)
        allowed_txt = ", ".join(allowed)
        return f"config error: {'; '.join(hints)}. Allowed keys here: {allowed_txt}."
    return f"config error at '{where}': {message}"


def validate(config: dict, schema: dict | None = None) -> dict:
    """Validate ``config`` in place (filling defaults) and return it; raise :class:`ConfigError`.

    The message names the offending key and, for typos, suggests the closest allowed key.
    """
    schema = load_schema() if schema is None else schema
    validator = _DefaultValidator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError("\n".join(_format_error(e) for e in errors[:5]))
    check_consistency(config)
    return config


def check_consistency(config: dict) -> None:
    """Cross-key checks a JSON schema cannot express."""
    samples = config.get("samples", {}).get("list", {})
    processes = config.get("samples", {}).get("processes", {})
    for name, sample in samples.items():
        if sample["process"] not in processes:
            raise ConfigError(
                f"config error at 'samples.list.{name}.process': unknown process "
                f"'{sample['process']}'; defined processes: {', '.join(sorted(processes))}"
            )
    regions = config.get("regions", {})
    export = config.get("export", {})
    for region in export.get("regions", []):
        if region not in regions.get("definitions", {}):
            raise ConfigError(
                f"config error at 'export.regions': unknown region '{region}'; defined: "
                f"{', '.join(sorted(regions.get('definitions', {})))}"
            )
    training = export.get("training_region")
    if training is not None and training not in export.get("regions", []):
        raise ConfigError(
            f"config error at 'export.training_region': '{training}' is not in export.regions"
        )
    for feature in config.get("features", {}).get("training", []):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", feature):
            raise ConfigError(f"config error at 'features.training': bad column name '{feature}'")


def load_config(paths: Iterable[str | Path], schema_path: str | Path = SCHEMA_PATH) -> dict:
    """Load a base config and overlays (later files deep-update earlier ones), then validate."""
    config: dict = {}
    for path in paths:
        with open(path) as fh:
            config = deep_update(config, yaml.safe_load(fh) or {})
    return validate(config, load_schema(schema_path))


def canonical(obj: Any) -> Any:
    """A canonical, JSON-compatible copy (sorted keys) used for params and hashes."""
    return json.loads(json.dumps(obj, sort_keys=True))


def section_hash(sections: Mapping[str, Any]) -> str:
    """SHA-256 (first 16 hex digits) of the canonical JSON of the given config sections."""
    text = json.dumps(sections, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def model_path_name(ref: str) -> str:
    """Map a model reference to a path-safe name: ``best:<scan>`` -> ``best-<scan>``."""
    if ref.startswith(BEST_PREFIX):
        return "best-" + ref[len(BEST_PREFIX) :]
    return ref


def model_reference(path_name: str) -> str:
    """Inverse of :func:`model_path_name`."""
    if path_name.startswith("best-"):
        return BEST_PREFIX + path_name[len("best-") :]
    return path_name
