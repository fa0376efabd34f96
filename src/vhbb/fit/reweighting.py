"""Data-driven reweighting of a mismodelled input (rule ``derive_reweighting``).

A training input that no region cut uses can be mismodelled in the simulation (the toy's soft
activity: ``toy.mismodelling``).  A model that leans on it then disagrees with the data in the
control regions.  ``reweighting.<name>`` derives a correction of that input from control-region
data and applies it to every MC event downstream (histograms, fits, evaluation), with a shape
nuisance that covers it:

* **Derivation** (:func:`derive`) on the data of ``cr_split == 0`` (the half that the fits do not
  see; the domain-adaptation method trains on the same half: the two uses share it, neither
  touches the fit half).  One ratio ``r(x)`` in bins of the variable (merged from the top until
  every bin holds ``min_data`` data and MC events), common to all processes, and one constant
  ``n_p`` per process that keeps the process's total MC yield over every region: MC
  ``w r(x) n_p`` reproduces the data's shape in every control region (each normalised to its
  data: a shape correction, the normalisations stay with the scale factors).  ``r`` is found by
  iterating ``r <- r * sum_regions D(x) / sum_regions M'(x)``.  For the toy's mismodelling
  (Poisson soft activity with a 25 % higher mean in data) the exact answer has this form:
  ``r(k) ~ 1.25**k`` and ``n_p ~ exp(-0.25 lambda_p)``.
* **Validation** (:func:`validate`) on the fit half (``cr_split == 1``), which the derivation did
  not see: per control region a chi2 test of the data against the normalised MC shape in the
  variable, before and after the correction (MC statistical uncertainty included, and after it
  the correction's own uncertainty from the derivation statistics; ndf = bins - 1).  It passes
  when every region's p-value after the correction exceeds ``min_p_value``; a failure fails
  the job (``on_failure: fail``) or is carried as a warning by the outputs.
* **Output**: a correctionlib file (``results/reweighting/<name>.json``: one correction
  ``<name>`` with inputs ``systematic``, ``process`` and the variable; ``nominal`` = r n_p,
  ``up`` = r**2 n_p' (applied twice, yields kept), ``down`` = 1 (not applied)) and
  ``<name>/validation.json``.  :func:`vhbb.data.events.read_events` multiplies MC weights by the
  nominal factor and, with ``uncertainty: true``, adds the ratio columns ``weight_<name>Up/Down``:
  one more weight systematic (a shape nuisance ``<name>`` in the fits) through the shared
  mechanism.  The binning scan does not apply it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vhbb.core.errors import DataError, InputError

log = logging.getLogger(__name__)


def merged_edges(edges: np.ndarray, counts: np.ndarray, minimum: float) -> np.ndarray:
    """``edges`` with bins merged from the top (the sparse tail) until each holds ``minimum``."""
    keep = [len(edges) - 1]
    acc = 0.0
    for i in range(len(counts) - 1, -1, -1):
        acc += counts[i]
        if acc >= minimum and i > 0:
            keep.append(i)
            acc = 0.0
    keep.append(0)
    idx = sorted(set(keep))
    if len(idx) > 2 and counts[idx[0] : idx[1]].sum() < minimum:
        idx.pop(1)  # the lowest bin is short: join it with the next
    return np.asarray(edges, dtype=np.float64)[idx]


def _hist(x: np.ndarray, w: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    xc = np.clip(x, edges[0], np.nextafter(edges[-1], -np.inf))  # under/overflow into the ends
    return (
        np.histogram(xc, edges, weights=w)[0],
        np.histogram(xc, edges, weights=w * w)[0],
    )


def derive(
    data: Mapping[str, np.ndarray],
    mc: Mapping[str, np.ndarray],
    regions: Sequence[str],
    edges: Sequence[float],
    *,
    min_data: float,
    iterations: int = 20,
) -> dict[str, Any]:
    """The ratio ``r`` per bin and the per-process normalisations (module docstring).

    ``data``/``mc``: ``x`` (the variable), ``region`` and (MC) ``weight`` and ``process`` of the
    events to derive from (data: the derivation half only; MC: every event, all regions).
    """
    fine = np.asarray(edges, dtype=np.float64)
    in_regions = np.isin(data["region"], list(regions))
    d_fine = _hist(data["x"][in_regions], np.ones(int(in_regions.sum())), fine)[0]
    if d_fine.sum() <= 0:
        raise DataError(f"no data events in {', '.join(regions)} to derive the reweighting from")
    mc_in = np.isin(mc["region"], list(regions))
    n_mc = _hist(mc["x"][mc_in], np.ones(int(mc_in.sum())), fine)[0]
    # every merged bin: at least min_data data events and as many MC events
    e = merged_edges(fine, np.minimum(d_fine, n_mc), min_data)
    nb = len(e) - 1
    procs = sorted(set(mc["process"].tolist()))
    # per region: data counts; per region and process: MC sums of w and w^2 in the bins
    d = np.zeros((len(regions), nb))
    m = np.zeros((len(regions), len(procs), nb))
    m2 = np.zeros_like(m)
    for i, r in enumerate(regions):
        dr = data["region"] == r
        if not dr.any():
            raise DataError(f"region {r}: no data to derive the reweighting from")
        d[i] = _hist(data["x"][dr], np.ones(int(dr.sum())), e)[0]
        for k, p in enumerate(procs):
            sel = (mc["region"] == r) & (mc["process"] == p)
            m[i, k], m2[i, k] = _hist(mc["x"][sel], mc["weight"][sel], e)
    if np.any(m.sum(axis=(0, 1)) <= 0):
        raise DataError("a reweighting bin has no MC: widen reweighting.<name>.edges")
    # every region of every process (SR included): the per-process yield constants
    m_all = np.stack(
        [_hist(mc["x"][mc["process"] == p], mc["weight"][mc["process"] == p], e)[0] for p in procs]
    )
    ratio = np.ones(nb)
    for _ in range(iterations):
        c = (m_all * ratio).sum(axis=1) / m_all.sum(axis=1)  # keeps each process's yield
        pred = np.einsum("rpb,p,b->rb", m, 1.0 / c, ratio)
        pred *= (d.sum(axis=1) / pred.sum(axis=1))[:, None]  # per region: shape only
        ratio = ratio * d.sum(axis=0) / pred.sum(axis=0)
    c = (m_all * ratio).sum(axis=1) / m_all.sum(axis=1)
    c2 = (m_all * ratio**2).sum(axis=1) / m_all.sum(axis=1)  # the up variation's constants
    pred = np.einsum("rpb,p,b->rb", m, 1.0 / c, ratio)
    scale = d.sum(axis=1) / pred.sum(axis=1)
    var = np.einsum("rpb,p,b,r->b", m2, 1.0 / c**2, ratio**2, scale**2)
    den = (pred * scale[:, None]).sum(axis=0)
    err = ratio * np.sqrt(1.0 / np.maximum(d.sum(axis=0), 1.0) + var / den**2)
    return {
        "edges": e.tolist(),
        "ratio": ratio.tolist(),
        "ratio_error": err.tolist(),
        "process_normalisation": {p: float(1.0 / c[k]) for k, p in enumerate(procs)},
        "process_normalisation_up": {p: float(1.0 / c2[k]) for k, p in enumerate(procs)},
        "n_data": d.sum(axis=0).tolist(),
    }


SIDES = ("nominal", "up", "down")


def _bin_values(result: Mapping[str, Any], process: str, side: str) -> np.ndarray:
    """Per-bin factors of ``process`` on ``side``: r n_p (nominal), r**2 n_p' (up), 1 (down)."""
    ratio = np.asarray(result["ratio"], dtype=np.float64)
    if side == "down":
        return np.ones_like(ratio)
    if side == "nominal":
        return ratio * result["process_normalisation"][process]
    return ratio**2 * result["process_normalisation_up"][process]


