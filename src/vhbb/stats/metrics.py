"""Statistical estimators of the evaluation and training stages (numpy, float64, pure functions).

Histogram comparisons (each reproduces ROOT, and is tested against PyROOT):

* :func:`chi2_test` -- ``TH1::Chi2Test`` / ``TH1::Chi2TestX`` for 1D histograms given per-bin
  contents and sums of squared weights (options ``UU``, ``UW``, ``WW``, ``UU NORM``);
* :func:`kolmogorov_test` -- ``TH1::KolmogorovTest`` (probability, ``M`` maximum distance,
  ``N`` normalisation term) with ``TMath::KolmogorovProb`` (:func:`kolmogorov_prob`);
* :func:`check_nonnegative` -- the guard run before both: signed event weights can produce
  negative bins, for which neither test is defined.

Where ROOT prints an error and returns 0 (an empty histogram, all-zero errors, ...), these
functions return a result whose numbers are ``None`` and whose ``reason`` says why: an undefined
test is never reported as a p-value of 0.  Under- and overflow bins are not part of the inputs
(ROOT's default); the ``OF``/``UF`` options are therefore rejected.

Other estimators: :func:`jensen_shannon_divergence` (base 2, as
``scipy.spatial.distance.jensenshannon(p, q, base=2) ** 2``), the weighted ROC curve and AUC
(:func:`roc_curve`, :func:`roc_auc`, identical to ``sklearn.metrics.roc_curve`` /
``roc_auc_score`` with ``sample_weight``, ties included), the truncated AUC of the LHCb "Flavours
of Physics" challenge (:func:`roc_auc_truncated`), the background rejection at 50 % signal
efficiency (:func:`r50`), the challenge's Cramer-von Mises flatness (:func:`cvm_flatness`), the
weighted Pearson correlation (:func:`pearson_correlation`), binned Asimov significances
(:func:`asimov_significance`, :func:`simple_significance`) and the weighted squared distance
correlation (:func:`distance_correlation_sq`, the float64 reference of :mod:`vhbb.stats.disco`).

``scipy.special`` (installed with scikit-learn) is imported lazily for the chi-square
probability; nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from vhbb.core.errors import DataError
from vhbb.stats.significance import asimov_significance, simple_significance

log = logging.getLogger(__name__)

FloatArray = NDArray[np.float64]

#: TPR edges and segment weights of the Flavours-of-Physics truncated AUC.
FOP_TPR_EDGES: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
FOP_ROC_WEIGHTS: tuple[float, ...] = (4.0, 3.0, 2.0, 1.0, 0.0)


# --------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------


def _as_1d(values: ArrayLike, name: str) -> FloatArray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1D array of bin contents, got shape {arr.shape}")
    return arr


def _w2_or_default(w2: ArrayLike | None, contents: FloatArray, name: str) -> FloatArray:
    """Sum of squared weights per bin; ROOT's default without ``Sumw2`` is the content itself."""
    if w2 is None:
        return np.abs(contents)
    arr = _as_1d(w2, name)
    if arr.shape != contents.shape:
        raise ValueError(f"{name}: shape {arr.shape} differs from the contents' {contents.shape}")
    return arr


def check_nonnegative(contents: ArrayLike, name: str) -> str | None:
    """Guard run before :func:`chi2_test` and :func:`kolmogorov_test`.

    Returns ``None`` when the histogram ``name`` can enter a goodness-of-fit test, otherwise a
    one-line reason: a non-finite bin, a negative bin (signed weights) or an empty histogram
    (all bins zero).  The tests turn a reason into a result with ``None`` numbers; they never
    report such a case as 0.
    """
    arr = np.asarray(contents, dtype=np.float64)
    if arr.size == 0:
        return f"{name}: no bins"
    bad = ~np.isfinite(arr)
    if bad.any():
        return f"{name}: non-finite content in bin(s) {np.flatnonzero(bad).tolist()}"
    neg = arr < 0
    if neg.any():
        idx = np.flatnonzero(neg)
        return (
            f"{name}: negative content in {idx.size} bin(s) {idx[:10].tolist()} "
            f"(min {arr.min():.6g}); the test is undefined for signed-weight bins"
        )
    if not arr.any():
        return f"{name}: empty histogram (all bins are zero)"
    return None


def _check_w2(w2: FloatArray, name: str) -> str | None:
    if not np.all(np.isfinite(w2)):
        return f"{name}: non-finite sum of squared weights"
    if np.any(w2 < 0):
        return f"{name}: negative sum of squared weights"
    return None


