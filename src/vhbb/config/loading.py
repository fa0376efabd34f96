"""Configuration: loading with overlays, JSON-schema validation with defaults, model references.

The canonical schema ships inside the package (``vhbb/config/schemas/config.schema.yaml``, read
through :mod:`importlib.resources`, so an installed wheel validates configs too); the Snakefile
validates the config against it before any rule runs, and :func:`load_config` does the same for
Python users.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

import jsonschema
import yaml

from vhbb.core.dicts import deep_update
from vhbb.core.errors import ConfigError

SCHEMAS = resources.files("vhbb.config") / "schemas"
SCHEMA_PATH = SCHEMAS / "config.schema.yaml"
METRICS_SCHEMA_PATH = SCHEMAS / "metrics.schema.json"

BEST_PREFIX = "best:"


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


def load_schema(path: str | Path | resources.abc.Traversable = SCHEMA_PATH) -> dict:
    """The config schema (or another YAML/JSON schema file), as a dict."""
    return yaml.safe_load(Path(path).read_text() if isinstance(path, str) else path.read_text())


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
    check_consistency(config, schema)
    return config


def check_consistency(config: dict, schema: dict | None = None) -> None:
    """Cross-key checks a JSON schema cannot express (run by :func:`validate`, so by the
    Snakefile before any job): samples, their files and the data overlap removal, the region
    selections and training features against the cached columns, the blinding window, every
    model's presets and method.  Scan paths and values are checked on expansion
    (:func:`vhbb.config.scans.expand`; the Snakefile expands right after validating)."""
    _check_samples(config)
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
    known = _cached_columns(config)
    _check_selections(regions, known)
    _check_features(config.get("features", {}).get("training", []), known)
    window = config.get("blinding", {}).get("window")
    if window is not None and len(window) == 2 and not window[0] < window[1]:
        raise ConfigError(
            f"config error at 'blinding.window': must be [low, high] with low < high (GeV), got "
            f"{list(window)}; e.g. [{min(window)}, {max(window)}]"
        )
    _check_models(config.get("models", {}), load_schema() if schema is None else schema)


def _cached_columns(config: dict) -> tuple[str, ...]:
    """The columns a selection or a training feature may name: the cache's derived columns and
    the extra ``columns`` that every layout in use defines (a custom layout's expressions)."""
    from vhbb.data.cache import DERIVED_COLUMNS

    samples = config.get("samples", {})
    layouts = samples.get("layouts", {})
    used = {s.get("layout") for s in samples.get("list", {}).values()}
    extra = [set((layouts.get(u) or {}).get("columns") or {}) for u in used if u in layouts]
    common = set.intersection(*extra) if extra else set()
    return (*DERIVED_COLUMNS, *sorted(common - set(DERIVED_COLUMNS)))


def _unknown_name(where: str, name: str, known: Iterable[str], what: str) -> ConfigError:
    columns = sorted(known)
    close = difflib.get_close_matches(name, columns, n=3)
    return ConfigError(
        f"config error at '{where}': unknown {what} '{name}'"
        + (f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else "")
        + f"; the cached columns are: {', '.join(columns)}"
    )


def _check_selections(regions: dict, known: Iterable[str]) -> None:
    from vhbb.data import expressions

    selections = []
    if "preselection" in regions:
        selections.append(("regions.preselection", regions["preselection"]))
    for name, expr in regions.get("definitions", {}).items():
        selections.append((f"regions.definitions.{name}", expr))
    known = tuple(known)
    for where, expr in selections:
        try:
            used = expressions.names(expr)
        except ConfigError as exc:
            raise ConfigError(f"config error at '{where}': {exc}") from None
        for name in sorted(used - set(known)):
            raise _unknown_name(where, name, known, "column")


def _check_features(features: list, known: Iterable[str]) -> None:
    known = tuple(known)
    for feature in features:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", feature):
            raise ConfigError(f"config error at 'features.training': bad column name '{feature}'")
        if feature not in known:
            raise _unknown_name("features.training", feature, known, "feature")


def _normalised_file(path: str) -> str:
    """A file's identity for the repeated-file check (local paths normalised, URLs as given)."""
    path = path.strip()
    if "://" in path:
        scheme, rest = path.split("://", 1)
        host, _, name = rest.partition("/")
        return f"{scheme.lower()}://{host.lower()}/{os.path.normpath('/' + name).lstrip('/')}"
    return os.path.normpath(path)


def _check_samples(config: dict) -> None:
    samples_cfg = config.get("samples", {})
    samples = samples_cfg.get("list", {})
    processes = samples_cfg.get("processes", {})
    layouts = samples_cfg.get("layouts", {})
    seen: dict[str, list[str]] = {}
    data_samples = []
    for name, sample in samples.items():
        where = f"samples.list.{name}"
        if sample["process"] not in processes:
            raise ConfigError(
                f"config error at '{where}.process': unknown process "
                f"'{sample['process']}'; defined processes: {', '.join(sorted(processes))}"
            )
        is_data = processes[sample["process"]]["role"] == "data"
        if is_data:
            data_samples.append(name)
        elif sample.get("xsec_pb") is None:
            raise ConfigError(
                f"config error at '{where}.xsec_pb': the MC sample '{name}' (process "
                f"'{sample['process']}') needs a cross section in pb for the sigma*L "
                "normalisation; add xsec_pb"
            )
        layout = sample.get("layout", "flat")
        if layouts and layout not in layouts:
            raise ConfigError(
                f"config error at '{where}.layout': unknown layout '{layout}'; defined layouts: "
                f"{', '.join(sorted(layouts))}"
            )
        source = sample.get("source", "files")
        files = sample.get("files", [])
        if source == "files" and not files:
            raise ConfigError(
                f"config error at '{where}.files': sample '{name}' has source 'files' but no "
                "files; list its ROOT files (local paths or root:// URLs) or use source: toy"
            )
        if source == "toy" and not is_data:
            events = config.get("toy", {}).get("events", {})
            if events and sample["process"] not in events:
                raise ConfigError(
                    f"config error at 'toy.events': no event count for process "
                    f"'{sample['process']}' (toy sample '{name}'); add toy.events."
                    f"{sample['process']}"
                )
        if source == "files":
            for index, path in enumerate(files):
                seen.setdefault(_normalised_file(path), []).append(f"{where}.files[{index}]")
    repeated = {path: where for path, where in seen.items() if len(where) > 1}
    if repeated:
        lines = [f"{path} at {', '.join(where)}" for path, where in sorted(repeated.items())]
        raise ConfigError(
            "config error at 'samples.list': input file(s) listed more than once, so their "
            f"events would be counted twice: {'; '.join(lines)}. List each file once, in one "
            "sample."
        )
    overlap = samples_cfg.get("overlap_removal", {})
    priority = overlap.get("priority")
    if priority is not None:
        for name in priority:
            if name not in data_samples:
                raise ConfigError(
                    f"config error at 'samples.overlap_removal.priority': '{name}' is not a data "
                    f"sample; data samples: {', '.join(data_samples) or 'none'}"
                )
        missing = [n for n in data_samples if n not in priority]
        if missing and overlap.get("enabled"):
            raise ConfigError(
                "config error at 'samples.overlap_removal.priority': data sample(s) "
                f"{', '.join(missing)} missing; rank every data sample (highest priority first)"
            )


def _check_models(models: dict, schema: dict) -> None:
    """Every preset chain ends (no unknown or circular preset) and every model has a method.

    Done here on the config alone (:func:`vhbb.config.models.resolve_model` imports this
    module); the scans are checked where they are expanded (:mod:`vhbb.config.scans`, run by
    the Snakefile right after :func:`validate`).
    """
    presets = models.get("presets", {})
    methods = schema["$defs"]["model"]["properties"]["method"]["enum"]
    entries = [("presets", n, p) for n, p in presets.items()]
    entries += [("list", n, m) for n, m in models.get("list", {}).items()]
    for section, name, spec in entries:
        chain, current, method = [name], spec.get("preset"), spec.get("method")
        where = f"models.{section}.{name}"
        while current is not None:
            if current not in presets:
                raise ConfigError(
                    f"config error at '{where}.preset': unknown preset '{current}'"
                    + (f" (via {' -> '.join(chain)})" if len(chain) > 1 else "")
                    + f"; defined presets: {', '.join(sorted(presets)) or 'none'}"
                )
            if current in chain[1:] or (section == "presets" and current == name):
                raise ConfigError(
                    f"config error at '{where}': circular presets "
                    f"{' -> '.join([*chain, current])}; break the loop in models.presets"
                )
            chain.append(current)
            method = method if method is not None else presets[current].get("method")
            current = presets[current].get("preset")
        if section == "list" and method not in methods:
            raise ConfigError(
                f"config error at '{where}.method': "
                + ("no method" if method is None else f"unknown method '{method}'")
                + f" (in the model or its presets); use one of {', '.join(methods)}"
            )


def load_config(paths: Iterable[str | Path], schema_path: str | Path = SCHEMA_PATH) -> dict:
    """Load a base config and overlays (later files deep-update earlier ones), then validate."""
    config: dict = {}
    for path in paths:
        with open(path) as fh:
            config = deep_update(config, yaml.safe_load(fh) or {})
    return validate(config, load_schema(schema_path))


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
