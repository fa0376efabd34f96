"""Binned discovery significance: the one implementation every stage uses.

Edge rule (documented once, applied everywhere): per bin, ``s`` is the summed signal yield and
``b`` the summed background yield (after any per-process clipping the caller does).

* non-finite yields or a negative signal yield raise :class:`~vhbb.core.errors.DataError`;
* a bin with ``s > 0`` and ``b <= 0`` raises (the significance is unbounded there: merge bins
  first, as :func:`vhbb.fit.templates.merge_bins` and the evaluation's significance binning do);
* a bin with ``s = 0`` contributes 0 whatever ``b`` is (so control regions and empty bins add
  nothing).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

from vhbb.core.errors import DataError

FloatArray = NDArray[np.float64]


def _significance_inputs(s: ArrayLike, b: ArrayLike) -> tuple[FloatArray, FloatArray]:
    sig = np.atleast_1d(np.asarray(s, dtype=np.float64))
    bkg = np.atleast_1d(np.asarray(b, dtype=np.float64))
    if sig.shape != bkg.shape:
        raise ValueError(f"significance: signal {sig.shape} and background {bkg.shape} differ")
    if not (np.all(np.isfinite(sig)) and np.all(np.isfinite(bkg))):
        raise DataError("significance: non-finite yields")
    if np.any(sig < 0):
        raise DataError(f"significance: negative signal in bin(s) {np.flatnonzero(sig < 0)}")
    bad = (bkg <= 0) & (sig > 0)
    if np.any(bad):
        raise DataError(
            f"significance: bin(s) {np.flatnonzero(bad).tolist()} have signal but background "
            "<= 0 (merge bins or regularise the background)"
        )
    keep = sig > 0  # bins without signal add nothing
    return sig[keep], bkg[keep]


def asimov_significance(s: ArrayLike, b: ArrayLike) -> float:
    """Binned Asimov discovery significance ``Z = sqrt(sum 2((s+b) ln(1 + s/b) - s))``.

    The median discovery significance of a counting experiment per bin without nuisance
    parameters; ``log1p`` keeps small ``s/b`` accurate.  Edge rule: module docstring.
    """
    sig, bkg = _significance_inputs(s, b)
    terms = 2.0 * ((sig + bkg) * np.log1p(sig / bkg) - sig)
    return float(math.sqrt(max(float(np.sum(terms)), 0.0)))


def simple_significance(s: ArrayLike, b: ArrayLike) -> float:
    """Binned ``Z = sqrt(sum s^2 / (s + b))`` (the leading order of the Asimov formula)."""
    sig, bkg = _significance_inputs(s, b)
    return float(math.sqrt(float(np.sum(sig * sig / (sig + bkg)))))
