"""Treatment of shape variations before a fit: smoothing and pruning against MC noise.

**Smoothing** (:func:`smooth_353qh`) is ROOT's ``TH1::SmoothArray``: the "353QH twice"
nonlinear smoother (running medians of 3, 5 and 3 points, quadratic interpolation of flat
segments, a 1/4-1/2-1/4 running mean, then the same on the residuals, added back; Friedman,
CERN 81-03, p. 292), ``times`` passes.  Ported to numpy here because ROOT is a test dependency
only; ``tests/test_shapes.py`` compares it with ``ROOT.TH1.SmoothArray`` to 1e-12.
:func:`smooth_variation` applies it to the *relative* deviation ``var / nom - 1`` of a template
along one axis (ATLAS/CMS practice: the ratio is smooth where the yields are not), so bins with
no nominal yield keep their variation.

**Pruning** (:func:`shape_test`) asks whether a variation's *shape* (what is left after its
normalisation change) is above the MC noise of the difference ``var - nom``.  That noise is not
``sumw2`` of the nominal: the varied and nominal templates are filled from the same events, so
``Var(var_b - nom_b) = sum_i (w_i^var [i in b]_var - w_i [i in b]_nom)^2`` (only events that move
or change weight contribute).  The histograms store it per variation (``diff_sumw2``,
:mod:`vhbb.fit.templates`).  The test statistic is
``chi2 = sum_b (var_b - (1 + k) nom_b)^2 / Var_b`` with ``k = sum var / sum nom - 1`` and
``ndf = n_b - 1`` (bins with ``Var_b = 0`` carry no noise and no shape: they are left out); the
shape is pruned when its p-value is above the configured threshold.  The normalisation change is
significant when ``|k| > threshold_sigma * sigma_k``, ``sigma_k^2 = sum_b Var_b / (sum nom)^2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ShapeTest", "shape_test", "smooth_353qh", "smooth_variation"]


def _median3(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.maximum(np.minimum(a, b), np.minimum(np.maximum(a, b), c))


def _353qh_once(xx: np.ndarray) -> np.ndarray:
    """One pass of ROOT's ``TH1::SmoothArray`` loop body (both ``noent`` rounds)."""
    n = len(xx)
    zz = xx.copy()
    rr = np.zeros(n)
    for noent in range(2):
        # running medians 3, 5, 3
        for kk in range(3):
            yy = zz.copy()
            if kk != 1:
                zz[1 : n - 1] = _median3(yy[0 : n - 2], yy[1 : n - 1], yy[2:n])
                if kk == 0:  # end points after the first median of 3 only
                    zz[0] = np.median([zz[1], zz[0], 3 * zz[1] - 2 * zz[2]])
                    zz[n - 1] = np.median([zz[n - 2], zz[n - 1], 3 * zz[n - 2] - 2 * zz[n - 3]])
            else:
                if n > 4:
                    win = np.lib.stride_tricks.sliding_window_view(yy, 5)
                    zz[2 : n - 2] = np.median(win, axis=1)
                zz[1] = np.median(yy[0:3])
                zz[n - 2] = np.median(yy[n - 3 : n])
        yy = zz.copy()
        # quadratic interpolation of flat segments (sequential, as in ROOT)
        for ii in range(2, n - 2):
            if zz[ii - 1] != zz[ii] or zz[ii] != zz[ii + 1]:
                continue
            h0 = zz[ii - 2] - zz[ii]
            h1 = zz[ii + 2] - zz[ii]
            if h0 * h1 <= 0:
                continue
            jk = -1 if abs(h1) > abs(h0) else 1
            yy[ii] = -0.5 * zz[ii - 2 * jk] + zz[ii] / 0.75 + zz[ii + 2 * jk] / 6.0
            yy[ii + jk] = 0.5 * (zz[ii + 2 * jk] - zz[ii - 2 * jk]) + zz[ii]
        # running means
        zz = yy.copy()
        zz[1 : n - 1] = 0.25 * yy[0 : n - 2] + 0.5 * yy[1 : n - 1] + 0.25 * yy[2:n]
        if noent == 0:
            rr = zz.copy()
            zz = xx - zz  # residuals
    out = rr + zz
    return out if xx.min() < 0 else np.maximum(out, 0.0)