# --------------------------------------------------------------------------------------------
# chi-square test (TH1::Chi2TestX)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chi2Result:
    """Outcome of :func:`chi2_test`.

    ``statistic``, ``ndf``, ``p_value`` and ``chi2_ndf`` are ``None`` when the test is undefined;
    ``reason`` then says why.  ``igood`` is ROOT's quality flag (1: a bin of h1 with few events,
    2: of h2, 3: both).  ``mode`` is the comparison actually made (``UU``, ``UU NORM``, ``UW``,
    ``WW``).
    """

    statistic: float | None
    ndf: int | None
    p_value: float | None
    chi2_ndf: float | None
    igood: int = 0
    mode: str = ""
    reason: str | None = None

    @property
    def defined(self) -> bool:
        return self.reason is None


def _undefined_chi2(reason: str, mode: str = "") -> Chi2Result:
    log.warning("chi2 test undefined: %s", reason)
    return Chi2Result(None, None, None, None, 0, mode, reason)


def chi2_prob(chi2: float, ndf: int) -> float:
    """``TMath::Prob``: upper tail of the chi-square distribution (0 for ``ndf <= 0``)."""
    from scipy.special import gammaincc

    if ndf <= 0:
        return 0.0
    if chi2 <= 0:
        return 0.0 if chi2 < 0 else 1.0
    return float(gammaincc(0.5 * ndf, 0.5 * chi2))


def _is_unweighted(contents: FloatArray, w2: FloatArray) -> bool:
    """ROOT's test ``|sum w - (sum w)^2 / sum w^2| < 1`` (``TH1::GetStats`` from the bins)."""
    s0 = float(contents.sum())
    s1 = float(w2.sum())
    eff = s0 * s0 / s1 if s1 else 0.0
    return abs(s0 - eff) < 1


