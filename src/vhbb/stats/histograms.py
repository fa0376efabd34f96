"""Weighted histograms and weighted quantile edges: the one implementation every stage uses.

Histograms are filled with boost-histogram (``Weight`` storage: sum of w and of w^2).  Edge
rule: bins are half-open ``[lo, hi)``; values below the first edge go to the first bin and
values at or above the last edge to the last bin ("flow clipped in"), so no weight is lost.
Non-finite values are an error of the caller (they would land in a flow bin silently).

Quantile edges: ``n`` bins of equal summed weight; only events with a finite value and a
positive weight count (zero and negative weights are dropped, not clipped into the sums).
"""

from __future__ import annotations

import boost_histogram as bh
import numpy as np
from numpy.typing import ArrayLike, NDArray

from vhbb.core.errors import DataError

FloatArray = NDArray[np.float64]


def _clipped_flow(view: np.ndarray, axis: int) -> np.ndarray:
    """Fold the under/overflow slices of ``axis`` into the first/last regular bins."""
    v = np.moveaxis(view, axis, 0)
    inner = v[1:-1].copy()
    inner[0] += v[0]
    inner[-1] += v[-1]
    return np.moveaxis(inner, 0, axis)


def weighted_hist(
    x: ArrayLike, weight: ArrayLike, edges: ArrayLike
) -> tuple[FloatArray, FloatArray]:
    """``(sum w, sum w^2)`` per bin of ``edges`` (flow clipped in: module docstring)."""
    h = bh.Histogram(
        bh.axis.Variable(np.asarray(edges, dtype=np.float64)), storage=bh.storage.Weight()
    )
    h.fill(np.asarray(x, dtype=np.float64), weight=np.asarray(weight, dtype=np.float64))
    view = h.view(flow=True)
    return _clipped_flow(view.value, 0), _clipped_flow(view.variance, 0)


def weighted_hist2d(
    x: ArrayLike, y: ArrayLike, weight: ArrayLike, x_edges: ArrayLike, y_edges: ArrayLike
) -> tuple[FloatArray, FloatArray]:
    """``(sum w, sum w^2)`` of shape ``(len(x_edges) - 1, len(y_edges) - 1)``; flow clipped in."""
    h = bh.Histogram(
        bh.axis.Variable(np.asarray(x_edges, dtype=np.float64)),
        bh.axis.Variable(np.asarray(y_edges, dtype=np.float64)),
        storage=bh.storage.Weight(),
    )
    h.fill(
        np.asarray(x, dtype=np.float64),
        np.asarray(y, dtype=np.float64),
        weight=np.asarray(weight, dtype=np.float64),
    )
    view = h.view(flow=True)
    out = []
    for field in (view.value, view.variance):
        out.append(_clipped_flow(_clipped_flow(field, 0), 1))
    return out[0], out[1]


def quantile_inner_edges(values: ArrayLike, weight: ArrayLike, n: int) -> FloatArray:
    """The ``n - 1`` inner edges splitting ``values`` into ``n`` bins of equal summed weight.

    Edge ``k`` is the smallest value whose cumulative positive weight reaches ``k/n`` of the
    total.  Raises :class:`~vhbb.core.errors.DataError` when no event has a finite value and a
    positive weight.  Callers choose the outer edges (the score range, or the data range).
    """
    if n < 1:
        raise ValueError(f"quantile count must be >= 1, got {n}")
    s = np.asarray(values, dtype=np.float64)
    w = np.asarray(weight, dtype=np.float64)
    keep = np.isfinite(s) & (w > 0)
    s, w = s[keep], w[keep]
    if len(s) == 0:
        raise DataError("quantile edges: no event with a finite value and positive weight")
    order = np.argsort(s, kind="stable")
    s, cum = s[order], np.cumsum(w[order])
    targets = cum[-1] * np.arange(1, n) / n
    return s[np.searchsorted(cum, targets, side="left").clip(0, len(s) - 1)]


def bin_index(values: ArrayLike, edges: ArrayLike) -> NDArray[np.intp]:
    """Bin of each value under the histogram edge rule (``[lo, hi)``, flow clipped in)."""
    e = np.asarray(edges, dtype=np.float64)
    return np.clip(np.searchsorted(e, np.asarray(values), side="right") - 1, 0, len(e) - 2)


def upsample_2d(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, factor: int = 8
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``z`` on a ``factor`` times finer grid: a bicubic spline through the points (linear for
    fewer than 4 points per axis); failed (NaN) points are filled with the largest value."""
    from scipy.interpolate import RectBivariateSpline

    z = np.asarray(z, dtype=np.float64)
    finite = np.isfinite(z)
    if not finite.any():
        raise ValueError("no finite point to interpolate")
    z = np.where(finite, z, np.nanmax(z))
    kx, ky = min(3, len(x) - 1), min(3, len(y) - 1)
    spline = RectBivariateSpline(x, y, z, kx=kx, ky=ky)
    fx = np.linspace(x[0], x[-1], (len(x) - 1) * factor + 1)
    fy = np.linspace(y[0], y[-1], (len(y) - 1) * factor + 1)
    return fx, fy, spline(fx, fy)
