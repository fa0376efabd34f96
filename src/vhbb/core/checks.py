"""The shared check record: every stage's validation writes these, the report and summary read them.

A :class:`Check` is one test of one stage on one object (a region and process, a model, a fit):
its name, ``status`` (``pass`` / ``warn`` / ``fail``), the number behind it, the threshold it
was compared with, and where it applies.  A stage writes its checks with :func:`write_checks`
(``results/checks/<stage>/<where>.json``) and then calls :func:`gate`: with
``on_failure: fail`` any failed check raises :class:`CheckFailed` naming what failed and where
(the job exits non-zero, the stage's result file is not written); with ``on_failure: warn`` the
failures are logged as warnings and :func:`warnings_of` gives the lines that every downstream
file carries.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from vhbb.core.errors import VhbbError

log = logging.getLogger(__name__)

Status = Literal["pass", "warn", "fail"]
STATUSES: tuple[str, ...] = ("pass", "warn", "fail")
ON_FAILURE: tuple[str, ...] = ("fail", "warn")


class CheckFailed(VhbbError):
    """A stage's own validation failed (``on_failure: fail``)."""


@dataclass(frozen=True)
class Check:
    """One check: ``status`` says whether ``value`` met ``threshold`` (``comparison``)."""

    stage: str
    name: str
    status: Status
    where: str
    value: float | None = None
    threshold: float | None = None
    comparison: str = ""
    message: str = ""
    warned: bool = False  # failed, but the stage was configured to warn and go on

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"check status must be one of {STATUSES}, not {self.status!r}")

    @property
    def failed(self) -> bool:
        return self.status == "fail"

    def describe(self) -> str:
        """One line: ``stage/name at where: value vs threshold (message)``."""
        num = "" if self.value is None else f": {self.value:.4g}"
        thr = (
            "" if self.threshold is None else f" (required {self.comparison} {self.threshold:.4g})"
        )
        msg = f"; {self.message}" if self.message else ""
        return f"{self.stage}/{self.name} at {self.where}{num}{thr}{msg}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(
    stage: str,
    name: str,
    where: str,
    value: float | None,
    threshold: float,
    comparison: str,
    message: str = "",
) -> Check:
    """A check that passes when ``value <comparison> threshold`` (``>``, ``>=``, ``<``, ``<=``).

    A missing (``None``) or NaN value fails: an undefined figure never passes a check.
    """
    ops = {
        ">": lambda a, b: a > b,
        ">=": lambda a, b: a >= b,
        "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b,
    }
    if comparison not in ops:
        raise ValueError(f"unknown comparison {comparison!r}")
    ok = value is not None and value == value and ops[comparison](value, threshold)
    return Check(
        stage=stage,
        name=name,
        status="pass" if ok else "fail",
        where=where,
        value=None if value is None else float(value),
        threshold=float(threshold),
        comparison=comparison,
        message=message,
    )


def write_checks(path: str | Path, checks: Sequence[Check]) -> None:
    """Write the records of one stage and object (atomically, sorted: failures first)."""
    from vhbb.core.io import write_json

    order = {"fail": 0, "warn": 1, "pass": 2}
    rows = sorted(checks, key=lambda c: (order[c.status], c.name, c.where))
    write_json(path, {"checks": [c.as_dict() for c in rows]})


def read_checks(paths: Iterable[str | Path]) -> list[Check]:
    """Every record of the given check files."""
    out: list[Check] = []
    for path in paths:
        doc = json.loads(Path(path).read_text())
        out.extend(Check(**row) for row in doc["checks"])
    return out


def gate(checks: Sequence[Check], on_failure: str, *, context: str) -> list[Check]:
    """Fail or warn on the failed checks; returns the records with ``warned`` set in warn mode.

    ``context`` names the stage's job (e.g. ``weights SR_medhigh_Znn``) in the message.
    """
    if on_failure not in ON_FAILURE:
        raise ValueError(f"on_failure must be one of {ON_FAILURE}, not {on_failure!r}")
    failed = [c for c in checks if c.failed]
    if not failed:
        return list(checks)
    lines = "\n  ".join(c.describe() for c in failed)
    if on_failure == "fail":
        raise CheckFailed(
            f"{context}: {len(failed)} check(s) failed:\n  {lines}\n"
            "Fix the cause, or set the stage's 'on_failure: warn' to go on with the warning "
            "carried by every downstream file."
        )
    log.warning("%s: %d check(s) FAILED (on_failure: warn):\n  %s", context, len(failed), lines)
    return [Check(**{**c.as_dict(), "warned": True}) if c.failed else c for c in checks]


def warnings_of(checks: Iterable[Check]) -> list[str]:
    """The warning lines that downstream files carry (failed checks of warn mode)."""
    return [c.describe() for c in checks if c.failed]


def summary(checks: Iterable[Check]) -> Mapping[str, int]:
    """Counts per status."""
    out = {s: 0 for s in STATUSES}
    for c in checks:
        out[c.status] += 1
    return out
