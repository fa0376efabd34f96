"""Toy throughput of the diagnostics: generate + fit (MIGRAD + HESSE) Poisson pseudo-experiments.

The model is ``vhbb.stats.likelihood.toy_model`` at the default binning's size (11 m_jj x 15 score
bins before merging, ~100 after: here 10 x 10 unmerged, three control regions, free scale factors,
lnN, JES and per-bin MC statistics, profiled analytically).  Three toy loops, the same toys, in one
run:

* ``baseline``: the loop the diagnostics ran before issue #17, kept here (:func:`_baseline_loop`
  with that version's likelihood, :class:`_LegacyLikelihood`): per toy a fresh likelihood and
  Minuit, MIGRAD at strategy 1 checking its minimum with Minuit's numerical HESSE (~N^2 function
  calls), the covariance from the analytic Hessian;
* ``diagnostics``: ``vhbb.fit.diagnostics.run_toys`` as it is (``lk.fit`` per toy);
* ``fast``: ``vhbb.stats.toys.run_toys`` (one reusable fitter per worker), as the diagnostics
  run it: with the fitter's sign-flip restarts of shape nuisances (extra MIGRADs the baseline
  does not run: the product's rate), and without them (``fast_no_flips``: the same work as the
  baseline, like for like).

Reports toys per second on 1 and 2 workers, the ratio to the baseline (goal: >= 5x) and the
projected time of 1000 toys (the ``config/full.yaml`` closure test).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from vhbb.stats import likelihood as lk

log = logging.getLogger(__name__)
TOLERANCE = 0.1


# ---------------------------------------------------------------------------- the baseline
# The likelihood of the pre-#17 loop, verbatim (per call: per-term arrays, the generic code-4
# interpolation).


class _LegacyLikelihood:
    """``vhbb.stats.likelihood.Likelihood`` as it was before issue #17 (frozen baseline)."""

    def __init__(
        self, model: lk.Model, observed: np.ndarray, aux: lk.AuxData | None = None
    ) -> None:
        self.model = model
        n = np.asarray(observed, dtype=np.float64)
        if n.shape != (model.n_bins,):
            raise ValueError(f"observations have shape {n.shape}, model has {model.n_bins} bins")
        if np.any(n < 0) or not np.all(np.isfinite(n)):
            raise lk.FitError("observations must be finite and non-negative")
        self.n = n
        self.aux = lk.nominal_aux(model) if aux is None else aux
        pos = n > 0
        self._const = float(np.sum(n[pos] * np.log(n[pos]) - n[pos]))
        self.ncall = 0
        sigma = model.stat_sigma
        self._sigma = None if sigma is None else np.asarray(sigma, dtype=np.float64)
        self._profile = sigma is not None and model.stat_mode == "profile"
        self._params = sigma is not None and model.stat_mode == "parameters"
        self._gcentre = np.asarray(self.aux.gamma, dtype=np.float64)
        if self._params:
            gidx = model.gamma_index
            assert gidx is not None
            self._gmask = gidx >= 0
            self._gidx = gidx[self._gmask]
            self._gsig2 = self._sigma[self._gmask] ** 2  # type: ignore[index]
            self._gc = self._gcentre[self._gmask]
        # parameters acting through the per-process factor: normfactors then normsys
        self._fac_index = np.concatenate([model.norm_index, model.normsys_index]).astype(int)
        self._n_k, self._n_j = len(model.norm_index), len(model.normsys_index)
        self._maskf = model.norm_mask.astype(np.float64)
        self._ones = np.ones(len(model.processes))
        self._no_slope = np.zeros((0, len(model.processes)))
        self._c4 = lk.code4_coefficients(model.normsys_log_hi, model.normsys_log_lo)
        # unit-Gaussian constrained nuisances (histosys, normsys) and their centres
        self._alpha_index = np.concatenate([model.histo_index, model.normsys_index]).astype(int)
        self._alpha_centre = np.asarray(self.aux.alpha, dtype=np.float64)[self._alpha_index]
        if self._sigma is not None:
            s2 = self._sigma**2
            self._half_inv_s2 = np.divide(0.5, s2, out=np.zeros_like(s2), where=s2 > 0)

    # -- per-process factors and their derivatives
    def _fac_derivs(
        self, x: np.ndarray, second: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``fac`` (P,), ``d fac / d theta`` (F, P) and optionally the second derivatives."""
        model = self.model
        n_k, n_j = self._n_k, self._n_j
        if n_j:
            f, slope, curv = lk.code4(
                x[model.normsys_index], model.normsys_log_hi, model.normsys_log_lo, self._c4
            )
            lognorm = np.prod(f, axis=0)
        else:
            slope = curv = self._no_slope
            lognorm = self._ones
        d1 = np.empty((n_k + n_j, len(lognorm)))
        if n_k:
            terms = 1.0 + self._maskf * (x[model.norm_index][:, None] - 1.0)  # (K, P)
            # product over the other factors: prefix x suffix cumulative products
            excl = np.ones_like(terms)
            if n_k > 1:
                excl[1:] = np.cumprod(terms[:-1], axis=0)
                excl[:-1] *= np.cumprod(terms[:0:-1], axis=0)[::-1]
            fac = terms[0] * excl[0] * lognorm
            d1[:n_k] = self._maskf * excl * lognorm
        else:
            fac = lognorm
        if n_j:
            d1[n_k:] = fac * slope
        if not second:
            return fac, d1, None
        d2 = np.zeros((n_k + n_j, n_k + n_j, len(lognorm)))
        for k in range(n_k):
            for k2 in range(k + 1, n_k):
                rest = np.prod(np.delete(terms, [k, k2], axis=0), axis=0)
                both = self._maskf[k] * self._maskf[k2]
                d2[k, k2] = d2[k2, k] = both * rest * lognorm
            d2[k, n_k:] = d1[k] * slope
            d2[n_k:, k] = d2[k, n_k:]
        d2[n_k:, n_k:] = fac * slope[:, None, :] * slope[None, :, :]
        for j in range(n_j):
            d2[n_k + j, n_k + j] = fac * curv[j]
        return fac, d1, d2

    def _core(self, x: np.ndarray, second: bool) -> dict[str, Any]:
        model = self.model
        fac, d1, d2 = self._fac_derivs(x, second)
        m_eff = model.nominal
        for shift in lk._shape_terms(model, x):
            m_eff = m_eff + shift
        t = np.maximum(fac @ m_eff, lk.TINY)
        return {
            "fac": fac,
            "d1": d1,
            "d2": d2,
            "m_eff": m_eff,
            "slopes": lk._shape_terms(model, x, 1),
            "curvs": lk._shape_terms(model, x, 2) if second else None,
            "t": t,
        }

    def gamma_hat(self, x: np.ndarray) -> np.ndarray | None:
        """Per-bin MC-statistics factor at ``x`` (profiled or the parameters; None without)."""
        return self._phi(np.asarray(x, dtype=np.float64), self._core(x, False)["t"])[2]

    def expected(self, x: np.ndarray) -> np.ndarray:
        """Expected total yield per bin at ``x``, including the (profiled) gamma."""
        x = np.asarray(x, dtype=np.float64)
        t = self._core(x, False)["t"]
        gamma = self._phi(x, t)[2]
        return t if gamma is None else gamma * t

    def _phi(self, x: np.ndarray, t: np.ndarray) -> tuple[float, np.ndarray, np.ndarray | None]:
        """Sum over bins of phi, phi' (B,) and gamma (profiled or parameters; else None)."""
        n = self.n
        if self._profile:
            sig = self._sigma
            assert sig is not None
            gamma = lk.profiled_gamma(t, n, sig, self._gcentre)
            nu = np.maximum(gamma * t, lk.TINY)
            pen = (gamma - self._gcentre) ** 2 * self._half_inv_s2
            value = float(np.sum(nu - n * np.log(nu)) + np.sum(pen))
            return value, gamma - n / t, gamma
        if self._params:
            gamma = np.ones(len(t))
            gamma[self._gmask] = x[self._gidx]
            nu = np.maximum(gamma * t, lk.TINY)
            dg = gamma[self._gmask] - self._gc
            value = float(np.sum(nu - n * np.log(nu)) + np.sum(dg * dg / (2.0 * self._gsig2)))
            return value, gamma - n / t, gamma
        return float(np.sum(t - n * np.log(t))), 1.0 - n / t, None

    def value_and_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        x = np.asarray(x, dtype=np.float64)
        self.ncall += 1
        model = self.model
        c = self._core(x, second=False)
        value, r, gamma = self._phi(x, c["t"])
        value += self._const  # saturated model: nll = 0 for nu = n
        grad = np.zeros(len(x))
        grad[self._fac_index] += c["d1"] @ (c["m_eff"] @ r)
        for i, slope in zip(model.histo_index, c["slopes"], strict=True):
            grad[i] += float(c["fac"] @ (slope @ r))
        if len(self._alpha_index):
            d = x[self._alpha_index] - self._alpha_centre
            grad[self._alpha_index] += d
            value += 0.5 * float(d @ d)
        if self._params:
            n, t = self.n, c["t"]
            assert gamma is not None
            dg = (gamma[self._gmask] - self._gc) / self._gsig2
            grad[self._gidx] = (t - n / np.maximum(gamma, lk.TINY))[self._gmask] + dg
        if model.gauss_index is not None:
            d = x[model.gauss_index] - self.aux.gauss
            w = model.gauss_inv_cov @ d  # type: ignore[operator]
            value += 0.5 * float(d @ w)
            grad[model.gauss_index] += w
        return value, grad

    def __call__(self, x: np.ndarray) -> float:
        return self.value_and_grad(x)[0]

    def grad(self, x: np.ndarray) -> np.ndarray:
        return self.value_and_grad(x)[1]

    def _data_curv(self, t: np.ndarray) -> np.ndarray:
        """``n / t^2`` (0 for empty bins; no overflow for a vanishing prediction)."""
        return np.where(self.n > 0, self.n / np.maximum(t, 1e-150) ** 2, 0.0)

    def hessian(self, x: np.ndarray) -> np.ndarray:
        """Exact Hessian (codes 4 and 4p are twice continuously differentiable)."""
        x = np.asarray(x, dtype=np.float64)
        model, n = self.model, self.n
        c = self._core(x, second=True)
        t, fac = c["t"], c["fac"]
        _, r, gamma = self._phi(x, t)
        n_par = len(x)
        jac = np.zeros((n_par, len(t)))
        jac[self._fac_index] = c["d1"] @ c["m_eff"]
        for i, slope in zip(model.histo_index, c["slopes"], strict=True):
            jac[i] = fac @ slope
        if self._profile:
            sig = self._sigma
            assert sig is not None and gamma is not None
            with np.errstate(divide="ignore", invalid="ignore"):
                inv = np.where(
                    sig > 0, 1.0 / (n / np.maximum(gamma, lk.TINY) ** 2 + 1.0 / sig**2), 0.0
                )
            curv = self._data_curv(t) - inv
        else:
            curv = self._data_curv(t)
        hess = (jac * curv) @ jac.T
        fi = self._fac_index
        hess[np.ix_(fi, fi)] += c["d2"] @ (c["m_eff"] @ r)
        for i, slope, second in zip(model.histo_index, c["slopes"], c["curvs"], strict=True):
            cross = c["d1"] @ (slope @ r)
            hess[fi, i] += cross
            hess[i, fi] += cross
            hess[i, i] += float(fac @ (second @ r))
        if len(self._alpha_index):
            hess[self._alpha_index, self._alpha_index] += 1.0
        if self._params:
            assert gamma is not None
            g = self._gidx
            hess[g, g] = (n / gamma**2)[self._gmask] + 1.0 / self._gsig2
            hess[:, g] += jac[:, self._gmask]
            hess[g, :] += jac[:, self._gmask].T
        if model.gauss_index is not None:
            hess[np.ix_(model.gauss_index, model.gauss_index)] += model.gauss_inv_cov
        return hess


def _baseline_loop(model, x_true, seeds) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The pre-#17 toy loop (the fitted POI per toy): a fresh Minuit per toy, numerical HESSE."""
    from iminuit import Minuit

    from vhbb.fit import diagnostics as dg
    from vhbb.stats import minuit as mn

    names = list(model.names)
    steps = [lk._step(model, i) for i in range(model.n_params)]
    i_poi = model.index(model.poi)
    out = np.full(len(seeds), np.nan)
    for j, seed in enumerate(seeds):
        toy = dg.generate_toy(model, x_true, np.random.default_rng(seed))
        lik = _LegacyLikelihood(model, toy)
        cache: dict = {"x": None}

        def fcn(x, lik=lik, cache=cache):  # type: ignore[no-untyped-def]
            value, grad = lik.value_and_grad(x)
            cache["x"], cache["g"] = np.array(x, copy=True), grad
            return value

        def grad(x, lik=lik, cache=cache):  # type: ignore[no-untyped-def]
            if cache["x"] is not None and np.array_equal(cache["x"], x):
                return cache["g"]
            return lik.grad(x)

        def g2(x, lik=lik):  # type: ignore[no-untyped-def]
            return np.diag(lik.hessian(x))

        m = Minuit(fcn, model.init.copy(), grad=grad, g2=g2, name=names)
        m.errordef, m.tol, m.strategy = Minuit.LIKELIHOOD, TOLERANCE, 1
        m.limits, m.errors = list(model.bounds), steps
        m.migrad()
        if not m.fmin.is_valid:
            m.strategy = 2
            m.migrad()
        values = np.array(m.values)
        hess = lik.hessian(values)
        edge = mn.at_limit(values, lik.grad(values), np.diag(hess), list(model.bounds))
        mn.hessian_covariance(hess, edge)
        out[j] = values[i_poi]
    return out


def _timed(func):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    result = func()
    return result, time.perf_counter() - t0


def run(quick: bool = False) -> dict:
    from vhbb.fit import diagnostics as dg
    from vhbb.stats import toys as st

    model, _ = lk.toy_model(10, 10, stat="profile")
    x = dg.truth_point(model, {"mu": 1.0})
    n = 40 if quick else 400
    seeds = np.random.SeedSequence(1).spawn(n)
    i_poi = model.index(model.poi)
    warm = np.random.SeedSequence(0).spawn(8)  # warm-up (imports, caches)
    _baseline_loop(model, x, warm[:2])
    dg.run_toys(model, x, 4, 0)
    st.run_toys(model, x, warm)
    out: dict = {
        "model": "toy_model(10, 10, stat='profile'): 103 bins, 8 parameters",
        "toys": n,
        "cases": [],
    }
    mu_base, t_base = _timed(lambda: _baseline_loop(model, x, seeds))
    rate_base = n / t_base
    out["baseline"] = {"workers": 1, "seconds": t_base, "toys_per_second": rate_base}
    log.info("toys: baseline loop (pre-#17), 1 worker: %.1f toys/s", rate_base)
    for workers in (1, 2):
        old, t_old = _timed(lambda w=workers: dg.run_toys(model, x, n, 1, workers=w))
        new, t_new = _timed(lambda w=workers: st.run_toys(model, x, seeds, workers=w))
        _, t_like = _timed(lambda w=workers: st.run_toys(model, x, seeds, workers=w, flips=False))
        ok = st.accepted(model, new, edm_accept=dg.EDM_ACCEPT)
        case = {
            "workers": workers,
            "diagnostics_toys_per_second": n / t_old,
            "fast_toys_per_second": n / t_new,
            "fast_over_baseline": (n / t_new) / rate_base,
            "fast_no_flips_toys_per_second": n / t_like,
            "fast_no_flips_over_baseline": (n / t_like) / rate_base,
            "lower_minima_found": int(np.count_nonzero(new.flips)),
            "fast_over_diagnostics": t_old / t_new,
            "valid_fraction": float(ok.mean()),
            "same_as_diagnostics": bool(np.array_equal(ok, old.valid)),
            "max_abs_diff_mu_vs_diagnostics": float(
                np.nanmax(np.abs(new.values[:, i_poi] - old.values[:, 0]))
            ),
            "max_abs_diff_mu_vs_baseline": float(np.nanmax(np.abs(new.values[:, i_poi] - mu_base))),
            "projected_1000_toys_s": 1000 * t_new / n,
        }
        out["cases"].append(case)
        log.info(
            "toys: %d workers: baseline %.1f/s (1 worker), diagnostics loop %.1f/s, fast %.1f/s "
            "-> %.1fx baseline, %.1fx diagnostics loop (1000 toys: %.0f s; |d mu| %.1g); "
            "without sign-flip restarts %.1f/s -> %.1fx baseline (lower minima found in %d)",
            workers, rate_base, case["diagnostics_toys_per_second"],
            case["fast_toys_per_second"], case["fast_over_baseline"],
            case["fast_over_diagnostics"], case["projected_1000_toys_s"],
            case["max_abs_diff_mu_vs_diagnostics"], case["fast_no_flips_toys_per_second"],
            case["fast_no_flips_over_baseline"], case["lower_minima_found"],
        )  # fmt: skip
    out["goal_over_baseline"] = 5
    return out