def chi2_test(
    h1: ArrayLike,
    h2: ArrayLike,
    opt: str = "UU",
    *,
    w2_1: ArrayLike | None = None,
    w2_2: ArrayLike | None = None,
) -> Chi2Result:
    """Chi-square homogeneity test of two 1D histograms, as ROOT's ``TH1::Chi2TestX``.

    ``h1``/``h2`` are the bin contents (no under/overflow), ``w2_1``/``w2_2`` the per-bin sums of
    squared weights (``TH1::GetSumw2``; default: the contents, as ROOT without ``Sumw2``).
    ``opt`` (case-insensitive) contains ``UU`` (unweighted-unweighted), ``UW``
    (unweighted h1 against weighted h2), ``WW`` (weighted-weighted) or none of them (the mode is
    deduced as ROOT does), and optionally ``NORM`` (with ``UU`` only: scaled unweighted
    histograms, whose effective counts ``round(c^2 / w2)`` are compared).

    Following ROOT exactly: ``ndf = nbins - 1`` minus one per bin empty in both histograms;

    * UU: ``chi2 = sum (S2 n1 - S1 n2)^2 / (n1 + n2) / (S1 S2)``;
    * UW (Gagunashvili): per bin ``p = (v1 + sqrt(v1^2 + 4 S2^2 n1 e2)) / (2 S2^2)`` with
      ``v1 = S2 n2 - S1 e2``, ``chi2 += (n1 - S1 p)^2 / (S1 p) + (n2 - S2 p)^2 / e2``; a bin of
      h2 with zero content and zero error takes ``e2 = sumw2(h2) / S2``; the degenerate case
      ``v1 + sqrt(...) = 0`` increments ``n1`` and ``S1`` (persistently, as in ROOT);
    * WW: ``chi2 = sum (S2 n1 - S1 n2)^2 / (S1^2 e2 + S2^2 e1)``;

    (``n``: bin contents, ``e``: sums of squared weights, ``S``: histogram sums)

    and ``p = TMath::Prob(chi2, ndf)``.  Cases where ROOT errors out and returns 0 (an empty
    histogram, all-zero errors, a bin that both histograms leave with zero error) and
    negative/non-finite inputs give a result with ``None`` numbers and a ``reason``.
    Longer than 100 lines on purpose: it follows ROOT's ``Chi2TestX`` branch by branch (UU,
    UW, WW and the empty-bin rules) so that it can be read against ROOT's source and matches it
    to 1e-14 (tests/test_metrics.py).
    """
    c1 = _as_1d(h1, "h1")
    c2 = _as_1d(h2, "h2")
    if c1.shape != c2.shape:
        raise ValueError(f"chi2_test: h1 has {c1.size} bins, h2 has {c2.size}")
    e1 = _w2_or_default(w2_1, c1, "w2_1")
    e2 = _w2_or_default(w2_2, c2, "w2_2")
    options = opt.upper()
    if "OF" in options or "UF" in options:
        raise ValueError("chi2_test: inputs hold no under/overflow bins; drop 'OF'/'UF'")

    for reason in (
        check_nonnegative(c1, "h1"),
        check_nonnegative(c2, "h2"),
        _check_w2(e1, "w2_1"),
        _check_w2(e2, "w2_2"),
    ):
        if reason is not None:
            return _undefined_chi2(reason)

    uu = "UU" in options
    uw = "UW" in options
    ww = "WW" in options
    norm = "NORM" in options
    if norm and not uu:
        log.info("chi2_test: NORM is only used together with UU; it is ignored")
    if not (uu or uw or ww):
        if _is_unweighted(c1, e1):
            uu = _is_unweighted(c2, e2)
            uw = not uu
        else:
            ww = True
    if uw and not _is_unweighted(c1, e1):
        log.warning("chi2_test: option UW requested but the first histogram is weighted")
    if uu and not norm and not (_is_unweighted(c1, e1) and _is_unweighted(c2, e2)):
        log.warning("chi2_test: option UU requested but the histograms are weighted")

    nbins = c1.size
    ndf = nbins - 1
    if uu:
        mode = "UU NORM" if norm else "UU"
        if norm:
            n1 = np.where(e1 > 0, np.floor(c1 * c1 / np.where(e1 > 0, e1, 1.0) + 0.5), 0.0)
            n2 = np.where(e2 > 0, np.floor(c2 * c2 / np.where(e2 > 0, e2, 1.0) + 0.5), 0.0)
            if e1.sum() <= 0 or e2.sum() <= 0:
                return _undefined_chi2("NORM needs non-zero errors in both histograms", mode)
        else:
            n1, n2 = c1, c2
        sum1, sum2 = float(n1.sum()), float(n2.sum())
        if sum1 == 0.0 or sum2 == 0.0:
            return _undefined_chi2("one histogram is empty", mode)
        # ROOT truncates to Int_t before testing for an empty bin
        empty = (np.trunc(n1) == 0) & (np.trunc(n2) == 0)
        ndf -= int(empty.sum())
        used = ~empty
        cntsum = n1[used] + n2[used]
        delta = sum2 * n1[used] - sum1 * n2[used]
        chi2 = float(np.sum(delta * delta / cntsum)) / (sum1 * sum2)
        igood = int(np.any(n1[used] < 1)) + 2 * int(np.any(n2[used] < 1))
    elif uw:
        mode = "UW"
        chi2, ndf, igood, reason = _chi2_uw(c1, c2, e2, ndf)
        if reason is not None:
            return _undefined_chi2(reason, mode)
    else:
        mode = "WW"
        sum1, sum2 = float(c1.sum()), float(c2.sum())
        sumw1, sumw2 = float(e1.sum()), float(e2.sum())
        if sum1 == 0.0 or sum2 == 0.0:
            return _undefined_chi2("one histogram is empty", mode)
        if sumw1 <= 0.0 and sumw2 <= 0.0:
            return _undefined_chi2("both histograms have all-zero errors", mode)
        empty = (c1 * c1 == 0) & (c2 * c2 == 0)
        ndf -= int(empty.sum())
        used = ~empty
        zero_err = used & (e1 == 0) & (e2 == 0)
        if zero_err.any():
            return _undefined_chi2(
                f"h1 and h2 both have zero errors in bin(s) {np.flatnonzero(zero_err).tolist()}",
                mode,
            )
        sigma = sum1 * sum1 * e2[used] + sum2 * sum2 * e1[used]
        delta = sum2 * c1[used] - sum1 * c2[used]
        chi2 = float(np.sum(delta * delta / sigma))
        u1, u2, f1, f2 = c1[used], c2[used], e1[used], e2[used]
        m = np.any(u1 * u1 / np.where(f1 > 0, f1, np.inf) < 10, where=f1 > 0)
        n = np.any(u2 * u2 / np.where(f2 > 0, f2, np.inf) < 10, where=f2 > 0)
        igood = int(m) + 2 * int(n)

    if ndf <= 0:
        log.warning("chi2 test: ndf = %d (all bins empty in both histograms)", ndf)
        return Chi2Result(chi2, ndf, None, None, igood, mode, f"ndf = {ndf}: no non-empty bin")
    return Chi2Result(chi2, ndf, chi2_prob(chi2, ndf), chi2 / ndf, igood, mode, None)


def _uw_vars(
    sum1: float, cnt1: float, sum2: float, cnt2: float, e2sq: float
) -> tuple[float, float]:
    """``var1 = S2 n2 - S1 e2`` and ``var2 = var1^2 + 4 S2^2 n1 e2`` of the UW branch."""
    var1 = sum2 * cnt2 - sum1 * e2sq
    return var1, var1 * var1 + 4.0 * sum2 * sum2 * cnt1 * e2sq


