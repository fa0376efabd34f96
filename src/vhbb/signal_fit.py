"""Signal-strength fit on m_jj x score templates (rules hists, signal_fit, workspace).

**Observations per mode** (the signal region is always the Asimov data set at ``mu = 1`` with the
control-region scale factors of ``results/fits/scale_factors.json`` applied and every nuisance
at its nominal value; the signal-region data are never used):

* ``fixed``: signal region only; the scale factors are fixed at the control-region values.
* ``constrained``: signal region only; the scale factors float with a multivariate Gaussian
  constraint (centre and covariance of the control-region fit).
* ``simultaneous`` (default): signal region and the control regions (one bin each,
  ``fit.scale_factors.regions``) fitted together with free scale factors.  Control-region
  observations are the fit half of the data (``cr_split == 1``) against MC times
  ``export.cr_data_fit_fraction``, or, with ``fit.control_region_data: false`` (fully blinded),
  the Asimov yields at the control-region scale factors.

Systematics (``fit.systematics``): Barlow-Beeston-lite MC statistics (``mc_stat``), lnN
normalisation uncertainties (``lnN``), the JES shape and migration (``jes``); see
:mod:`vhbb.likelihood` for the likelihood and :mod:`vhbb.workspace` for the pyhf export.

A failed fit raises :class:`~vhbb.likelihood.FitError`: the job exits non-zero with the status and
no result file is left (outputs are written atomically, the JSON last).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import likelihood as lk
from .binning import Binning, RegionHists
from .errors import DataError, InputError, VhbbError

log = logging.getLogger(__name__)

MODES = ("fixed", "constrained", "simultaneous")


# ---------------------------------------------------------------------------- rule: hists
def read_events(
    cache_path: str, score_path: str, sample: str, is_mc: bool
) -> dict[str, np.ndarray]:
    """Cached columns joined row by row with the out-of-fold scores (keys checked)."""
    import pandas as pd

    cols = ["run", "luminosityBlock", "event", "weight", "region", "m_jj"]
    if is_mc:
        cols += ["region_jesUp", "region_jesDown", "m_jj_jesUp", "m_jj_jesDown"]
    cache = pd.read_parquet(cache_path, columns=cols)
    score_cols = ["run", "luminosityBlock", "event", "score"]
    if is_mc:
        score_cols += ["score_jesUp", "score_jesDown"]
    try:
        scores = pd.read_parquet(score_path, columns=score_cols)
    except (KeyError, ValueError) as exc:
        raise InputError(f"{score_path}: needs columns {', '.join(score_cols)} ({exc})") from None
    if len(scores) != len(cache):
        raise InputError(
            f"{score_path}: {len(scores)} rows but {cache_path} has {len(cache)}; the scores "
            "must have one row per cached event, in the same order"
        )
    for key in ("run", "luminosityBlock", "event"):
        if not np.array_equal(cache[key].to_numpy(), scores[key].to_numpy()):
            raise InputError(f"{score_path}: event keys differ from {cache_path} (column {key})")
    out = {c: cache[c].to_numpy() for c in cols}
    for c in score_cols[3:]:
        values = scores[c].to_numpy(np.float64)
        if not np.all(np.isfinite(values)):
            raise DataError(f"{score_path}: column {c} has non-finite scores ({sample})")
        out[c] = values
    out["region"] = out["region"].astype(str)
    if is_mc:
        for v in ("jesUp", "jesDown"):
            out[f"region_{v}"] = out[f"region_{v}"].astype(str)
    return out


def run_hists(
    cache_files: Mapping[str, str],
    score_files: Mapping[str, str],
    *,
    h5_path: str,
    root_path: str,
    binning_json: str,
    plots_dir: str,
    spec: Mapping[str, Any],
) -> dict[str, Any]:
    """Fill, merge and write the histograms of one model; draw the template and data/MC plots."""
    from . import binning as bn
    from . import fit_plots
    from .export import cr_fit_half
    from .io import write_json
    from .provenance import provenance

    samples, processes = spec["samples"], spec["processes"]
    settings = spec["binning"]
    sr, crs = spec["signal_region"], list(spec["control_regions"])
    blinded, window = spec["blinding"]["enabled"], tuple(spec["blinding"]["window"])
    fraction = float(spec["cr_data_fit_fraction"])
    mc_events: dict[str, dict[str, list[np.ndarray]]] = {}
    data_parts: list[dict[str, np.ndarray]] = []
    for sample, cache_path in cache_files.items():
        proc = samples[sample]["process"]
        is_mc = processes[proc]["role"] != "data"
        ev = read_events(cache_path, score_files[sample], sample, is_mc)
        if is_mc:
            bucket = mc_events.setdefault(proc, {})
            for k, v in ev.items():
                bucket.setdefault(k, []).append(v)
        else:
            half = cr_fit_half(
                sample, ev["run"], ev["luminosityBlock"], ev["event"], fraction, spec["seed"]
            )
            ev["fit_half"] = half
            data_parts.append(ev)
    mc = {p: {k: np.concatenate(v) for k, v in cols.items()} for p, cols in mc_events.items()}
    mc_procs = [p for p, v in processes.items() if v["role"] != "data"]
    for p in mc_procs:
        if p not in mc:
            raise InputError(f"no sample provides MC process '{p}'")
    signal = [p for p in mc_procs if processes[p]["role"] == "signal"]
    background = [p for p in mc_procs if p not in signal]
    data = (
        {k: np.concatenate([d[k] for d in data_parts]) for k in data_parts[0]}
        if data_parts
        else None
    )

    mjj_edges = np.asarray(settings["mjj_edges"], dtype=np.float64)
    sig_sel = [mc[p]["region"] == sr for p in signal]
    s_edges = bn.score_edges(
        np.concatenate([mc[p]["score"][s] for p, s in zip(signal, sig_sel, strict=True)]),
        np.concatenate([mc[p]["weight"][s] for p, s in zip(signal, sig_sel, strict=True)]),
        mode=settings["score"]["mode"],
        count=int(settings["score"]["count"]),
    )
    regions: dict[str, RegionHists] = {}
    sr_data = None
    if data is not None and not blinded:
        sr_data = {k: data[k] for k in ("region", "m_jj", "score")}
    regions[sr] = bn.fill_region(
        sr,
        mc,
        mjj_edges=mjj_edges,
        score_edges=s_edges,
        data_events=sr_data,
        data_label="data" if sr_data is not None else "",
    )
    for cr in crs:
        cr_data = None
        if data is not None:
            sel = data["fit_half"]
            cr_data = {k: data[k][sel] for k in ("region", "m_jj", "score")}
        regions[cr] = bn.fill_region(
            cr,
            mc,
            mjj_edges=mjj_edges,
            score_edges=s_edges,
            data_events=cr_data,
            data_label="data, fit half (cr_split == 1)",
        )
    b, b2 = regions[sr].total(background)
    merge = settings["merge"]
    binning = bn.merge_bins(
        b,
        b2,
        min_background=float(merge["min_background"]),
        min_mc_effective=float(merge["min_mc_effective"]),
    )
    prov = provenance(dict(spec))
    meta = {
        "model": spec["model"],
        "signal_region": sr,
        "control_regions": crs,
        "mc_processes": mc_procs,
        "signal_processes": signal,
        "cr_data_fit_fraction": fraction,
        "blinded": blinded,
        "score_edges_mode": settings["score"]["mode"],
        "provenance": prov,
    }
    bn.write_hists(h5_path, root_path, regions, binning, meta)
    summary = {
        **meta,
        "mjj_edges": mjj_edges.tolist(),
        "score_edges": s_edges.tolist(),
        "merging": dict(binning.summary),
        "bin_map": binning.bin_map.tolist(),
        "yields": {
            r: {p: float(rh.mc[p]["nominal"][0].sum()) for p in mc_procs}
            | ({"data": float(rh.data.sum())} if rh.data is not None else {})
            for r, rh in regions.items()
        },
    }

    # plots: templates, stacked m_jj and score per region (linear, log)
    styles = {
        p: {"label": v.get("label", p), "color": v.get("color")} for p, v in processes.items()
    }
    lumi = spec["lumi"]
    plots = Path(plots_dir)
    for p in mc_procs:
        fit_plots.hist2d(
            plots / "templates" / f"{p}.png",
            regions[sr].mc[p]["nominal"][0],
            mjj_edges,
            s_edges,
            title=f"{styles[p]['label']}, {sr}",
            lumi=lumi,
        )
    for region, rh in regions.items():
        is_sr = region == sr
        cr_scale = 1.0 if is_sr else fraction
        for axis, edges, xlabel in (
            (0, mjj_edges, axis_label_mjj()),
            (1, s_edges, "Classifier score"),
        ):
            keep = None
            data_hist = rh.data
            hidden = None
            title = region
            if is_sr and blinded and data is not None:
                sel = data["region"] == sr
                if axis == 0:
                    data_hist, _ = bn.histogram2d(
                        data["m_jj"][sel],
                        data["score"][sel],
                        np.ones(int(sel.sum())),
                        mjj_edges,
                        s_edges,
                    )
                    hidden = window
                else:  # score in the m_jj side bands only (data and MC alike)
                    side = (data["m_jj"][sel] < window[0]) | (data["m_jj"][sel] >= window[1])
                    data_hist, _ = bn.histogram2d(
                        data["m_jj"][sel][side],
                        data["score"][sel][side],
                        np.ones(int(side.sum())),
                        mjj_edges,
                        s_edges,
                    )
                    centres = 0.5 * (mjj_edges[1:] + mjj_edges[:-1])
                    keep = (centres < window[0]) | (centres >= window[1])
                    title = f"{region}, m_jj side bands"
            mask = np.ones(len(mjj_edges) - 1, dtype=bool) if keep is None else keep
            proj = {p: cr_scale * rh.mc[p]["nominal"][0][mask].sum(axis=1 - axis) for p in mc_procs}
            w2 = cr_scale**2 * sum(
                rh.mc[p]["nominal"][1][mask].sum(axis=1 - axis) for p in mc_procs
            )
            dproj = None if data_hist is None else data_hist[mask].sum(axis=1 - axis)
            name = "m_jj" if axis == 0 else "score"
            for scale in ("linear", "log"):
                fit_plots.stacked(
                    plots / region / f"{name}_{scale}.png",
                    edges,
                    proj,
                    w2,
                    dproj,
                    styles=styles,
                    xlabel=xlabel,
                    title=title,
                    log=scale == "log",
                    hidden=hidden,
                    lumi=lumi,
                    data_label="Data" if is_sr else "Data (fit half)",
                )
    write_json(binning_json, summary)
    log.info("%s: %d -> %d signal-region bins", spec["model"], b.size, binning.n_bins)
    return summary


def axis_label_mjj() -> str:
    from .plotting import axis_label

    return axis_label("m_jj")


# ---------------------------------------------------------------------------- the model
@dataclass(frozen=True)
class FitInput:
    model: lk.Model
    observed: np.ndarray
    observations: Mapping[str, str]  # channel -> what its observations are
    scale_factors: Mapping[str, float]
    sf_covariance: np.ndarray | None


def read_scale_factors(path: str | Path) -> tuple[dict[str, float], list[str], np.ndarray]:
    """Values, parameter order and covariance of the control-region fit."""
    import json

    try:
        doc = json.loads(Path(path).read_text())
        names = list(doc["parameters"])
        values = {n: float(doc["scale_factors"][n]["value"]) for n in names}
        cov = np.asarray(doc["covariance"], dtype=np.float64)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise InputError(f"{path}: not a scale-factor fit result ({exc})") from None
    return values, names, cov


def lnn_factors(value: float | Sequence[float]) -> tuple[float, float]:
    """(lo, hi) factors of an lnN entry: ``kappa`` -> (1/kappa, kappa); ``[lo, hi]`` as given."""
    if isinstance(value, int | float):
        return 1.0 / float(value), float(value)
    lo, hi = value
    return float(lo), float(hi)


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
    fraction = float(meta["cr_data_fit_fraction"])
    sf_procs = [p for p in scale_factors if p in procs]
    fixed_sf = mode == "fixed"
    crs = list(meta["control_regions"]) if mode == "simultaneous" else []

    def merged(rh: RegionHists, proc: str, var: str, idx: int) -> np.ndarray:
        return binning.apply(rh.mc[proc][var][idx])

    channels = {sr: binning.n_bins, **{cr: 1 for cr in crs}}
    nominal: dict[str, np.ndarray] = {}
    sumw2: dict[str, np.ndarray] = {}
    up: dict[str, np.ndarray] = {}
    down: dict[str, np.ndarray] = {}
    for p in procs:
        scale = scale_factors[p] if (fixed_sf and p in sf_procs) else 1.0
        parts = {k: [] for k in ("nom", "w2", "up", "down")}  # type: dict[str, list[np.ndarray]]
        rh = regions[sr]
        parts["nom"].append(scale * merged(rh, p, "nominal", 0))
        parts["w2"].append(scale**2 * merged(rh, p, "nominal", 1))
        parts["up"].append(scale * merged(rh, p, "jesUp", 0))
        parts["down"].append(scale * merged(rh, p, "jesDown", 0))
        for cr in crs:
            rc = regions[cr]
            f = fraction * scale
            parts["nom"].append(np.array([f * rc.mc[p]["nominal"][0].sum()]))
            parts["w2"].append(np.array([f * f * rc.mc[p]["nominal"][1].sum()]))
            parts["up"].append(np.array([f * rc.mc[p]["jesUp"][0].sum()]))
            parts["down"].append(np.array([f * rc.mc[p]["jesDown"][0].sum()]))
        nominal[p] = np.concatenate(parts["nom"])
        sumw2[p] = np.concatenate(parts["w2"])
        up[p] = np.concatenate(parts["up"])
        down[p] = np.concatenate(parts["down"])
    lo_mu, hi_mu = spec["poi_bounds"]
    norm = {lk.POI: lk.NormFactor(tuple(signal), 1.0, (float(lo_mu), float(hi_mu)))}
    gauss = None
    stat_scale = None
    if not fixed_sf:
        for p in sf_procs:
            norm[f"sf_{p}"] = lk.NormFactor((p,), scale_factors[p], (0.0, 10.0))
        if mode == "constrained":
            if sf_covariance is None:
                raise InputError("constrained mode needs the scale-factor covariance")
            gauss = (
                [f"sf_{p}" for p in sf_procs],
                np.array([scale_factors[p] for p in sf_procs]),
                np.asarray(sf_covariance),
            )
            stat_scale = {p: scale_factors[p] for p in sf_procs}
    normsys = {}
    for name, per_proc in (syst.get("lnN") or {}).items():
        entries = {p: lnn_factors(v) for p, v in per_proc.items() if p in procs}
        if entries:
            normsys[name] = entries
    histosys = {"jes": {p: (up[p], down[p]) for p in procs}} if syst["jes"] else None
    stat = syst["mc_stat"]["method"] if syst["mc_stat"]["enabled"] else None
    model = lk.make_model(
        channels,
        nominal,
        sumw2=sumw2,
        norm_factors=norm,
        histosys=histosys,
        normsys=normsys,
        stat=stat,
        gauss=gauss,
        stat_scale=stat_scale,
        meta={"mode": mode, "signal_region": sr, "control_regions": crs},
    )
    # observations: Asimov at mu = 1 and the control-region scale factors
    x0 = model.init.copy()
    expected = lk.asimov(model, x0)
    observed = expected.copy()
    observations = {
        sr: "Asimov at mu = 1, scale factors of the control-region fit, nuisances nominal"
    }
    for cr in crs:
        ch = model.channel(cr)
        data = regions[cr].data
        if spec["control_region_data"] and data is not None:
            observed[ch.start] = float(data.sum())
            observations[cr] = (
                "data, fit half (cr_split == 1); MC times export.cr_data_fit_fraction"
            )
        else:
            observations[cr] = "Asimov at the control-region scale factors (fully blinded)"
    sr_ch = model.channel(sr)
    if (
        np.sum(model.nominal[[model.processes.index(p) for p in signal], sr_ch.start : sr_ch.stop])
        <= 0
    ):
        raise lk.FitError(f"no signal yield in {sr}: the signal strength cannot be fitted")
    return FitInput(model, observed, observations, dict(scale_factors), sf_covariance)


# ---------------------------------------------------------------------------- the fit
def fit_signal_strength(
    inp: FitInput, *, scan_points: int = 31, label: str = "fit"
) -> dict[str, Any]:
    """ML fit + HESSE + MINOS on mu, q0 significance, pulls and a likelihood scan."""
    model, n = inp.model, inp.observed
    best = lk.fit(model, n, minos=[model.poi], label=label, tolerance=0.01)
    q0, z = lk.discovery_significance(model, n, best)
    lo, hi = best.minos[model.poi]
    mu_hat = best.value(model.poi)
    span = 2.5 * max(-lo, hi)
    points = np.linspace(mu_hat - span, mu_hat + span, scan_points)
    values = lk.scan(model, n, best, points)
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
    i_mu = model.index(model.poi)
    return {
        "mu": mu_hat,
        "mu_err_up": hi,
        "mu_err_down": -lo,
        "mu_hesse_err": best.error(model.poi),
        "significance": z,
        "q0": q0,
        "nll": best.nll,
        "nuisances": nuisances,
        "correlation_with_mu": {
            name: float(
                best.covariance[i_mu, i]
                / math.sqrt(best.covariance[i_mu, i_mu] * best.covariance[i, i])
            )
            for i, name in enumerate(model.names)
            if i != i_mu and not model.fixed[i] and best.covariance[i, i] > 0
        },
        "status": best.status(),
        "scan": {"mu": points.tolist(), "minus_2_delta_lnl": values.tolist()},
        "_best": best,
    }


def run_signal_fit(
    hists_path: str,
    sf_path: str,
    *,
    mode: str,
    json_path: str,
    plots_dir: str,
    spec: Mapping[str, Any],
    workspace_path: str | None = None,
) -> dict[str, Any]:
    """Rule driver: build, fit, plot, write the JSON (last; nothing is written on failure)."""
    from . import binning as bn
    from . import fit_plots
    from .io import write_json
    from .provenance import provenance

    regions, binning, meta = bn.read_hists(hists_path)
    sf_values, _, sf_cov = read_scale_factors(sf_path)
    inp = build_model(regions, binning, meta, sf_values, sf_cov, mode=mode, spec=spec)
    label = f"{meta['model']} {mode} fit"
    result = fit_signal_strength(inp, label=label)
    best = result.pop("_best")
    model = inp.model
    log.info(
        "%s: mu = %.4f +%.4f -%.4f, Z = %.3f (%s)",
        label,
        result["mu"],
        result["mu_err_up"],
        result["mu_err_down"],
        result["significance"],
        "valid" if best.valid else "INVALID",
    )

    styles = {
        p: {"label": v.get("label", p), "color": v.get("color")}
        for p, v in spec["processes"].items()
    }
    lumi = spec["lumi"]
    plots = Path(plots_dir)
    scan = result["scan"]
    fit_plots.likelihood_scan(
        plots / "scan.png",
        np.array(scan["mu"]),
        np.array(scan["minus_2_delta_lnl"]),
        mu_hat=result["mu"],
        interval=(-result["mu_err_down"], result["mu_err_up"]),
        title=f"{meta['model']}, {mode}; Z = {result['significance']:.2f}",
        lumi=lumi,
    )
    edges = np.arange(model.n_bins + 1, dtype=np.float64)
    for stage, x in (("prefit", model.init), ("postfit", best.values)):
        nu = lk.expected_by_process(model, x)
        fit_plots.stacked(
            plots / f"{stage}.png",
            edges,
            {p: nu[i] for i, p in enumerate(model.processes)},
            model.sumw2.sum(axis=0),
            inp.observed,
            styles=styles,
            xlabel="bin (signal region unrolled, then control regions)",
            title=f"{mode}, {stage.replace('fit', '-fit')}",
            log=True,
            data_label="Asimov (SR) / data (CR)" if mode == "simultaneous" else "Asimov",
            lumi=lumi,
        )
    pull_names = [
        k
        for k, v in result["nuisances"].items()
        if v["pull"] is not None and not k.startswith("gamma_")
    ]
    fit_plots.pulls(
        plots / "pulls.png",
        pull_names,
        np.array([result["nuisances"][k]["pull"] for k in pull_names]),
        np.array([result["nuisances"][k]["constraint"] for k in pull_names]),
        title=f"{meta['model']}, {mode}",
        lumi=lumi,
    )
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
        "method": {
            "likelihood": "binned Poisson in m_jj x score (unrolled, merged), HistFactory "
            "modifiers (vhbb.likelihood)",
            "minimiser": "iminuit MIGRAD + HESSE (analytic Hessian) + MINOS on mu; errordef 0.5",
            "significance": "sqrt(q0), q0 = 2 [nll(mu=0) - nll(mu-hat)] on the observations",
        },
        "provenance": provenance(dict(spec)),
    }
    if workspace_path is not None:
        write_workspace(inp, workspace_path, meta)
    write_json(json_path, doc)
    return doc


def write_workspace(inp: FitInput, path: str, meta: Mapping[str, Any]) -> dict[str, Any]:
    """The pyhf workspace of a built model (observations = the data used in the fit)."""
    from .io import write_json
    from .workspace import eigen_parameters, to_workspace

    ws = to_workspace(
        inp.model,
        inp.observed,
        metadata={
            "model": meta["model"],
            "mode": inp.model.meta.get("mode"),
            "observations": dict(inp.observations),
            "unrolling": "signal region: merged m_jj x score bins (vhbb.binning); "
            "control regions: one bin each",
            "constrained_scale_factors": eigen_parameters(inp.model),
        },
    )
    write_json(path, ws)
    return ws


def run_workspace(
    hists_path: str, sf_path: str, *, mode: str, path: str, spec: Mapping[str, Any]
) -> dict:
    """Rule driver of the pyhf export of ``mode``."""
    from . import binning as bn

    regions, binning, meta = bn.read_hists(hists_path)
    sf_values, _, sf_cov = read_scale_factors(sf_path)
    inp = build_model(regions, binning, meta, sf_values, sf_cov, mode=mode, spec=spec)
    return write_workspace(inp, path, meta)


# ---------------------------------------------------------------------------- fast significance
def fast_significance(
    events: Mapping[str, Mapping[str, np.ndarray]],
    *,
    signal: Sequence[str],
    settings: Mapping[str, Any],
    scale_factors: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Expected (Asimov, mu = 1) discovery significance of one classifier, for scan points.

    ``events[process]`` holds the signal-region MC arrays ``m_jj``, ``score``, ``weight``
    (sigma*L); ``settings`` is the ``fit`` config section (binning, merging, systematics: lnN and
    MC statistics are included, JES is not: it needs the varied scores); the scale factors are
    fixed (``fixed`` mode).  Never raises on bad input: a collapsed or empty model returns
    ``{"significance": None, "reason": ...}``.
    """
    from . import binning as bn

    def null(reason: str) -> dict[str, Any]:
        log.warning("fast significance: %s", reason)
        return {"significance": None, "reason": reason, "n_bins": 0}

    try:
        sf = dict(scale_factors or {})
        procs = [p for p in events if len(np.asarray(events[p]["weight"])) > 0]
        if not procs:
            return null("no signal-region MC events")
        sig = [p for p in procs if p in signal]
        bkg = [p for p in procs if p not in signal]
        for p in procs:
            if not np.all(np.isfinite(np.asarray(events[p]["score"], dtype=np.float64))):
                return null(f"non-finite scores for process '{p}'")
        if not sig or sum(float(np.sum(events[p]["weight"])) for p in sig) <= 0:
            return null("no positive signal yield in the signal region")
        if not bkg or sum(float(np.sum(events[p]["weight"])) for p in bkg) <= 0:
            return null("no positive background yield in the signal region")
        binning_cfg = settings["binning"]
        mjj_edges = np.asarray(binning_cfg["mjj_edges"], dtype=np.float64)
        s_edges = bn.score_edges(
            np.concatenate([events[p]["score"] for p in sig]),
            np.concatenate([events[p]["weight"] for p in sig]),
            mode=binning_cfg["score"]["mode"],
            count=int(binning_cfg["score"]["count"]),
        )
        hists = {
            p: bn.histogram2d(
                events[p]["m_jj"],
                events[p]["score"],
                np.asarray(events[p]["weight"]) * sf.get(p, 1.0),
                mjj_edges,
                s_edges,
            )
            for p in procs
        }
        b = sum(hists[p][0] for p in bkg)
        b2 = sum(hists[p][1] for p in bkg)
        merge = binning_cfg["merge"]
        binning = bn.merge_bins(
            b,
            b2,
            min_background=float(merge["min_background"]),
            min_mc_effective=float(merge["min_mc_effective"]),
        )
        nominal = {p: binning.apply(hists[p][0]) for p in procs}
        sumw2 = {p: binning.apply(hists[p][1]) for p in procs}
        syst = settings["systematics"]
        normsys = {}
        for name, per_proc in (syst.get("lnN") or {}).items():
            entries = {p: lnn_factors(v) for p, v in per_proc.items() if p in procs}
            if entries:
                normsys[name] = entries
        stat = "profile" if syst["mc_stat"]["enabled"] else None
        lo, hi = settings["poi_bounds"]
        model = lk.make_model(
            {"SR": binning.n_bins},
            nominal,
            sumw2=sumw2,
            norm_factors={lk.POI: lk.NormFactor(tuple(sig), 1.0, (float(lo), float(hi)))},
            normsys=normsys,
            stat=stat,
        )
        observed = lk.asimov(model)
        if not normsys and stat is None:
            s = sum(nominal[p] for p in sig)
            z = lk.closed_form_asimov_z(s, observed - s)
            method = "closed form (no nuisance parameters)"
        else:
            best = lk.fit(model, observed, hesse=False, label="fast significance")
            _, z = lk.discovery_significance(model, observed, best)
            method = "profile likelihood q0 (lnN, MC stat)"
        if not math.isfinite(z):
            return null("non-finite significance")
        return {
            "significance": float(z),
            "reason": None,
            "n_bins": binning.n_bins,
            "method": method,
        }
    except (VhbbError, ValueError, FloatingPointError, np.linalg.LinAlgError) as exc:
        return null(f"{type(exc).__name__}: {exc}")
