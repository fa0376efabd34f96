"""Binned Poisson likelihood of the signal-strength fit: HistFactory semantics, analytic gradients.

The expected yield of process ``p`` in bin ``b`` (bins of every channel concatenated) is::

    nu_pb = (m_pb + sum_h delta_hpb(a_h)) * prod_k x_k^[k scales p] * prod_j f_jp(alpha_j) * gamma_b

exactly as pyhf builds it (additive shape modifiers first, then multiplicative ones):

* ``x_k`` are normalisation factors (the signal strength ``mu``, the scale factors ``sf_<p>``);
* ``delta_hpb(a)`` is pyhf's ``histosys`` interpolation **code 4p** of ``du = up - m`` and
  ``dd = m - down``: ``a du`` for ``a > 1``, ``a dd`` for ``a < -1`` and, for ``|a| <= 1``,
  ``a (du + dd) / 2 + (du - dd) / 16 (3 a^6 - 10 a^4 + 15 a^2)`` (value, slope and curvature
  continuous at ``|a| = 1``; no kink at 0), with a unit-Gaussian constraint;
* ``f_jp(alpha)`` is pyhf's ``normsys`` **code 4**: ``hi_jp**alpha`` for ``alpha >= 1``,
  ``lo_jp**(-alpha)`` for ``alpha <= -1`` and the 6th-order polynomial ``1 + sum_i c_i
  alpha^i`` in between that matches value, first and second derivative at ``|alpha| = 1``
  (a log-normal uncertainty outside), with a unit-Gaussian constraint.  Codes 4 / 4p are what
  ``pyhf.Workspace.model()`` uses by default (pyhf 0.7), so the exported workspace
  (:mod:`vhbb.fit.workspace`) is the same likelihood;
* ``gamma_b`` is the Barlow-Beeston-lite MC-statistics factor of bin ``b`` (one per bin, shared by
  every process, pyhf ``staterror``): a Gaussian constraint of width ``sigma_b = sqrt(sum_p w2_pb)
  / sum_p m_pb``.  It is either profiled **analytically** bin by bin (the default: the minimum of
  ``gamma t - n ln(gamma t) + (gamma - 1)^2 / (2 sigma^2)`` is the positive root of a quadratic)
  or kept as explicit parameters ``gamma_<b>`` (pulls, and the pyhf-like parametrisation).

Optionally a group of normalisation factors carries a multivariate Gaussian constraint
``(x - c)^T C^-1 (x - c) / 2`` (the scale factors of the ``constrained`` mode).

``nll(x) = sum_b [nu_b - n_b + n_b ln(n_b / nu_b)] + constraints`` (zero for a perfect fit of a
bin), minimised with iminuit (``errordef = 0.5``) using the analytic gradient; the covariance is the
inverse of the analytic Hessian of the free parameters (:func:`fit`).  Profiling gamma
analytically is exact: the profile likelihood has the same minimum, the same HESSE errors (the
Schur complement) and the same MINOS intervals as the fit with explicit gamma parameters.

Everything here is a pure function of a frozen :class:`Model` and an observation vector.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from vhbb.stats import minuit as mn
from vhbb.stats.minuit import FitError, FitStatus
from vhbb.stats.significance import asimov_significance

log = logging.getLogger(__name__)

TINY = 1e-300


def _live(t: np.ndarray) -> np.ndarray:
    """Bins whose prediction ``t`` is not clamped at :data:`TINY` (a clamped one is a constant
    of the likelihood: value, gradient and Hessian; see :meth:`Likelihood._phi`)."""
    return t > TINY


POI = "mu"


@dataclass(frozen=True)
class Channel:
    name: str
    start: int
    stop: int

    @property
    def n_bins(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Model:
    """A binned likelihood: yields, modifiers and parameters (see the module docstring).

    Shapes: ``P`` processes, ``B`` bins (all channels), ``H`` histosys, ``J`` normsys, ``K``
    normalisation factors.  Parameters are addressed by position in ``names``.
    """

    names: tuple[str, ...]
    init: np.ndarray  # (N,)
    bounds: tuple[tuple[float | None, float | None], ...]
    fixed: tuple[bool, ...]
    processes: tuple[str, ...]
    channels: tuple[Channel, ...]
    nominal: np.ndarray  # (P, B) >= 0
    sumw2: np.ndarray  # (P, B) MC statistical variance (for staterror)
    norm_index: np.ndarray  # (K,) parameter index of each normalisation factor
    norm_mask: np.ndarray  # (K, P) bool: factor k scales process p
    histo_index: np.ndarray  # (H,) parameter index of each histosys
    histo_up: np.ndarray  # (H, P, B) up - nominal
    histo_down: np.ndarray  # (H, P, B) nominal - down
    normsys_index: np.ndarray  # (J,)
    normsys_log_hi: np.ndarray  # (J, P) ln(hi)
    normsys_log_lo: np.ndarray  # (J, P) ln(lo)
    stat_sigma: np.ndarray | None  # (B,) relative MC-stat uncertainty; None: no staterror
    stat_mode: str = "profile"  # "profile" or "parameters"
    gamma_index: np.ndarray | None = None  # (B,) parameter index per bin (-1: none)
    gauss_index: np.ndarray | None = None  # (G,) constrained normalisation factors
    gauss_center: np.ndarray | None = None  # (G,)
    gauss_inv_cov: np.ndarray | None = None  # (G, G)
    gauss_cov: np.ndarray | None = None  # (G, G)
    poi: str = POI
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def n_bins(self) -> int:
        return int(self.nominal.shape[1])

    @property
    def n_params(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        return self.names.index(name)

    def with_fixed(self, values: Mapping[str, float]) -> Model:
        """The same model with parameters fixed at ``values``."""
        init = self.init.copy()
        fixed = list(self.fixed)
        for name, value in values.items():
            i = self.index(name)
            init[i], fixed[i] = value, True
        return replace(self, init=init, fixed=tuple(fixed))

    def channel(self, name: str) -> Channel:
        for ch in self.channels:
            if ch.name == name:
                return ch
        raise KeyError(name)


# ---------------------------------------------------------------------------- interpolation
# pyhf's code 4 (normsys): 1 + sum_i c_i alpha^i for |alpha| < 1, matching value, first and
# second derivative of hi^alpha / lo^-alpha at alpha = +-1 (pyhf.interpolators.code4, alpha0 = 1).
_CODE4_AINV = np.array(
    [
        [15 / 16, -15 / 16, -7 / 16, -7 / 16, 1 / 16, -1 / 16],
        [3 / 2, 3 / 2, -9 / 16, 9 / 16, 1 / 16, 1 / 16],
        [-5 / 8, 5 / 8, 5 / 8, 5 / 8, -1 / 8, 1 / 8],
        [-3 / 2, -3 / 2, 7 / 8, -7 / 8, -1 / 8, -1 / 8],
        [3 / 16, -3 / 16, -3 / 16, -3 / 16, 1 / 16, -1 / 16],
        [1 / 2, 1 / 2, -5 / 16, 5 / 16, 1 / 16, 1 / 16],
    ]
)
_POW = np.arange(1, 7)
_POW0F = np.arange(7.0)


def code4_coefficients(log_hi: np.ndarray, log_lo: np.ndarray) -> np.ndarray:
    """(..., 6) polynomial coefficients ``c_1..c_6`` of code 4 for factors ``exp(log_hi)``,
    ``exp(log_lo)`` (the same linear system as pyhf)."""
    hi, lo = np.exp(log_hi), np.exp(log_lo)
    b = np.stack([hi - 1, lo - 1, log_hi * hi, -log_lo * lo, log_hi**2 * hi, log_lo**2 * lo])
    return np.einsum("rc,c...->...r", _CODE4_AINV, b)


def code4(
    alpha: np.ndarray, log_hi: np.ndarray, log_lo: np.ndarray, coef: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Code-4 factor ``f`` (J, P) at ``alpha`` (J,) and ``f'/f``, ``f''/f`` (the log-slopes)."""
    a = alpha[:, None]
    up, down = a >= 1.0, a <= -1.0
    ac = np.clip(a, -1.0, 1.0)[..., None]  # (J, 1, 1)
    pw = ac ** (_POW - 1)  # alpha^0..alpha^5
    poly = 1.0 + np.sum(coef * pw * ac, axis=-1)
    d1 = np.sum(coef * _POW * pw, axis=-1)
    d2 = np.sum(coef[..., 1:] * (_POW[1:] * (_POW[1:] - 1)) * pw[..., :-1], axis=-1)
    poly = np.maximum(poly, TINY)
    f = np.where(up, np.exp(a * log_hi), np.where(down, np.exp(-a * log_lo), poly))
    g = np.where(up, log_hi, np.where(down, -log_lo, d1 / poly))
    h = np.where(up, log_hi**2, np.where(down, log_lo**2, d2 / poly))
    return f, g, h


