"""Fit diagnostics on Poisson pseudo-experiments: impacts, goodness of fit, injection, closure, VZ.

Everything here reuses :mod:`vhbb.stats.likelihood` (the same model, the same fast analytic-gradient
fit) and is a pure function of a :class:`~vhbb.stats.likelihood.Model`, an observation vector and a
seeded random generator, except :func:`run_diagnostics`, the rule's driver (its figures are drawn
by the rule ``diagnostics_plots``, :func:`vhbb.fit.figures.run_diagnostics_plots`).

**Toys** (:func:`generate_toy`) are Poisson draws of the expected yields at a true parameter
point.  By default the constrained nuisance parameters are drawn from their priors for each toy
(``nuisances="prior"``: unit Gaussians for the JES and lnN parameters, the multivariate Gaussian of
the constrained scale factors, and a Gaussian factor ``gamma_b ~ N(1, sigma_b)`` per bin for the MC
statistics, clipped at 0) while the fit keeps its constraint centres: in the linear-Gaussian limit
this is equivalent to fluctuating the global observables (frequentist toys), so the pulls
``(theta-hat - theta_true) / sigma-hat`` have unit width when the quoted errors are right.  With
``nuisances="fixed"`` only the Poisson counts fluctuate; ``templates=True`` instead draws each
process's template from ``N(m, sumw2)`` (clipped at 0): the "MC templates fluctuated too" variant.

**Pulls** (:func:`pull_summary`): over ``N`` valid toys the mean must be 0 within ``3 / sqrt(N)``
and the width (standard deviation) 1 within ``3 / sqrt(2 N)``.  A toy counts as valid when MIGRAD
converged, the covariance is positive definite and the POI is not at a limit; the fraction of
invalid toys is reported (and excluded).

**Impacts** (:func:`impacts`): for every nuisance ``theta`` the POI is refitted with ``theta`` fixed
at ``theta-hat +- sigma`` (pre-fit: the prior width; post-fit: the HESSE error); the impact is the
shift of the POI.  Free scale factors have no prior (no pre-fit impact).  ``stat_only`` is the POI
error with every nuisance fixed at its best-fit value and no MC-statistics terms; the MC-statistics
group impact is ``sqrt(sigma_{MC stat only}^2 - sigma_stat^2)`` (the per-bin gammas are profiled
analytically, so they have no individual impacts).

The rule runs the impacts on the data set of ``fit.diagnostics.impacts.data``: ``asimov`` (the
default: the signal fit's Asimov observations, :func:`asimov_data`; expected impacts, every pull
0) or ``observed`` (the pseudo-data of :func:`pseudo_data`); ``diagnostics.json`` names it
(``impacts_data``).  **Constraint flags** (:func:`constrained_nuisances`): a constrained nuisance
whose post-fit error is below ``constraint_flag_fraction`` (0.5) of its pre-fit width is listed in
``constrained_nuisances`` and ``warnings`` (and marked in the impact figure); pulls of the
pseudo-data fit beyond ``pull_flag_sigma`` (2) likewise (:func:`pulled_nuisances`).

**2D scan** (:func:`scan_2d`, rule ``scan_2d``): ``2 Delta nll`` of two parameters (default mu x
mu_VZ, :func:`scan_model`) on a grid, every other parameter profiled (warm starts from the
neighbouring point), with the areas and extents of the 68 % / 95 % regions.

**Goodness of fit** (:func:`goodness_of_fit`): the saturated-model statistic ``q = 2 nll-hat`` (the
nll of :mod:`vhbb.stats.likelihood` is already normalised to the saturated model, ``sum_b [nu - n +
n ln(n / nu)]`` plus the constraint terms); its distribution from Poisson toys of the post-fit
expectation (profiled gammas included), each refitted, gives the p-value (fraction of toys with ``q
>= q_obs``).

**VZ cross-check** (:func:`vz_model`): the resonant VZ(bb) processes get their own signal strength
``mu_VZ`` as the POI; the Higgs signal is a background at ``mu = 1``; lnN terms acting only on VZ
(its cross-section uncertainty: what is measured) are fixed at 0.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from vhbb.core.io import write_json
from vhbb.core.provenance import provenance
from vhbb.fit.scale_factors import fit_scale_factors
from vhbb.fit.signal_fit import FitStage, _observations, read_fit_stage
from vhbb.stats import likelihood as lk
from vhbb.stats import toys as st
from vhbb.stats.histograms import upsample_2d
from vhbb.stats.results import RegionHistogram

log = logging.getLogger(__name__)

VZ_POI = "mu_VZ"
# The likelihood is smooth (interpolation codes 4 / 4p), but a toy fit's MIGRAD can still stop
# just above its EDM target on a flat direction; toy fits with an EDM below this value (a POI
# shift well below 0.1 sigma) and an accurate covariance are accepted.
EDM_ACCEPT = 0.02
# A nuisance whose post-fit error is below this fraction of its prior width is flagged as
# constrained (fit.diagnostics.constraint_flag_fraction); pulls beyond PULL_FLAG_SIGMA likewise.
CONSTRAINT_FLAG_FRACTION = 0.5
PULL_FLAG_SIGMA = 2.0
IMPACT_DATA = ("asimov", "observed")
# 2 Delta NLL of the 68 % and 95 % CL regions of two parameters (chi2, 2 dof)
SCAN_2D_LEVELS = {"68%": 2.30, "95%": 5.99}


# ---------------------------------------------------------------------------- toys
def prior_widths(model: lk.Model) -> dict[str, float]:
    """Pre-fit width of every constrained parameter (free normalisation factors are absent)."""
    out: dict[str, float] = {}
    for i in list(model.histo_index) + list(model.normsys_index):
        out[model.names[int(i)]] = 1.0
    if model.gauss_index is not None:
        for g, i in enumerate(model.gauss_index):
            out[model.names[int(i)]] = math.sqrt(float(model.gauss_cov[g, g]))  # type: ignore[index]
    if model.gamma_index is not None and model.stat_sigma is not None:
        for b, i in enumerate(model.gamma_index):
            if i >= 0:
                out[model.names[int(i)]] = float(model.stat_sigma[b])
    return out


generate_toy = st.generate_toy  # one Poisson pseudo-data set (see the module docstring)


@dataclass(frozen=True)
class ToyFits:
    """Fitted values and HESSE errors of ``params`` over toys (rows), and validity."""

    params: tuple[str, ...]
    values: np.ndarray  # (N, len(params))
    errors: np.ndarray
    valid: np.ndarray  # (N,) bool
    nll: np.ndarray  # (N,)
    # toys whose fit found a lower minimum by a sign-flip restart (likelihood._Fitter)
    lower_minima: int = 0

    @property
    def n_valid(self) -> int:
        return int(self.valid.sum())


def run_toys(
    model: lk.Model,
    x_true: np.ndarray,
    n_toys: int,
    seed: int | np.random.SeedSequence,
    *,
    params: Sequence[str] | None = None,
    nuisances: str = "prior",
    templates: bool = False,
    workers: int = 1,
) -> ToyFits:
    """Generate and fit ``n_toys`` pseudo-experiments (one seed per toy: worker-independent;
    :mod:`vhbb.stats.toys`: one reusable fitter per worker)."""
    params = tuple(params or (model.poi,))
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    toys = st.generate_toys(
        model, x_true, ss.spawn(n_toys), nuisances=nuisances, templates=templates
    )
    fits = st.fit_toys(model, toys, workers=workers)
    cols = fits.columns(params)
    return ToyFits(
        params,
        fits.values[:, cols],
        fits.errors[:, cols],
        st.accepted(model, fits, edm_accept=EDM_ACCEPT),
        fits.nll,
        0 if fits.flips is None else int(np.count_nonzero(fits.flips)),
    )


def pull_summary(values: np.ndarray, errors: np.ndarray, truth: float) -> dict[str, Any]:
    """Mean and width of ``(value - truth) / error`` with the 3/sqrt(N), 3/sqrt(2N) criteria."""
    v = np.asarray(values, dtype=np.float64)
    e = np.asarray(errors, dtype=np.float64)
    keep = np.isfinite(v) & np.isfinite(e) & (e > 0)
    pulls = (v[keep] - truth) / e[keep]
    n = len(pulls)
    if n < 2:
        return {"n": n, "mean": None, "width": None, "mean_ok": False, "width_ok": False}
    mean, width = float(pulls.mean()), float(pulls.std(ddof=1))
    tol_mean, tol_width = 3.0 / math.sqrt(n), 3.0 / math.sqrt(2.0 * n)
    return {
        "n": n,
        "truth": float(truth),
        "mean_value": float(v[keep].mean()),
        "std_value": float(v[keep].std(ddof=1)),
        "median_error": float(np.median(e[keep])),
        "mean": mean,
        "width": width,
        "mean_tolerance": tol_mean,
        "width_tolerance": tol_width,
        "mean_ok": bool(abs(mean) < tol_mean),
        "width_ok": bool(abs(width - 1.0) < tol_width),
        "pulls": pulls.tolist(),
    }


def truth_point(model: lk.Model, values: Mapping[str, float] | None = None) -> np.ndarray:
    """The model's initial values with ``values`` substituted (the toys' true parameters)."""
    x = model.init.copy()
    for name, value in (values or {}).items():
        x[model.index(name)] = float(value)
    return x


def closure(
    model: lk.Model,
    truth: Mapping[str, float],
    n_toys: int,
    seed: int,
    *,
    params: Sequence[str] | None = None,
    nuisances: str = "prior",
    templates: bool = False,
    workers: int = 1,
) -> dict[str, Any]:
    """Pulls of the POI and the normalisation factors over toys generated at ``truth``."""
    x_true = truth_point(model, truth)
    if params is None:
        params = [model.names[int(i)] for i in model.norm_index if not model.fixed[int(i)]]
    fits = run_toys(
        model,
        x_true,
        n_toys,
        seed,
        params=params,
        nuisances=nuisances,
        templates=templates,
        workers=workers,
    )
    ok = fits.valid
    return {
        "n_toys": n_toys,
        "n_valid": fits.n_valid,
        "lower_minima_found": fits.lower_minima,
        "nuisances": nuisances,
        "templates_fluctuated": templates,
        "truth": {p: float(x_true[model.index(p)]) for p in params},
        "pulls": {
            p: pull_summary(fits.values[ok, k], fits.errors[ok, k], x_true[model.index(p)])
            for k, p in enumerate(params)
        },
    }


def injection(
    model: lk.Model,
    points: Sequence[float],
    n_toys: int,
    seed: int,
    *,
    nuisances: str = "prior",
    workers: int = 1,
) -> list[dict[str, Any]]:
    """Signal injection: toys at each POI value; mean fitted POI, its spread and the pull width."""
    out = []
    base = np.random.SeedSequence(seed)
    for k, mu in enumerate(points):
        x_true = truth_point(model, {model.poi: mu})
        fits = run_toys(
            model,
            x_true,
            n_toys,
            np.random.SeedSequence(base.entropy, spawn_key=(k,)),
            nuisances=nuisances,
            workers=workers,
        )
        ok = fits.valid
        summary = pull_summary(fits.values[ok, 0], fits.errors[ok, 0], float(mu))
        summary.pop("pulls", None)
        out.append(
            {
                "injected": float(mu),
                "n_toys": n_toys,
                "n_valid": fits.n_valid,
                "lower_minima_found": fits.lower_minima,
                "mean_fitted": summary.get("mean_value"),
                "std_fitted": summary.get("std_value"),
                "bias": None
                if summary.get("mean_value") is None
                else summary["mean_value"] - float(mu),
                "pull_mean": summary["mean"],
                "pull_width": summary["width"],
                "mean_ok": summary["mean_ok"],
                "width_ok": summary["width_ok"],
                "median_error": summary.get("median_error"),
            }
        )
    return out


# ---------------------------------------------------------------------------- goodness of fit
def postfit_expected(model: lk.Model, observed: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Total expected yield at ``x`` with the per-bin MC-statistics factors profiled."""
    nu = lk.asimov(model, x)
    if model.stat_sigma is not None and model.stat_mode == "profile":
        nu = nu * lk.profiled_gamma(np.maximum(nu, lk.TINY), observed, model.stat_sigma)
    return nu


