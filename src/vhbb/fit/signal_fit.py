"""Signal-strength fit on m_jj x score templates (rules signal_fit, workspace; the model also for
combine and diagnostics).

**Observations per mode** (the signal region is the Asimov data set at ``mu = 1`` with the
control-region scale factors of ``results/fits/scale_factors.json`` applied and every nuisance
at its nominal value, unless ``fit.signal_region_data`` resolves to ``observed``: then, with
blinding off, the signal-region data, and ``signal_strength.json`` has ``truth_pull``, the pull
of mu-hat against the toy's hidden truth):

* ``fixed``: signal region only; the scale factors are fixed at the control-region values.
* ``constrained``: signal region only; the scale factors float with a multivariate Gaussian
  constraint (centre and covariance of the control-region fit).
* ``simultaneous`` (default): signal region and the control regions (one bin each,
  ``fit.scale_factors.regions``) fitted together with free scale factors.  Control-region
  observations are the fit half of the data (``cr_split == 1``) against MC times
  ``export.cr_data_fit_fraction``, or, with ``fit.control_region_data: false`` (fully blinded),
  the Asimov yields at the control-region scale factors.

Systematics (``fit.systematics``): Barlow-Beeston-lite MC statistics (``mc_stat``), lnN
normalisation uncertainties (``lnN``), the JES shape and migration (``jes``: one parameter
``jes_<source>`` per JES source of the histograms, :mod:`vhbb.data.jes`) and the weight
systematics (``weights``: per-event weight ratios ``weight_<name>Up/Down`` of the caches,
histogrammed by :mod:`vhbb.fit.hists`); every JES source and every weight systematic is a shape
nuisance (histosys, code 4p, one parameter each, correlated across regions and processes, acting
on the normalisation, i.e. the migration between regions, and on the shape:
:func:`shape_systematics`); see
:mod:`vhbb.stats.likelihood` for the likelihood and :mod:`vhbb.fit.workspace` for the pyhf export.

A failed fit raises :class:`~vhbb.stats.minuit.FitError`: the job exits non-zero with the status
and no result file is left (outputs are written atomically, the JSON last).  The figures (scan,
pre-/post-fit yields, pulls) are drawn by the rule ``signal_fit_plots``
(:func:`vhbb.fit.figures.run_signal_fit_plots`) from the JSON and ``plot_data.json``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vhbb.core.errors import InputError, VhbbError
from vhbb.core.io import write_json
from vhbb.core.provenance import provenance
from vhbb.core.results import ScaleFactors, read_scale_factors
from vhbb.data import jes as jesmod
from vhbb.fit.templates import Binning, RegionHists, read_hists, region_jes_sources
from vhbb.stats import likelihood as lk
from vhbb.stats.shapes import shape_test, smooth_variation

log = logging.getLogger(__name__)

MODES = ("fixed", "constrained", "simultaneous")


# ---------------------------------------------------------------------------- the model
@dataclass(frozen=True)
class FitInput:
    model: lk.Model
    observed: np.ndarray
    observations: Mapping[str, str]  # channel -> what its observations are
    scale_factors: Mapping[str, float]
    sf_covariance: np.ndarray | None
    shape_treatment: Mapping[str, Any] = field(default_factory=dict)  # pruning / smoothing report


def lnn_factors(value: float | Sequence[float]) -> tuple[float, float]:
    """(lo, hi) factors of an lnN entry: ``kappa`` -> (1/kappa, kappa); ``[lo, hi]`` as given."""
    if isinstance(value, int | float):
        return 1.0 / float(value), float(value)
    lo, hi = value
    return float(lo), float(hi)


def lnn_normsys(
    lnn: Mapping[str, Mapping[str, Any]] | None, processes: Sequence[str]
) -> dict[str, dict[str, tuple[float, float]]]:
    """``normsys`` of :func:`vhbb.stats.likelihood.make_model` from ``fit.systematics.lnN``: the
    entries of ``processes`` (a term acting on none of them is left out)."""
    normsys = {}
    for name, per_proc in (lnn or {}).items():
        entries = {p: lnn_factors(v) for p, v in per_proc.items() if p in processes}
        if entries:
            normsys[name] = entries
    return normsys


def jes_parameters(
    meta: Mapping[str, Any],
    systematics: Mapping[str, Any],
    jes_sources: Sequence[str] | None = None,
) -> list[str]:
    """The JES parameters ``jes_<source>`` of the fit: every JES source of the histograms
    (``meta['jes_sources']``, else ``jes_sources``) with ``fit.systematics.jes: true``, none with
    ``false``, the listed sources with a list (one missing from the histograms raises
    :class:`~vhbb.core.errors.InputError`)."""
    setting = systematics.get("jes", True)
    if setting is False:
        return []
    in_hists = [str(s) for s in meta.get("jes_sources", jes_sources or [])]
    chosen = _chosen(
        setting, in_hists, "JES source", "jes", "check the names or rerun the hists rule"
    )
    return [jesmod.parameter(s) for s in chosen]


def _chosen(setting: Any, in_hists: Sequence[str], what: str, key: str, hint: str) -> list[str]:
    """The names a ``fit.systematics.<key>`` setting picks from those in the histograms: all
    (``True`` / ``"auto"``) or the listed ones, each required there (else
    :class:`~vhbb.core.errors.InputError` naming them and ``hint``)."""
    if setting is True or setting == "auto":
        return list(in_hists)
    missing = [str(n) for n in setting if n not in in_hists]
    if missing:
        raise InputError(
            f"{what}(s) {', '.join(missing)} (fit.systematics.{key}) are not in the histograms "
            f"(they hold {list(in_hists) or 'none'}); {hint}"
        )
    return [str(n) for n in setting]


def shape_systematics(
    meta: Mapping[str, Any],
    systematics: Mapping[str, Any],
    jes_sources: Sequence[str] | None = None,
) -> list[str]:
    """The shape nuisances of the fit, one parameter each (correlated across regions and
    processes): ``jes_<source>`` per JES source (:func:`jes_parameters`, by
    ``fit.systematics.jes``) and every weight systematic of the histograms
    (``meta['weight_systematics']``, chosen by ``fit.systematics.weights``).

    The histogram variations of shape systematic ``s`` are ``<s>Up`` / ``<s>Down``.  A listed
    weight systematic missing from the histograms (stale ``hists.h5``) raises
    :class:`~vhbb.core.errors.InputError`.
    """
    in_hists = list(meta.get("weight_systematics") or [])
    setting = systematics.get("weights", "auto")
    weights = _chosen(setting, in_hists, "weight systematic", "weights", "rerun the hists rule")
    return jes_parameters(meta, systematics, jes_sources) + weights


def _templates(
    regions: Mapping[str, RegionHists],
    binning: Binning,
    meta: Mapping[str, Any],
    scale_factors: Mapping[str, float],
    *,
    control_regions: Sequence[str],
    fixed_sf: bool,
    shapes: Sequence[str] = (),
    smoothing: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Per process the yields over the channel bins (merged signal-region bins, then one bin per
    control region, MC times the fit fraction there): ``nominal``, ``sumw2`` and, per shape
    systematic ``s`` of ``shapes``, ``<s>Up`` and ``<s>Down``; with the histograms' channel
    noise (``meta["channel_diff_sumw2"]``) also ``noise_<s>Up/Down`` (the variance of varied -
    nominal), and with ``smoothing`` enabled ``smoothed_<s>Up/Down`` (signal-region variations
    smoothed on the fine templates, :func:`vhbb.stats.shapes.smooth_variation`).  In the
    ``fixed`` mode the scale-factor processes are scaled by their control-region values."""
    sr = meta["signal_region"]
    fraction = float(meta["cr_data_fit_fraction"])
    varied = [f"{s}{side}" for s in shapes for side in ("Up", "Down")]
    noise_all = meta.get("channel_diff_sumw2") or {}
    all_crs = list(meta["control_regions"])
    noise_rows = list(range(binning.n_bins)) + [
        binning.n_bins + all_crs.index(c) for c in control_regions
    ]
    smooth = smoothing if smoothing and smoothing.get("enabled") else None
    out: dict[str, dict[str, np.ndarray]] = {}
    for p in meta["mc_processes"]:
        scale = scale_factors[p] if (fixed_sf and p in scale_factors) else 1.0
        sr_mc = regions[sr].mc[p]
        parts = {
            "nominal": [scale * binning.apply(sr_mc["nominal"][0])],
            "sumw2": [scale**2 * binning.apply(sr_mc["nominal"][1])],
            **{v: [scale * binning.apply(sr_mc[v][0])] for v in varied},
        }
        if smooth is not None:
            axis = 0 if smooth.get("axis", "m_jj") == "m_jj" else 1
            for v in varied:
                fine = smooth_variation(
                    sr_mc["nominal"][0], sr_mc[v][0], axis=axis, times=int(smooth.get("times", 1))
                )
                parts[f"smoothed_{v}"] = [scale * binning.apply(fine)]
        for cr in control_regions:
            cr_mc = regions[cr].mc[p]
            f = fraction * scale
            parts["nominal"].append(np.array([f * cr_mc["nominal"][0].sum()]))
            parts["sumw2"].append(np.array([f * f * cr_mc["nominal"][1].sum()]))
            for v in varied:
                parts[v].append(np.array([f * cr_mc[v][0].sum()]))
                if smooth is not None:
                    parts[f"smoothed_{v}"].append(parts[v][-1])
        out[p] = {k: np.concatenate(v) for k, v in parts.items()}
        if p in noise_all:
            factor = np.array(
                [scale**2] * binning.n_bins + [(fraction * scale) ** 2] * len(control_regions)
            )
            for v in varied:
                if v in noise_all[p]:
                    out[p][f"noise_{v}"] = factor * np.asarray(noise_all[p][v])[noise_rows]
    return out


