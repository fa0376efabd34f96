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
from vhbb.fit.signal_fit import FitStage, read_fit_stage
from vhbb.stats import likelihood as lk
from vhbb.stats.results import RegionHistogram

log = logging.getLogger(__name__)

VZ_POI = "mu_VZ"
# The likelihood is smooth (interpolation codes 4 / 4p), but a toy fit's MIGRAD can still stop
# just above its EDM target on a flat direction; toy fits with an EDM below this value (a POI
# shift well below 0.1 sigma) and an accurate covariance are accepted.
EDM_ACCEPT = 0.02


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


def generate_toy(
    model: lk.Model,
    x_true: np.ndarray,
    rng: np.random.Generator,
    *,
    nuisances: str = "prior",
    templates: bool = False,
) -> np.ndarray:
    """One Poisson pseudo-data set (all channels) at ``x_true`` (see the module docstring)."""
    if nuisances not in ("prior", "fixed"):
        raise ValueError(f"nuisances must be 'prior' or 'fixed', got {nuisances!r}")
    x = np.array(x_true, dtype=np.float64)
    gen = model
    if templates:
        noise = rng.normal(size=model.nominal.shape) * np.sqrt(model.sumw2)
        gen = replace(model, nominal=np.clip(model.nominal + noise, 0.0, None))
    gamma = None
    if nuisances == "prior":
        free = np.array([not f for f in model.fixed])
        for i in np.concatenate([model.histo_index, model.normsys_index]).astype(int):
            if free[i]:
                x[i] += rng.normal()
        if model.gauss_index is not None:
            g = np.asarray(model.gauss_index)
            x[g] = rng.multivariate_normal(x[g], np.asarray(model.gauss_cov))
        if model.stat_sigma is not None and not templates:
            gamma = np.clip(1.0 + rng.normal(size=model.n_bins) * model.stat_sigma, 0.0, None)
            if model.stat_mode == "parameters":
                gidx = np.asarray(model.gamma_index)
                x[gidx[gidx >= 0]] = gamma[gidx >= 0]
                gamma = None
        lo = np.array([-np.inf if b[0] is None else b[0] for b in model.bounds])
        hi = np.array([np.inf if b[1] is None else b[1] for b in model.bounds])
        x = np.clip(x, lo, hi)
    nu = lk.asimov(gen, x)
    if gamma is not None:
        nu = nu * gamma
    return rng.poisson(np.clip(nu, 0.0, None)).astype(np.float64)


@dataclass(frozen=True)
class ToyFits:
    """Fitted values and HESSE errors of ``params`` over toys (rows), and validity."""

    params: tuple[str, ...]
    values: np.ndarray  # (N, len(params))
    errors: np.ndarray
    valid: np.ndarray  # (N,) bool
    nll: np.ndarray  # (N,)

    @property
    def n_valid(self) -> int:
        return int(self.valid.sum())


def _fit_one(model: lk.Model, observed: np.ndarray, params: Sequence[str]) -> tuple:
    try:
        res = lk.fit(model, observed, require_valid=False, label="toy")
    except (lk.FitError, ValueError, np.linalg.LinAlgError):
        nan = np.full(len(params), np.nan)
        return nan, nan, False, np.nan
    i_poi = model.index(model.poi)
    lo, hi = model.bounds[i_poi]
    poi = res.values[i_poi]
    at_limit = (lo is not None and poi - lo < 1e-3 * (hi - lo if hi is not None else 1.0)) or (
        hi is not None and hi - poi < 1e-3 * (hi - lo if lo is not None else 1.0)
    )
    errors = res.errors
    st = res.status
    converged = st.valid or (st.edm < EDM_ACCEPT and st.covariance_accurate)
    ok = bool(converged and st.covariance_posdef and not at_limit and np.all(np.isfinite(errors)))
    idx = [model.index(p) for p in params]
    return res.values[idx], errors[idx], ok, res.nll


