"""Export of a :class:`vhbb.likelihood.Model` as a pyhf (HistFactory JSON) workspace.

The mapping is one to one (see :mod:`vhbb.likelihood`): every channel of the model is a pyhf
channel whose bins are the model's bins in order (the signal region's 2D m_jj x score histogram
is unrolled as documented in :mod:`vhbb.binning`); every process with a non-zero yield in a
channel is a sample carrying

* ``normfactor`` modifiers for ``mu`` and the free scale factors;
* ``histosys`` (interpolation code 0, pyhf's default) for shape variations such as ``jes``;
* ``normsys`` (code 1, pyhf's default) for the lnN normalisation uncertainties;
* ``staterror`` (``staterror_<channel>``, absolute per-sample uncertainties ``sqrt(sum w^2)``)
  when the model has Barlow-Beeston-lite MC-statistics terms.

Gaussian-constrained normalisation factors (the ``constrained`` mode: scale factors with their
covariance ``C`` from the control-region fit) have no HistFactory modifier.  They are exported
through the eigen-decomposition ``C = V diag(lambda) V^T``: the sample's nominal is scaled by
the centre ``c``, and eigenvector ``j`` becomes a ``histosys`` ``<prefix>_eig<j>`` with
``hi/lo = c m +- sqrt(lambda_j) V_kj m``.  Code 0 is piecewise linear with equal slopes here, so
the nuisance is exactly linear and its unit-Gaussian constraint reproduces the multivariate
Gaussian on the scale factors.  (The likelihood multiplies the JES shift by the fitted scale
factor, the export by its centre: a second-order difference.)

Parameter bounds and initial values are written to the measurement; the POI bounds are the
model's (wide: pyhf's default [0, 10] distorts HESSE through Minuit's bound transformation).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .likelihood import Model

SCHEMA = "https://scikit-hep.org/pyhf/schemas/1.0.0/workspace.json"


def _list(values: np.ndarray) -> list[float]:
    return [float(v) for v in values]


def eigen_decomposition(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending) and eigenvectors (columns) of a covariance matrix."""
    values, vectors = np.linalg.eigh(np.asarray(cov, dtype=np.float64))
    order = np.argsort(values)[::-1]
    values, vectors = values[order], vectors[:, order]
    if np.any(values <= 0):
        raise ValueError(f"covariance is not positive definite (eigenvalues {values})")
    # deterministic sign: largest component of each eigenvector positive
    signs = np.sign(vectors[np.argmax(np.abs(vectors), axis=0), np.arange(vectors.shape[1])])
    return values, vectors * signs