def code4p(a: float) -> tuple[tuple[float, float], tuple[float, float], tuple[float, float]]:
    """Weights ``(u, v)`` of ``(up - nominal, nominal - down)`` in the code-4p shift at ``a`` and
    their first and second derivatives (pyhf.interpolators.code4p).

    ``|a| <= 1``: ``delta = a S + A (3 a^6 - 10 a^4 + 15 a^2)`` with ``S = (du + dd) / 2``,
    ``A = (du - dd) / 16``; beyond: linear, ``a du`` (a > 1) or ``a dd`` (a < -1).
    """
    if a > 1.0:
        return (a, 0.0), (1.0, 0.0), (0.0, 0.0)
    if a < -1.0:
        return (0.0, a), (0.0, 1.0), (0.0, 0.0)
    a2 = a * a
    p = a2 * (a2 * (3.0 * a2 - 10.0) + 15.0) / 16.0
    p1 = a * (a2 * (18.0 * a2 - 40.0) + 30.0) / 16.0
    p2 = (a2 * (90.0 * a2 - 120.0) + 30.0) / 16.0
    return (0.5 * a + p, 0.5 * a - p), (0.5 + p1, 0.5 - p1), (p2, -p2)


def _shape_terms(model: Model, x: np.ndarray, order: int = 0) -> list[np.ndarray]:
    """The (P, B) code-4p shift of each histosys at ``x`` (``order`` 1, 2: its derivatives)."""
    out = []
    for h, i in enumerate(model.histo_index):
        u, v = code4p(float(x[i]))[order]
        out.append(u * model.histo_up[h] + v * model.histo_down[h])
    return out


# ---------------------------------------------------------------------------- evaluation
def _normsys_factor(model: Model, x: np.ndarray) -> np.ndarray:
    """(P,) product over the normsys of their code-4 factors at ``x``."""
    if not len(model.normsys_index):
        return np.ones(len(model.processes))
    lh, ll = model.normsys_log_hi, model.normsys_log_lo
    f, _, _ = code4(x[model.normsys_index], lh, ll, code4_coefficients(lh, ll))
    return np.prod(f, axis=0)


def expected_by_process(model: Model, x: np.ndarray) -> np.ndarray:
    """(P, B) expected yields at ``x`` (gamma profiled at 1 unless explicit parameters)."""
    x = np.asarray(x, dtype=np.float64)
    norm = np.ones(len(model.processes))
    for k, i in enumerate(model.norm_index):
        norm = np.where(model.norm_mask[k], norm * x[i], norm)
    m_eff = model.nominal.copy()
    for shift in _shape_terms(model, x):
        m_eff += shift
    nu = (norm * _normsys_factor(model, x))[:, None] * m_eff
    if model.stat_sigma is not None and model.stat_mode == "parameters":
        nu = nu * _gamma_params(model, x)[None, :]
    return nu


def _gamma_params(model: Model, x: np.ndarray) -> np.ndarray:
    gidx = model.gamma_index
    assert gidx is not None
    return np.where(gidx >= 0, x[np.maximum(gidx, 0)], 1.0)


def profiled_gamma(
    t: np.ndarray, n: np.ndarray, sigma: np.ndarray, centre: np.ndarray | float = 1.0
) -> np.ndarray:
    """Per-bin minimum over gamma of ``gamma t - n ln(gamma t) + (gamma - c)^2 / (2 sigma^2)``.

    The positive root of ``gamma^2 + gamma (t s2 - c) - n s2 = 0`` (``s2 = sigma^2``, ``c`` the
    auxiliary centre, 1 for real data), written without cancellation; bins with ``sigma = 0``
    have ``gamma = 1``.
    """
    s2 = sigma * sigma
    a = t * s2 - centre
    disc = np.sqrt(a * a + 4.0 * n * s2)
    with np.errstate(divide="ignore", invalid="ignore"):
        big = np.where(a > 0, 2.0 * n * s2 / (a + disc), 0.5 * (disc - a))
    return np.where(s2 > 0, big, 1.0)


@dataclass(frozen=True)
class AuxData:
    """Centres of the constraint terms (HistFactory auxiliary data).

    ``alpha`` (N,) is read at the histosys / normsys indices (0 for real data), ``gamma`` (B,) per
    bin (1), ``gauss`` (G,) for the Gaussian-constrained factors (the model's centre).  An Asimov
    data set generated at fitted nuisances carries them as its auxiliary data (as pyhf's
    ``generate_asimov_data``).
    """

    alpha: np.ndarray
    gamma: np.ndarray
    gauss: np.ndarray | None = None


def nominal_aux(model: Model) -> AuxData:
    gauss = None if model.gauss_center is None else np.asarray(model.gauss_center, dtype=float)
    return AuxData(np.zeros(model.n_params), np.ones(model.n_bins), gauss)


@dataclass(frozen=True)
class _Constants:
    """Model-constant arrays of :class:`Likelihood`, built once per :class:`Model` (cached).

    ``stack`` (S, P, B), ``S = 1 + 2H``: the nominal yields, then every histosys's ``up -
    nominal``, then every ``nominal - down``; the expected yield before gamma is ``fac @ (stack[0]
    + sum_i w_i stack[i])`` with ``w`` the code-4p weights, so one matrix-vector product per call
    gives every term (``by_bin``: the (P, S*B) layout; ``by_proc``: the (S*P, B) layout).
    """

    stack: np.ndarray
    by_bin: np.ndarray
    by_proc: np.ndarray
    maskf: np.ndarray  # (K, P) float
    disjoint: bool  # every process scaled by at most one normalisation factor
    c4: np.ndarray  # (J, P, 6) code-4 coefficients
    c4_both: np.ndarray  # (J, 2P, 7): polynomial - 1, then its derivative, on alpha^0..alpha^6
    c4_all: np.ndarray  # (J, 3P, 7): the same and the second derivative
    fac_index: np.ndarray  # (K + J,) normalisation factors, then normsys
    fac_ix: tuple[np.ndarray, np.ndarray]  # np.ix_(fac_index, fac_index)
    alpha_index: np.ndarray  # (H + J,) unit-Gaussian constrained nuisances
    all_free: bool


_CONSTANTS: dict[int, tuple[weakref.ref, _Constants]] = {}


