"""CLs upper limits on the signal strength: the q-tilde_mu test statistic in the asymptotic
approximation (Cowan, Cranmer, Gross, Vitells, arXiv:1007.1727), as ``pyhf.infer`` computes it.

For a tested ``mu`` (the POI's lower bound is set to 0 for the free fits: q-tilde):

* ``q(mu) = 2 [nll(mu, theta-hat-hat) - nll(mu-hat, theta-hat)]`` for ``mu-hat <= mu``, else 0,
  on the observations;
* ``q_A(mu)``, the same on the Asimov data set of the background-only hypothesis: the expected
  yields at ``mu = 0`` and the nuisances of the conditional fit to the observations, with the
  constraint centres (auxiliary data) at those nuisances
  (:func:`vhbb.stats.likelihood.fitted_asimov`);
* ``t = sqrt(q) - sqrt(q_A)`` if ``sqrt(q) <= sqrt(q_A)`` else ``(q - q_A) / (2 sqrt(q_A))``,
  ``CLs+b = Phi(-(t + sqrt(q_A)))``, ``CLb = Phi(-t)``, ``CLs = CLs+b / CLb``;
* the expected band at ``n`` sigma (``n`` = -2 .. 2): ``CLs = Phi(n - sqrt(q_A)) / Phi(n)``.

The limit at confidence level ``cl`` is the root of ``CLs(mu) = 1 - cl`` (Brent's method on a
bracket grown from ``mu-hat``), for the observed and each expected curve.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from vhbb.stats import likelihood as lk
from vhbb.stats.minuit import FitError

METHOD = (
    "CLs, q-tilde_mu, asymptotic (arXiv:1007.1727); Asimov at mu = 0 with fitted auxiliary data"
)
BANDS = (-2, -1, 0, 1, 2)


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


@dataclass(frozen=True)
class UpperLimits:
    observed: float
    expected: tuple[float, ...]  # -2, -1, 0 (median), +1, +2 sigma
    cl: float
    method: str = METHOD

    def as_dict(self) -> dict[str, Any]:
        """The ``limits`` block of ``signal_strength.json``."""
        return {
            "observed": self.observed,
            "expected": list(self.expected),
            "cl": self.cl,
            "method": self.method,
        }


class CLs:
    """CLs of one model and observation vector as a function of the tested POI value."""

    def __init__(self, model: lk.Model, observed: np.ndarray, *, tolerance: float = 1e-4) -> None:
        poi = model.index(model.poi)
        bounds = list(model.bounds)
        self.hi = bounds[poi][1] if bounds[poi][1] is not None else math.inf
        bounds[poi] = (0.0, bounds[poi][1])
        init = model.init.copy()
        init[poi] = min(max(init[poi], 0.0), 0.5 * self.hi if math.isfinite(self.hi) else 1.0)
        self.model = replace(model, bounds=tuple(bounds), init=init)
        self.observed = np.asarray(observed, dtype=np.float64)
        self.tol = tolerance
        self.poi = poi
        best = lk.fit(self.model, self.observed, hesse=False, tolerance=tolerance, label="limit")
        self.best = best
        self.mu_hat = best.value(model.poi)
        cond = lk.fit(
            self.model.with_fixed({model.poi: 0.0}),
            self.observed,
            hesse=False,
            tolerance=tolerance,
            label="limit, mu = 0",
        )
        self.bkg_values = cond.values
        self.asimov, self.aux = lk.fitted_asimov(self.model, self.observed, cond.values)
        self.nll_hat_asimov = lk.Likelihood(self.model, self.asimov, self.aux)(cond.values)
        self._q: dict[float, float] = {}
        self._qa: dict[float, float] = {}

    def q_obs(self, mu: float) -> float:
        if mu <= self.mu_hat:
            return 0.0
        if mu not in self._q:
            nll = lk.profile_nll(
                self.model, self.observed, mu, start=self.best.values, tolerance=self.tol
            )
            self._q[mu] = max(2.0 * (nll - self.best.nll), 0.0)
        return self._q[mu]

    def q_asimov(self, mu: float) -> float:
        if mu not in self._qa:
            nll = lk.profile_nll(
                self.model,
                self.asimov,
                mu,
                start=self.bkg_values,
                tolerance=self.tol,
                aux=self.aux,
            )
            self._qa[mu] = max(2.0 * (nll - self.nll_hat_asimov), 0.0)
        return self._qa[mu]

    def observed_cls(self, mu: float) -> float:
        q, qa = self.q_obs(mu), self.q_asimov(mu)
        sq, sqa = math.sqrt(q), math.sqrt(qa)
        if sqa <= 0.0:
            return 1.0
        t = sq - sqa if sq <= sqa else (q - qa) / (2.0 * sqa)
        return _phi(-(t + sqa)) / _phi(-t)

    def expected_cls(self, mu: float, n_sigma: float) -> float:
        return _phi(n_sigma - math.sqrt(self.q_asimov(mu))) / _phi(n_sigma)


def _root(f: Callable[[float], float], start: float, hi: float, xtol: float) -> float:
    """The root of the decreasing ``f`` above 0: a bracket grown from ``start``, then Brent."""
    from scipy.optimize import brentq

    lo = 1e-9 * max(start, 1.0)
    if f(lo) <= 0:
        return lo
    b = max(start, 1e-3)
    while f(b) > 0:
        lo, b = b, 2.0 * b
        if b >= hi:
            b = hi
            if f(b) > 0:
                raise FitError(f"CLs limit above the POI's upper bound {hi:g}")
            break
    return float(brentq(f, lo, b, xtol=xtol, rtol=1e-8))


def upper_limits(
    model: lk.Model, observed: np.ndarray, *, cl: float = 0.95, tolerance: float = 1e-4
) -> UpperLimits:
    """Observed and expected (-2..+2 sigma) CLs upper limits on the POI at ``cl``."""
    alpha = 1.0 - cl
    calc = CLs(model, observed, tolerance=tolerance)
    # the scale: the Asimov median limit is about 1.96 sigma_A, sigma_A from q_A at mu-hat + 1
    mu1 = max(calc.mu_hat, 0.0) + 1.0
    sigma_a = mu1 / max(math.sqrt(calc.q_asimov(mu1)), 1e-6)
    xtol = 1e-5 * sigma_a
    observed_limit = _root(
        lambda mu: calc.observed_cls(mu) - alpha, max(calc.mu_hat, 0.0) + sigma_a, calc.hi, xtol
    )
    expected = tuple(
        _root(
            lambda mu, n=n: calc.expected_cls(mu, n) - alpha,
            max(2.0 + n, 0.5) * sigma_a,
            calc.hi,
            xtol,
        )
        for n in BANDS
    )
    return UpperLimits(observed_limit, expected, cl)
