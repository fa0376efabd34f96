"""The one iminuit wrapper: Minuit set-up, MIGRAD / HESSE / MINOS with their checks, the fit error,
the status record and its text.

Both likelihood fits of the package run through it: the control-region scale-factor fit
(:mod:`vhbb.fit.scale_factors`) and the binned HistFactory likelihood
(:mod:`vhbb.stats.likelihood`).  The settings (start values, step sizes, limits, tolerance,
strategy) are the caller's; the ``errordef`` is always 0.5 (the functions minimised are negative
log-likelihoods).

**Checks.** MIGRAD must end with a valid minimum (an invalid one is retried once with strategy 2
when the strategy was below 2); HESSE must give an accurate, positive-definite covariance; every
MINOS interval must be valid.  A failed check raises :class:`FitError` with the ``label`` of the
fit and :func:`status_text` (or, for a caller that accepts unusable fits, is only recorded in
the :class:`FitStatus`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vhbb.core.errors import VhbbError

log = logging.getLogger(__name__)


class FitError(VhbbError):
    """A fit is impossible (unidentifiable), did not converge or its result is unusable."""


@dataclass(frozen=True)
class FitStatus:
    """Minuit's verdict on one fit (``minos_valid`` is None when MINOS was not run)."""

    valid: bool
    covariance_accurate: bool
    covariance_posdef: bool
    edm: float
    nfcn: int
    minos_valid: bool | None = None
    covariance_method: str = "Minuit HESSE"
    at_limit: tuple[str, ...] = ()
    # MINOS sides replaced by the profile-likelihood crossing (:func:`profile_crossing`)
    minos_fallback: tuple[str, ...] = ()
    # MIGRAD restarts from a lower minimum found while profiling for MINOS (:class:`NewMinimum`)
    restarts: int = 0
    # lower minima found by the sign-flip restarts of shape nuisances (likelihood._Fitter)
    flips: int = 0

    @classmethod
    def from_fmin(
        cls, fmin: Any, minos_valid: bool | None = None, method: str = "Minuit HESSE"
    ) -> FitStatus:
        return cls(
            valid=bool(fmin.is_valid),
            covariance_accurate=bool(fmin.has_accurate_covar),
            covariance_posdef=bool(fmin.has_posdef_covar),
            edm=float(fmin.edm),
            nfcn=int(fmin.nfcn),
            minos_valid=minos_valid,
            covariance_method=method,
        )

    def as_dict(self) -> dict[str, Any]:
        """The status block of the result JSON files."""
        return {
            "valid": self.valid,
            "covariance_accurate": self.covariance_accurate,
            "covariance_posdef": self.covariance_posdef,
            "edm": self.edm,
            "nfcn": self.nfcn,
            "minos_valid": self.minos_valid,
            "covariance_method": self.covariance_method,
            "at_limit": list(self.at_limit),
            "minos_fallback": list(self.minos_fallback),
            "restarts": self.restarts,
            "flips": self.flips,
        }


def status_text(fmin: Any) -> str:
    """One line naming every flag of a Minuit function minimum (for :class:`FitError`)."""
    return (
        f"valid={fmin.is_valid}, edm={fmin.edm:.3g}, above_max_edm={fmin.is_above_max_edm}, "
        f"call_limit={fmin.has_reached_call_limit}, covariance_accurate="
        f"{fmin.has_accurate_covar}, covariance_posdef={fmin.has_posdef_covar}, "
        f"parameters_at_limit={fmin.has_parameters_at_limit}"
    )


def make_minuit(
    fcn: Callable[[np.ndarray], float],
    start: np.ndarray,
    *,
    names: Sequence[str],
    grad: Callable[[np.ndarray], np.ndarray],
    errors: Sequence[float],
    limits: Sequence[tuple[float | None, float | None]],
    tolerance: float,
    strategy: int = 1,
    g2: Callable[[np.ndarray], np.ndarray] | None = None,
    hessian: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Any:
    """A Minuit minimiser of the negative log-likelihood ``fcn`` (``errordef = 0.5``).

    ``hessian`` (the analytic second derivatives) replaces the numerical HESSE, also the one
    MIGRAD runs at strategy >= 1 to check its minimum.  ``g2`` is still handed over with it:
    iminuit warns that it has no effect, but MIGRAD calls it when it meets a negative second
    derivative (and fails without it).
    """
    from iminuit import Minuit

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="hessian overrides g2")
        m = Minuit(fcn, start, grad=grad, g2=g2, hessian=hessian, name=list(names))
    m.errordef = Minuit.LIKELIHOOD
    m.tol = tolerance
    m.strategy = strategy
    m.limits = list(limits)
    m.errors = list(errors)
    return m