def treat_shapes(
    yields: dict[str, dict[str, np.ndarray]],
    shapes: Sequence[str],
    *,
    pruning: Mapping[str, Any] | None,
    smoothing: Mapping[str, Any] | None,
) -> tuple[list[str], dict[str, Any]]:
    """Prune (and smooth) the shape variations in ``yields`` in place, per nuisance and process.

    Pruning (:func:`vhbb.stats.shapes.shape_test` against the channel noise ``noise_<v>``):
    the shape is kept when either side's p-value is at most ``pruning.p_value``; otherwise the
    variation becomes its normalisation change ``(1 + k) * nominal`` when either side's ``|k|``
    exceeds ``norm_sigma`` standard deviations of its noise, and the nominal (no effect)
    otherwise.  Kept shapes take their smoothed templates when smoothing is enabled.  Returns
    the nuisances left (those pruned for every process are removed) and the report."""
    sides = ("Up", "Down")
    prune = bool(pruning and pruning.get("enabled"))
    smoothed = bool(smoothing and smoothing.get("enabled"))
    p_max = float((pruning or {}).get("p_value", 0.05))
    k_sigma = float((pruning or {}).get("norm_sigma", 1.0))
    report: dict[str, Any] = {}
    left: list[str] = []
    for s in shapes:
        per_proc: dict[str, Any] = {}
        for p, y in yields.items():
            nom = y["nominal"]
            have_noise = all(f"noise_{s}{side}" in y for side in sides)
            tests = (
                {side: shape_test(nom, y[f"{s}{side}"], y[f"noise_{s}{side}"]) for side in sides}
                if prune and have_noise
                else {}
            )
            if not tests or any(t.p_value <= p_max for t in tests.values()):
                action = "kept"
            elif any(abs(t.norm_change) > k_sigma * t.norm_sigma for t in tests.values()):
                action = "normalisation only"
            else:
                action = "pruned"
            for side in sides:
                v = f"{s}{side}"
                if action == "kept" and smoothed:
                    y[v] = y[f"smoothed_{v}"]
                elif action == "normalisation only":
                    y[v] = (1.0 + tests[side].norm_change) * nom
                elif action == "pruned":
                    y[v] = nom.copy()
            per_proc[p] = {
                "action": action,
                "smoothed": action == "kept" and smoothed,
                **{side.lower(): t.as_dict() for side, t in tests.items()},
            }
        report[s] = per_proc
        if any(r["action"] != "pruned" for r in per_proc.values()):
            left.append(s)
    if prune and shapes and not any(f"noise_{s}Up" in y for y in yields.values() for s in shapes):
        log.warning("no channel noise in the histograms (older hists.h5): shapes not pruned")
    return left, report