def _chi2_uw(
    c1: FloatArray, c2: FloatArray, e2: FloatArray, ndf: int
) -> tuple[float, int, int, str | None]:
    """UW branch of ``Chi2TestX``: a bin loop because ROOT's fix-up changes ``sum1`` in flight."""
    sum1 = float(c1.sum())
    sum2 = float(c2.sum())
    sumw2 = float(e2.sum())
    if sum1 == 0.0 or sum2 == 0.0:
        return 0.0, ndf, 0, "one histogram is empty"
    chi2 = 0.0
    m = n = 0
    for i in range(c1.size):
        cnt1 = float(c1[i])
        cnt2 = float(c2[i])
        e2sq = float(e2[i])
        if cnt1 * cnt1 == 0 and cnt2 * cnt2 == 0:
            ndf -= 1
            continue
        if cnt2 * cnt2 == 0 and e2sq == 0:
            if sumw2 > 0:
                e2sq = sumw2 / sum2
            else:
                return 0.0, ndf, 0, f"h2 has zero content and zero error in bin {i}"
        if cnt1 < 1:
            m += 1
        if e2sq > 0 and cnt2 * cnt2 / e2sq < 10:
            n += 1

        var1, var2 = _uw_vars(sum1, cnt1, sum2, cnt2, e2sq)
        while var1 * var1 + cnt1 == 0 or var1 + var2 == 0:
            sum1 += 1
            cnt1 += 1
            var1, var2 = _uw_vars(sum1, cnt1, sum2, cnt2, e2sq)
        var2 = math.sqrt(var2)
        while var1 + var2 == 0:
            sum1 += 1
            cnt1 += 1
            var1, var2 = _uw_vars(sum1, cnt1, sum2, cnt2, e2sq)
            while var1 * var1 + cnt1 == 0 or var1 + var2 == 0:
                sum1 += 1
                cnt1 += 1
                var1, var2 = _uw_vars(sum1, cnt1, sum2, cnt2, e2sq)
            var2 = math.sqrt(var2)

        probb = (var1 + var2) / (2.0 * sum2 * sum2)
        nexp1 = probb * sum1
        nexp2 = probb * sum2
        delta1 = cnt1 - nexp1
        delta2 = cnt2 - nexp2
        chi2 += delta1 * delta1 / nexp1
        if e2sq > 0:
            chi2 += delta2 * delta2 / e2sq
    igood = (1 if m else 0) + (2 if n else 0)
    return chi2, ndf, igood, None


# --------------------------------------------------------------------------------------------
# Kolmogorov-Smirnov test (TH1::KolmogorovTest)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KolmogorovResult:
    """Outcome of :func:`kolmogorov_test`.

    ``p_value`` is ROOT's returned probability (with option ``N``: combined with the
    normalisation term), ``max_distance`` what option ``M`` returns, ``z`` the argument of
    ``TMath::KolmogorovProb``, ``n_eff1``/``n_eff2`` the effective entries ``(sum w)^2 / sum w^2``
    (0 for a histogram without errors, which is then treated as an exact function).  All are
    ``None`` with a ``reason`` when the test is undefined.
    """

    p_value: float | None
    max_distance: float | None
    z: float | None
    n_eff1: float | None
    n_eff2: float | None
    reason: str | None = None

    @property
    def defined(self) -> bool:
        return self.reason is None


def kolmogorov_prob(z: float) -> float:
    """``TMath::KolmogorovProb``: P(K > z) of the Kolmogorov distribution (CERNLIB PROBKL)."""
    fj = (-2.0, -8.0, -18.0, -32.0)
    w = 2.50662827
    c1 = -1.2337005501361697  # -pi^2/8
    c2 = -11.103304951225528  # 9 c1
    c3 = -30.842513753404244  # 25 c1
    u = abs(z)
    if u < 0.2:
        return 1.0
    if u < 0.755:
        v = 1.0 / (u * u)
        return 1.0 - w * (math.exp(c1 * v) + math.exp(c2 * v) + math.exp(c3 * v)) / u
    if u < 6.8116:
        r = [0.0, 0.0, 0.0, 0.0]
        v = u * u
        maxj = max(1, round(3.0 / u))  # TMath::Nint rounds half to even, as round() does
        for j in range(maxj):
            r[j] = math.exp(fj[j] * v)
        return 2.0 * (r[0] - r[1] + r[2] - r[3])
    return 0.0