def migrad(m: Any, label: str, *, require_valid: bool = True) -> Any:
    """MIGRAD, retried once with strategy 2 when the minimum is invalid; the function minimum.

    Raises :class:`FitError` when the minimum stays invalid (unless ``require_valid`` is false).
    """
    m.migrad()
    if not m.fmin.is_valid and m.strategy.strategy < 2:
        log.warning("%s: MIGRAD invalid (edm %.3g); retrying with strategy 2", label, m.fmin.edm)
        m.strategy = 2
        m.migrad()
    if not m.fmin.is_valid and require_valid:
        raise FitError(f"{label}: MIGRAD did not converge ({status_text(m.fmin)})")
    return m.fmin


def check_hesse(fmin: Any, label: str) -> None:
    """Raise :class:`FitError` unless the minimum is valid with an accurate, posdef covariance."""
    if not (fmin.is_valid and fmin.has_accurate_covar and fmin.has_posdef_covar):
        raise FitError(f"{label}: HESSE failed ({status_text(fmin)})")


def hesse(m: Any, label: str, *, require_valid: bool = True) -> Any:
    """HESSE, checked with :func:`check_hesse` (unless ``require_valid`` is false)."""
    m.hesse()
    if require_valid:
        check_hesse(m.fmin, label)
    return m.fmin


def minos(
    m: Any,
    names: Sequence[str],
    label: str,
    *,
    require_valid: bool = True,
    fallbacks: list[str] | None = None,
) -> tuple[dict[str, tuple[float, float]], bool]:
    """MINOS intervals ``(lower <= 0, upper >= 0)`` of ``names`` and whether all are valid.

    A side MINOS leaves invalid (a "new minimum" a hair below MIGRAD's, as flat likelihoods
    give, or a failed crossing search) is replaced by the profile-likelihood crossing of
    :func:`profile_crossing`; ``fallbacks`` (if given) receives ``"<name> lower|upper"`` for
    each.  Raises :class:`FitError` naming every interval still failed (unless
    ``require_valid`` is false).
    """
    m.minos(*names)
    intervals: dict[str, tuple[float, float]] = {}
    bad = []
    for name in names:
        me = m.merrors[name]
        lo, hi = float(me.lower), float(me.upper)
        ok = {"lower": bool(me.lower_valid), "upper": bool(me.upper_valid)}
        for side, sign, guess in (("lower", -1, lo), ("upper", 1, hi)):
            if ok[side]:
                continue
            crossing = profile_crossing(m, name, sign, step=abs(guess) or float(m.errors[name]))
            if crossing is not None:
                lo, hi = (crossing, hi) if side == "lower" else (lo, crossing)
                ok[side] = True
                if fallbacks is not None:
                    fallbacks.append(f"{name} {side}")
                log.warning(
                    "%s: MINOS %s side of %s invalid (new minimum %s); profile-likelihood "
                    "crossing used: %.5g",
                    label,
                    side,
                    name,
                    me.lower_new_min if side == "lower" else me.upper_new_min,
                    crossing,
                )
        intervals[name] = (lo, hi)
        if not all(ok.values()):
            bad.append(
                f"{name} (lower_valid={ok['lower']}, upper_valid={ok['upper']}, "
                f"at_lower_limit={me.at_lower_limit}, at_upper_limit={me.at_upper_limit})"
            )
    if bad and require_valid:
        raise FitError(f"{label}: MINOS failed for {', '.join(bad)}")
    return intervals, not bad