def _norm_factors(
    signal: Sequence[str],
    sf_procs: Sequence[str],
    scale_factors: Mapping[str, float],
    sf_covariance: np.ndarray | None,
    *,
    mode: str,
    poi_bounds: Sequence[float],
) -> tuple[dict[str, lk.NormFactor], Any, dict[str, float] | None]:
    """``mu``, the free scale factors (not in ``fixed``) and, in ``constrained``, their Gaussian
    constraint and the MC-stat scaling of their processes."""
    lo_mu, hi_mu = poi_bounds
    norm = {lk.POI: lk.NormFactor(tuple(signal), 1.0, (float(lo_mu), float(hi_mu)))}
    if mode == "fixed":
        return norm, None, None
    for p in sf_procs:
        norm[f"sf_{p}"] = lk.NormFactor((p,), scale_factors[p], (0.0, 10.0))
    if mode != "constrained":
        return norm, None, None
    if sf_covariance is None:
        raise InputError("constrained mode needs the scale-factor covariance")
    gauss = (
        [f"sf_{p}" for p in sf_procs],
        np.array([scale_factors[p] for p in sf_procs]),
        np.asarray(sf_covariance),
    )
    return norm, gauss, {p: scale_factors[p] for p in sf_procs}


def _observations(
    model: lk.Model,
    regions: Mapping[str, RegionHists],
    sr: str,
    crs: Sequence[str],
    *,
    control_region_data: bool,
    signal_region_data: str = "asimov",
    binning: Binning | None = None,
) -> tuple[np.ndarray, dict[str, str]]:
    """Asimov at the model's initial values (mu = 1, the CR scale factors, nuisances nominal);
    the control regions' fit-half data instead when ``control_region_data`` and present; the
    signal-region data when ``signal_region_data == "observed"`` (unblinded only)."""
    observed = lk.asimov(model, model.init.copy()).copy()
    observations = {
        sr: "Asimov at mu = 1, scale factors of the control-region fit, nuisances nominal"
    }
    if signal_region_data == "observed":
        data = regions[sr].data
        if data is None or binning is None:
            raise InputError(
                f"fit.signal_region_data is 'observed' but the histograms hold no {sr} data "
                "(blinded histograms, or no data sample): rerun the hists rule unblinded"
            )
        ch = model.channel(sr)
        observed[ch.start : ch.stop] = binning.apply(data)
        observations[sr] = "data (unblinded signal region)"
    for cr in crs:
        data = regions[cr].data
        if control_region_data and data is not None:
            observed[model.channel(cr).start] = float(data.sum())
            observations[cr] = (
                "data, fit half (cr_split == 1); MC times export.cr_data_fit_fraction"
            )
        else:
            observations[cr] = "Asimov at the control-region scale factors (fully blinded)"
    return observed, observations