def _constants(model: Model) -> _Constants:
    """The cached :class:`_Constants` of ``model`` (keyed by identity; dropped with the model)."""
    key = id(model)
    hit = _CONSTANTS.get(key)
    if hit is not None and hit[0]() is model:
        return hit[1]
    n_p, n_b = model.nominal.shape
    stack = np.concatenate(
        [
            model.nominal[None],
            model.histo_up.reshape(-1, n_p, n_b),
            model.histo_down.reshape(-1, n_p, n_b),
        ]
    ).astype(np.float64)
    maskf = model.norm_mask.astype(np.float64).reshape(len(model.norm_index), n_p)
    c4 = code4_coefficients(model.normsys_log_hi, model.normsys_log_lo).reshape(-1, n_p, 6)
    # coefficients of alpha^0..alpha^6 in poly - 1, poly' and poly''
    pad = ((0, 0), (0, 0))
    c4_all = np.ascontiguousarray(
        np.concatenate(
            [
                np.pad(c4, (*pad, (1, 0))),
                np.pad(c4 * _POW, (*pad, (0, 1))),
                np.pad(c4[..., 1:] * (_POW[1:] * (_POW[1:] - 1)), (*pad, (0, 2))),
            ],
            axis=1,
        )
    )
    fac_index = np.concatenate([model.norm_index, model.normsys_index]).astype(np.intp)
    consts = _Constants(
        stack=stack,
        by_bin=np.ascontiguousarray(stack.transpose(1, 0, 2).reshape(n_p, -1)),
        by_proc=np.ascontiguousarray(stack.reshape(-1, n_b)),
        maskf=maskf,
        disjoint=bool(np.all(maskf.sum(axis=0) <= 1.0)),
        c4=np.ascontiguousarray(c4),
        c4_both=c4_all[:, : 2 * n_p],
        c4_all=c4_all,
        fac_index=fac_index,
        fac_ix=np.ix_(fac_index, fac_index),
        alpha_index=np.concatenate([model.histo_index, model.normsys_index]).astype(np.intp),
        all_free=not any(model.fixed),
    )
    ref = weakref.ref(model, lambda _r, k=key: _CONSTANTS.pop(k, None))
    _CONSTANTS[key] = (ref, consts)
    return consts


def _histo_weights(x: np.ndarray, index: np.ndarray, order: int) -> np.ndarray:
    """(2H,) code-4p weights of ``(up - nominal)`` then ``(nominal - down)`` (or derivatives)."""
    n_h = len(index)
    w = np.empty(2 * n_h)
    for h, i in enumerate(index):
        w[h], w[n_h + h] = code4p(float(x[i]))[order]
    return w