def smooth_353qh(values: np.ndarray, times: int = 1) -> np.ndarray:
    """ROOT's ``TH1::SmoothArray(n, values, times)`` (353QH twice) on a 1-D array; arrays with
    fewer than 3 entries are returned unchanged (ROOT refuses them)."""
    xx = np.asarray(values, dtype=np.float64).copy()
    if xx.ndim != 1:
        raise ValueError("smooth_353qh smooths 1-D arrays")
    if len(xx) < 3:
        return xx
    for _ in range(int(times)):
        xx = _353qh_once(xx)
    return xx


def smooth_variation(
    nominal: np.ndarray, varied: np.ndarray, *, axis: int = -1, times: int = 1
) -> np.ndarray:
    """The varied template with its relative deviation ``varied / nominal - 1`` smoothed by
    :func:`smooth_353qh` along ``axis`` (every other index separately).  Bins with
    ``nominal <= 0`` keep their varied content and are not used as smoothing points."""
    nom = np.asarray(nominal, dtype=np.float64)
    var = np.asarray(varied, dtype=np.float64)
    ok = nom > 0
    rel = np.where(ok, var / np.where(ok, nom, 1.0) - 1.0, 0.0)
    rel_m = np.moveaxis(rel, axis, -1)
    ok_m = np.moveaxis(ok, axis, -1)
    out = rel_m.copy()
    for idx in np.ndindex(rel_m.shape[:-1]):
        good = ok_m[idx]
        if good.sum() >= 3:
            row = out[idx]
            row[good] = smooth_353qh(rel_m[idx][good], times)
    smoothed = np.moveaxis(out, -1, axis)
    return np.where(ok, nom * (1.0 + smoothed), var)


@dataclass(frozen=True)
class ShapeTest:
    """Result of :func:`shape_test` for one process and one varied template."""

    chi2: float
    ndf: int
    p_value: float
    norm_change: float  # k = sum var / sum nom - 1
    norm_sigma: float  # its MC-noise standard deviation

    def as_dict(self) -> dict[str, float | int]:
        return {
            "chi2": self.chi2,
            "ndf": self.ndf,
            "p_value": self.p_value,
            "norm_change": self.norm_change,
            "norm_sigma": self.norm_sigma,
        }


def shape_test(nominal: np.ndarray, varied: np.ndarray, diff_sumw2: np.ndarray) -> ShapeTest:
    """Is the shape of ``varied`` (normalisation divided out) different from ``nominal`` beyond
    the MC noise ``diff_sumw2`` (the variance of ``varied - nominal`` per bin)?  See the module
    docstring for the statistic."""
    nom = np.asarray(nominal, dtype=np.float64).ravel()
    var = np.asarray(varied, dtype=np.float64).ravel()
    noise = np.asarray(diff_sumw2, dtype=np.float64).ravel()
    total = nom.sum()
    if total <= 0:
        return ShapeTest(0.0, 0, 1.0, 0.0, 0.0)
    k = var.sum() / total - 1.0
    sigma_k = float(np.sqrt(max(noise.sum(), 0.0)) / total)
    used = noise > 0
    ndf = int(used.sum()) - 1
    if ndf < 1:
        return ShapeTest(0.0, 0, 1.0, float(k), sigma_k)
    resid = var[used] - (1.0 + k) * nom[used]
    chi2 = float(np.sum(resid**2 / noise[used]))
    from vhbb.stats.metrics import chi2_prob  # (scipy.stats costs every fit job ~0.6 s)

    p = chi2_prob(chi2, ndf) if ndf > 0 else float("nan")
    return ShapeTest(chi2, ndf, p, float(k), sigma_k)
