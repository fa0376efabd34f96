"""Fast Poisson pseudo-experiments of a :class:`~vhbb.stats.likelihood.Model`: generate and fit.

The fits are the same as :func:`vhbb.stats.likelihood.fit` (``require_valid=False``), toy for
toy: one :class:`~vhbb.stats.likelihood._Fitter` per worker keeps the model-constant arrays,
the :class:`~vhbb.stats.likelihood.Likelihood` (only the observations change) and one Minuit
(reset to the model's initial values before every toy: no warm start, so a toy's fit does not
depend on the toy before it).  The generation is that of the diagnostics (one
``numpy.random.default_rng(seed)`` per toy, drawn in the same order), so a toy depends only on its
seed, not on the number of workers.

Typical use (the diagnostics' closure and injection loops)::

    toys = generate_toys(model, x_true, np.random.SeedSequence(seed).spawn(n))
    fits = fit_toys(model, toys, workers=2)
    ok = accepted(model, fits, edm_accept=0.02)
    values, errors = fits.values[:, i_poi], fits.errors[:, i_poi]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from vhbb.stats import likelihood as lk

Seed = int | np.random.SeedSequence


@dataclass(frozen=True)
class ToyFitArrays:
    """Per-toy fit results over all model parameters (rows: toys, columns: ``names``).

    A toy whose fit raised (:class:`~vhbb.stats.minuit.FitError`, ``ValueError``,
    ``LinAlgError``) has NaN values, errors and nll, ``failed`` set and every flag false.
    """

    names: tuple[str, ...]
    values: np.ndarray  # (N, n_params)
    errors: np.ndarray  # (N, n_params): analytic-Hessian errors (hesse) or MIGRAD's
    nll: np.ndarray  # (N,)
    valid: np.ndarray  # (N,) bool: MIGRAD's minimum is valid
    edm: np.ndarray  # (N,)
    covariance_accurate: np.ndarray  # (N,) bool
    covariance_posdef: np.ndarray  # (N,) bool
    failed: np.ndarray  # (N,) bool
    # (N,) lower minima found by the sign-flip restarts (:class:`~vhbb.stats.likelihood._Fitter`)
    flips: np.ndarray | None = None

    def columns(self, params: Sequence[str]) -> list[int]:
        return [self.names.index(p) for p in params]

    def __len__(self) -> int:
        return len(self.nll)


def generate_toy(
    model: lk.Model,
    x_true: np.ndarray,
    rng: np.random.Generator,
    *,
    nuisances: str = "prior",
    templates: bool = False,
) -> np.ndarray:
    """One Poisson pseudo-data set (all channels) at ``x_true``.

    ``nuisances="prior"``: the free constrained nuisances (and the Gaussian-constrained factors,
    the per-bin MC-statistics factors) are drawn from their priors first, ``"fixed"``: kept at
    ``x_true``; ``templates``: the nominal templates are fluctuated by their MC-statistical
    uncertainty.  The draws (and their order) are those of
    ``vhbb.fit.diagnostics.generate_toy``: the same seed gives the same toy.
    """
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


def generate_toys(
    model: lk.Model,
    x_true: np.ndarray,
    seeds: Sequence[Seed],
    *,
    nuisances: str = "prior",
    templates: bool = False,
) -> np.ndarray:
    """(N, B) toys, toy ``j`` from ``default_rng(seeds[j])`` (see :func:`generate_toy`)."""
    out = np.empty((len(seeds), model.n_bins))
    for j, seed in enumerate(seeds):
        rng = np.random.default_rng(seed)
        out[j] = generate_toy(model, x_true, rng, nuisances=nuisances, templates=templates)
    return out


def poisson_toys(expected: np.ndarray, seeds: Sequence[Seed]) -> np.ndarray:
    """(N, B) Poisson toys around fixed ``expected`` yields, toy ``j`` from ``seeds[j]`` (the
    goodness-of-fit toys: ``default_rng(seed).poisson(expected)``)."""
    expected = np.asarray(expected, dtype=np.float64)
    out = np.empty((len(seeds), len(expected)))
    for j, seed in enumerate(seeds):
        out[j] = np.random.default_rng(seed).poisson(expected)
    return out


_FIT_ERRORS = (lk.FitError, ValueError, np.linalg.LinAlgError)


def _fit_chunk(args: tuple) -> tuple[np.ndarray, ...]:
    """Fit the rows of ``toys`` with one reusable fitter; the per-toy result columns."""
    model, toys, hesse, tolerance, strategy, aux, flips, single_thread = args
    if single_thread:  # one BLAS thread per worker process (no oversubscription)
        try:
            from threadpoolctl import threadpool_limits

            threadpool_limits(1)
        except ImportError:  # pragma: no cover
            pass
    n, n_par = len(toys), model.n_params
    values = np.full((n, n_par), np.nan)
    errors = np.full((n, n_par), np.nan)
    nll = np.full(n, np.nan)
    flags = np.zeros((n, 4), dtype=bool)  # valid, accurate, posdef, failed
    edm = np.full(n, np.nan)
    lower = np.zeros(n, dtype=np.int64)
    fitter = lk._Fitter(
        model, np.zeros(model.n_bins), aux, tolerance=tolerance, strategy=strategy, flips=flips
    )
    for j, toy in enumerate(toys):
        try:
            fitter.set_observed(toy)
            res = fitter.run(hesse=hesse, label="toy", require_valid=False)
        except _FIT_ERRORS:
            flags[j, 3] = True
            continue
        st = res.status
        values[j], errors[j], nll[j], edm[j] = res.values, res.errors, res.nll, st.edm
        flags[j, :3] = (st.valid, st.covariance_accurate, st.covariance_posdef)
        lower[j] = st.flips
    return values, errors, nll, edm, flags, lower


def fit_toys(
    model: lk.Model,
    toys: np.ndarray,
    *,
    hesse: bool = True,
    tolerance: float = 0.1,
    strategy: int = 1,
    aux: lk.AuxData | None = None,
    workers: int = 1,
    flips: bool = True,
) -> ToyFitArrays:
    """Fit every row of ``toys`` (N, B) as ``lk.fit(model, toy, hesse=hesse,
    require_valid=False, ...)`` would, with one reusable fitter per worker.

    ``workers > 1`` (and at least 4 toys per worker) forks that many processes, toy ``j`` going
    to worker ``j % workers``; the results do not depend on ``workers``.  For fits from other
    start values pass ``dataclasses.replace(model, init=start)``.  ``flips``: the fitter's
    sign-flip restarts of shape nuisances (``ToyFitArrays.flips`` counts the lower minima).
    """
    toys = np.atleast_2d(np.asarray(toys, dtype=np.float64))
    n = len(toys)
    args = (hesse, tolerance, strategy, aux, flips)
    if workers > 1 and n >= 4 * workers:
        import concurrent.futures as cf
        import multiprocessing as mp

        ctx = mp.get_context("fork")
        with cf.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            parts = list(
                pool.map(
                    _fit_chunk, [(model, toys[k::workers], *args, True) for k in range(workers)]
                )
            )
        cols = []
        for c in range(6):
            first = parts[0][c]
            col = np.empty((n, *first.shape[1:]), dtype=first.dtype)
            for k, part in enumerate(parts):
                col[k::workers] = part[c]
            cols.append(col)
        values, errors, nll, edm, flags, lower = cols
    else:
        values, errors, nll, edm, flags, lower = _fit_chunk((model, toys, *args, False))
    return ToyFitArrays(
        names=model.names,
        values=values,
        errors=errors,
        nll=nll,
        valid=flags[:, 0],
        edm=edm,
        covariance_accurate=flags[:, 1],
        covariance_posdef=flags[:, 2],
        failed=flags[:, 3],
        flips=lower,
    )


def accepted(model: lk.Model, fits: ToyFitArrays, *, edm_accept: float) -> np.ndarray:
    """(N,) the diagnostics' acceptance of a toy fit: converged (valid, or an EDM below
    ``edm_accept`` with an accurate covariance), a positive-definite covariance, the POI not
    within 1e-3 of its range from a limit and finite errors of every parameter."""
    i_poi = model.index(model.poi)
    lo, hi = model.bounds[i_poi]
    poi = fits.values[:, i_poi]
    with np.errstate(invalid="ignore"):
        at_limit = np.zeros(len(fits), dtype=bool)
        if lo is not None:
            at_limit |= poi - lo < 1e-3 * (hi - lo if hi is not None else 1.0)
        if hi is not None:
            at_limit |= hi - poi < 1e-3 * (hi - lo if lo is not None else 1.0)
        converged = fits.valid | ((fits.edm < edm_accept) & fits.covariance_accurate)
    finite = np.all(np.isfinite(fits.errors), axis=1)
    return ~fits.failed & converged & fits.covariance_posdef & ~at_limit & finite


def run_toys(
    model: lk.Model,
    x_true: np.ndarray,
    seeds: Sequence[Seed],
    *,
    nuisances: str = "prior",
    templates: bool = False,
    workers: int = 1,
    tolerance: float = 0.1,
    flips: bool = True,
) -> ToyFitArrays:
    """:func:`generate_toys` at ``x_true`` and :func:`fit_toys` (with the HESSE covariance)."""
    toys = generate_toys(model, x_true, seeds, nuisances=nuisances, templates=templates)
    return fit_toys(model, toys, workers=workers, tolerance=tolerance, flips=flips)