def factor(
    result: Mapping[str, Any], x: np.ndarray, process: np.ndarray, side: str = "nominal"
) -> np.ndarray:
    """Per-event factors (values outside the edges take the end bins, as the file's clamp)."""
    e = np.asarray(result["edges"], dtype=np.float64)
    idx = np.clip(np.searchsorted(e, x, side="right") - 1, 0, len(e) - 2)
    out = np.ones(len(x))
    for p in np.unique(process):
        sel = process == p
        out[sel] = _bin_values(result, str(p), side)[idx[sel]]
    return out


def chi2_shape(d: np.ndarray, m: np.ndarray, m2: np.ndarray) -> tuple[float, int, float]:
    """chi2, ndf and p of data counts ``d`` against the MC shape ``m`` normalised to them."""
    from vhbb.stats.metrics import chi2_prob

    scale = d.sum() / m.sum()
    exp, var = m * scale, m2 * scale**2
    ok = exp > 0
    chi2 = float(np.sum((d[ok] - exp[ok]) ** 2 / (exp[ok] + var[ok])))
    ndf = int(ok.sum()) - 1
    return chi2, ndf, chi2_prob(chi2, ndf) if ndf > 0 else float("nan")


def validate(
    data: Mapping[str, np.ndarray],
    mc: Mapping[str, np.ndarray],
    regions: Sequence[str],
    result: Mapping[str, Any],
    *,
    min_p_value: float,
) -> dict[str, Any]:
    """chi2 of data (the validation half) against MC before and after the correction."""
    e = np.asarray(result["edges"])
    r_mc = factor(result, mc["x"], mc["process"])
    rel = np.asarray(result["ratio_error"]) / np.asarray(result["ratio"])
    out: dict[str, Any] = {"min_p_value": float(min_p_value), "regions": {}}
    for r in regions:
        dr, mr = data["region"] == r, mc["region"] == r
        d = _hist(data["x"][dr], np.ones(int(dr.sum())), e)[0]
        entry: dict[str, Any] = {"n_data": int(dr.sum())}
        for label, w in (("before", mc["weight"][mr]), ("after", mc["weight"][mr] * r_mc[mr])):
            m, m2 = _hist(mc["x"][mr], w, e)
            if label == "after":  # the correction's own statistical uncertainty (derivation)
                m2 = m2 + (m * rel) ** 2
            chi2, ndf, p = chi2_shape(d, m, m2)
            entry[label] = {"chi2": chi2, "ndf": ndf, "p_value": p}
        entry["passes"] = bool(entry["after"]["p_value"] > min_p_value)
        out["regions"][r] = entry
    out["passes"] = all(v["passes"] for v in out["regions"].values())
    return out