def saturated_statistic(best: lk.FitResult) -> float:
    """``q = 2 nll-hat``: the likelihood ratio to the saturated model (plus constraint terms)."""
    return 2.0 * float(best.nll)


def goodness_of_fit(
    model: lk.Model,
    observed: np.ndarray,
    n_toys: int,
    seed: int,
    *,
    best: lk.FitResult | None = None,
) -> dict[str, Any]:
    """Saturated-model statistic of ``observed`` and its toy distribution and p-value."""
    from vhbb.stats.metrics import chi2_prob

    if best is None:
        best = lk.fit(model, observed, label="goodness of fit")
    q_obs = saturated_statistic(best)
    expected = postfit_expected(model, observed, best.values)
    seeds = np.random.SeedSequence(seed).spawn(n_toys)
    start = replace(model, init=best.values.copy())
    fits = st.fit_toys(start, st.poisson_toys(expected, seeds), hesse=False)
    q = 2.0 * fits.nll[fits.valid & ~fits.failed]
    n_free = sum(1 for f in model.fixed if not f)
    ndf = max(model.n_bins - n_free, 1)
    p = float((np.sum(q >= q_obs) + 0.0) / len(q)) if len(q) else float("nan")
    return {
        "statistic": "saturated",
        "q_observed": q_obs,
        "n_toys": n_toys,
        "n_valid": len(q),
        "q_toys": q.tolist(),
        "p_value": p,
        "p_value_error": math.sqrt(max(p * (1 - p), 1.0 / max(len(q), 1)) / max(len(q), 1)),
        "ndf": ndf,
        "p_value_chi2": chi2_prob(q_obs, ndf) if ndf > 0 else float("nan"),
        "toys": "Poisson around the post-fit expectation (profiled gammas), refitted",
    }