def _toy_chunk(args: tuple) -> list[tuple]:
    model, x_true, seeds, params, nuisances, templates, single_thread = args
    if single_thread:  # one BLAS thread per worker process (no oversubscription)
        try:
            from threadpoolctl import threadpool_limits

            threadpool_limits(1)
        except ImportError:  # pragma: no cover
            pass
    out = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        toy = generate_toy(model, x_true, rng, nuisances=nuisances, templates=templates)
        out.append(_fit_one(model, toy, params))
    return out


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
    """Generate and fit ``n_toys`` pseudo-experiments (one seed per toy: worker-independent)."""
    params = tuple(params or (model.poi,))
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    seeds = ss.spawn(n_toys)
    rows: list[tuple] = []
    if workers > 1 and n_toys >= 4 * workers:
        import concurrent.futures as cf
        import multiprocessing as mp

        chunks = [seeds[k::workers] for k in range(workers)]
        ctx = mp.get_context("fork")
        with cf.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            args = [(model, x_true, c, params, nuisances, templates, True) for c in chunks]
            parts = list(pool.map(_toy_chunk, args))
        rows = [None] * n_toys  # type: ignore[list-item]
        for k, part in enumerate(parts):  # toy j went to worker j % workers
            for j, row in zip(range(k, n_toys, workers), part, strict=True):
                rows[j] = row
    else:
        rows = _toy_chunk((model, x_true, seeds, params, nuisances, templates, False))
    values = np.array([r[0] for r in rows], dtype=np.float64).reshape(n_toys, len(params))
    errors = np.array([r[1] for r in rows], dtype=np.float64).reshape(n_toys, len(params))
    valid = np.array([r[2] for r in rows], dtype=bool)
    nll = np.array([r[3] for r in rows], dtype=np.float64)
    return ToyFits(params, values, errors, valid, nll)


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
    from scipy import stats

    if best is None:
        best = lk.fit(model, observed, label="goodness of fit")
    q_obs = saturated_statistic(best)
    expected = postfit_expected(model, observed, best.values)
    seeds = np.random.SeedSequence(seed).spawn(n_toys)
    q_toys = []
    start = replace(model, init=best.values.copy())
    for s in seeds:
        toy = np.random.default_rng(s).poisson(expected).astype(np.float64)
        try:
            res = lk.fit(start, toy, hesse=False, require_valid=False, label="gof toy")
        except (lk.FitError, ValueError):
            continue
        if res.status.valid:
            q_toys.append(saturated_statistic(res))
    q = np.array(q_toys)
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
        "p_value_chi2": float(stats.chi2.sf(q_obs, ndf)),
        "toys": "Poisson around the post-fit expectation (profiled gammas), refitted",
    }


# ---------------------------------------------------------------------------- impacts
def impacts(
    model: lk.Model, observed: np.ndarray, best: lk.FitResult | None = None
) -> dict[str, Any]:
    """Pre- and post-fit impacts of every nuisance on the POI (see the module docstring)."""
    if best is None:
        best = lk.fit(model, observed, label="impacts")
    poi = model.poi
    i_poi = model.index(poi)
    mu_hat, sigma = best.value(poi), best.error(poi)
    prior = prior_widths(model)
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
        else:
            entry["prefit"] = None
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
def vz_model(model: lk.Model, vz_processes: Sequence[str], *, bounds=(-20.0, 20.0)) -> lk.Model:
    """``model`` with a signal strength ``mu_VZ`` on ``vz_processes`` as the POI (mu fixed 1)."""
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
    if model.poi in model.names:
        fix[model.poi] = 1.0
    for j, i in enumerate(model.normsys_index):
        acts = (model.normsys_log_hi[j] != 0) | (model.normsys_log_lo[j] != 0)
        if acts.any() and np.all(mask[acts]):
            fix[model.names[int(i)]] = 0.0
    return new.with_fixed(fix)


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


def _timed(label: str, func: Callable[[], Any], timings: dict[str, float]) -> Any:
    import time

    t0 = time.perf_counter()
    out = func()
    timings[label] = time.perf_counter() - t0
    log.info("%s: %.1f s", label, timings[label])
    return out


def fit_checks(
    model: lk.Model,
    observed: np.ndarray,
    best: lk.FitResult,
    settings: Mapping[str, Any],
    seed: int,
    *,
    workers: int,
    timings: dict[str, float],
) -> dict[str, Any]:
    """Correlations, impacts, goodness of fit and signal injection of the fit ``best``."""
    points, n_inj = settings["injection"]["points"], int(settings["injection"]["n_toys"])
    return {
        "correlation": correlation(best, model),
        "impacts": _timed("impacts", lambda: impacts(model, observed, best), timings),
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
        **fit_checks(model, observed, best, settings, seed, workers=workers, timings=timings),
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