def correction_set(name: str, variable: str, result: Mapping[str, Any]) -> Any:
    """The correctionlib CorrectionSet of the reweighting: inputs ``systematic`` (nominal, up,
    down), ``process`` and the variable; the factors of :func:`_bin_values`."""
    import correctionlib.schemav2 as cs

    edges = [float(v) for v in result["edges"]]
    procs = sorted(result["process_normalisation"])

    def by_process(side: str) -> Any:
        return cs.Category(
            nodetype="category",
            input="process",
            content=[
                cs.CategoryItem(
                    key=p,
                    value=cs.Binning(
                        nodetype="binning",
                        input=variable,
                        edges=edges,
                        content=[float(v) for v in _bin_values(result, p, side)],
                        flow="clamp",
                    ),
                )
                for p in procs
            ],
        )

    corr = cs.Correction(
        name=name,
        version=1,
        description=f"data/MC shape reweighting in {variable} from control-region data, each "
        "process's total yield kept (vhbb.fit.reweighting); up: applied twice, down: not applied",
        inputs=[
            cs.Variable(name="systematic", type="string", description="nominal, up or down"),
            cs.Variable(name="process", type="string", description="the MC process"),
            cs.Variable(name=variable, type="real", description="the reweighted input"),
        ],
        output=cs.Variable(name="weight", type="real", description="event-weight factor"),
        data=cs.Category(
            nodetype="category",
            input="systematic",
            content=[cs.CategoryItem(key=side, value=by_process(side)) for side in SIDES],
        ),
    )
    return cs.CorrectionSet(schema_version=2, corrections=[corr])