def kolmogorov_test(
    h1: ArrayLike,
    h2: ArrayLike,
    *,
    w2_1: ArrayLike | None = None,
    w2_2: ArrayLike | None = None,
    option: str = "",
) -> KolmogorovResult:
    """Kolmogorov-Smirnov test of two 1D histograms, as ROOT's ``TH1::KolmogorovTest``.

    ``d = max_k |F1(k) - F2(k)|`` over the cumulative normalised contents (no under/overflow);
    ``z = d sqrt(n1 n2 / (n1 + n2))`` with the effective entries ``n = (sum w)^2 / sum w^2``
    (``sum w^2`` from ``w2_*``, default: the contents, i.e. an unweighted histogram); a histogram
    with all-zero errors is an exact function and ``z = d sqrt(n_other)``.  The probability is
    ``TMath::KolmogorovProb(z)``; option ``N`` multiplies in the normalisation compatibility as
    ROOT does.  ROOT's error cases (zero integral, zero errors in both) and negative bins give a
    result with ``None`` numbers and a ``reason``.  Option ``X`` (toys) is not supported.
    """
    c1 = _as_1d(h1, "h1")
    c2 = _as_1d(h2, "h2")
    if c1.shape != c2.shape:
        raise ValueError(f"kolmogorov_test: h1 has {c1.size} bins, h2 has {c2.size}")
    e1 = _w2_or_default(w2_1, c1, "w2_1")
    e2 = _w2_or_default(w2_2, c2, "w2_2")
    options = option.upper()
    if any(flag in options for flag in ("U", "O", "X")):
        raise ValueError("kolmogorov_test: options U/O (flow bins) and X (toys) are not supported")

    def undefined(reason: str) -> KolmogorovResult:
        log.warning("Kolmogorov test undefined: %s", reason)
        return KolmogorovResult(None, None, None, None, None, reason)

    for reason in (
        check_nonnegative(c1, "h1"),
        check_nonnegative(c2, "h2"),
        _check_w2(e1, "w2_1"),
        _check_w2(e2, "w2_2"),
    ):
        if reason is not None:
            return undefined(reason)

    sum1, sum2 = float(c1.sum()), float(c2.sum())
    w1, w2 = float(e1.sum()), float(e2.sum())
    afunc1 = not w1 > 0
    afunc2 = not w2 > 0
    esum1 = sum1 * sum1 / w1 if not afunc1 else 0.0
    esum2 = sum2 * sum2 / w2 if not afunc2 else 0.0
    if afunc1 and afunc2:
        return undefined("errors are zero for both histograms")

    # ROOT accumulates s * content bin by bin; cumsum reproduces that order
    rsum1 = np.cumsum((1.0 / sum1) * c1)
    rsum2 = np.cumsum((1.0 / sum2) * c2)
    dfmax = float(np.max(np.abs(rsum1 - rsum2), initial=0.0))
    if afunc1:
        z = dfmax * math.sqrt(esum2)
    elif afunc2:
        z = dfmax * math.sqrt(esum1)
    else:
        z = dfmax * math.sqrt(esum1 * esum2 / (esum1 + esum2))
    prob = kolmogorov_prob(z)
    if "N" in options and not (afunc1 or afunc2):
        d12 = esum1 - esum2
        prb2 = chi2_prob(d12 * d12 / (esum1 + esum2), 1)
        prob = prob * prb2 * (1 - math.log(prob * prb2)) if prob > 0 and prb2 > 0 else 0.0
    return KolmogorovResult(prob, dfmax, z, esum1, esum2, None)


# --------------------------------------------------------------------------------------------
# divergences, ROC, flatness, correlation, significance
# --------------------------------------------------------------------------------------------


def jensen_shannon_divergence(p: ArrayLike, q: ArrayLike) -> float:
    """Jensen-Shannon divergence (log base 2, in [0, 1]) of two histograms.

    Both inputs are normalised to unit sum; equals
    ``scipy.spatial.distance.jensenshannon(p, q, base=2) ** 2``.  Raises
    :class:`~vhbb.core.errors.DataError` (with :func:`check_nonnegative`'s reason) for negative,
    non-finite or empty inputs.
    """
    a = _as_1d(p, "p")
    b = _as_1d(q, "q")
    if a.shape != b.shape:
        raise ValueError(f"jensen_shannon_divergence: {a.size} bins against {b.size}")
    for reason in (check_nonnegative(a, "p"), check_nonnegative(b, "q")):
        if reason is not None:
            raise DataError(f"Jensen-Shannon divergence undefined: {reason}")
    a = a / a.sum()
    b = b / b.sum()
    m = 0.5 * (a + b)

    def rel_entr(x: FloatArray) -> float:
        pos = x > 0  # where x > 0, m >= x / 2 > 0
        return float(np.sum(x[pos] * np.log(x[pos] / m[pos])))

    return 0.5 * (rel_entr(a) + rel_entr(b)) / math.log(2.0)