# ---------------------------------------------------------------------------- impacts
def prior_centres(model: lk.Model) -> dict[str, float]:
    """Constraint centre of every constrained parameter: 0 for the JES / lnN nuisances, the
    Gaussian centre for the constrained scale factors, 1 for the per-bin gammas."""
    out = {n: 0.0 for n in prior_widths(model)}
    if model.gauss_index is not None and model.gauss_center is not None:
        for g, i in enumerate(model.gauss_index):
            out[model.names[int(i)]] = float(model.gauss_center[g])
    if model.gamma_index is not None:
        for i in model.gamma_index:
            if i >= 0:
                out[model.names[int(i)]] = 1.0
    return out


def _flaggable(model: lk.Model) -> list[str]:
    """Constrained, floating nuisances (no per-bin gammas: profiled or many, see impacts)."""
    return [
        n
        for n in prior_widths(model)
        if not model.fixed[model.index(n)] and not n.startswith("gamma_") and n != model.poi
    ]


def constrained_nuisances(
    model: lk.Model, best: lk.FitResult, fraction: float = CONSTRAINT_FLAG_FRACTION
) -> list[dict[str, Any]]:
    """Nuisances whose post-fit (HESSE) error is below ``fraction`` of the pre-fit width: the
    data constrain them beyond their prior (a measurement, worth a look)."""
    prior = prior_widths(model)
    out = []
    for name in _flaggable(model):
        pre, post = prior[name], float(best.error(name))
        if pre > 0 and post / pre < fraction:
            out.append(
                {
                    "name": name,
                    "prefit": pre,
                    "postfit": post,
                    "ratio": post / pre,
                    "at_limit": name in best.status.at_limit,
                }
            )
    return out


def pulled_nuisances(
    model: lk.Model, best: lk.FitResult, n_sigma: float = PULL_FLAG_SIGMA
) -> list[dict[str, Any]]:
    """Nuisances pulled by more than ``n_sigma`` pre-fit widths from their constraint centre."""
    prior, centre = prior_widths(model), prior_centres(model)
    out = []
    for name in _flaggable(model):
        pull = (float(best.value(name)) - centre[name]) / prior[name]
        if abs(pull) > n_sigma:
            out.append({"name": name, "value": float(best.value(name)), "pull": pull})
    return out


def impacts(
    model: lk.Model,
    observed: np.ndarray,
    best: lk.FitResult | None = None,
    *,
    constraint_fraction: float = CONSTRAINT_FLAG_FRACTION,
) -> dict[str, Any]:
    """Pre- and post-fit impacts of every nuisance on the POI (see the module docstring), each
    nuisance's pull ``(theta-hat - centre) / prior`` and constraint ``sigma-hat / prior``; those
    below ``constraint_fraction`` are flagged (``constrained``, ``constrained_nuisances``)."""
    if best is None:
        best = lk.fit(model, observed, label="impacts")
    poi = model.poi
    i_poi = model.index(poi)
    mu_hat, sigma = best.value(poi), best.error(poi)
    prior = prior_widths(model)
    centre = prior_centres(model)
    start = replace(model, init=best.values.copy())

    def refit(fixed: Mapping[str, float]) -> float:
        res = lk.fit(
            start.with_fixed(fixed), observed, hesse=False, require_valid=False, tolerance=0.01
        )
        ok = res.status.valid or res.status.edm < EDM_ACCEPT
        return res.value(poi) - mu_hat if ok else float("nan")

    out: dict[str, Any] = {}
    for i, name in enumerate(model.names):
        if i == i_poi or model.fixed[i] or name.startswith("gamma_"):
            continue
        hat, post = float(best.values[i]), float(best.errors[i])
        entry: dict[str, Any] = {"value": hat, "postfit_error": post, "prefit_error": None}
        entry["postfit"] = [refit({name: hat + post}), refit({name: hat - post})]
        if name in prior:
            pre = prior[name]
            entry["prefit_error"] = pre
            entry["prefit"] = [refit({name: hat + pre}), refit({name: hat - pre})]
            entry["pull"] = (hat - centre[name]) / pre
            entry["constraint_ratio"] = post / pre
            entry["constrained"] = bool(post / pre < constraint_fraction)
        else:
            entry["prefit"] = None
            entry["pull"] = entry["constraint_ratio"] = None
            entry["constrained"] = False
        entry["impact"] = float(np.nanmax(np.abs(entry["postfit"])))
        out[name] = entry
    # stat-only and MC-stat group
    nuis = {n: float(best.values[i]) for i, n in enumerate(model.names) if i != i_poi}
    frozen = start.with_fixed(nuis)
    stat_only = lk.fit(replace(frozen, stat_sigma=None), observed, require_valid=False).error(poi)
    mc_group = None
    if model.stat_sigma is not None and model.stat_mode == "profile":
        with_mc = lk.fit(frozen, observed, require_valid=False).error(poi)
        mc_group = math.sqrt(max(with_mc**2 - stat_only**2, 0.0))
    quad = math.sqrt(
        stat_only**2
        + (mc_group or 0.0) ** 2
        + sum(0.25 * (abs(e["postfit"][0]) + abs(e["postfit"][1])) ** 2 for e in out.values())
    )
    ranking = sorted(out, key=lambda n: -out[n]["impact"])
    return {
        "poi": poi,
        "poi_value": mu_hat,
        "total_error": sigma,
        "stat_only_error": stat_only,
        "mc_stat_group_impact": mc_group,
        "quadrature_sum": quad,
        "nuisances": out,
        "ranking": ranking,
        "constraint_flag_fraction": constraint_fraction,
        "constrained_nuisances": constrained_nuisances(model, best, constraint_fraction),
        "definition": "impact = POI shift when the nuisance is fixed at its best-fit value "
        "+- 1 sigma (pre-fit: prior width; post-fit: HESSE error) and the rest refitted",
    }