def build_model(
    regions: Mapping[str, RegionHists],
    binning: Binning,
    meta: Mapping[str, Any],
    scale_factors: Mapping[str, float],
    sf_covariance: np.ndarray | None,
    *,
    mode: str,
    spec: Mapping[str, Any],
) -> FitInput:
    """The likelihood model and observations of ``mode`` (see the module docstring)."""
    if mode not in MODES:
        raise VhbbError(f"unknown fit mode '{mode}' (choose {', '.join(MODES)})")
    sr = meta["signal_region"]
    procs = list(meta["mc_processes"])
    signal = list(meta["signal_processes"])
    if not signal:
        raise VhbbError("no process has role 'signal': there is no signal strength to fit")
    syst = spec["systematics"]
    sf_procs = [p for p in scale_factors if p in procs]
    crs = list(meta["control_regions"]) if mode == "simultaneous" else []
    shapes = shape_systematics(meta, syst, region_jes_sources(regions[sr]))
    normsys = lnn_normsys(syst.get("lnN"), procs)
    clash = sorted(set(shapes) & set(normsys))
    if clash:
        raise InputError(
            f"{', '.join(clash)}: both a weight shape systematic and an lnN term "
            "(fit.systematics.lnN); rename one of them"
        )
    yields = _templates(
        regions,
        binning,
        meta,
        {p: scale_factors[p] for p in sf_procs},
        control_regions=crs,
        fixed_sf=mode == "fixed",
        shapes=shapes,
        smoothing=syst.get("smoothing"),
    )
    shapes, treatment = treat_shapes(
        yields, shapes, pruning=syst.get("pruning"), smoothing=syst.get("smoothing")
    )
    norm, gauss, stat_scale = _norm_factors(
        signal, sf_procs, scale_factors, sf_covariance, mode=mode, poi_bounds=spec["poi_bounds"]
    )
    model = lk.make_model(
        {sr: binning.n_bins, **{cr: 1 for cr in crs}},
        {p: y["nominal"] for p, y in yields.items()},
        sumw2={p: y["sumw2"] for p, y in yields.items()},
        norm_factors=norm,
        histosys={s: {p: (y[f"{s}Up"], y[f"{s}Down"]) for p, y in yields.items()} for s in shapes},
        normsys=normsys,
        stat=syst["mc_stat"]["method"] if syst["mc_stat"]["enabled"] else None,
        gauss=gauss,
        stat_scale=stat_scale,
        meta={"mode": mode, "signal_region": sr, "control_regions": crs},
    )
    observed, observations = _observations(
        model,
        regions,
        sr,
        crs,
        control_region_data=spec["control_region_data"],
        signal_region_data=spec.get("signal_region_data", "asimov"),
        binning=binning,
    )
    sr_ch = model.channel(sr)
    sig_rows = [model.processes.index(p) for p in signal]
    if np.sum(model.nominal[sig_rows, sr_ch.start : sr_ch.stop]) <= 0:
        raise lk.FitError(f"no signal yield in {sr}: the signal strength cannot be fitted")
    return FitInput(model, observed, observations, dict(scale_factors), sf_covariance, treatment)