def _labels_scores_weights(
    y_true: ArrayLike, score: ArrayLike, weight: ArrayLike | None
) -> tuple[NDArray[np.bool_], FloatArray, FloatArray]:
    y = np.asarray(y_true)
    s = np.asarray(score, dtype=np.float64)
    if y.ndim != 1 or s.shape != y.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} must be 1D of equal length")
    w = np.ones_like(s) if weight is None else np.asarray(weight, dtype=np.float64)
    if w.shape != s.shape:
        raise ValueError(f"weights {w.shape} and scores {s.shape} differ in shape")
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(w))):
        raise DataError("ROC: non-finite scores or weights")
    labels = np.unique(y)
    if not np.all(np.isin(labels, (0, 1))):
        raise ValueError(f"ROC: labels must be 0/1 (or bool), got {labels[:5].tolist()}")
    return y.astype(bool), s, w


_ORDERS: OrderedDict[bytes, NDArray[np.intp]] = OrderedDict()
_ORDERS_KEPT = 4


def stable_order(values: FloatArray) -> NDArray[np.intp]:
    """``np.argsort(values, kind="mergesort")``, remembered for the last few distinct arrays.

    The bootstrap replicas of an evaluation reweight the same scores over and over; their ROC
    curves then sort once.  Arrays are told apart by a digest of their bytes (not identity),
    so a changed array is sorted again.  The result is read-only (shared between calls).
    """
    key = hashlib.blake2b(values.tobytes(), digest_size=16).digest() + str(values.dtype).encode()
    order = _ORDERS.get(key)
    if order is None:
        order = np.argsort(values, kind="mergesort")
        order.flags.writeable = False
        _ORDERS[key] = order
        while len(_ORDERS) > _ORDERS_KEPT:
            _ORDERS.popitem(last=False)
    else:
        _ORDERS.move_to_end(key)
    return order