def correlation(best: lk.FitResult, model: lk.Model) -> dict[str, Any]:
    """Post-fit correlation matrix of the free parameters (no per-bin gammas)."""
    idx = [
        i
        for i, n in enumerate(model.names)
        if not model.fixed[i] and not n.startswith("gamma_") and best.covariance[i, i] > 0
    ]
    cov = best.covariance[np.ix_(idx, idx)]
    d = np.sqrt(np.diag(cov))
    corr = cov / np.outer(d, d)
    return {"parameters": [model.names[i] for i in idx], "matrix": corr.tolist()}


# ---------------------------------------------------------------------------- VZ cross-check
def vz_model(
    model: lk.Model,
    vz_processes: Sequence[str],
    *,
    bounds: Sequence[float] = (-20.0, 20.0),
    fix_poi: bool = True,
) -> lk.Model:
    """``model`` with a signal strength ``mu_VZ`` on ``vz_processes`` as the POI (mu fixed 1;
    with ``fix_poi=False`` mu floats too: the two-parameter model of :func:`scan_2d`)."""
    procs = list(model.processes)
    missing = [p for p in vz_processes if p not in procs]
    if missing or not vz_processes:
        raise ValueError(f"VZ processes {list(vz_processes)} not all in the model ({procs})")
    mask = np.array([p in vz_processes for p in procs])
    names = (*model.names, VZ_POI)
    new = replace(
        model,
        names=names,
        init=np.append(model.init, 1.0),
        bounds=(*model.bounds, (float(bounds[0]), float(bounds[1]))),
        fixed=(*model.fixed, False),
        norm_index=np.append(model.norm_index, len(names) - 1).astype(np.int64),
        norm_mask=np.vstack([model.norm_mask, mask[None, :]]),
        poi=VZ_POI,
    )
    fix: dict[str, float] = {}
    if model.poi in model.names and fix_poi:
        fix[model.poi] = 1.0
    for j, i in enumerate(model.normsys_index):
        acts = (model.normsys_log_hi[j] != 0) | (model.normsys_log_lo[j] != 0)
        if acts.any() and np.all(mask[acts]):
            fix[model.names[int(i)]] = 0.0
    return new.with_fixed(fix)


# ---------------------------------------------------------------------------- 2D profile scan
Axis2D = tuple[str, Sequence[float] | None, int]


def _axis_points(
    model: lk.Model, best: lk.FitResult, axis: Axis2D, n_sigma: float
) -> tuple[str, np.ndarray]:
    """Grid values of one axis: ``range`` or, when None, best fit +- ``n_sigma`` HESSE errors
    (clipped to the parameter's bounds)."""
    name, rng, n = axis
    if int(n) < 2:
        raise ValueError(f"scan_2d: {name} needs at least 2 points, got {n}")
    if rng is None:
        i = model.index(name)
        hat, err = best.values[i], best.errors[i]
        if not (np.isfinite(err) and err > 0):
            raise lk.FitError(f"scan_2d: no HESSE error of {name} to set its range; give one")
        lo, hi = hat - n_sigma * err, hat + n_sigma * err
        blo, bhi = model.bounds[i]
        lo = lo if blo is None else max(lo, blo)
        hi = hi if bhi is None else min(hi, bhi)
    else:
        lo, hi = (float(v) for v in rng)
    if not lo < hi:
        raise ValueError(f"scan_2d: empty range of {name}: [{lo}, {hi}]")
    return name, np.linspace(lo, hi, int(n))


def _profile_at(
    model: lk.Model,
    observed: np.ndarray,
    fixed: Mapping[str, float],
    start: np.ndarray,
    *,
    aux: lk.AuxData | None,
    tolerance: float,
) -> tuple[float, np.ndarray | None]:
    """Minimum nll with ``fixed`` held (every other parameter profiled from ``start``) and the
    parameters there; (NaN, None) when MIGRAD does not converge."""
    fm = model.with_fixed(fixed)
    init = np.asarray(start, dtype=np.float64).copy()
    for name, value in fixed.items():
        init[model.index(name)] = value
    fm = replace(fm, init=init)
    if all(fm.fixed):
        return float(lk.Likelihood(fm, observed, aux)(init)), init
    label = ", ".join(f"{k} = {v:.4g}" for k, v in fixed.items())
    try:
        res = lk.fit(
            fm,
            observed,
            hesse=False,
            require_valid=False,
            tolerance=tolerance,
            aux=aux,
            label=label,
        )
    except (lk.FitError, ValueError, np.linalg.LinAlgError):
        return float("nan"), None
    if not res.status.valid:
        return float("nan"), None
    return float(res.nll), res.values