# ---------------------------------------------------------------------------- the fit
def nuisance_summary(model: lk.Model, best: lk.FitResult) -> dict[str, dict[str, Any]]:
    """Value, error, pre-fit centre and width, pull and constraint of every free nuisance."""
    nuisances: dict[str, Any] = {}
    for i, name in enumerate(model.names):
        if name == model.poi or model.fixed[i]:
            continue
        value, error = float(best.values[i]), float(best.errors[i])
        if name.startswith("sf_"):
            centre = float(model.init[i])
            prefit = None
            if model.gauss_index is not None and i in model.gauss_index:
                g = list(model.gauss_index).index(i)
                prefit = math.sqrt(float(model.gauss_cov[g, g]))  # type: ignore[index]
        elif name.startswith("gamma_"):
            b = list(model.gamma_index).index(i)  # type: ignore[arg-type]
            centre, prefit = 1.0, float(model.stat_sigma[b])  # type: ignore[index]
        else:
            centre, prefit = 0.0, 1.0
        nuisances[name] = {
            "value": value,
            "error": error,
            "prefit_centre": centre,
            "prefit_error": prefit,
            "pull": None if prefit is None else (value - centre) / prefit,
            "constraint": None if prefit is None else error / prefit,
        }
    return nuisances


def correlation_with_poi(model: lk.Model, best: lk.FitResult) -> dict[str, float]:
    cov = best.covariance
    i_mu = model.index(model.poi)
    return {
        name: float(cov[i_mu, i] / math.sqrt(cov[i_mu, i_mu] * cov[i, i]))
        for i, name in enumerate(model.names)
        if i != i_mu and not model.fixed[i] and cov[i, i] > 0
    }