# ---------------------------------------------------------------------------- rule driver
def _read(
    cache_files: Mapping[str, str], spec: Mapping[str, Any], variable: str
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Data events (with ``fit_half``) and MC events: the variable, region and weight."""
    import pandas as pd

    from vhbb.data.export import cr_fit_half

    samples, processes = spec["samples"], spec["processes"]
    data_parts, mc_parts = [], []
    for sample, path in cache_files.items():
        is_mc = processes[samples[sample]["process"]]["role"] != "data"
        cols = ["run", "luminosityBlock", "event", "region", "weight", variable]
        try:
            df = pd.read_parquet(path, columns=cols)
        except (KeyError, ValueError) as exc:
            raise InputError(
                f"{path}: no column '{variable}' for reweighting (reweighting.<name>.variable "
                f"must be a cached column): {exc}"
            ) from None
        part = {
            "process": np.full(len(df), samples[sample]["process"]),
            "x": df[variable].to_numpy(np.float64),
            "region": df["region"].astype(str).to_numpy(),
            "weight": df["weight"].to_numpy(np.float64),
        }
        if is_mc:
            mc_parts.append(part)
        else:
            part["fit_half"] = cr_fit_half(
                sample,
                df["run"].to_numpy(),
                df["luminosityBlock"].to_numpy(),
                df["event"].to_numpy(),
                float(spec["cr_data_fit_fraction"]),
                int(spec["seed"]),
            )
            data_parts.append(part)
    if not data_parts:
        raise InputError("reweighting needs data samples (none is configured)")

    def cat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    return cat(data_parts), cat(mc_parts)


def run_derive(
    cache_files: Mapping[str, str],
    *,
    name: str,
    correction_path: str,
    validation_path: str,
    checks_path: str,
    spec: Mapping[str, Any],
) -> dict[str, Any]:
    """Rule driver: derive on the derivation half, validate on the fit half, gate, then write the
    check records, the validation and the correction (nothing but the records on failure)."""
    from vhbb.core import checks as chk
    from vhbb.core.io import atomic_path, write_json
    from vhbb.core.provenance import provenance

    settings = spec["reweighting"]
    variable, regions = settings["variable"], list(settings["regions"])
    data, mc = _read(cache_files, spec, variable)
    derive_half = {k: v[~data["fit_half"]] for k, v in data.items()}
    check_half = {k: v[data["fit_half"]] for k, v in data.items()}
    result = derive(
        derive_half, mc, regions, settings["edges"], min_data=float(settings["min_data"])
    )
    min_p = float(settings["min_p_value"])
    validation = validate(check_half, mc, regions, result, min_p_value=min_p)
    for r, v in validation["regions"].items():
        b, a = v["before"], v["after"]
        log.info(
            "%s in %s: chi2/ndf %.1f/%d (p %.3g) before, %.1f/%d (p %.3g) after the correction",
            variable, r, b["chi2"], b["ndf"], b["p_value"], a["chi2"], a["ndf"], a["p_value"],
        )  # fmt: skip
    records = [
        chk.compare(
            "reweighting",
            "data_mc_chi2_p_after",
            f"{name}/{r}",
            v["after"]["p_value"],
            min_p,
            ">",
            message=f"data (validation half) vs corrected MC in {variable}; see {validation_path}",
        )
        for r, v in validation["regions"].items()
    ]
    chk.write_checks(checks_path, records)
    gated = chk.gate(records, settings["on_failure"], context=f"reweighting {name}")
    doc = {
        "name": name,
        "variable": variable,
        "regions": regions,
        "derivation": "data with cr_split == 0 (not seen by the fits); MC normalised per region",
        "validation_data": "data with cr_split == 1 (the fit half), not used to derive",
        **result,
        "validation": validation,
        "uncertainty": bool(settings["uncertainty"]),
        "warnings": chk.warnings_of(gated),
        "checks": chk.summary(gated),
        "provenance": provenance(dict(spec)),
    }
    write_json(validation_path, doc)
    with atomic_path(correction_path) as tmp:
        tmp.write_text(correction_set(name, variable, result).model_dump_json(exclude_unset=True))
    return doc