def scan_2d(
    model: lk.Model,
    observed: np.ndarray,
    axis1: Axis2D,
    axis2: Axis2D,
    *,
    aux: lk.AuxData | None = None,
    best: lk.FitResult | None = None,
    n_sigma: float = 3.0,
    tolerance: float = 0.001,
) -> dict[str, Any]:
    """Two-parameter profile-likelihood scan: ``2 Delta nll`` on the grid ``axis1 x axis2``.

    Each axis is ``(parameter, (lo, hi) or None, n_points)``; None: the best fit +- ``n_sigma``
    HESSE errors.  At each grid point both parameters are fixed and every other free parameter
    is profiled (MIGRAD, ``tolerance`` as :func:`~vhbb.stats.likelihood.profile_nll`), starting
    from the neighbouring point's minimum: the grid is walked as a snake (rows alternate
    direction), so each fit starts one step away; a failed warm start is retried from the best
    fit.  ``twice_delta_nll[i][j]`` belongs to ``(values[p1][i], values[p2][j])``, relative to
    the global minimum (NaN where a fit failed); ``contours`` summarises the 68 % and 95 %
    regions (:data:`SCAN_2D_LEVELS`, :func:`contour_summary`).
    """
    p1, p2 = axis1[0], axis2[0]
    if p1 == p2:
        raise ValueError(f"scan_2d: the two parameters must differ (both {p1})")
    for p in (p1, p2):
        if model.fixed[model.index(p)]:
            raise ValueError(f"scan_2d: {p} is fixed in the model")
    if best is None:
        best = lk.fit(model, observed, aux=aux, tolerance=tolerance, label="2D scan best fit")
    _, x1 = _axis_points(model, best, axis1, n_sigma)
    _, x2 = _axis_points(model, best, axis2, n_sigma)
    nll = np.full((len(x1), len(x2)), np.nan)
    start = best.values.copy()
    for i, a in enumerate(x1):
        cols = range(len(x2)) if i % 2 == 0 else range(len(x2) - 1, -1, -1)
        for j in cols:
            point = {p1: float(a), p2: float(x2[j])}
            value, where = _profile_at(model, observed, point, start, aux=aux, tolerance=tolerance)
            if where is None:  # warm start failed: from the best fit
                value, where = _profile_at(
                    model, observed, point, best.values, aux=aux, tolerance=tolerance
                )
            nll[i, j] = value
            if where is not None:
                start = where
    n_failed = int(np.isnan(nll).sum())
    if n_failed:
        log.warning("2D scan: %d of %d points did not converge", n_failed, nll.size)
    nll_min = float(best.nll)
    if np.isfinite(nll).any() and np.nanmin(nll) < nll_min:
        if nll_min - np.nanmin(nll) > 1e-4:
            log.warning(
                "2D scan: a grid point is %.2g below the best fit (loose minimum); using it",
                nll_min - np.nanmin(nll),
            )
        nll_min = float(np.nanmin(nll))
    q = 2.0 * (nll - nll_min)
    i1, i2 = model.index(p1), model.index(p2)
    cov = best.covariance[np.ix_([i1, i2], [i1, i2])]
    return {
        "parameters": [p1, p2],
        "values": {p1: x1.tolist(), p2: x2.tolist()},
        "twice_delta_nll": q.tolist(),
        "best_fit": {p1: best.value(p1), p2: best.value(p2)},
        "hesse_errors": {p1: best.error(p1), p2: best.error(p2)},
        "hesse_covariance": cov.tolist(),
        "hesse_correlation": float(cov[0, 1] / math.sqrt(cov[0, 0] * cov[1, 1]))
        if cov[0, 0] > 0 and cov[1, 1] > 0
        else None,
        "nll_min": nll_min,
        "n_failed": n_failed,
        "levels": dict(SCAN_2D_LEVELS),
        "contours": {k: contour_summary(x1, x2, q, level) for k, level in SCAN_2D_LEVELS.items()},
        "definition": "2 Delta nll = 2 [nll(p1, p2; others profiled) - nll-hat]",
    }


def contour_summary(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, level: float, factor: int = 8
) -> dict[str, Any]:
    """Area and extent (bounding box) of the region ``z < level`` on the upsampled grid
    (:func:`upsample_2d`); ``closed`` is false when the region touches the scan's edge (the
    range is too small: the extent and area are lower bounds).  The extent along each axis is
    where the minimum of ``z`` over the other axis crosses ``level`` (linear interpolation): the
    profile interval of that parameter at ``2 Delta nll = level``."""
    fx, fy, fz = upsample_2d(np.asarray(x), np.asarray(y), np.asarray(z), factor)
    inside = fz < level
    if not inside.any():
        return {"level": level, "area": 0.0, "extent": None, "closed": False}
    # each fine cell (midpoint rule) counts with its area
    wx = np.full(len(fx), fx[1] - fx[0])
    wy = np.full(len(fy), fy[1] - fy[0])
    wx[[0, -1]] *= 0.5
    wy[[0, -1]] *= 0.5
    area = float(np.sum(inside * np.outer(wx, wy)))
    edge = inside[0].any() or inside[-1].any() or inside[:, 0].any() or inside[:, -1].any()
    return {
        "level": level,
        "area": area,
        "extent": [_crossings(fx, fz.min(axis=1), level), _crossings(fy, fz.min(axis=0), level)],
        "closed": not bool(edge),
    }


def _crossings(x: np.ndarray, m: np.ndarray, level: float) -> list[float]:
    """Outermost ``x`` where ``m`` crosses ``level`` (linear interpolation; the grid's ends when
    ``m`` stays below it there)."""
    below = np.flatnonzero(m < level)
    lo_i, hi_i = int(below[0]), int(below[-1])

    def cross(i: int, k: int) -> float:  # between the inside point i and the outside point k
        return float(x[i] + (x[k] - x[i]) * (level - m[i]) / (m[k] - m[i]))

    lo = float(x[0]) if lo_i == 0 else cross(lo_i, lo_i - 1)
    hi = float(x[-1]) if hi_i == len(x) - 1 else cross(hi_i, hi_i + 1)
    return [lo, hi]