def roc_curve(
    y_true: ArrayLike, score: ArrayLike, weight: ArrayLike | None = None
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Weighted ROC curve ``(fpr, tpr, thresholds)``, one point per distinct score.

    Same points as ``sklearn.metrics.roc_curve(..., sample_weight=weight,
    drop_intermediate=False)``: events sorted by decreasing score, tied scores form one step
    (a diagonal segment), zero-weight events are dropped, the curve starts at (0, 0) with the
    threshold ``inf``.  Raises :class:`~vhbb.core.errors.DataError` if one class has no weight.
    """
    y, s, w = _labels_scores_weights(y_true, score, weight)
    order = stable_order(s)
    order = order[w[order] != 0][::-1]  # = the stable order of the nonzero-weight events
    s, y, w = s[order], y[order], w[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tps = np.cumsum(np.where(y, w, 0.0))[last_of_tie]
    fps = np.cumsum(np.where(y, 0.0, w))[last_of_tie]
    if tps.size == 0 or tps[-1] <= 0 or fps[-1] <= 0:
        raise DataError("ROC undefined: signal or background has no (positive) total weight")
    fpr = np.r_[0.0, fps / fps[-1]]
    tpr = np.r_[0.0, tps / tps[-1]]
    thresholds = np.r_[np.inf, s[last_of_tie]]
    return fpr, tpr, thresholds


def roc_auc(y_true: ArrayLike, score: ArrayLike, weight: ArrayLike | None = None) -> float:
    """Weighted area under the ROC curve (trapezoids; ties count one half), = sklearn's."""
    fpr, tpr, _ = roc_curve(y_true, score, weight)
    return float(np.trapezoid(tpr, fpr))


def roc_auc_truncated(
    y_true: ArrayLike,
    score: ArrayLike,
    weight: ArrayLike | None = None,
    tpr_edges: tuple[float, ...] = FOP_TPR_EDGES,
    roc_weights: tuple[float, ...] = FOP_ROC_WEIGHTS,
) -> float:
    """Weighted truncated AUC of the LHCb "Flavours of Physics" challenge.

    The ROC area is split into horizontal slices ``tpr_edges[k] < TPR <= tpr_edges[k+1]``
    (area under ``min(TPR, hi)`` minus under ``min(TPR, lo)``), slice ``k`` weighted by
    ``roc_weights[k]`` (4, 3, 2, 1, 0: the low-efficiency, high-purity part counts most), and the
    sum normalised by ``sum_k weight_k (hi_k - lo_k)`` so that a perfect classifier scores 1.
    As the challenge's ``roc_auc_truncated`` but with event weights in the ROC curve.
    """
    if len(tpr_edges) != len(roc_weights) + 1:
        raise ValueError("roc_auc_truncated: need one more TPR edge than segment weights")
    fpr, tpr, _ = roc_curve(y_true, score, weight)
    area = 0.0
    for k, wk in enumerate(roc_weights):
        hi = np.trapezoid(np.minimum(tpr, tpr_edges[k + 1]), fpr)
        lo = np.trapezoid(np.minimum(tpr, tpr_edges[k]), fpr)
        area += wk * (hi - lo)
    norm = float(np.sum(np.diff(np.asarray(tpr_edges)) * np.asarray(roc_weights)))
    return float(area / norm)


def r50(y_true: ArrayLike, score: ArrayLike, weight: ArrayLike | None = None) -> float:
    """Background rejection ``1 / eps_bkg`` at 50 % signal efficiency (weighted ROC).

    ``eps_bkg`` is interpolated linearly along the ROC curve (the same straight segments the
    AUC integrates) at the first point where the signal efficiency reaches 0.5.  Returns
    ``inf`` (with a warning) when no background passes at that efficiency.
    """
    fpr, tpr, _ = roc_curve(y_true, score, weight)
    k = int(np.argmax(tpr >= 0.5))  # tpr[-1] == 1, so a crossing exists
    if k == 0 or tpr[k] == tpr[k - 1]:
        eps_b = float(fpr[k])
    else:
        t = (0.5 - tpr[k - 1]) / (tpr[k] - tpr[k - 1])
        eps_b = float(fpr[k - 1] + t * (fpr[k] - fpr[k - 1]))
    if eps_b <= 0:
        log.warning("R50: no background at 50%% signal efficiency; rejection is infinite")
        return math.inf
    return 1.0 / eps_b


def cvm_flatness(
    score: ArrayLike, mass: ArrayLike, n_neighbours: int = 200, step: int = 50
) -> float:
    """Cramer-von Mises flatness of the LHCb "Flavours of Physics" challenge (``compute_cvm``).

    Events (normally background only) are ordered by ``mass``; windows of ``n_neighbours``
    consecutive events, starting every ``step`` events, are mass bins.  For each window the CDF
    of the scores' global ranks is compared with the global one, ``mean_k (k/N - F_w(k))^2``
    over the ``N`` ranks, and the windows' values are averaged.  Smaller is flatter.  Unweighted,
    as in the challenge; ties in score are broken by position in mass order (stable sort).

    The mean over the ``N`` ranks is evaluated in closed form per constant piece of the window
    CDF (``O(N/step * n log n)``, not ``O(N^2 / step)``).
    """
    s = np.asarray(score, dtype=np.float64)
    m = np.asarray(mass, dtype=np.float64)
    if s.ndim != 1 or s.shape != m.shape:
        raise ValueError(f"cvm_flatness: scores {s.shape} and masses {m.shape} must match (1D)")
    n_total = s.size
    if not 0 < n_neighbours <= n_total or step < 1:
        raise ValueError(f"cvm_flatness: need 0 < n_neighbours <= {n_total} and step >= 1")
    s_by_mass = s[np.argsort(m)]
    ranks = np.argsort(np.argsort(s_by_mass, kind="mergesort"), kind="mergesort")
    starts = np.arange(0, n_total - n_neighbours + 1, step)
    windows = np.sort(ranks[starts[:, None] + np.arange(n_neighbours)[None, :]], axis=1)
    n = n_neighbours
    # piece j = 0..n: ranks k in [r_j, r_{j+1} - 1] (r_0 = 0, r_{n+1} = N) have F_w = j / n;
    # with i = k + 1 the target is i / N, summed over i in [a, b] = [r_j + 1, r_{j+1}]
    lo = np.concatenate([np.zeros((len(starts), 1)), windows.astype(np.float64)], axis=1)
    hi = np.concatenate([windows.astype(np.float64), np.full((len(starts), 1), n_total)], axis=1)
    a, b = lo + 1.0, hi
    cnt = b - a + 1.0
    s1 = (b * (b + 1.0) - (a - 1.0) * a) / 2.0
    s2 = (b * (b + 1.0) * (2.0 * b + 1.0) - (a - 1.0) * a * (2.0 * a - 1.0)) / 6.0
    q = np.arange(n + 1, dtype=np.float64)[None, :] / n
    per_piece = s2 / n_total**2 - 2.0 * q * s1 / n_total + q * q * cnt
    cvms = per_piece.sum(axis=1) / n_total
    return float(np.mean(cvms))


def pearson_correlation(x: ArrayLike, y: ArrayLike, weight: ArrayLike | None = None) -> float:
    """Weighted Pearson correlation ``cov_w(x, y) / sqrt(var_w(x) var_w(y))``.

    Moments use the normalised weights ``p = w / sum w`` (the normalisation cancels in the
    ratio).  Raises :class:`~vhbb.core.errors.DataError` if a variance vanishes.
    """
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    p = _normalised_weights(weight, a.size)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"pearson_correlation: shapes {a.shape} and {b.shape}")
    da = a - np.dot(p, a)
    db = b - np.dot(p, b)
    vab, vaa, vbb = np.dot(p, da * db), np.dot(p, da * da), np.dot(p, db * db)
    if vaa <= 0 or vbb <= 0:
        raise DataError("Pearson correlation undefined: a variable has zero weighted variance")
    return float(vab / math.sqrt(vaa * vbb))