def fit_signal_strength(
    inp: FitInput, *, scan_points: int = 31, label: str = "fit"
) -> dict[str, Any]:
    """ML fit + HESSE + MINOS on mu, q0 significance, pulls and a likelihood scan.

    The best fit itself is under ``"_best"`` (not written to the JSON)."""
    model, n = inp.model, inp.observed
    best = lk.fit(model, n, minos=[model.poi], label=label, tolerance=0.01)
    q0, z = lk.discovery_significance(model, n, best)
    lo, hi = best.minos[model.poi]
    mu_hat = best.value(model.poi)
    span = 2.5 * max(-lo, hi)
    points = np.linspace(mu_hat - span, mu_hat + span, scan_points)
    values = lk.scan(model, n, best, points)
    return {
        "mu": mu_hat,
        "mu_err_up": hi,
        "mu_err_down": -lo,
        "mu_hesse_err": best.error(model.poi),
        "significance": z,
        "q0": q0,
        "nll": best.nll,
        "nuisances": nuisance_summary(model, best),
        "correlation_with_mu": correlation_with_poi(model, best),
        "status": best.status.as_dict(),
        "scan": {"mu": points.tolist(), "minus_2_delta_lnl": values.tolist()},
        "_best": best,
    }


def signal_limits(inp: FitInput, label: str = "fit", cl: float = 0.95) -> dict[str, Any] | None:
    """The ``limits`` block: CLs upper limits on mu (q-tilde, asymptotic;
    :func:`vhbb.stats.limits.upper_limits`); None, with a warning, when no limit is found."""
    from vhbb.stats.limits import upper_limits

    try:
        return upper_limits(inp.model, inp.observed, cl=cl).as_dict()
    except (lk.FitError, ValueError) as exc:
        log.warning("%s: no CLs upper limit (%s)", label, exc)
        return None


def fit_plot_data(inp: FitInput, best: lk.FitResult) -> dict[str, Any]:
    """What the pre- and post-fit figures draw: expected yields per process at the initial and
    the fitted values, the MC-stat variance per bin and the observations (channel bins)."""
    model = inp.model
    yields = {
        stage: dict(zip(model.processes, lk.expected_by_process(model, x), strict=True))
        for stage, x in (("prefit", model.init), ("postfit", best.values))
    }
    return {
        "processes": list(model.processes),
        **yields,
        "mc_sumw2": model.sumw2.sum(axis=0),
        "observed": inp.observed,
        "channels": {ch.name: [ch.start, ch.stop] for ch in model.channels},
    }


# ---------------------------------------------------------------------------- rule drivers
@dataclass(frozen=True)
class FitStage:
    """What the rules of one fit mode read: the histograms and the scale-factor fit, and the
    model built from them."""

    fit: FitInput
    regions: Mapping[str, RegionHists]
    binning: Binning
    meta: Mapping[str, Any]
    scale_factors: ScaleFactors


def read_fit_stage(
    hists_path: str, sf_path: str, *, mode: str, spec: Mapping[str, Any]
) -> FitStage:
    """Read ``hists.h5`` and ``scale_factors.json`` and build the model of ``mode``."""
    regions, binning, meta = read_hists(hists_path)
    sf = read_scale_factors(sf_path)
    inp = build_model(regions, binning, meta, sf.values, sf.covariance, mode=mode, spec=spec)
    return FitStage(inp, regions, binning, meta, sf)