class NewMinimum(Exception):  # a signal to restart MIGRAD, not an error
    """A point with a lower function value than MIGRAD's minimum, found while profiling:
    ``values`` (all parameters) is where MIGRAD should restart."""

    def __init__(self, values: np.ndarray, improvement: float) -> None:
        super().__init__(f"lower minimum by {improvement:.4g}")
        self.values = values
        self.improvement = improvement


NEW_MINIMUM_TOLERANCE = 1e-3  # a lower point counts as a new minimum below f_min - this


def profile_crossing(m: Any, name: str, sign: int, *, step: float) -> float | None:
    """Signed distance from the minimum of ``name`` to where the profile likelihood rises by
    ``errordef`` on the side ``sign`` (+1 up, -1 down): Brent's root of
    ``min_{others} f(x) - f_min - errordef``, bracketed outwards from ``step`` by doublings
    within the parameter's limits.  None when no crossing is bracketed (a one-sided interval).
    Raises :class:`NewMinimum` when a profiled point lies more than
    :data:`NEW_MINIMUM_TOLERANCE` below ``f_min`` (MIGRAD stopped in a local minimum).  The
    Minuit object is left at its minimum."""
    from scipy.optimize import brentq

    best = np.array(m.values, dtype=np.float64)
    fmin, up = float(m.fval), float(m.errordef)
    x0 = float(best[m.parameters.index(name)])
    lo_lim, hi_lim = m.limits[name]

    def excess(x: float) -> float:
        m.values = best
        m.values[name] = x
        m.fixed[name] = True
        m.migrad()
        if float(m.fval) < fmin - NEW_MINIMUM_TOLERANCE:
            raise NewMinimum(np.array(m.values, dtype=np.float64), fmin - float(m.fval))
        return float(m.fval) - fmin - up

    try:
        step = max(step, 1e-6)
        for _ in range(8):
            edge = x0 + sign * step
            if sign < 0 and lo_lim is not None and np.isfinite(lo_lim):
                edge = max(edge, float(lo_lim))
            if sign > 0 and hi_lim is not None and np.isfinite(hi_lim):
                edge = min(edge, float(hi_lim))
            if excess(edge) > 0:
                root = brentq(excess, x0, edge, xtol=1e-5 * step, rtol=1e-10)
                return float(root - x0)
            if edge != x0 + sign * step:  # at a limit, still below the crossing
                return None
            step *= 2.0
        return None
    finally:
        m.fixed[name] = False
        m.values = best
        m.migrad()


def at_limit(
    values: np.ndarray,
    grad: np.ndarray,
    hess_diag: np.ndarray,
    limits: Sequence[tuple[float | None, float | None]],
) -> np.ndarray:
    """Bool mask of the parameters the minimum sits on a limit of.

    At a limit: closer to it than 1e-6 of the conditional width ``1/sqrt(H_ii)``, or closer than
    0.1 of it with the gradient pushing outwards (a fall of more than 0.01 in the nll per width).
    """
    width = 1.0 / np.sqrt(np.maximum(hess_diag, 1e-300))
    out = np.zeros(len(values), dtype=bool)
    for i, (lo, hi) in enumerate(limits):
        for bound, sign in ((lo, 1.0), (hi, -1.0)):
            if bound is None:
                continue
            dist = abs(values[i] - bound) / width[i]
            push = sign * grad[i] * width[i]
            if dist < 1e-6 or (dist < 0.1 and push > 0.01):
                out[i] = True
    return out


def hessian_covariance(hess: np.ndarray, excluded: np.ndarray) -> np.ndarray | None:
    """Inverse of the Hessian over the parameters not ``excluded`` (their rows and columns 0);
    None when that block is not positive definite."""
    keep = np.flatnonzero(~excluded)
    cov = np.zeros_like(hess)
    if not len(keep):
        return cov
    block = hess[np.ix_(keep, keep)]
    try:
        chol = np.linalg.cholesky(block)
    except np.linalg.LinAlgError:
        return None
    inv_l = np.linalg.solve(chol, np.eye(len(keep)))
    cov[np.ix_(keep, keep)] = inv_l.T @ inv_l
    return cov


def covariance(m: Any) -> np.ndarray | None:
    """The covariance matrix of the free parameters (None before HESSE or MIGRAD's estimate)."""
    return None if m.covariance is None else np.array(m.covariance, dtype=np.float64)
