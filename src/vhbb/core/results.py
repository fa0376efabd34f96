"""Readers of the chain's own result files that several stages consume.

``results/fits/scale_factors.json`` (written by :mod:`vhbb.fit.scale_factors`) is read here and
only here: the training (domain adaptation), the evaluation, the signal-strength fits and the
diagnostics all take it from :func:`read_scale_factors`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vhbb.core.errors import InputError


@dataclass(frozen=True)
class ScaleFactors:
    """The control-region fit: central values, total errors, parameter order and covariance.

    ``errors`` are HESSE and MC-statistics errors added in quadrature.
    """

    values: dict[str, float]
    errors: dict[str, float]
    names: list[str]
    covariance: np.ndarray


def read_scale_factors(path: str | Path) -> ScaleFactors:
    """Read ``scale_factors.json``; a file that is not one raises :class:`InputError`."""
    try:
        doc = json.loads(Path(path).read_text())
        entries = doc["scale_factors"]
        names = list(doc.get("parameters") or entries)
        values = {n: float(entries[n]["value"]) for n in names}
        errors = {
            n: math.hypot(
                float(entries[n].get("hesse_error") or 0.0),
                float(entries[n].get("mc_stat_error") or 0.0),
            )
            for n in names
        }
        cov = np.asarray(doc.get("covariance", np.diag([0.0] * len(names))), dtype=np.float64)
    except (OSError, KeyError, ValueError, TypeError, AttributeError) as exc:
        raise InputError(f"{path}: not a scale-factor fit result ({exc})") from None
    return ScaleFactors(values=values, errors=errors, names=names, covariance=cov)
