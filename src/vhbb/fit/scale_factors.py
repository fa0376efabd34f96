"""Model-independent control-region scale-factor fit (rule ``scale_factors``).

The likelihood is a product of Poisson terms, one per bin of every fitted control region
(one bin per region by default, or bins of ``fit.scale_factors.variable``)::

    nu_b(s) = sum_{p free} s_p * m_pb + sum_{p fixed} m_pb,     NLL(s) = sum_b [nu_b - n_b ln nu_b]

where the free processes are those with ``samples.processes.<p>.scale_factor: true`` (TT, Zhf,
Zlf) and every other MC process (signal included) is fixed to its sigma*L prediction.  It is
minimised with iminuit (MIGRAD, then HESSE and optionally MINOS, ``errordef = 0.5``); the fit is
accepted only with a valid minimum, an accurate positive-definite covariance, no parameter at its
limit and valid MINOS errors.  Otherwise :class:`FitError` names the status.

**Data.** Only control-region data reserved for fits enter: data events with ``cr_split == 1``
in the export.  The other part (``cr_split == 0``) trains the domain adaptation and is never
read here.  The split is a per-event hash, independent of the process, so the fit half is a
Poisson sample with mean ``f * nu`` where ``f = export.cr_data_fit_fraction``.  We therefore
compare the data of the fit half with **MC yields multiplied by f** (data are never reweighted,
so the Poisson statistics of the observed counts stay exact).  The JSON records ``f`` and quotes
yields in the same convention (fit-half data, MC times f).

**Bad input.** Negative MC yields of a process in a bin (negative weights, low statistics) are set
to zero with a warning.  A free process with no yield in any fitted bin, degenerate free processes
(proportional yields across all bins) and a bin with data but no prediction raise
:class:`FitError` naming the process or region before any minimisation.  A region with no data is
kept (n = 0 is information) with a warning; if it leaves a scale factor at its lower limit 0, the
fit fails naming that process and region.

The functions here are pure (arrays in, frozen results out) except :func:`read_exports` and
:func:`run_scale_factors`, the rule's driver, which reads the export files and writes the JSON and
the histograms of the figures (``plot_data``: pre-fit yields in the fit variable and in every
training feature, the inclusive and m_jj-slice fits).  The figures are drawn by the rule
``scale_factors_plots`` (:func:`vhbb.fit.figures.run_scale_factor_plots`), so a process colour or
label never reruns the fit.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vhbb.core.errors import DataError
from vhbb.core.io import write_json
from vhbb.core.provenance import provenance
from vhbb.stats import minuit as mn
from vhbb.stats.minuit import FitError, FitStatus
from vhbb.stats.results import RegionHistogram, ScaleFactorFit

log = logging.getLogger(__name__)

DATA_FIT_SPLIT = 1  # export cr_split value of the data reserved for fits
TINY = 1e-300  # floor of the expected yield inside the logarithm


# ---------------------------------------------------------------------------- histograms
def histogram_region(
    region: str,
    events: Mapping[str, np.ndarray],
    process_names: Sequence[str],
    mc_processes: Sequence[str],
    *,
    mc_scale: float,
    x: np.ndarray | None = None,
    edges: Sequence[float] | None = None,
    variable: str | None = None,
    select: np.ndarray | None = None,
) -> RegionHistogram:
    """Yields of one region from export arrays (``weight``, ``process``, ``domain``, ``cr_split``).

    Data: events with ``domain == 1`` and ``cr_split == 1`` only.  MC: ``domain == 0``, weights
    times ``mc_scale`` (the fit fraction of the data).  With ``x``/``edges`` the yields are binned
    (events outside the edges are dropped); otherwise one bin.  ``select`` restricts the events
    (used for the m_jj slices).
    """
    n = len(events["weight"])
    keep = np.ones(n, dtype=bool) if select is None else np.asarray(select, dtype=bool)
    if x is not None:
        if edges is None:
            raise ValueError("binned histogram needs edges")
        edge_arr = np.asarray(edges, dtype=np.float64)
        inside = (x >= edge_arr[0]) & (x < edge_arr[-1])
        n_out = int((keep & ~inside).sum())
        if n_out:
            log.info("%s: %d events outside %s edges are not fitted", region, n_out, variable)
        keep = keep & inside
        idx = np.clip(np.searchsorted(edge_arr, x, side="right") - 1, 0, len(edge_arr) - 2)
        n_bins = len(edge_arr) - 1
    else:
        edge_arr = None
        idx = np.zeros(n, dtype=np.int64)
        n_bins = 1
    domain = np.asarray(events["domain"])
    is_data = (domain == 1) & (np.asarray(events["cr_split"]) == DATA_FIT_SPLIT) & keep
    data = np.bincount(idx[is_data], minlength=n_bins).astype(np.float64)
    weight = np.asarray(events["weight"], dtype=np.float64)
    process = np.asarray(events["process"])
    mc: dict[str, np.ndarray] = {}
    sumw2: dict[str, np.ndarray] = {}
    for proc in mc_processes:
        sel = (domain == 0) & (process == process_names.index(proc)) & keep
        w = weight[sel] * mc_scale
        mc[proc] = np.bincount(idx[sel], weights=w, minlength=n_bins)
        sumw2[proc] = np.bincount(idx[sel], weights=w**2, minlength=n_bins)
    return RegionHistogram(region, edge_arr, data, mc, sumw2, variable)


def _clip_negative(hists: Sequence[RegionHistogram]) -> list[RegionHistogram]:
    out = []
    for h in hists:
        mc = {}
        for proc, y in h.mc.items():
            neg = y < 0
            if neg.any():
                for i in np.flatnonzero(neg):
                    log.warning(
                        "%s: negative yield %.4g of '%s' set to 0", h.bin_label(i), y[i], proc
                    )
                y = np.where(neg, 0.0, y)
            mc[proc] = y
        out.append(RegionHistogram(h.region, h.edges, h.data, mc, h.mc_sumw2, h.variable))
    return out


@dataclass(frozen=True)
class _Model:
    n: np.ndarray  # (B,) observed
    free: np.ndarray  # (B, K) yields of the free processes
    fixed: np.ndarray  # (B,) summed yields of the fixed processes
    var: np.ndarray  # (B, P) MC stat variances, every process
    processes: tuple[str, ...]  # the P processes of var
    labels: tuple[str, ...]  # bin labels
    regions: tuple[str, ...]  # region of each bin
    free_names: tuple[str, ...]


def _build_model(hists: Sequence[RegionHistogram], free: Sequence[str]) -> _Model:
    if not hists:
        raise FitError("no control region to fit (fit.scale_factors.regions is empty)")
    processes = tuple(hists[0].mc)
    for name in free:
        if name not in processes:
            raise FitError(f"free process '{name}' has no MC in the export")
    n = np.concatenate([h.data for h in hists])
    m_free = np.stack([np.concatenate([h.mc[p] for h in hists]) for p in free], axis=1)
    fixed_names = [p for p in processes if p not in free]
    fixed = np.zeros(len(n))
    for p in fixed_names:
        fixed = fixed + np.concatenate([h.mc[p] for h in hists])
    var = np.stack([np.concatenate([h.mc_sumw2[p] for h in hists]) for p in processes], axis=1)
    labels = tuple(h.bin_label(i) for h in hists for i in range(h.n_bins))
    regions = tuple(h.region for h in hists for _ in range(h.n_bins))
    return _Model(n, m_free, fixed, var, processes, labels, regions, tuple(free))


def check_identifiable(hists: Sequence[RegionHistogram], free: Sequence[str]) -> None:
    """Raise :class:`FitError` (naming region/process) when the scale factors are undetermined."""
    _check_identifiable(_clip_negative(hists), free)


def _check_identifiable(hists: Sequence[RegionHistogram], free: Sequence[str]) -> None:
    model = _build_model(hists, free)
    total = model.free.sum(axis=1) + model.fixed
    for b in np.flatnonzero((model.n > 0) & (total <= 0)):
        raise FitError(
            f"{model.labels[b]} has {model.n[b]:g} data events but no MC prediction; merge bins "
            "(fit.scale_factors.bins) or check the region selection"
        )
    for k, name in enumerate(free):
        if model.free[:, k].sum() <= 0:
            raise FitError(
                f"process '{name}' has no MC yield in any fitted control region "
                f"({', '.join(h.region for h in hists)}): its scale factor cannot be determined; "
                f"add a region where it contributes or set samples.processes.{name}."
                "scale_factor: false"
            )
    if len(free) > len(model.n):
        raise FitError(
            f"{len(free)} free scale factors ({', '.join(free)}) but only {len(model.n)} bin(s) "
            "in the fitted control regions"
        )
    # scale-invariant rank test on the column-normalised yield matrix
    cols = model.free / np.linalg.norm(model.free, axis=0)
    _, sing, vt = np.linalg.svd(cols, full_matrices=False)
    if sing[-1] < 1e-8 * sing[0]:
        null = vt[-1]
        involved = [free[k] for k in np.flatnonzero(np.abs(null) > 1e-6)]
        raise FitError(
            "scale factors of "
            + ", ".join(f"'{p}'" for p in involved)
            + " are degenerate (their yields are proportional in every fitted bin of "
            + ", ".join(h.region for h in hists)
            + "); add a region or bins that separate them"
        )
    for h in hists:
        if h.data.sum() == 0:
            log.warning(
                "region '%s' has no data in the fit half (cr_split == 1): it pulls the scale "
                "factors of its processes towards 0",
                h.region,
            )


# ---------------------------------------------------------------------------- the fit
def _minimise(model: _Model, label: str) -> Any:
    """MIGRAD (checked) then HESSE of the Poisson NLL of ``model``; the Minuit object."""
    n, m_free, fixed = model.n, model.free, model.fixed
    positive = n > 0
    # saturated-model constant: nll = sum [nu - n + n ln(n / nu)], 0 for a perfect fit
    const = float(np.sum(n[positive] * np.log(n[positive]) - n[positive]))

    def nll(s: np.ndarray) -> float:
        nu = np.maximum(m_free @ s + fixed, TINY)
        return float(np.sum(nu - n * np.log(nu)) + const)

    def grad(s: np.ndarray) -> np.ndarray:
        nu = np.maximum(m_free @ s + fixed, TINY)
        return m_free.T @ (1.0 - n / nu)

    k = len(model.free_names)
    minuit = mn.make_minuit(
        nll,
        np.ones(k),
        names=model.free_names,
        grad=grad,
        errors=[0.05] * k,
        limits=[(0.0, None)] * k,
        tolerance=1e-4,  # EDM goal ~2e-7: values converge far below their errors
    )
    mn.migrad(minuit, label)
    minuit.hesse()
    return minuit


def _check_not_at_limit(minuit: Any, model: _Model, label: str) -> None:
    """Raise :class:`FitError` for a scale factor at its lower limit 0 (naming empty regions)."""
    free = list(model.free_names)
    at_limit = [p for p in free if minuit.values[p] <= 1e-6 * max(1.0, minuit.errors[p])]
    if not (at_limit or minuit.fmin.has_parameters_at_limit):
        return
    names = at_limit or free
    regions = sorted(
        {
            model.regions[b]
            for b in range(len(model.n))
            for k, p in enumerate(free)
            if p in names and model.free[b, k] > 0 and model.n[b] == 0
        }
    )
    where = f" (no data where it contributes: {', '.join(regions)})" if regions else ""
    raise FitError(
        f"{label}: scale factor(s) {', '.join(names)} at the lower limit 0{where}; "
        f"the fit is not usable ({mn.status_text(minuit.fmin)})"
    )


def fit_scale_factors(
    hists: Sequence[RegionHistogram],
    free: Sequence[str],
    *,
    minos: bool = True,
    label: str = "inclusive",
) -> ScaleFactorFit:
    """Fit the free scale factors; raise :class:`FitError` unless the fit is fully valid."""
    free = list(free)
    if not free:
        raise FitError("no process has samples.processes.<p>.scale_factor: true; nothing to fit")
    hists = _clip_negative(hists)
    _check_identifiable(hists, free)
    model = _build_model(hists, free)
    what = f"{label} fit"
    minuit = _minimise(model, what)
    _check_not_at_limit(minuit, model, what)
    mn.check_hesse(minuit.fmin, what)
    minos_errors, minos_valid = mn.minos(minuit, free, what) if minos else (None, None)
    cov = mn.covariance(minuit)
    assert cov is not None
    err = np.sqrt(np.diag(cov))
    corr = cov / np.outer(err, err)
    np.fill_diagonal(corr, 1.0)
    values = {p: float(minuit.values[p]) for p in free}
    mc_cov = mc_stat_covariance(model, np.array([values[p] for p in free]))
    result = ScaleFactorFit(
        names=tuple(free),
        values=values,
        hesse_errors={p: float(minuit.errors[p]) for p in free},
        minos_errors=minos_errors,
        mc_stat_errors={p: float(np.sqrt(mc_cov[k, k])) for k, p in enumerate(free)},
        covariance=cov,
        correlation=corr,
        status=FitStatus.from_fmin(minuit.fmin, minos_valid),
        nll=float(minuit.fmin.fval),
        label=label,
        fixed=tuple(p for p in model.processes if p not in free),
    )
    log.info(
        "%s: %s (edm %.2g, %d calls)",
        what,
        ", ".join(f"{p} = {values[p]:.4f} +- {result.hesse_errors[p]:.4f}" for p in free),
        result.status.edm,
        result.status.nfcn,
    )
    return result


def mc_stat_covariance(model: _Model, s: np.ndarray) -> np.ndarray:
    """Covariance of the fitted scale factors due to the finite MC statistics (linearised).

    At the minimum ``g(s, m) = dNLL/ds = 0``; the implicit-function theorem gives
    ``ds/dm = -H^-1 dg/dm`` for every MC yield ``m`` (free or fixed process, every bin), whose
    variance is its sum of squared weights.
    """
    n, m_free, fixed = model.n, model.free, model.fixed
    nu = np.maximum(m_free @ s + fixed, TINY)
    a = n / nu**2
    h_inv = np.linalg.inv((m_free * a[:, None]).T @ m_free)
    base = m_free * a[:, None]  # dg/dm for a fixed process's yield in bin b: base[b]
    cov = np.zeros((len(s), len(s)))
    for j, proc in enumerate(model.processes):
        var = model.var[:, j]
        k = model.free_names.index(proc) if proc in model.free_names else None
        for b in np.flatnonzero(var > 0):
            dg = base[b].copy()
            if k is not None:  # a free process's yield enters as s_k * m
                dg *= s[k]
                dg[k] += 1.0 - n[b] / nu[b]
            ds = -h_inv @ dg
            cov += np.outer(ds, ds) * var[b]
    return cov


# ---------------------------------------------------------------------------- derived yields
def yields_summary(hist: RegionHistogram, values: Mapping[str, float]) -> dict[str, Any]:
    """Observed and pre/post-fit expected yields of one region (per bin), for the JSON."""
    post = hist.scaled(values)
    return {
        "variable": hist.variable,
        "edges": None if hist.edges is None else hist.edges.tolist(),
        "data": hist.data.tolist(),
        "prefit": {p: y.tolist() for p, y in hist.mc.items()},
        "postfit": {p: y.tolist() for p, y in post.mc.items()},
        "prefit_total": np.sum(list(hist.mc.values()), axis=0).tolist(),
        "postfit_total": np.sum(list(post.mc.values()), axis=0).tolist(),
        "prefit_mc_stat_error": np.sqrt(np.sum(list(hist.mc_sumw2.values()), axis=0)).tolist(),
    }


def feature_edges(values: np.ndarray, n_bins: int = 25) -> np.ndarray:
    """Plot binning of a feature: unit bins for small integer ranges, else 0.5-99.5 % quantiles."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return np.linspace(0.0, 1.0, n_bins + 1)
    if np.all(v == np.round(v)) and v.max() - v.min() <= 30:
        return np.arange(v.min() - 0.5, v.max() + 1.5)
    lo, hi = np.quantile(v, [0.005, 0.995])
    if hi <= lo:
        hi = lo + 1.0
    return np.linspace(lo, hi, n_bins + 1)


