"""Export of a :class:`vhbb.stats.likelihood.Model` as a pyhf (HistFactory JSON) workspace.

The mapping is one to one (see :mod:`vhbb.stats.likelihood`): every channel of the model is a pyhf
channel whose bins are the model's bins in order (the signal region's 2D m_jj x score histogram
is unrolled as documented in :mod:`vhbb.fit.templates`); every process with a non-zero yield in a
channel is a sample carrying

* ``normfactor`` modifiers for ``mu`` and the free scale factors;
* ``histosys`` for shape variations such as the JES sources ``jes_<source>``;
* ``normsys`` for the lnN normalisation uncertainties;
* ``staterror`` (``staterror_<channel>``, absolute per-sample uncertainties ``sqrt(sum w^2)``)
  when the model has Barlow-Beeston-lite MC-statistics terms (every sample with a yield or an
  MC-statistics variance in the channel carries it, so pyhf's relative uncertainty per bin is
  the model's ``stat_sigma``).

**Interpolation.** ``pyhf.Workspace.model()`` (pyhf 0.7) interpolates normsys with code 4
(exponential beyond |alpha| = 1, a 6th-order polynomial inside, continuous up to the second
derivative) and histosys with code 4p (linear beyond |alpha| = 1, a 6th-order polynomial
inside); :mod:`vhbb.stats.likelihood` implements the same codes, so the exported workspace
reproduces the internal likelihood up to a constant.  The JSON carries no interpolation codes
(the schema has none): a consumer using other codes (Combine, see :mod:`vhbb.fit.combine`)
gets a slightly different model.

**Schema.** :func:`to_workspace` returns a spec that validates against pyhf's
``workspace.json`` schema (no extra keys); the provenance (model, mode, observations, the
unrolling, the eigen-decomposition of the constrained scale factors) is written next to it,
``workspace.provenance.json`` (:func:`vhbb.fit.signal_fit.write_workspace`).

Gaussian-constrained normalisation factors (the ``constrained`` mode: scale factors with their
covariance ``C`` from the control-region fit) have no HistFactory modifier.  They are exported
through the eigen-decomposition ``C = V diag(lambda) V^T``: the sample's nominal is scaled by
the centre ``c``, and eigenvector ``j`` becomes a ``histosys`` ``<prefix>_eig<j>`` with
``hi/lo = c m +- sqrt(lambda_j) V_kj m``.  Code 4p of a symmetric variation is linear
(its polynomial term is proportional to ``hi + lo - 2 nominal = 0``), so the nuisance is exactly
linear and its unit-Gaussian constraint reproduces the multivariate
Gaussian on the scale factors.  (The likelihood multiplies the JES shift by the fitted scale
factor, the export by its centre: a second-order difference.)

Parameter bounds and initial values are written to the measurement; the POI bounds are the
model's (wide: pyhf's default [0, 10] distorts HESSE through Minuit's bound transformation).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from vhbb.stats.likelihood import Model

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


@dataclass(frozen=True)
class _Constraint:
    """The Gaussian-constrained factors of a model: parameter index -> (slot, centre), and the
    eigen-decomposition of their covariance (None without a constraint)."""

    slots: Mapping[int, tuple[int, float]]
    eig_values: np.ndarray | None
    eig_vectors: np.ndarray | None

    @classmethod
    def of(cls, model: Model) -> _Constraint:
        if model.gauss_index is None:
            return cls({}, None, None)
        values, vectors = eigen_decomposition(model.gauss_cov)  # type: ignore[arg-type]
        slots = {
            int(idx): (g, float(model.gauss_center[g]))  # type: ignore[index]
            for g, idx in enumerate(model.gauss_index)
        }
        return cls(slots, values, vectors)


def _histosys(name: str, hi: np.ndarray, lo: np.ndarray) -> dict[str, Any]:
    return {"name": name, "type": "histosys", "data": {"hi_data": _list(hi), "lo_data": _list(lo)}}


def _sample(
    model: Model, ch: Any, p_i: int, con: _Constraint, eigen_prefix: str
) -> dict[str, Any] | None:
    """The pyhf sample of process ``p_i`` in channel ``ch`` (None when it has nothing there)."""
    sl = slice(ch.start, ch.stop)
    proc = model.processes[p_i]
    nom = model.nominal[p_i, sl]
    h_nonzero = [
        h
        for h in range(len(model.histo_index))
        if np.any(model.histo_up[h, p_i, sl] != 0) or np.any(model.histo_down[h, p_i, sl] != 0)
    ]
    has_w2 = model.stat_sigma is not None and bool(np.any(model.sumw2[p_i, sl] > 0))
    if not np.any(nom > 0) and not h_nonzero and not has_w2:
        return None
    scale = 1.0
    modifiers: list[dict[str, Any]] = []
    eig_of: list[tuple[int, float]] = []  # (gauss slot, centre) scaling this process
    for k, idx in enumerate(model.norm_index):
        if not model.norm_mask[k, p_i]:
            continue
        if int(idx) in con.slots:
            slot, centre = con.slots[int(idx)]
            scale *= centre
            eig_of.append((slot, centre))
        else:
            modifiers.append({"name": model.names[idx], "type": "normfactor", "data": None})
    if len(eig_of) > 1:
        raise ValueError(f"process '{proc}' has several Gaussian-constrained factors")
    for h in h_nonzero:
        up = model.nominal[p_i, sl] + model.histo_up[h, p_i, sl]
        down = model.nominal[p_i, sl] - model.histo_down[h, p_i, sl]
        modifiers.append(_histosys(model.names[model.histo_index[h]], scale * up, scale * down))
    for slot, centre in eig_of:
        assert con.eig_values is not None and con.eig_vectors is not None
        for j in range(len(con.eig_values)):
            shift = math.sqrt(con.eig_values[j]) * con.eig_vectors[slot, j] * (scale / centre) * nom
            modifiers.append(
                _histosys(f"{eigen_prefix}_eig{j}", scale * nom + shift, scale * nom - shift)
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
                "name": f"staterror_{ch.name}",
                "type": "staterror",
                "data": _list(scale * np.sqrt(model.sumw2[p_i, sl])),
            }
        )
    return {"name": proc, "data": _list(scale * nom), "modifiers": modifiers}


def _parameters(model: Model, con: _Constraint, eigen_prefix: str) -> list[dict[str, Any]]:
    """The measurement's parameter settings (inits, bounds, fixed; the eigen-nuisances)."""
    parameters = []
    for i, name in enumerate(model.names):
        if i in con.slots or name.startswith("gamma_"):
            continue
        lo, hi = model.bounds[i]
        entry: dict[str, Any] = {"name": name, "inits": [float(model.init[i])]}
        if lo is not None and hi is not None:
            entry["bounds"] = [[float(lo), float(hi)]]
        if model.fixed[i]:
            entry["fixed"] = True
        parameters.append(entry)
    if con.eig_values is not None:
        for j in range(len(con.eig_values)):
            parameters.append(
                {"name": f"{eigen_prefix}_eig{j}", "inits": [0.0], "bounds": [[-5.0, 5.0]]}
            )
    return parameters


def to_workspace(
    model: Model,
    observed: np.ndarray,
    *,
    measurement: str = "signal_strength",
    eigen_prefix: str = "sf",
) -> dict[str, Any]:
    """The HistFactory JSON of ``model`` with ``observed`` as the observations (pyhf schema
    1.0.0: no keys beyond it; the provenance goes to a sibling file)."""
    observed = np.asarray(observed, dtype=np.float64)
    con = _Constraint.of(model)
    channels, observations = [], []
    for ch in model.channels:
        samples = [
            _sample(model, ch, p_i, con, eigen_prefix) for p_i in range(len(model.processes))
        ]
        channels.append({"name": ch.name, "samples": [s for s in samples if s is not None]})
        observations.append({"name": ch.name, "data": _list(observed[ch.start : ch.stop])})
    parameters = _parameters(model, con, eigen_prefix)
    ws: dict[str, Any] = {
        "channels": channels,
        "observations": observations,
        "measurements": [
            {"name": measurement, "config": {"poi": model.poi, "parameters": parameters}}
        ],
        "version": "1.0.0",
    }
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
