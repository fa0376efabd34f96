"""Plain result types of the fits, shared by the fit stages and the plots.

:class:`RegionHistogram` (observed and expected yields of one control region) and
:class:`ScaleFactorFit` (one control-region scale-factor fit) are produced by
:mod:`vhbb.fit.scale_factors` and drawn by :mod:`vhbb.plots.style`; both round-trip through the
JSON files of the workflow (``as_dict`` / ``from_dict``, floats exactly).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vhbb.stats.minuit import FitStatus


@dataclass(frozen=True)
class RegionHistogram:
    """Observed and expected yields of one control region (fit convention: MC times ``f``).

    ``edges`` are the bin edges of ``variable`` (``None`` for one bin holding the region).
    ``mc`` and ``mc_sumw2`` map every MC process to its per-bin yield and sum of squared weights.
    """

    region: str
    edges: np.ndarray | None
    data: np.ndarray
    mc: Mapping[str, np.ndarray]
    mc_sumw2: Mapping[str, np.ndarray]
    variable: str | None = None

    @property
    def n_bins(self) -> int:
        return len(self.data)

    def bin_label(self, index: int) -> str:
        if self.edges is None:
            return f"region '{self.region}'"
        lo, hi = self.edges[index], self.edges[index + 1]
        return f"region '{self.region}' bin {index} ({self.variable} in [{lo:g}, {hi:g}))"

    def scaled(self, values: Mapping[str, float]) -> RegionHistogram:
        """The MC of each process in ``values`` multiplied by its scale factor."""
        mc = {p: y * values.get(p, 1.0) for p, y in self.mc.items()}
        w2 = {p: y * values.get(p, 1.0) ** 2 for p, y in self.mc_sumw2.items()}
        return RegionHistogram(self.region, self.edges, self.data, mc, w2, self.variable)

    def as_dict(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "variable": self.variable,
            "edges": None if self.edges is None else np.asarray(self.edges).tolist(),
            "data": np.asarray(self.data).tolist(),
            "mc": {p: np.asarray(y).tolist() for p, y in self.mc.items()},
            "mc_sumw2": {p: np.asarray(y).tolist() for p, y in self.mc_sumw2.items()},
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> RegionHistogram:
        def arr(values: Any) -> np.ndarray:
            return np.asarray(values, dtype=np.float64)

        return cls(
            region=str(doc["region"]),
            edges=None if doc["edges"] is None else arr(doc["edges"]),
            data=arr(doc["data"]),
            mc={p: arr(y) for p, y in doc["mc"].items()},
            mc_sumw2={p: arr(y) for p, y in doc["mc_sumw2"].items()},
            variable=doc["variable"],
        )


@dataclass(frozen=True)
class ScaleFactorFit:
    """Result of one fit: values, errors, covariance and status (parameters in ``names`` order)."""

    names: tuple[str, ...]
    values: Mapping[str, float]
    hesse_errors: Mapping[str, float]
    minos_errors: Mapping[str, tuple[float, float]] | None  # (lower <= 0, upper >= 0)
    mc_stat_errors: Mapping[str, float]
    covariance: np.ndarray
    correlation: np.ndarray
    status: FitStatus
    nll: float
    label: str = "inclusive"
    fixed: tuple[str, ...] = field(default=())

    def errors(self, name: str) -> tuple[float, float]:
        """(lower, upper) error magnitudes: MINOS when available, else symmetric HESSE."""
        if self.minos_errors is not None:
            lo, hi = self.minos_errors[name]
            return -lo, hi
        return self.hesse_errors[name], self.hesse_errors[name]

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.names:
            entry = {
                "value": self.values[name],
                "hesse_error": self.hesse_errors[name],
                "mc_stat_error": self.mc_stat_errors[name],
            }
            if self.minos_errors is not None:
                entry["minos_lower"], entry["minos_upper"] = self.minos_errors[name]
            out[name] = entry
        return {
            "scale_factors": out,
            "parameters": list(self.names),
            "fixed_processes": list(self.fixed),
            "covariance": self.covariance,
            "correlation": self.correlation,
            "status": self.status.as_dict(),
            "nll": self.nll,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], label: str = "inclusive") -> ScaleFactorFit:
        """The fit back from :meth:`as_dict` (as written to JSON)."""
        names = tuple(doc["parameters"])
        entries = doc["scale_factors"]
        minos = None
        if names and all("minos_lower" in entries[n] for n in names):
            minos = {n: (entries[n]["minos_lower"], entries[n]["minos_upper"]) for n in names}
        return cls(
            names=names,
            values={n: entries[n]["value"] for n in names},
            hesse_errors={n: entries[n]["hesse_error"] for n in names},
            minos_errors=minos,
            mc_stat_errors={n: entries[n]["mc_stat_error"] for n in names},
            covariance=np.asarray(doc["covariance"], dtype=np.float64),
            correlation=np.asarray(doc["correlation"], dtype=np.float64),
            status=FitStatus(**doc["status"]),
            nll=doc["nll"],
            label=label,
            fixed=tuple(doc["fixed_processes"]),
        )