def fit_summary(model: lk.Model, observed: np.ndarray, label: str) -> dict[str, Any]:
    """POI value, HESSE and MINOS errors and the discovery significance of one fit."""
    try:
        best = lk.fit(model, observed, minos=[model.poi], label=label, tolerance=0.01)
    except lk.FitError as exc:
        best = lk.fit(model, observed, label=label, require_valid=False)  # no MINOS: HESSE
        if not (best.status.covariance_posdef and best.status.edm < EDM_ACCEPT):
            raise
        log.warning(
            "%s; accepted (EDM %.3g < %g, see EDM_ACCEPT)", exc, best.status.edm, EDM_ACCEPT
        )
    z = float("nan")
    try:
        _, z = lk.discovery_significance(model, observed, best)
    except lk.FitError as exc:
        log.warning("%s: no significance (%s)", label, exc)
    lo, hi = best.minos.get(model.poi, (-best.error(model.poi), best.error(model.poi)))
    if best.status.minos_valid is False:
        lo, hi = -best.error(model.poi), best.error(model.poi)
    return {
        "poi": model.poi,
        "value": best.value(model.poi),
        "hesse_error": best.error(model.poi),
        "error_down": -lo,
        "error_up": hi,
        "significance": z,
        "status": best.status.as_dict(),
        "_best": best,
    }


# ---------------------------------------------------------------------------- CR-fit closure
def cr_closure(
    hists: Sequence[Any],
    free: Sequence[str],
    truth: Mapping[str, float],
    n_toys: int,
    seed: int,
) -> dict[str, Any]:
    """Control-region scale-factor fit (:func:`vhbb.fit.scale_factors.fit_scale_factors`) on toys.

    Each toy replaces the data of every region by a Poisson draw of ``sum_p s_p m_p`` with the
    true scale factors ``truth`` (1 for the fixed processes); pulls use the HESSE errors.
    """
    seeds = np.random.SeedSequence(seed).spawn(n_toys)
    values, errors = [], []
    for s in seeds:
        rng = np.random.default_rng(s)
        toys = []
        for h in hists:
            nu = sum(truth.get(p, 1.0) * np.clip(m, 0, None) for p, m in h.mc.items())
            data = rng.poisson(nu).astype(np.float64)
            toys.append(RegionHistogram(h.region, h.edges, data, h.mc, h.mc_sumw2, h.variable))
        sf_log = logging.getLogger("vhbb.fit.scale_factors")
        level = sf_log.level
        sf_log.setLevel(logging.WARNING)
        try:
            res = fit_scale_factors(toys, free, minos=False, label="closure toy")
        except lk.FitError:
            continue
        finally:
            sf_log.setLevel(level)
        values.append([res.values[p] for p in free])
        errors.append([res.hesse_errors[p] for p in free])
    v, e = np.array(values).reshape(-1, len(free)), np.array(errors).reshape(-1, len(free))
    return {
        "n_toys": n_toys,
        "n_valid": len(v),
        "truth": {p: float(truth[p]) for p in free},
        "pulls": {p: pull_summary(v[:, k], e[:, k], truth[p]) for k, p in enumerate(free)},
    }


def truth_pulls(
    fitted: Mapping[str, float], errors: Mapping[str, float], truth: Mapping[str, float]
) -> dict[str, Any]:
    """``(fitted - truth) / error`` of one fit against the hidden truth (within 2 sigma: ok)."""
    out = {}
    for name, t in truth.items():
        if name not in fitted:
            continue
        pull = (fitted[name] - t) / errors[name] if errors[name] > 0 else float("nan")
        out[name] = {
            "fitted": float(fitted[name]),
            "error": float(errors[name]),
            "truth": float(t),
            "pull": float(pull),
            "within_2_sigma": bool(abs(pull) < 2.0),
        }
    return out


# ---------------------------------------------------------------------------- rule driver
def pseudo_data(
    inp: Any, regions: Mapping[str, Any], binning: Any, meta: Mapping[str, Any], seed: int
) -> tuple[np.ndarray, str]:
    """The observations diagnosed: SR pseudo-data when unblinded, else a Poisson toy of it.

    Control regions keep the fit's observations (the fit half of the data).
    """
    model = inp.model
    sr = meta["signal_region"]
    ch = model.channel(sr)
    observed = np.array(inp.observed, dtype=np.float64)
    data = regions[sr].data
    if not meta.get("blinded", True) and data is not None:
        observed[ch.start : ch.stop] = binning.apply(data)
        return observed, "signal region: pseudo-data of the toy generator (unblinded)"
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    observed[ch.start : ch.stop] = rng.poisson(observed[ch.start : ch.stop])
    return observed, (
        "signal region: Poisson toy of the expected yields at mu = 1 and the control-region "
        "scale factors (blinded: the signal-region data are never read)"
    )


def asimov_data(stage: FitStage, spec: Mapping[str, Any]) -> tuple[np.ndarray, str]:
    """The signal fit's Asimov observations of ``stage`` (:func:`vhbb.fit.signal_fit.
    _observations`: mu = 1, the control-region scale factors, nuisances nominal; the control
    regions as in the fit) and a description."""
    model = stage.fit.model
    sr = model.meta.get("signal_region", stage.meta["signal_region"])
    crs = list(model.meta.get("control_regions", []))
    observed, labels = _observations(
        model, stage.regions, sr, crs, control_region_data=bool(spec["control_region_data"])
    )
    return observed, "Asimov: " + "; ".join(f"{k}: {v}" for k, v in labels.items())


def diagnosed_data(
    stage: FitStage, spec: Mapping[str, Any], which: str, seed: int
) -> tuple[np.ndarray, str]:
    """``asimov`` (:func:`asimov_data`) or ``observed`` (:func:`pseudo_data`) observations."""
    if which == "asimov":
        return asimov_data(stage, spec)
    if which == "observed":
        return pseudo_data(stage.fit, stage.regions, stage.binning, stage.meta, seed)
    raise ValueError(f"data must be one of {IMPACT_DATA}, got {which!r}")