def run_signal_fit(
    hists_path: str,
    sf_path: str,
    *,
    mode: str,
    json_path: str,
    plot_data: str,
    spec: Mapping[str, Any],
) -> dict[str, Any]:
    """Rule driver: build, fit, write the yields the plot rule draws and the JSON (last;
    nothing is written on failure)."""
    stage = read_fit_stage(hists_path, sf_path, mode=mode, spec=spec)
    inp, meta = stage.fit, stage.meta
    label = f"{meta['model']} {mode} fit"
    result = fit_signal_strength(inp, label=label)
    best = result.pop("_best")
    log.info(
        "%s: mu = %.4f +%.4f -%.4f, Z = %.3f (%s)",
        label,
        result["mu"],
        result["mu_err_up"],
        result["mu_err_down"],
        result["significance"],
        "valid" if best.status.valid else "INVALID",
    )
    model = inp.model
    limits = signal_limits(inp, label)
    doc = {
        "model": meta["model"],
        "mode": mode,
        **{
            k: result[k]
            for k in ("mu", "mu_err_up", "mu_err_down", "mu_hesse_err", "significance", "q0")
        },
        "observations": dict(inp.observations),
        "scale_factors_input": dict(inp.scale_factors),
        "systematics": spec["systematics"],
        "n_bins": {ch.name: ch.n_bins for ch in model.channels},
        "parameters": list(model.names),
        **{k: result[k] for k in ("nuisances", "correlation_with_mu", "status", "scan", "nll")},
        "limits": limits,
        "truth_pull": truth_pull(result, spec, corrections=meta.get("reweighting") or []),
        "shape_treatment": inp.shape_treatment,
        "warnings": list(meta.get("warnings", [])),  # upstream (warn mode), from hists.h5
        "method": {
            "likelihood": "binned Poisson in m_jj x score (unrolled, merged), HistFactory "
            "modifiers (vhbb.stats.likelihood)",
            "minimiser": "iminuit MIGRAD, covariance = inverse analytic Hessian, MINOS on mu; "
            "errordef 0.5",
            "interpolation": "normsys code 4, histosys code 4p (pyhf 0.7 defaults)",
            "significance": "sqrt(q0), q0 = 2 [nll(mu=0) - nll(mu-hat)] on the observations",
        },
        "provenance": provenance(dict(spec)),
    }
    write_json(plot_data, fit_plot_data(inp, best))
    write_json(json_path, doc)
    return doc


def truth_pull(
    result: Mapping[str, Any], spec: Mapping[str, Any], corrections: Sequence[str] = ()
) -> dict[str, Any] | None:
    """``(mu-hat - mu_true) / sigma`` of an observed fit of the toy's pseudo-data (sigma: the MINOS
    error on the side of the truth); None for Asimov fits or data without a known truth.
    ``corrections``: the data-driven reweightings applied to the MC (hists metadata), recorded
    with the toy's mismodelling setting so the closure says which case it is."""
    truth = spec.get("truth")
    if spec.get("signal_region_data") != "observed" or not truth:
        return None
    mu_true = float(truth["mu"])
    err = result["mu_err_up"] if result["mu"] < mu_true else result["mu_err_down"]
    pull = (result["mu"] - mu_true) / err if err > 0 else float("nan")
    return {
        "mu_true": mu_true,
        "pull": float(pull),
        "within_3_sigma": bool(abs(pull) < 3.0),
        "mismodelling": truth.get("mismodelling"),
        "corrections": list(corrections),
    }


def provenance_path(path: str) -> str:
    """The sibling provenance file of a workspace: ``workspace.json`` ->
    ``workspace.provenance.json``."""
    path = str(path)
    stem = path[: -len(".json")] if path.endswith(".json") else path
    return f"{stem}.provenance.json"


def write_workspace(
    inp: FitInput, path: str, meta: Mapping[str, Any], spec: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The pyhf workspace of a built model (observations = the data used in the fit), valid
    against pyhf's schema, and its provenance in :func:`provenance_path` (written first)."""
    from vhbb.fit.workspace import SCHEMA, eigen_parameters, to_workspace

    ws = to_workspace(inp.model, inp.observed)
    write_json(
        provenance_path(path),
        {
            "workspace": str(path).rsplit("/", 1)[-1],
            "schema": SCHEMA,
            "model": meta["model"],
            "mode": inp.model.meta.get("mode"),
            "observations": dict(inp.observations),
            "unrolling": "signal region: merged m_jj x score bins (vhbb.fit.templates); "
            "control regions: one bin each",
            "interpolation": {"normsys": "code4", "histosys": "code4p"},
            "constrained_scale_factors": eigen_parameters(inp.model),
            "provenance": provenance(dict(spec or {})),
        },
    )
    write_json(path, ws)
    return ws


def run_workspace(
    hists_path: str, sf_path: str, *, mode: str, path: str, spec: Mapping[str, Any]
) -> dict:
    """Rule driver of the pyhf export of ``mode`` (``workspace.json`` and its provenance)."""
    stage = read_fit_stage(hists_path, sf_path, mode=mode, spec=spec)
    return write_workspace(stage.fit, path, stage.meta, spec)
