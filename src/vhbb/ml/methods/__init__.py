"""The classifier's training methods, one module each, registered by name.

A method module builds, from a :class:`vhbb.ml.methods.base.Context` (the spec, the classifier,
the device, optional control-region data), a :class:`vhbb.ml.methods.base.Plan`: its extra
networks and optimisers, its named loss terms (the objectives), its phases and steps for
:func:`vhbb.ml.engine.train`, and its extra datasets and validation metrics.  It registers its
build function here::

    @register("disco")
    def build(ctx: Context) -> Plan: ...

Every module of this package is imported on the first :func:`get` or :func:`names`, so a new
method is one new file here plus its name in the schema's ``$defs.model.properties.method.enum``
(read by :func:`vhbb.config.models.method_names`).  Neither the engine nor the training driver
(:mod:`vhbb.ml.train`) knows a method by name.  The spec's ``validate_every`` (validation
interval in epochs) is applied here to every phase a build function returns without one.

This module imports no torch (the method modules do, when they are loaded).
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vhbb.core.errors import ConfigError

Build = Callable[[Any], Any]  # Context -> Plan (vhbb.ml.methods.base)


@dataclass(frozen=True)
class Method:
    """A registered training method."""

    name: str
    build: Build
    train_variations: bool = False  # the training batches carry the JES-varied inputs
    needs_domain: bool = False  # needs control-region data (``domain`` of build_and_train)


_REGISTRY: dict[str, Method] = {}
_loaded = False


def register(name: str, *, train_variations: bool = False, needs_domain: bool = False):  # type: ignore[no-untyped-def]
    """Decorator: register ``build`` as the method ``name``."""

    def decorate(build: Build) -> Build:
        if name in _REGISTRY and _REGISTRY[name].build.__wrapped__ is not build:  # type: ignore[attr-defined]
            raise ValueError(f"training method '{name}' is registered twice")
        _REGISTRY[name] = Method(
            name, _with_validation_interval(build), train_variations, needs_domain
        )
        return build

    return decorate


def _with_validation_interval(build: Build) -> Build:
    """``build``, then the spec's ``validate_every`` on each phase of the plan that sets none."""

    @functools.wraps(build)
    def planned(ctx: Any) -> Any:
        plan = build(ctx)
        every = ctx.spec.get("validate_every")
        if every is not None:
            for phase in plan.phases:
                if phase.validate_every is None:
                    phase.validate_every = int(every)
        return plan

    return planned


def _load() -> None:
    global _loaded
    if not _loaded:
        for info in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{info.name}")
        _loaded = True


def get(name: str) -> Method:
    """The method registered as ``name``; an unknown name is a :class:`ConfigError`."""
    _load()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown training method '{name}'; use one of {', '.join(names())}")
    return _REGISTRY[name]


def names() -> tuple[str, ...]:
    """The registered method names (sorted)."""
    _load()
    return tuple(sorted(_REGISTRY))