def _timed(label: str, func: Callable[[], Any], timings: dict[str, float]) -> Any:
    import time

    t0 = time.perf_counter()
    out = func()
    timings[label] = time.perf_counter() - t0
    log.info("%s: %.1f s", label, timings[label])
    return out


def impact_checks(
    model: lk.Model,
    observed: np.ndarray,
    best: lk.FitResult,
    settings: Mapping[str, Any],
    *,
    asimov: tuple[np.ndarray, str] | None,
    obs_label: str,
    timings: dict[str, float],
) -> dict[str, Any]:
    """Impacts and constraints on the data set of ``settings.impacts.data`` (``asimov``: the
    expected ones, a fit of ``asimov``; ``observed``: of ``observed``, the fit ``best``), and
    the pulls of the fit ``best`` beyond ``pull_flag_sigma``."""
    which = str(settings.get("impacts", {}).get("data", "asimov"))
    fraction = float(settings.get("constraint_flag_fraction", CONSTRAINT_FLAG_FRACTION))
    n_sigma = float(settings.get("pull_flag_sigma", PULL_FLAG_SIGMA))
    if which == "asimov":
        if asimov is None:
            raise ValueError("impacts on Asimov need the Asimov observations")
        data, imp_best, label = asimov[0], None, asimov[1]
    elif which == "observed":
        data, imp_best, label = observed, best, obs_label
    else:
        raise ValueError(f"fit.diagnostics.impacts.data must be one of {IMPACT_DATA}: {which!r}")
    imp = _timed(
        "impacts",
        lambda: impacts(model, data, imp_best, constraint_fraction=fraction),
        timings,
    )
    imp["data"], imp["observations"] = which, label
    pulled = pulled_nuisances(model, best, n_sigma)
    warnings = [
        f"{c['name']} is constrained on {which} data: post-fit error {c['postfit']:.3g} is "
        f"{c['ratio']:.2f} of its pre-fit width {c['prefit']:.3g} (< {fraction:g})"
        for c in imp["constrained_nuisances"]
    ] + [
        f"{p['name']} is pulled by {p['pull']:+.2f} pre-fit widths in the pseudo-data fit "
        f"(|pull| > {n_sigma:g})"
        for p in pulled
    ]
    for w in warnings:
        log.warning("%s", w)
    return {
        "impacts": imp,
        "impacts_data": {"data": which, "observations": label},
        "constrained_nuisances": imp["constrained_nuisances"],
        "pulled_nuisances": {"data": "observed", "n_sigma": n_sigma, "nuisances": pulled},
        "warnings": warnings,
    }


def fit_checks(
    model: lk.Model,
    observed: np.ndarray,
    best: lk.FitResult,
    settings: Mapping[str, Any],
    seed: int,
    *,
    workers: int,
    timings: dict[str, float],
    asimov: tuple[np.ndarray, str] | None = None,
    obs_label: str = "observed",
) -> dict[str, Any]:
    """Correlations, impacts (:func:`impact_checks`), goodness of fit and signal injection of
    the fit ``best``."""
    points, n_inj = settings["injection"]["points"], int(settings["injection"]["n_toys"])
    return {
        "correlation": correlation(best, model),
        **impact_checks(
            model,
            observed,
            best,
            settings,
            asimov=asimov,
            obs_label=obs_label,
            timings=timings,
        ),
        "goodness_of_fit": _timed(
            "goodness_of_fit",
            lambda: goodness_of_fit(
                model, observed, int(settings["gof_toys"]), seed + 11, best=best
            ),
            timings,
        ),
        "injection": _timed(
            "injection",
            lambda: injection(model, points, n_inj, seed + 12, workers=workers),
            timings,
        ),
    }


def closure_checks(
    stage: FitStage,
    truth: Mapping[str, Any] | None,
    settings: Mapping[str, Any],
    seed: int,
    *,
    workers: int,
    timings: dict[str, float],
) -> dict[str, Any]:
    """Closure of the signal model on toys at mu = 1 (and the true scale factors when known);
    with a known truth also the control-region fit against it, one fit and on toys."""
    model = stage.fit.model
    n_toys = int(settings["n_toys"])
    sf_truth = {} if truth is None else dict(truth["scale_factors"])
    toys_truth = {f"sf_{p}": v for p, v in sf_truth.items() if f"sf_{p}" in model.names}
    clo = _timed(
        "closure",
        lambda: closure(
            model,
            {model.poi: 1.0, **toys_truth},
            n_toys,
            seed + 13,
            templates=bool(settings["fluctuate_templates"]),
            workers=workers,
        ),
        timings,
    )
    out: dict[str, Any] = {"signal_model": clo}
    if truth is not None:
        sf = stage.scale_factors
        out["control_region_fit"] = truth_pulls(sf.values, sf.errors, sf_truth)
        out["cr_fit_toys"] = cr_closure(
            _cr_hists(stage.regions, stage.meta),
            [p for p in sf.values if p in sf_truth],
            sf_truth,
            n_toys,
            seed + 14,
        )
    return out


def vz_check(
    model: lk.Model,
    observed: np.ndarray,
    spec: Mapping[str, Any],
    seed: int,
    *,
    label: str,
    workers: int,
) -> dict[str, Any] | None:
    """The VZ cross-check (fit of ``mu_VZ``, its pull against the truth, injection at 1); None
    when disabled or without resonant processes."""
    settings, truth = spec["diagnostics"], spec.get("truth")
    vz_procs = [
        p for p in model.processes if spec["processes"].get(p, {}).get("role") == "resonant"
    ]
    if not (settings["vz_check"] and vz_procs):
        return None
    vmodel = vz_model(model, vz_procs, bounds=tuple(spec["poi_bounds"]))
    vfit = fit_summary(vmodel, observed, f"{label} (VZ)")
    vfit.pop("_best")
    vfit["truth"] = None if truth is None else float(truth["mu_vz"])
    if vfit["truth"] is not None:
        err = vfit["error_up"] if vfit["value"] < vfit["truth"] else vfit["error_down"]
        vfit["pull"] = (vfit["value"] - vfit["truth"]) / err
    vfit["injection"] = injection(
        vmodel, [1.0], int(settings["injection"]["n_toys"]), seed + 15, workers=workers
    )[0]
    vfit["processes"] = vz_procs
    return vfit