def to_workspace(
    model: Model,
    observed: np.ndarray,
    *,
    measurement: str = "signal_strength",
    eigen_prefix: str = "sf",
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The HistFactory JSON of ``model`` with ``observed`` as the observations."""
    observed = np.asarray(observed, dtype=np.float64)
    gauss: dict[int, int] = {}
    eig_values = eig_vectors = None
    centers: dict[int, float] = {}
    if model.gauss_index is not None:
        eig_values, eig_vectors = eigen_decomposition(model.gauss_cov)  # type: ignore[arg-type]
        for g, idx in enumerate(model.gauss_index):
            gauss[int(idx)] = g
            centers[int(idx)] = float(model.gauss_center[g])  # type: ignore[index]
    stat_name = "staterror_{}"
    channels, observations = [], []
    for ch in model.channels:
        sl = slice(ch.start, ch.stop)
        samples = []
        for p_i, proc in enumerate(model.processes):
            nom = model.nominal[p_i, sl]
            h_nonzero = [
                h
                for h in range(len(model.histo_index))
                if np.any(model.histo_up[h, p_i, sl] != 0)
                or np.any(model.histo_down[h, p_i, sl] != 0)
            ]
            if not np.any(nom > 0) and not h_nonzero:
                continue
            scale = 1.0
            modifiers: list[dict[str, Any]] = []
            eig_of: list[tuple[int, float]] = []  # (gauss slot, centre) scaling this process
            for k, idx in enumerate(model.norm_index):
                if not model.norm_mask[k, p_i]:
                    continue
                if int(idx) in gauss:
                    scale *= centers[int(idx)]
                    eig_of.append((gauss[int(idx)], centers[int(idx)]))
                else:
                    modifiers.append({"name": model.names[idx], "type": "normfactor", "data": None})
            if len(eig_of) > 1:
                raise ValueError(f"process '{proc}' has several Gaussian-constrained factors")
            for h in h_nonzero:
                up = model.nominal[p_i, sl] + model.histo_up[h, p_i, sl]
                down = model.nominal[p_i, sl] - model.histo_down[h, p_i, sl]
                modifiers.append(
                    {
                        "name": model.names[model.histo_index[h]],
                        "type": "histosys",
                        "data": {"hi_data": _list(scale * up), "lo_data": _list(scale * down)},
                    }
                )
            for slot, centre in eig_of:
                assert eig_values is not None and eig_vectors is not None
                for j in range(len(eig_values)):
                    shift = math.sqrt(eig_values[j]) * eig_vectors[slot, j] * (scale / centre) * nom
                    modifiers.append(
                        {
                            "name": f"{eigen_prefix}_eig{j}",
                            "type": "histosys",
                            "data": {
                                "hi_data": _list(scale * nom + shift),
                                "lo_data": _list(scale * nom - shift),
                            },
                        }
                    )
            for j, idx in enumerate(model.normsys_index):
                lo, hi = model.normsys_log_lo[j, p_i], model.normsys_log_hi[j, p_i]
                if lo == 0 and hi == 0:
                    continue
                modifiers.append(
                    {
                        "name": model.names[idx],
                        "type": "normsys",
                        "data": {"hi": math.exp(hi), "lo": math.exp(lo)},
                    }
                )
            if model.stat_sigma is not None:
                modifiers.append(
                    {
                        "name": stat_name.format(ch.name),
                        "type": "staterror",
                        "data": _list(scale * np.sqrt(model.sumw2[p_i, sl])),
                    }
                )
            samples.append({"name": proc, "data": _list(scale * nom), "modifiers": modifiers})
        channels.append({"name": ch.name, "samples": samples})
        observations.append({"name": ch.name, "data": _list(observed[sl])})
    parameters = []
    for i, name in enumerate(model.names):
        if i in gauss or name.startswith("gamma_"):
            continue
        lo, hi = model.bounds[i]
        entry: dict[str, Any] = {"name": name, "inits": [float(model.init[i])]}
        if lo is not None and hi is not None:
            entry["bounds"] = [[float(lo), float(hi)]]
        if model.fixed[i]:
            entry["fixed"] = True
        parameters.append(entry)
    if eig_values is not None:
        for j in range(len(eig_values)):
            parameters.append(
                {"name": f"{eigen_prefix}_eig{j}", "inits": [0.0], "bounds": [[-5.0, 5.0]]}
            )
    ws: dict[str, Any] = {
        "channels": channels,
        "observations": observations,
        "measurements": [
            {"name": measurement, "config": {"poi": model.poi, "parameters": parameters}}
        ],
        "version": "1.0.0",
    }
    if metadata:
        ws["metadata"] = dict(metadata)
    return ws


def eigen_parameters(model: Model, prefix: str = "sf") -> dict[str, Any]:
    """How the exported eigen-nuisances map back to the constrained factors (for the JSON)."""
    if model.gauss_index is None:
        return {}
    values, vectors = eigen_decomposition(model.gauss_cov)  # type: ignore[arg-type]
    names = [model.names[i] for i in model.gauss_index]
    return {
        "factors": names,
        "centre": _list(model.gauss_center),  # type: ignore[arg-type]
        "eigenvalues": _list(values),
        "eigenvectors": [_list(v) for v in vectors.T],
        "nuisances": [f"{prefix}_eig{j}" for j in range(len(values))],
        "relation": "factor_k = centre_k + sum_j sqrt(eigenvalue_j) eigenvector_j[k] * eig_j",
    }