def ks_distance(a: ArrayLike, wa: ArrayLike, b: ArrayLike, wb: ArrayLike) -> float:
    """Unbinned Kolmogorov-Smirnov distance of two positively weighted samples.

    NaN when either sample is empty.
    """
    a, wa, b, wb = (np.asarray(v, dtype=np.float64) for v in (a, wa, b, wb))
    if not (len(a) and len(b)):
        return float("nan")
    grid = np.sort(np.concatenate([a, b]))

    def cdf(x: FloatArray, w: FloatArray) -> FloatArray:
        order = np.argsort(x)
        cum = np.concatenate([[0.0], np.cumsum(w[order])]) / max(w.sum(), 1e-300)
        return cum[np.searchsorted(x[order], grid, side="right")]

    return float(np.max(np.abs(cdf(a, wa) - cdf(b, wb))))


# --------------------------------------------------------------------------------------------
# distance correlation (float64 reference of vhbb.stats.disco)
# --------------------------------------------------------------------------------------------


def _normalised_weights(weight: ArrayLike | None, n: int) -> FloatArray:
    if weight is None:
        return np.full(n, 1.0 / n) if n else np.zeros(0)
    w = np.asarray(weight, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"weights have shape {w.shape}, expected ({n},)")
    total = float(w.sum())
    if not np.all(np.isfinite(w)) or total <= 0:
        raise DataError("weights must be finite with a positive sum")
    return w / total


def distance_correlation_sq(
    x: ArrayLike, y: ArrayLike, w: ArrayLike | None = None, *, block: int = 1024
) -> float:
    """Weighted squared distance correlation (V-statistic), float64.

    With ``p = w / sum w``, ``a_ij = |x_i - x_j|``, ``r_i = sum_j p_j a_ij``,
    ``abar = sum_i p_i r_i`` and ``A_ij = a_ij - r_i - r_j + abar`` (``B`` likewise from ``y``)::

        dCor^2 = sum_ij p_i p_j A_ij B_ij / sqrt(sum p_i p_j A_ij^2 * sum p_i p_j B_ij^2)

    the convention of gkasieczka/DisCo (``distance_corr``, power 1); for unit weights it equals
    ``dcor.distance_correlation_sqr``, and integer weights equal repeated events.  Computed over
    row blocks of ``block`` events (memory ``O(N * block)``, time ``O(N^2)``).  Returns 0 when a
    variable is constant (zero distance variance), as ``dcor`` does.
    """
    a = np.asarray(x, dtype=np.float64).ravel()
    b = np.asarray(y, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"distance_correlation_sq: {a.size} x values against {b.size} y values")
    n = a.size
    p = _normalised_weights(w, n)
    if n == 0:
        raise DataError("distance correlation of an empty sample")
    blocks = [slice(i, min(i + block, n)) for i in range(0, n, block)]
    r = np.empty(n)
    s = np.empty(n)
    for sl in blocks:
        r[sl] = np.abs(a[sl, None] - a[None, :]) @ p
        s[sl] = np.abs(b[sl, None] - b[None, :]) @ p
    abar = float(p @ r)
    bbar = float(p @ s)
    sab = saa = sbb = 0.0
    for sl in blocks:
        big_a = np.abs(a[sl, None] - a[None, :]) - r[sl, None] - r[None, :] + abar
        big_b = np.abs(b[sl, None] - b[None, :]) - s[sl, None] - s[None, :] + bbar
        pa = p[sl, None] * big_a * p[None, :]
        sab += float(np.sum(pa * big_b))
        saa += float(np.sum(pa * big_a))
        sbb += float(np.sum(p[sl, None] * big_b * big_b * p[None, :]))
    if saa <= 0 or sbb <= 0:
        return 0.0
    return sab / math.sqrt(saa * sbb)


__all__ = [  # the significance estimators live in vhbb.stats.significance (re-exported)
    "asimov_significance",
    "simple_significance",
]