def run_diagnostics(
    hists_path: str,
    sf_path: str,
    *,
    mode: str,
    json_path: str,
    plot_data: str,
    spec: Mapping[str, Any],
    workers: int = 1,
) -> dict[str, Any]:
    """Rule driver: every diagnostic of one model and mode; the closure pulls the plot rule
    draws (``plot_data``), then the JSON (last)."""
    settings = spec["diagnostics"]
    seed = int(spec["seed"])
    stage = read_fit_stage(hists_path, sf_path, mode=mode, spec=spec)
    model, meta = stage.fit.model, stage.meta
    observed, obs_label = pseudo_data(stage.fit, stage.regions, stage.binning, meta, seed)
    label = f"{meta['model']} {mode} diagnostics"
    timings: dict[str, float] = {}
    fit = _timed("fit", lambda: fit_summary(model, observed, label), timings)
    best = fit.pop("_best")
    doc: dict[str, Any] = {
        "model": meta["model"],
        "mode": mode,
        "observations": obs_label,
        "fit": fit,
        **fit_checks(
            model,
            observed,
            best,
            settings,
            seed,
            workers=workers,
            timings=timings,
            asimov=asimov_data(stage, spec),
            obs_label=obs_label,
        ),
        "closure": closure_checks(
            stage, spec.get("truth"), settings, seed, workers=workers, timings=timings
        ),
    }
    vfit = vz_check(model, observed, spec, seed, label=label, workers=workers)
    if vfit is not None:
        doc["vz_check"] = vfit
    doc["timings_s"] = timings
    doc["toys_per_second"] = {
        "injection": len(settings["injection"]["points"])
        * int(settings["injection"]["n_toys"])
        / max(timings["injection"], 1e-9),
        "closure": int(settings["n_toys"]) / max(timings["closure"], 1e-9),
    }
    doc["settings"] = dict(settings)
    doc["provenance"] = provenance(dict(spec))
    pulls = {"closure_pulls": doc["closure"]["signal_model"]["pulls"]}
    write_json(plot_data, pulls)
    for block in (doc["closure"]["signal_model"], doc["closure"].get("cr_fit_toys")):
        for entry in (block or {}).get("pulls", {}).values():
            entry.pop("pulls", None)
    write_json(json_path, doc)
    log.info(
        "%s: mu = %.3f +- %.3f, GoF p = %.3f, VZ: %s",
        label,
        fit["value"],
        fit["hesse_error"],
        doc["goodness_of_fit"]["p_value"],
        "n/a" if vfit is None else f"{vfit['value']:.3f}",
    )
    return doc


def scan_model(model: lk.Model, parameters: Sequence[str], spec: Mapping[str, Any]) -> lk.Model:
    """The model of a 2D scan: with ``mu_VZ`` (a free normalisation of the resonant processes,
    :func:`vz_model` with mu floating) when scanned; the scanned parameters must exist."""
    if VZ_POI in parameters:
        vz_procs = [
            p for p in model.processes if spec["processes"].get(p, {}).get("role") == "resonant"
        ]
        model = vz_model(model, vz_procs, bounds=tuple(spec["poi_bounds"]), fix_poi=False)
        model = replace(model, poi=lk.POI if lk.POI in model.names else VZ_POI)
    unknown = [p for p in parameters if p not in model.names]
    if unknown:
        raise lk.FitError(
            f"fit.diagnostics.scan_2d.parameters: {unknown} not in the model "
            f"({', '.join(n for n in model.names if not n.startswith('gamma_'))})"
        )
    return model


def run_scan_2d(
    hists_path: str,
    sf_path: str,
    *,
    mode: str,
    json_path: str,
    spec: Mapping[str, Any],
) -> dict[str, Any]:
    """Rule driver of ``scan_2d``: the two-parameter profile scan (:func:`scan_2d`) of one model
    and mode on ``scan_2d.data`` (Asimov or the diagnostics' pseudo-data)."""
    import time

    settings = spec["scan_2d"]
    stage = read_fit_stage(hists_path, sf_path, mode=mode, spec=spec)
    params = list(settings["parameters"])
    model = scan_model(stage.fit.model, params, spec)
    observed, label = diagnosed_data(stage, spec, str(settings["data"]), int(spec["seed"]))
    ranges = list(settings.get("ranges") or [None, None])
    points = list(settings["points"])
    t0 = time.perf_counter()
    doc = scan_2d(
        model,
        observed,
        (params[0], ranges[0], int(points[0])),
        (params[1], ranges[1], int(points[1])),
        n_sigma=float(settings["n_sigma"]),
    )
    elapsed = time.perf_counter() - t0
    doc = {
        "model": stage.meta["model"],
        "mode": mode,
        "data": settings["data"],
        "observations": label,
        **doc,
        "time_s": elapsed,
        "settings": dict(settings),
        "provenance": provenance(dict(spec)),
    }
    write_json(json_path, doc)
    c68 = doc["contours"]["68%"]
    log.info(
        "%s %s: 2D scan of %s x %s (%d x %d points, %d failed) in %.1f s; 68 %% extent %s",
        doc["model"],
        mode,
        *params,
        *points,
        doc["n_failed"],
        elapsed,
        c68["extent"],
    )
    return doc


def _cr_hists(regions: Mapping[str, Any], meta: Mapping[str, Any]) -> list[RegionHistogram]:
    """One-bin control-region histograms (MC times the fit fraction) for :func:`cr_closure`."""
    f = float(meta["cr_data_fit_fraction"])
    out = []
    for cr in meta["control_regions"]:
        rh = regions[cr]
        mc = {p: np.array([f * rh.mc[p]["nominal"][0].sum()]) for p in meta["mc_processes"]}
        w2 = {p: np.array([f * f * rh.mc[p]["nominal"][1].sum()]) for p in meta["mc_processes"]}
        data = np.array([0.0 if rh.data is None else float(rh.data.sum())])
        out.append(RegionHistogram(cr, None, data, mc, w2))
    return out