def clip_to_edges(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Put under- and overflow into the first and last bins."""
    return np.clip(x, edges[0], np.nextafter(edges[-1], -np.inf))


# ---------------------------------------------------------------------------- reading the exports
EVENT_DATASETS = ("weight", "process", "domain", "cr_split", "m_jj")


def read_region(path: str, extra: Sequence[str] = ()) -> tuple[dict[str, np.ndarray], dict]:
    """The datasets the fit reads from one export file; data with ``cr_split != 1`` dropped."""
    import json

    import h5py

    with h5py.File(path, "r") as fin:
        names = [*EVENT_DATASETS, "features/nominal"]
        names += [k for k in extra if k not in names and isinstance(fin.get(k), h5py.Dataset)]
        arrays = {k: fin[k][()] for k in names}
        attrs = {
            "feature_names": [str(v) for v in fin.attrs["feature_names"]],
            "process_names": [str(v) for v in fin.attrs["process_names"]],
            "config": json.loads(fin.attrs["config"]),
        }
    keep = (arrays["domain"] == 0) | (arrays["cr_split"] == DATA_FIT_SPLIT)
    return {k: v[keep] for k, v in arrays.items()}, attrs


def column(arrays: Mapping[str, np.ndarray], feature_names: Sequence[str], name: str) -> np.ndarray:
    """A per-event column: a top-level export dataset or a training feature."""
    if name in arrays and np.ndim(arrays[name]) == 1:
        return np.asarray(arrays[name], dtype=np.float64)
    if name in feature_names:
        return arrays["features/nominal"][:, list(feature_names).index(name)].astype(np.float64)
    raise DataError(
        f"fit.scale_factors.variable: unknown column '{name}'; use m_jj, pt_jj or a training "
        f"feature ({', '.join(feature_names)})"
    )


@dataclass(frozen=True)
class Exports:
    """The control-region exports of one fit: per region the arrays and attributes read by
    :func:`read_region`, the MC processes and the fit fraction ``f`` of the data."""

    paths: Mapping[str, str]
    regions: Mapping[str, tuple[dict[str, np.ndarray], dict]]
    mc_processes: Sequence[str]
    fraction: float

    def column(self, region: str, name: str) -> np.ndarray:
        arrays, attrs = self.regions[region]
        return column(arrays, attrs["feature_names"], name)

    def features(self, region: str) -> list[str]:
        return list(self.regions[region][1]["feature_names"])

    def hist(self, region: str, **kw: Any) -> RegionHistogram:
        """:func:`histogram_region` of ``region`` (MC times ``f``); keywords passed on."""
        arrays, attrs = self.regions[region]
        missing = [p for p in self.mc_processes if p not in attrs["process_names"]]
        if missing:
            raise DataError(f"{self.paths[region]}: processes {missing} missing from the export")
        return histogram_region(
            region,
            arrays,
            attrs["process_names"],
            self.mc_processes,
            mc_scale=self.fraction,
            **kw,
        )


def read_exports(
    inputs: Mapping[str, str],
    regions: Sequence[str],
    mc_processes: Sequence[str],
    extra: Sequence[str] = (),
) -> Exports:
    """Read the exports of ``regions``; they must agree on a positive data fit fraction."""
    arrays = {region: read_region(inputs[region], extra) for region in regions}
    fractions = {float(a["config"]["export"]["cr_data_fit_fraction"]) for _, a in arrays.values()}
    if len(fractions) != 1:
        raise DataError(f"export files disagree on cr_data_fit_fraction: {sorted(fractions)}")
    fraction = fractions.pop()
    if fraction <= 0:
        raise DataError(
            "export.cr_data_fit_fraction is 0: no control-region data is reserved for fits"
        )
    return Exports(dict(inputs), arrays, list(mc_processes), fraction)


# ---------------------------------------------------------------------------- the stage
def fit_histograms(
    exports: Exports, regions: Sequence[str], variable: str | None, edges: np.ndarray
) -> list[RegionHistogram]:
    """The histograms fitted: one bin per region, or ``variable`` binned by ``edges``."""
    if variable is None:
        return [exports.hist(region) for region in regions]
    return [
        exports.hist(region, x=exports.column(region, variable), edges=edges, variable=variable)
        for region in regions
    ]


def fit_slices(
    exports: Exports,
    regions: Sequence[str],
    slice_edges: np.ndarray,
    free: Sequence[str],
    *,
    minos: bool,
) -> list[ScaleFactorFit]:
    """The one-bin-per-region fit repeated in each m_jj slice ``[lo, hi)``."""
    fits = []
    for lo, hi in itertools.pairwise(slice_edges):
        hists = []
        for region in regions:
            m_jj = exports.regions[region][0]["m_jj"]
            hists.append(exports.hist(region, select=(m_jj >= lo) & (m_jj < hi)))
        label = f"m_jj slice [{lo:g}, {hi:g}) GeV"
        fits.append(fit_scale_factors(hists, free, minos=minos, label=label))
    return fits


def slices_summary(slice_edges: np.ndarray, fits: Sequence[ScaleFactorFit]) -> dict[str, Any]:
    return {
        "edges": slice_edges.tolist(),
        "fits": [
            {"range": [float(lo), float(hi)], **fit.as_dict()}
            for (lo, hi), fit in zip(itertools.pairwise(slice_edges), fits, strict=True)
        ],
    }


def plot_histograms(
    exports: Exports, regions: Sequence[str], variable: str, edges: np.ndarray
) -> dict[str, Any]:
    """Pre-fit histograms the plot rule draws: ``variable`` binned by ``edges`` (flow clipped
    in) and every training feature (:func:`feature_edges`) per region."""
    yields, features = {}, {}
    for region in regions:
        x = clip_to_edges(exports.column(region, variable), edges)
        yields[region] = exports.hist(region, x=x, edges=edges, variable=variable).as_dict()
        features[region] = {}
        for feature in exports.features(region):
            values = exports.column(region, feature)
            f_edges = feature_edges(values)
            h = exports.hist(
                region, x=clip_to_edges(values, f_edges), edges=f_edges, variable=feature
            )
            features[region][feature] = h.as_dict()
    return {"variable": variable, "yields": yields, "features": features}


def method_summary(settings: Mapping[str, Any], fraction: float, edges: np.ndarray) -> dict:
    variable = settings["variable"]
    return {
        "likelihood": "Poisson, one term per bin of every control region; free scale "
        "factors for processes with scale_factor: true, other MC fixed",
        "minimiser": "iminuit MIGRAD + HESSE" + (" + MINOS" if settings["minos"] else ""),
        "errordef": 0.5,
        "data": "control-region data with cr_split == 1 (reserved for fits)",
        "mc_scale": fraction,
        "mc_scale_meaning": "MC yields are multiplied by export.cr_data_fit_fraction to "
        "compare with the fit half of the data; all yields below use that convention",
        "negative_yields": "negative per-process bin yields are set to 0",
        "regions": list(settings["regions"]),
        "variable": variable,
        "bins": edges.tolist() if variable else None,
    }


def run_scale_factors(
    inputs: Mapping[str, str],
    *,
    json_path: str,
    plot_data: str,
    spec: Mapping[str, Any],
) -> dict[str, Any]:
    """Rule driver: read the control-region exports, fit (inclusive and in m_jj slices), write
    the JSON and the histograms the plot rule ``scale_factors_plots`` draws."""
    settings, processes = spec["settings"], spec["processes"]
    regions = list(settings["regions"])
    mc_processes = [p for p, v in processes.items() if v["role"] != "data"]
    free = [p for p in mc_processes if processes[p]["scale_factor"]]
    variable = settings["variable"]
    edges = np.asarray(settings["bins"], dtype=np.float64)
    exports = read_exports(inputs, regions, mc_processes, [variable] if variable else [])
    hists = fit_histograms(exports, regions, variable, edges)
    result = fit_scale_factors(hists, free, minos=settings["minos"], label="inclusive")
    slice_edges = np.asarray(settings["mjj_slices"], dtype=np.float64)
    slices = slices_summary(
        slice_edges, fit_slices(exports, regions, slice_edges, free, minos=settings["minos"])
    )
    figures = plot_histograms(exports, regions, variable or "m_jj", edges)
    summary: dict[str, Any] = {
        "method": method_summary(settings, exports.fraction, edges),
        **result.as_dict(),
        "yields": {h.region: yields_summary(h, result.values) for h in hists},
        "mjj_slices": slices,
        "provenance": provenance(dict(spec)),
    }
    write_json(plot_data, {**figures, "inclusive": result.as_dict(), "mjj_slices": slices})
    write_json(json_path, summary)
    log.info("scale factors -> %s", json_path)
    return summary