class Likelihood:
    """``nll(x)``, its analytic gradient and Hessian for one model and one observation vector.

    Per bin the nll is ``phi_b(t_b)`` with ``t_b`` the total expected yield before gamma (with
    gamma profiled: ``phi(t) = min_gamma [...]``, ``phi' = gamma-hat - n/t`` by the envelope
    theorem, ``phi'' = n/t^2 - 1/(n/gamma-hat^2 + 1/sigma^2)``).  ``t`` is linear in the code-4p
    shifts and a product of normalisation and code-4 factors per process, so every derivative is
    a few (P, B) matrix-vector products.  ``aux`` shifts the constraint centres (default: real
    data, :func:`nominal_aux`).

    The model-constant arrays are built once per model (:func:`_constants`); the observations
    can be replaced with :meth:`set_observed` (toys reuse one object).
    """

    def __init__(self, model: Model, observed: np.ndarray, aux: AuxData | None = None) -> None:
        self.model = model
        self._c = _constants(model)
        self.aux = nominal_aux(model) if aux is None else aux
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
        self._n_k, self._n_j = len(model.norm_index), len(model.normsys_index)
        self._n_h = len(model.histo_index)
        self._ones = np.ones(len(model.processes))
        self._alpha_index = self._c.alpha_index
        self._alpha_centre = np.asarray(self.aux.alpha, dtype=np.float64)[self._alpha_index]
        self._has_alpha = bool(len(self._alpha_index))
        if self._sigma is not None:
            s2 = self._sigma**2
            self._s2 = s2
            self._all_s2 = bool(np.all(s2 > 0))
            self._half_inv_s2 = np.divide(0.5, s2, out=np.zeros_like(s2), where=s2 > 0)
        self._hess_cache: tuple[np.ndarray, np.ndarray] | None = None
        self.set_observed(observed)

    def set_observed(self, observed: np.ndarray) -> None:
        """Replace the observation vector (same model and auxiliary data)."""
        n = np.asarray(observed, dtype=np.float64)
        if n.shape != (self.model.n_bins,):
            raise ValueError(
                f"observations have shape {n.shape}, model has {self.model.n_bins} bins"
            )
        if np.any(n < 0) or not np.all(np.isfinite(n)):
            raise FitError("observations must be finite and non-negative")
        self.n = n
        pos = n > 0
        self._const = float(np.sum(n[pos] * np.log(n[pos]) - n[pos]))
        if self._profile:
            self._ns2 = n * self._s2
            self._4ns2 = 4.0 * self._ns2
        self._hess_cache = None

    # -- per-process factors and their derivatives
    def _code4(
        self, alpha: np.ndarray, second: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Code-4 factors (J, P), ``f'/f`` and (``second``) ``f''/f``, as :func:`code4`: the
        polynomial and its derivatives as one matrix product, the few rows with ``|alpha| >= 1``
        (the exponential branches) overwritten."""
        c = self._c
        clipped = np.clip(alpha, -1.0, 1.0)
        coef = c.c4_all if second else c.c4_both
        out = (coef @ (clipped[:, None] ** _POW0F)[..., None])[..., 0]  # (J, 2P or 3P)
        n_p = c.c4.shape[1]
        poly = np.maximum(1.0 + out[:, :n_p], TINY)
        slope = out[:, n_p : 2 * n_p] / poly
        curv = out[:, 2 * n_p :] / poly if second else None
        if abs(alpha).max() >= 1.0:
            m = self.model
            for j in np.flatnonzero(np.abs(alpha) >= 1.0):
                a = float(alpha[j])
                log_f = m.normsys_log_hi[j] if a >= 1.0 else -m.normsys_log_lo[j]
                poly[j] = np.exp(a * log_f)
                slope[j] = log_f
                if curv is not None:
                    curv[j] = log_f * log_f
        return poly, slope, curv

    def _fac_derivs(
        self, x: np.ndarray, second: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``fac`` (P,), ``d fac / d theta`` (F, P) and optionally the second derivatives."""
        model, c = self.model, self._c
        n_k, n_j = self._n_k, self._n_j
        curv = None
        if n_j:
            alpha = x[model.normsys_index]
            f, slope, curv = self._code4(alpha, second)
            lognorm = f[0] if n_j == 1 else np.prod(f, axis=0)
        else:
            lognorm = self._ones
        d1 = np.empty((n_k + n_j, len(lognorm)))
        terms = None
        if n_k and c.disjoint:
            xk = x[model.norm_index]
            fac = (1.0 + (xk - 1.0) @ c.maskf) * lognorm
            d1[:n_k] = c.maskf * lognorm
        elif n_k:
            terms = 1.0 + c.maskf * (x[model.norm_index][:, None] - 1.0)  # (K, P)
            # product over the other factors: prefix x suffix cumulative products
            excl = np.ones_like(terms)
            if n_k > 1:
                excl[1:] = np.cumprod(terms[:-1], axis=0)
                excl[:-1] *= np.cumprod(terms[:0:-1], axis=0)[::-1]
            fac = terms[0] * excl[0] * lognorm
            d1[:n_k] = c.maskf * excl * lognorm
        else:
            fac = lognorm
        if n_j:
            d1[n_k:] = fac * slope
        if not second:
            return fac, d1, None
        d2 = np.zeros((n_k + n_j, n_k + n_j, len(lognorm)))
        if terms is not None:  # two factors on one process (else the cross terms are 0)
            for k in range(n_k):
                for k2 in range(k + 1, n_k):
                    rest = np.prod(np.delete(terms, [k, k2], axis=0), axis=0)
                    both = c.maskf[k] * c.maskf[k2]
                    d2[k, k2] = d2[k2, k] = both * rest * lognorm
        if n_j:
            assert curv is not None
            if n_k:
                d2[:n_k, n_k:] = d1[:n_k, None, :] * slope[None, :, :]
                d2[n_k:, :n_k] = d2[:n_k, n_k:].transpose(1, 0, 2)
            d2[n_k:, n_k:] = fac * slope[:, None, :] * slope[None, :, :]
            diag = np.arange(n_k, n_k + n_j)
            d2[diag, diag] = fac * curv
        return fac, d1, d2

    def _t_terms(self, x: np.ndarray, fac: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``t`` (B,), the per-term products ``fac @ stack[s]`` (S, B) and the code-4p weights."""
        c = self._c
        terms = (fac @ c.by_bin).reshape(len(c.stack), -1)
        if not self._n_h:
            return np.maximum(terms[0], TINY), terms, np.empty(0)
        w = _histo_weights(x, self.model.histo_index, 0)
        return np.maximum(terms[0] + w @ terms[1:], TINY), terms, w

    def _t(self, x: np.ndarray) -> np.ndarray:
        fac, _, _ = self._fac_derivs(x, False)
        return self._t_terms(x, fac)[0]

    def gamma_hat(self, x: np.ndarray) -> np.ndarray | None:
        """Per-bin MC-statistics factor at ``x`` (profiled or the parameters; None without)."""
        x = np.asarray(x, dtype=np.float64)
        return self._phi(x, self._t(x))[2]

    def expected(self, x: np.ndarray) -> np.ndarray:
        """Expected total yield per bin at ``x``, including the (profiled) gamma."""
        x = np.asarray(x, dtype=np.float64)
        t = self._t(x)
        gamma = self._phi(x, t)[2]
        return t if gamma is None else gamma * t

    def _profiled_gamma(self, t: np.ndarray) -> np.ndarray:
        """:func:`profiled_gamma` at ``t`` for this observation (the same roots, fewer passes)."""
        a = t * self._s2 - self._gcentre
        disc = np.sqrt(a * a + self._4ns2)
        q = 0.5 * (np.abs(a) + disc)  # a <= 0: the root; a > 0: n s2 / root
        pos = a > 0
        gamma = np.divide(self._ns2, q, out=q.copy(), where=pos)
        if not self._all_s2:
            gamma = np.where(self._s2 > 0, gamma, 1.0)
        return gamma

    def _phi(self, x: np.ndarray, t: np.ndarray) -> tuple[float, np.ndarray, np.ndarray | None]:
        """Sum over bins of phi, phi' (B,) and gamma (profiled or parameters; else None).

        A bin whose prediction is clamped at :data:`TINY` (a total that interpolated shapes
        drive to zero or below) has a constant phi: its phi' is 0, as the value's derivative
        (not that of the unclamped prediction, which pulled MIGRAD on towards negative
        yields where the value no longer changes)."""
        n = self.n
        live = _live(t)
        if self._profile:
            gamma = self._profiled_gamma(t)
            nu = np.maximum(gamma * t, TINY)
            dg = gamma - self._gcentre
            value = float((nu - n * np.log(nu)).sum() + (dg * dg) @ self._half_inv_s2)
            return value, np.where(live, gamma - n / t, 0.0), gamma
        if self._params:
            gamma = np.ones(len(t))
            gamma[self._gmask] = x[self._gidx]
            nu = np.maximum(gamma * t, TINY)
            dg = gamma[self._gmask] - self._gc
            value = float(np.sum(nu - n * np.log(nu)) + np.sum(dg * dg / (2.0 * self._gsig2)))
            return value, np.where(live, gamma - n / t, 0.0), gamma
        return float((t - n * np.log(t)).sum()), np.where(live, 1.0 - n / t, 0.0), None

    def value_and_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        x = np.asarray(x, dtype=np.float64)
        self.ncall += 1
        model, c = self.model, self._c
        fac, d1, _ = self._fac_derivs(x, second=False)
        t, terms, w = self._t_terms(x, fac)
        value, r, gamma = self._phi(x, t)
        value += self._const  # saturated model: nll = 0 for nu = n
        per = (c.by_proc @ r).reshape(len(c.stack), -1)  # (S, P): stack[s] @ r
        grad = np.zeros(len(x))
        if self._n_h:
            v = per[0] + w @ per[1:]  # m_eff @ r
            rt = terms[1:] @ r  # fac @ stack[s] @ r
            w1 = _histo_weights(x, model.histo_index, 1)
            n_h = self._n_h
            grad[model.histo_index] = w1[:n_h] * rt[:n_h] + w1[n_h:] * rt[n_h:]
        else:
            v = per[0]
        grad[c.fac_index] += d1 @ v
        if self._has_alpha:
            d = x[self._alpha_index] - self._alpha_centre
            grad[self._alpha_index] += d
            value += 0.5 * float(d @ d)
        if self._params:
            n = self.n
            assert gamma is not None
            dg = (gamma[self._gmask] - self._gc) / self._gsig2
            poisson = np.where(_live(t), t - n / np.maximum(gamma, TINY), 0.0)
            grad[self._gidx] = poisson[self._gmask] + dg
        if model.gauss_index is not None:
            d = x[model.gauss_index] - self.aux.gauss
            wg = model.gauss_inv_cov @ d  # type: ignore[operator]
            value += 0.5 * float(d @ wg)
            grad[model.gauss_index] += wg
        return value, grad

    def __call__(self, x: np.ndarray) -> float:
        return self.value_and_grad(x)[0]

    def grad(self, x: np.ndarray) -> np.ndarray:
        return self.value_and_grad(x)[1]

    def _data_curv(self, t: np.ndarray) -> np.ndarray:
        """``n / t^2`` (0 for empty bins; no overflow for a vanishing prediction)."""
        return self.n / np.maximum(t, 1e-150) ** 2  # 0 where n = 0

    def hessian(self, x: np.ndarray) -> np.ndarray:
        """Exact Hessian (codes 4 and 4p are twice continuously differentiable).

        The last one is cached (MIGRAD's final Hessian is the fit's covariance).
        """
        x = np.asarray(x, dtype=np.float64)
        hit = self._hess_cache
        if hit is not None and np.array_equal(hit[0], x):
            return hit[1].copy()
        hess = self._hessian(x)
        self._hess_cache = (x.copy(), hess)
        return hess.copy()

    def _hessian(self, x: np.ndarray) -> np.ndarray:
        model, n, c = self.model, self.n, self._c
        fac, d1, d2 = self._fac_derivs(x, second=True)
        assert d2 is not None
        t, terms, w = self._t_terms(x, fac)
        _, r, gamma = self._phi(x, t)
        n_s, n_h = len(c.stack), self._n_h
        per = (c.by_proc @ r).reshape(n_s, -1)  # (S, P)
        m_eff = (
            c.stack[0]
            if not n_h
            else (np.concatenate([[1.0], w]) @ c.stack.reshape(n_s, -1)).reshape(c.stack.shape[1:])
        )
        v = per[0] + w @ per[1:] if n_h else per[0]
        n_par = len(x)
        jac = np.zeros((n_par, len(t)))
        jac[c.fac_index] = d1 @ m_eff
        if n_h:
            w1 = _histo_weights(x, model.histo_index, 1)
            w2 = _histo_weights(x, model.histo_index, 2)
            jac[model.histo_index] = (
                w1[:n_h, None] * terms[1 : 1 + n_h] + w1[n_h:, None] * terms[1 + n_h :]
            )
        if self._profile:
            assert gamma is not None
            # 1 / (n / gamma^2 + 1 / sigma^2), 0 where sigma = 0
            # an empty bin's gamma at its bound 0 (t sigma^2 >= 1) is constant in t: no term
            den = n / np.maximum(gamma, 1e-150) ** 2 + 2.0 * self._half_inv_s2
            inv = np.divide(1.0, den, out=np.zeros_like(den), where=(self._s2 > 0) & (gamma > 0))
            curv = self._data_curv(t) - inv
        else:
            curv = self._data_curv(t)
        live = _live(t)
        curv = np.where(live, curv, 0.0)
        hess = (jac * curv) @ jac.T
        fi = c.fac_index
        hess[c.fac_ix] += d2 @ v
        if n_h:
            rt = terms[1:] @ r  # (2H,)
            for h, i in enumerate(model.histo_index):
                slope_r = w1[h] * per[1 + h] + w1[n_h + h] * per[1 + n_h + h]  # slope_h @ r
                cross = d1 @ slope_r
                hess[fi, i] += cross
                hess[i, fi] += cross
                hess[i, i] += w2[h] * rt[h] + w2[n_h + h] * rt[n_h + h]
        if self._has_alpha:
            hess[self._alpha_index, self._alpha_index] += 1.0
        if self._params:
            assert gamma is not None
            g = self._gidx
            hess[g, g] = np.where(live, n / gamma**2, 0.0)[self._gmask] + 1.0 / self._gsig2
            cross_g = jac[:, self._gmask] * live[self._gmask]
            hess[:, g] += cross_g
            hess[g, :] += cross_g.T
        if model.gauss_index is not None:
            hess[np.ix_(model.gauss_index, model.gauss_index)] += model.gauss_inv_cov
        return hess


def asimov(model: Model, x: np.ndarray | None = None) -> np.ndarray:
    """Expected total yield per bin at ``x`` (default: the model's initial values)."""
    x = model.init if x is None else np.asarray(x, dtype=np.float64)
    return expected_by_process(model, x).sum(axis=0)


def fitted_asimov(model: Model, observed: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, AuxData]:
    """The Asimov data set at fitted parameters ``x`` with its auxiliary data (the constraint
    centres at the fitted nuisances, gamma at its fitted value), as pyhf's Asimov data."""
    x = np.asarray(x, dtype=np.float64)
    lik = Likelihood(model, observed)
    gamma = lik.gamma_hat(x)
    gauss = None if model.gauss_index is None else x[model.gauss_index].copy()
    aux = AuxData(x.copy(), np.ones(model.n_bins) if gamma is None else gamma, gauss)
    return lik.expected(x), aux


# ---------------------------------------------------------------------------- fitting
@dataclass(frozen=True)
class FitResult:
    names: tuple[str, ...]
    values: np.ndarray
    errors: np.ndarray
    covariance: np.ndarray  # over the free parameters, in names order (fixed rows are 0)
    nll: float
    status: FitStatus
    minos: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    def value(self, name: str) -> float:
        return float(self.values[self.names.index(name)])

    def error(self, name: str) -> float:
        return float(self.errors[self.names.index(name)])


def _minuit(
    lik: Likelihood, model: Model, tolerance: float, strategy: int, hessian: bool = False
) -> tuple[Any, np.ndarray]:
    """Minuit over the free parameters only, and their indices in ``model.names``.

    Fixed parameters are not handed to Minuit (see the comment below).  With ``hessian`` Minuit
    gets the analytic Hessian (see :class:`_Fitter` for where that is safe).
    """
    idx = np.flatnonzero(~np.asarray(model.fixed, dtype=bool))
    base = model.init.astype(np.float64)
    all_free = len(idx) == len(base)
    cache: dict[str, Any] = {"x": None}

    def full(xf: np.ndarray) -> np.ndarray:
        if all_free:
            return np.asarray(xf, dtype=np.float64)
        x = base.copy()
        x[idx] = xf
        return x

    def fcn(xf: np.ndarray) -> float:
        value, grad = lik.value_and_grad(full(xf))
        cache["x"], cache["g"] = np.array(xf, copy=True), grad if all_free else grad[idx]
        return value

    def grad(xf: np.ndarray) -> np.ndarray:
        if cache["x"] is not None and np.array_equal(cache["x"], xf):
            return cache["g"]
        g = lik.grad(full(xf))
        return g if all_free else g[idx]

    def hess(xf: np.ndarray) -> np.ndarray:
        h = lik.hessian(full(xf))
        return h if all_free else h[np.ix_(idx, idx)]

    def g2(xf: np.ndarray) -> np.ndarray:
        return np.diag(hess(xf))

    # The analytic Hessian (``hessian``) only where it is safe: iminuit 2.33 mis-handles it with
    # fixed parameters (wrong covariance sub-block; they are never handed over here) and at
    # parameter limits (the transformation to Minuit's internal, bounded coordinates drops the
    # gradient term: EDM of a converged fit ~ 70); :class:`_Fitter` refits such fits without it.
    # G2 (its diagonal) is always given: with an analytic gradient MIGRAD calls G2 when it meets a
    # negative second derivative and fails without it ("'NoneType' object is not callable").
    # Without the Hessian, HESSE differentiates the function numerically (~ N^2 calls).
    names = [model.names[i] for i in idx]
    fcn._parameters = dict.fromkeys(names)  # type: ignore[attr-defined]  # iminuit: no inspect
    m = mn.make_minuit(
        fcn,
        base[idx],
        names=names,
        grad=grad,
        g2=g2,
        hessian=hess if hessian else None,
        errors=[_step(model, i) for i in idx],
        limits=[model.bounds[i] for i in idx],
        tolerance=tolerance,
        strategy=strategy,
    )
    return m, idx


def _step(model: Model, i: int) -> float:
    """Minuit's initial step of parameter ``i``: 0.1 (POI 0.2), at most a tenth of its range."""
    lo, hi = model.bounds[i]
    step = 0.1 if model.names[i] != model.poi else 0.2
    if lo is not None and hi is not None:
        step = min(step, 0.1 * (hi - lo))
    return step


ANALYTIC = "analytic Hessian"
MAX_RESTARTS = 3  # MIGRAD restarts from lower minima found by the MINOS profiling
# Sign-flip restarts (see :class:`_Fitter`): a shape nuisance closer than FLIP_MIN to its
# constraint centre is not flipped (the start would barely move); a minimum counts as lower when
# it is FLIP_IMPROVEMENT below the best one so far; at most MAX_FLIP_ROUNDS successive lower
# minima are followed.  A restart is one strategy-0 MIGRAD of at most FLIP_NCALL calls and no
# strategy-2 retry (on the default chain's toys a valid restart takes ~60 calls; the few that
# wander off are dropped, not chased).
FLIP_MIN = 0.3
FLIP_IMPROVEMENT = 1e-3
MAX_FLIP_ROUNDS = 4
FLIP_NCALL = 200


def _limit_arrays(
    limits: Sequence[tuple[float | None, float | None]],
) -> tuple[np.ndarray, np.ndarray]:
    lo = np.array([-np.inf if a is None else a for a, _ in limits], dtype=np.float64)
    hi = np.array([np.inf if b is None else b for _, b in limits], dtype=np.float64)
    return lo, hi


def _near_limit(
    values: np.ndarray, hess_diag: np.ndarray, limits: Sequence[tuple[float | None, float | None]]
) -> bool:
    """Whether a parameter is within one conditional width ``1/sqrt(H_ii)`` of a limit."""
    width = 1.0 / np.sqrt(np.maximum(hess_diag, 1e-300))
    for v, w, (lo, hi) in zip(values, width, limits, strict=True):
        if (lo is not None and v - lo < w) or (hi is not None and hi - v < w):
            return True
    return False


class _Fitter:
    """The fit of one model with reusable state: one :class:`Likelihood` (observations
    replaceable) and one Minuit with the analytic Hessian (reset before every fit).

    MIGRAD's strategy-1 check of the minimum (HESSE at the end, the EDM recomputed with it) uses
    the analytic Hessian: one call instead of ~N^2 function calls.  Where Minuit cannot use it (a
    parameter within a width of a limit, or an invalid minimum) and for MINOS, the fit is redone
    with a fresh Minuit without it, exactly the classic fit (numerical HESSE inside MIGRAD, its
    strategy-2 retry).

    **Sign-flip restarts** (``flips``, default on): code-4p shape nuisances whose up and down
    variations move a bin the same way make the likelihood multimodal; nearly degenerate
    nuisances (the JES sources) then have minima that differ by the sign of one of them, up to
    tens of units of NLL apart.  After the first MIGRAD, each free shape nuisance at least
    ``FLIP_MIN`` from its constraint centre is reflected about the centre, one at a time (largest
    first), and MIGRAD restarts from there; a valid minimum ``FLIP_IMPROVEMENT`` lower replaces
    the best one and the flips start again from it (at most ``MAX_FLIP_ROUNDS`` times).  The fit
    proper (covariance, MINOS) then starts at the lowest minimum found; ``status.flips`` counts
    the lower minima found this way.
    """

    def __init__(
        self,
        model: Model,
        observed: np.ndarray,
        aux: AuxData | None = None,
        *,
        tolerance: float = 0.1,
        strategy: int = 1,
        flips: bool = True,
    ) -> None:
        self.model = model
        self.tolerance = tolerance
        self.strategy = strategy
        self.lik = Likelihood(model, observed, aux)
        self._m: Any = None
        self._m_flip: Any = None
        self._free: np.ndarray = np.flatnonzero(~np.asarray(model.fixed, dtype=bool))
        self._limits = [model.bounds[i] for i in self._free]
        # the free shape nuisances: positions among the free parameters, constraint centres
        histo = [int(i) for i in model.histo_index if not model.fixed[int(i)]] if flips else []
        pos = {int(i): k for k, i in enumerate(self._free)}
        self._flip_pos = np.array([pos[i] for i in histo], dtype=int)
        alpha = np.asarray(self.lik.aux.alpha, dtype=np.float64)
        self._flip_centre = alpha[histo] if histo else np.zeros(0)

    def set_observed(self, observed: np.ndarray) -> None:
        self.lik.set_observed(observed)

    def _explorer(self) -> Any:
        """The Minuit of the sign-flip restarts (analytic Hessian; its own state)."""
        if self._m_flip is None:
            self._m_flip, _ = _minuit(self.lik, self.model, self.tolerance, self.strategy, True)
        return self._m_flip

    def _flip_search(self, first: np.ndarray, first_nll: float, label: str) -> tuple[Any, int]:
        """Sign-flip restarts from the minimum ``first`` (free parameters; ``first_nll`` inf when
        that minimum is not valid): the free parameters at the lowest valid minimum found, or
        None when none is lower, and the number of lower minima found."""
        best, best_nll = np.asarray(first, dtype=np.float64), first_nll
        lo, hi = _limit_arrays(self._limits)
        m, found = self._explorer(), 0
        for _ in range(MAX_FLIP_ROUNDS):
            offset = best[self._flip_pos] - self._flip_centre
            lower = False
            for k in np.argsort(-np.abs(offset), kind="stable"):
                if abs(offset[k]) < FLIP_MIN:
                    break
                start = best.copy()
                start[self._flip_pos[k]] = self._flip_centre[k] - offset[k]
                m.reset()
                m.strategy = 0
                m.values = np.clip(start, lo, hi)
                m.migrad(ncall=FLIP_NCALL)  # no strategy-2 retry: an invalid restart is dropped
                if m.fmin.is_valid and m.fmin.fval < best_nll - FLIP_IMPROVEMENT:
                    best, best_nll = np.array(m.values, dtype=np.float64), float(m.fmin.fval)
                    found += 1
                    lower = True
                    break
            if not lower:
                break
        return (best if found else None), found

    def _analytic_minuit(self) -> Any:
        if self._m is None:
            self._m, _ = _minuit(self.lik, self.model, self.tolerance, self.strategy, True)
        else:
            self._m.reset()
            self._m.strategy = self.strategy
        return self._m

    def run(
        self,
        *,
        hesse: bool = True,
        minos: Sequence[str] = (),
        label: str = "fit",
        require_valid: bool = True,
    ) -> FitResult:
        model, lik, free = self.model, self.lik, self._free
        values = model.init.astype(np.float64).copy()
        start, flips = None, 0
        m = None
        if not minos or len(self._flip_pos):
            m = self._analytic_minuit()
            mn.migrad(m, label, require_valid=False)
            if len(self._flip_pos):
                nll = float(m.fmin.fval) if m.fmin.is_valid else np.inf
                start, flips = self._flip_search(np.array(m.values), nll, label)
                if flips:
                    log.debug("%s: %d lower minima found by sign-flip restarts", label, flips)
                    # no reset: after one, assigning values would also move Minuit's initial
                    # state (iminuit shares it until the next MIGRAD), the next fit's start
                    m.values = start
                    mn.migrad(m, label, require_valid=False)
        if m is not None and not minos:
            values[free] = m.values
            if not m.fmin.is_valid or _near_limit(
                values[free], np.diag(lik.hessian(values))[free], self._limits
            ):
                m = None
        elif minos:
            m = None
        if m is None:
            m, _ = _minuit(lik, model, self.tolerance, self.strategy)
            if start is not None:
                m.values = start
            mn.migrad(m, label, require_valid=require_valid)
            values[free] = m.values
        minos_out: dict[str, tuple[float, float]] = {}
        minos_valid: bool | None = None
        fallbacks: list[str] = []
        restarts = 0
        while minos:
            m.hesse()  # Minuit's own error matrix: MINOS's starting point only
            try:
                minos_out, minos_valid = mn.minos(
                    m, minos, label, require_valid=require_valid, fallbacks=fallbacks
                )
                break
            except mn.NewMinimum as new:
                restarts += 1
                if restarts > MAX_RESTARTS:
                    raise FitError(
                        f"{label}: MINOS keeps finding lower minima ({restarts - 1} MIGRAD "
                        "restarts); the likelihood is multimodal beyond what the fit handles"
                    ) from new
                log.warning(
                    "%s: profiling for MINOS found a minimum %.4g lower than MIGRAD's: MIGRAD "
                    "restarted from it (%d)",
                    label,
                    new.improvement,
                    restarts,
                )
                m.values = new.values
                mn.migrad(m, label, require_valid=require_valid)
                values[free] = m.values
                fallbacks.clear()
        cov = np.zeros((model.n_params, model.n_params))
        limited: list[str] = []
        if hesse:
            hess = lik.hessian(values)[np.ix_(free, free)]
            edge = mn.at_limit(values[free], lik.grad(values)[free], np.diag(hess), self._limits)
            free_cov = mn.hessian_covariance(hess, edge)
            limited = [model.names[i] for i in free[edge]]
            posdef = free_cov is not None
            if not posdef and require_valid:
                raise FitError(
                    f"{label}: HESSE failed (analytic Hessian not positive definite; "
                    f"{mn.status_text(m.fmin)})"
                )
        else:
            free_cov = mn.covariance(m)
            posdef = bool(m.fmin.has_posdef_covar)
        cov[np.ix_(free, free)] = np.nan if free_cov is None else free_cov
        errors = np.sqrt(np.maximum(np.diag(cov), 0.0))
        if not hesse:
            errors[free] = np.array(m.errors, dtype=np.float64)
        fmin = m.fmin
        status = FitStatus(
            valid=bool(fmin.is_valid),
            covariance_accurate=posdef if hesse else bool(fmin.has_accurate_covar),
            covariance_posdef=posdef,
            edm=float(fmin.edm),
            nfcn=int(fmin.nfcn),
            minos_valid=minos_valid,
            covariance_method=ANALYTIC if hesse else "MIGRAD approximation",
            at_limit=tuple(limited),
            minos_fallback=tuple(fallbacks),
            restarts=restarts,
            flips=flips,
        )
        return FitResult(
            names=model.names,
            values=values,
            errors=errors,
            covariance=cov,
            nll=float(fmin.fval),
            status=status,
            minos=minos_out,
        )


def fit(
    model: Model,
    observed: np.ndarray,
    *,
    hesse: bool = True,
    minos: Sequence[str] = (),
    tolerance: float = 0.1,
    strategy: int = 1,
    label: str = "fit",
    require_valid: bool = True,
    aux: AuxData | None = None,
    flips: bool = True,
) -> FitResult:
    """Maximum-likelihood fit: MIGRAD, the covariance, MINOS on ``minos`` (:mod:`.minuit`).

    With ``hesse`` the covariance is the inverse of the **analytic Hessian** of the free
    parameters at the minimum (fixed parameters are not parameters of the fit; a parameter on
    one of its limits is excluded, its error 0, and named in ``status.at_limit``).  Without it,
    MIGRAD's approximation (from the analytic Hessian unless a parameter is near a limit).
    Raises :class:`FitError` naming the status when MIGRAD fails, the Hessian is not positive
    definite or MINOS fails (unless ``require_valid`` is false, then the status is returned).
    MIGRAD checks its minimum with the analytic Hessian where Minuit can use it
    (:class:`_Fitter`).
    """
    fitter = _Fitter(model, observed, aux, tolerance=tolerance, strategy=strategy, flips=flips)
    return fitter.run(hesse=hesse, minos=minos, label=label, require_valid=require_valid)


def profile_nll(
    model: Model,
    observed: np.ndarray,
    poi_value: float,
    *,
    start: Any = None,
    require_valid: bool = True,
    tolerance: float = 0.001,
    aux: AuxData | None = None,
) -> float:
    """Minimum of the nll with the POI fixed at ``poi_value`` (nuisances profiled).

    The default tolerance is 100 times tighter than the fit's: q0, the scan and the limits are
    differences of two minima.
    """
    fixed = model.with_fixed({model.poi: poi_value})
    if start is not None:
        init = np.asarray(start, dtype=np.float64).copy()
        init[model.index(model.poi)] = poi_value
        fixed = replace(fixed, init=init)
    free = [i for i, f in enumerate(fixed.fixed) if not f]
    if not free:
        return Likelihood(fixed, observed, aux)(fixed.init)
    label = f"{model.poi} = {poi_value:g}"
    res = fit(
        fixed,
        observed,
        hesse=False,
        label=label,
        require_valid=require_valid,
        tolerance=tolerance,
        aux=aux,
    )
    return res.nll if (res.status.valid or require_valid) else float("nan")


def discovery_significance(
    model: Model, observed: np.ndarray, best: FitResult
) -> tuple[float, float]:
    """``(q0, Z)``: ``q0 = 2 [nll(mu = 0) - nll(mu-hat)]`` for ``mu-hat > 0`` (else 0)."""
    mu_hat = best.value(model.poi)
    if mu_hat <= 0:
        return 0.0, 0.0
    nll0 = profile_nll(model, observed, 0.0, start=best.values)
    q0 = max(2.0 * (nll0 - best.nll), 0.0)
    return q0, math.sqrt(q0)


def scan(model: Model, observed: np.ndarray, best: FitResult, points: np.ndarray) -> np.ndarray:
    """``-2 Delta ln L`` of the profile likelihood at each POI value (NaN where a fit fails)."""
    out = np.empty(len(points))
    for j, value in enumerate(points):
        nll = profile_nll(model, observed, float(value), start=best.values, require_valid=False)
        out[j] = 2.0 * (nll - best.nll)
    n_bad = int(np.isnan(out).sum())
    if n_bad:
        log.warning("likelihood scan: %d of %d points did not converge", n_bad, len(out))
    return np.where(np.isnan(out), np.nan, np.maximum(out, 0.0))


def closed_form_asimov_z(signal: np.ndarray, background: np.ndarray) -> float:
    """Median discovery significance of a counting experiment per bin (no nuisances).

    :func:`vhbb.stats.significance.asimov_significance`, with its edge rule: a bin with signal
    but no positive background raises, bins without signal add nothing.
    """
    return asimov_significance(signal, background)


# ---------------------------------------------------------------------------- construction
@dataclass(frozen=True)
class NormFactor:
    """A free normalisation factor scaling ``processes`` (bounds are Minuit limits)."""

    processes: tuple[str, ...]
    init: float = 1.0
    bounds: tuple[float, float] = (0.0, 10.0)


class _Parameters:
    """The parameter list of a model under construction (names, initial values, bounds)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.init: list[float] = []
        self.bounds: list[tuple[float | None, float | None]] = []

    def add(self, name: str, value: float, bound: tuple[float | None, float | None]) -> int:
        if name in self.names:
            raise ValueError(f"parameter '{name}' defined twice")
        self.names.append(name)
        self.init.append(float(value))
        self.bounds.append(bound)
        return len(self.names) - 1


def _yields(values: np.ndarray, n_bins: int, what: str) -> np.ndarray:
    """A per-bin yield array of shape ``(n_bins,)``; negative and non-finite entries set to 0."""
    a = np.asarray(values, dtype=np.float64)
    if a.shape != (n_bins,):
        raise ValueError(f"{what}: shape {a.shape}, expected ({n_bins},)")
    return np.where(np.isfinite(a) & (a > 0), a, 0.0)


def _norm_terms(
    params: _Parameters, norm_factors: Mapping[str, NormFactor], processes: tuple[str, ...]
) -> dict[str, np.ndarray]:
    idx, mask = [], []
    for name, nf in norm_factors.items():
        unknown = [p for p in nf.processes if p not in processes]
        if unknown:
            raise ValueError(f"normfactor {name}: unknown processes {unknown}")
        idx.append(params.add(name, nf.init, (float(nf.bounds[0]), float(nf.bounds[1]))))
        mask.append([p in nf.processes for p in processes])
    return {
        "norm_index": np.array(idx, dtype=np.int64),
        "norm_mask": np.array(mask, dtype=bool).reshape(len(idx), len(processes)),
    }


def _histosys_terms(
    params: _Parameters,
    histosys: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
    processes: tuple[str, ...],
    nom: np.ndarray,
) -> dict[str, np.ndarray]:
    idx, ups, downs = [], [], []
    for name, per_proc in histosys.items():
        idx.append(params.add(name, 0.0, (-5.0, 5.0)))
        up, dn = np.zeros_like(nom), np.zeros_like(nom)
        for p, (u, d) in per_proc.items():
            j = processes.index(p)
            up[j] = _yields(u, nom.shape[1], f"{name}.up[{p}]") - nom[j]
            dn[j] = nom[j] - _yields(d, nom.shape[1], f"{name}.down[{p}]")
        ups.append(up)
        downs.append(dn)
    return {
        "histo_index": np.array(idx, dtype=np.int64),
        "histo_up": np.array(ups).reshape(len(idx), *nom.shape),
        "histo_down": np.array(downs).reshape(len(idx), *nom.shape),
    }


def _normsys_terms(
    params: _Parameters,
    normsys: Mapping[str, Mapping[str, tuple[float, float]]],
    processes: tuple[str, ...],
) -> dict[str, np.ndarray]:
    idx, log_hi, log_lo = [], [], []
    for name, per_proc in normsys.items():
        idx.append(params.add(name, 0.0, (-5.0, 5.0)))
        hi, lo = np.zeros(len(processes)), np.zeros(len(processes))
        for p, (lo_f, hi_f) in per_proc.items():
            if lo_f <= 0 or hi_f <= 0:
                raise ValueError(f"normsys {name}[{p}]: factors must be > 0, got {lo_f}, {hi_f}")
            j = processes.index(p)
            hi[j], lo[j] = math.log(hi_f), math.log(lo_f)
        log_hi.append(hi)
        log_lo.append(lo)
    return {
        "normsys_index": np.array(idx, dtype=np.int64),
        "normsys_log_hi": np.array(log_hi).reshape(len(idx), len(processes)),
        "normsys_log_lo": np.array(log_lo).reshape(len(idx), len(processes)),
    }


def _stat_terms(
    params: _Parameters,
    stat: str | None,
    chans: Sequence[Channel],
    processes: tuple[str, ...],
    nom: np.ndarray,
    w2: np.ndarray,
    stat_scale: Mapping[str, float] | None,
) -> dict[str, Any]:
    """Relative MC-stat uncertainty per bin and, for ``"parameters"``, one gamma per bin."""
    if stat is None:
        return {"stat_sigma": None, "stat_mode": "profile", "gamma_index": None}
    if stat not in ("profile", "parameters"):
        raise ValueError(f"stat must be None, 'profile' or 'parameters', got {stat!r}")
    scl = np.array([(stat_scale or {}).get(p, 1.0) for p in processes])
    total = scl @ nom
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma = np.where(total > 0, np.sqrt((scl**2) @ w2) / total, 0.0)
    gamma_index = None
    if stat == "parameters":
        gamma_index = np.full(nom.shape[1], -1, dtype=np.int64)
        for ch in chans:
            for b in range(ch.start, ch.stop):
                if sigma[b] > 0:
                    name = f"gamma_{ch.name}_{b - ch.start}"
                    gamma_index[b] = params.add(name, 1.0, (1e-10, 10.0))
    return {"stat_sigma": sigma, "stat_mode": stat, "gamma_index": gamma_index}


def _gauss_terms(
    params: _Parameters, gauss: tuple[Sequence[str], np.ndarray, np.ndarray] | None
) -> dict[str, np.ndarray | None]:
    if gauss is None:
        return {"gauss_index": None, "gauss_center": None, "gauss_inv_cov": None, "gauss_cov": None}
    g_names, center, cov = gauss
    g_cov = np.asarray(cov, dtype=np.float64)
    return {
        "gauss_index": np.array([params.names.index(n) for n in g_names], dtype=np.int64),
        "gauss_center": np.asarray(center, dtype=np.float64),
        "gauss_inv_cov": np.linalg.inv(g_cov),
        "gauss_cov": g_cov,
    }


def make_model(
    channels: Mapping[str, int],
    nominal: Mapping[str, np.ndarray],
    *,
    sumw2: Mapping[str, np.ndarray] | None = None,
    norm_factors: Mapping[str, NormFactor] | None = None,
    histosys: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]] | None = None,
    normsys: Mapping[str, Mapping[str, tuple[float, float]]] | None = None,
    stat: str | None = None,
    gauss: tuple[Sequence[str], np.ndarray, np.ndarray] | None = None,
    stat_scale: Mapping[str, float] | None = None,
    poi: str = POI,
    meta: Mapping[str, Any] | None = None,
) -> Model:
    """Assemble a :class:`Model` from per-process arrays over the concatenated channel bins.

    ``histosys[name][process] = (up, down)`` are the varied yields; ``normsys[name][process] =
    (lo, hi)`` the factors at -1 / +1 sigma; ``stat`` is None, ``"profile"`` or
    ``"parameters"``; ``gauss = (factor names, centre, covariance)`` constrains normalisation
    factors.  ``stat_scale[process]`` scales yields and uncertainties when computing the relative
    MC-stat uncertainty (the workspace export scales those processes' nominals the same way).
    Negative yields (negative weights) are set to 0, as pyhf cannot model them.  Parameters are
    ordered: normalisation factors, histosys, normsys, then the per-bin gammas.
    """
    processes = tuple(nominal)
    n_bins = int(sum(channels.values()))
    chans, start = [], 0
    for name, size in channels.items():
        chans.append(Channel(name, start, start + int(size)))
        start += int(size)
    nom = np.stack([_yields(nominal[p], n_bins, f"nominal[{p}]") for p in processes])
    w2 = (
        np.stack([_yields(sumw2[p], n_bins, f"sumw2[{p}]") for p in processes])
        if sumw2 is not None
        else np.zeros_like(nom)
    )
    params = _Parameters()
    terms: dict[str, Any] = {
        **_norm_terms(params, dict(norm_factors or {}), processes),
        **_histosys_terms(params, dict(histosys or {}), processes, nom),
        **_normsys_terms(params, dict(normsys or {}), processes),
        **_stat_terms(params, stat, chans, processes, nom, w2, stat_scale),
        **_gauss_terms(params, gauss),
    }
    return Model(
        names=tuple(params.names),
        init=np.array(params.init, dtype=np.float64),
        bounds=tuple(params.bounds),
        fixed=tuple(False for _ in params.names),
        processes=processes,
        channels=tuple(chans),
        nominal=nom,
        sumw2=w2,
        poi=poi,
        meta=dict(meta or {}),
        **terms,
    )


def toy_model(
    n_mjj: int,
    n_score: int,
    *,
    n_cr: int = 3,
    stat: str | None = None,
    jes: bool = True,
    lnn: bool = True,
    seed: int = 1,
    jes_asymmetry: float = 0.0,
) -> tuple[Model, np.ndarray]:
    """A synthetic SR (``n_mjj x n_score``) + ``n_cr`` one-bin CR model and its Asimov data.

    Used by the tests and the benchmark: a Gaussian m_jj peak of signal (ZH) and VZ on falling
    backgrounds, signal rising with the score; three scale-factor processes, lnN on the others.
    ``jes_asymmetry`` adds ``+a`` to the up and ``-a/2`` to the down side of the relative JES
    shift (a = 0: symmetric).
    """
    rng = np.random.default_rng(seed)
    mjj = (np.arange(n_mjj) + 0.5) / n_mjj * 200 + 50
    score = (np.arange(n_score) + 0.5) / n_score
    mm, ss = np.meshgrid(mjj, score, indexing="ij")
    peak = np.exp(-0.5 * ((mm - 125) / 12) ** 2)
    vz_peak = np.exp(-0.5 * ((mm - 91) / 10) ** 2)
    shapes = {
        "ZH": 3.0 * peak * np.exp(3 * ss),
        "VZ": 6.0 * vz_peak * np.exp(2 * ss),
        "TT": 60.0 * np.exp(-mm / 150) * np.exp(-2 * ss),
        "Zhf": 80.0 * np.exp(-mm / 80) * np.exp(-1.5 * ss),
        "Zlf": 120.0 * np.exp(-mm / 60) * np.exp(-4 * ss),
        "others": 15.0 * np.exp(-mm / 100) * np.exp(-ss),
    }
    scale = 900.0 / (n_mjj * n_score)
    sr = {p: (v * scale).ravel() for p, v in shapes.items()}
    cr_frac = {
        "ZH": [0.001, 0.002, 0.0005],
        "VZ": [0.01, 0.02, 0.01],
        "TT": [2.0, 0.3, 0.2],
        "Zhf": [0.2, 1.5, 0.4],
        "Zlf": [0.1, 0.4, 6.0],
        "others": [0.2, 0.2, 0.3],
    }
    channels = {"SR": n_mjj * n_score}
    for c in range(n_cr):
        channels[f"CR{c}"] = 1
    nominal = {
        p: np.concatenate([sr[p], [cr_frac[p][c % 3] * sr[p].sum() for c in range(n_cr)]])
        for p in shapes
    }
    sumw2 = {p: v * rng.uniform(0.02, 0.3, len(v)) for p, v in nominal.items()}
    histosys = None
    if jes:
        # a smooth shift (m_jj scale), symmetric unless jes_asymmetry
        slope = np.concatenate([((mm - 150) / 100).ravel(), np.full(n_cr, 0.2)])
        up, down = 0.03 * slope + jes_asymmetry, 0.03 * slope + 0.5 * jes_asymmetry
        histosys = {"jes": {p: (v * (1 + up), v * (1 - down)) for p, v in nominal.items()}}
    normsys = None
    if lnn:
        normsys = {
            "lumi": {p: (1 / 1.025, 1.025) for p in ("ZH", "VZ", "others")},
            "xs_VZ": {"VZ": (1 / 1.1, 1.1)},
            "xs_others": {"others": (1 / 1.15, 1.15)},
        }
    sf0 = {"TT": 1.08, "Zhf": 1.22, "Zlf": 0.91}
    norm_factors = {"mu": NormFactor(("ZH",), 1.0, (-20.0, 20.0))}
    norm_factors |= {f"sf_{p}": NormFactor((p,), v, (0.0, 10.0)) for p, v in sf0.items()}
    model = make_model(
        channels,
        nominal,
        sumw2=sumw2,
        norm_factors=norm_factors,
        histosys=histosys,
        normsys=normsys,
        stat=stat,
    )
    return model, asimov(model)
