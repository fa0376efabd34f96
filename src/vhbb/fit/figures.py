"""Drivers of the plot rules of the fits: read what a compute rule wrote, draw with vhbb.plots.

Every figure of the fits is drawn by a rule of its own, from the JSON/HDF5 files of the rule that
computed it:

========================  =========================================================  ==============
plot rule                 reads                                                      computed by
========================  =========================================================  ==============
``scale_factors_plots``   ``results/fits/scale_factors/plot_data.json``              scale_factors
``hists_plots``           ``results/hists/<model>/hists.h5``, ``plot_data.h5``       hists
``signal_fit_plots``      ``signal_strength.json``, ``plot_data.json``               signal_fit
``diagnostics_plots``     ``diagnostics.json``, ``diagnostics_plot_data.json``       diagnostics
``binning_scan_plot``     ``results/fits/<model>/binning_scan.json``                 binning_scan
========================  =========================================================  ==============

The plot options (process labels and colours, the luminosity of the CMS label, the blinding
window of the signal-region data/MC figures) are params of the plot rules only: changing them
reruns these drivers and no fit.  JSON stores NaN as null; the drivers turn it back into NaN where
a figure draws a number.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vhbb.fit import templates as bn
from vhbb.fit.hists import read_plot_data
from vhbb.stats.results import RegionHistogram, ScaleFactorFit

Styles = Mapping[str, Mapping[str, Any]]
PROCESS_PLOT_OPTIONS = ("label", "color")
SPEC_PLOT_OPTIONS = ("lumi",)  # only the CMS label shows it (yields come normalised from the cache)
BLINDING_PLOT_OPTIONS = ("window",)  # the histograms hide no data by it, the figures do


def without_plot_options(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A compute rule's params (``vhbb.config.params``) without the plot options: process
    ``label``/``color``, ``lumi`` and ``blinding.window`` are params of the plot rules only."""
    out = {k: v for k, v in spec.items() if k not in SPEC_PLOT_OPTIONS}
    if "processes" in out:
        out["processes"] = {
            n: {k: v for k, v in p.items() if k not in PROCESS_PLOT_OPTIONS}
            for n, p in out["processes"].items()
        }
    if "blinding" in out:
        out["blinding"] = {
            k: v for k, v in out["blinding"].items() if k not in BLINDING_PLOT_OPTIONS
        }
    return out


def plot_styles(processes: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Legend label (default: the name) and colour (default: the colour cycle) per process."""
    return {n: {"label": p.get("label", n), "color": p.get("color")} for n, p in processes.items()}


def _read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def _num(value: float | None) -> float:
    """A number read from JSON: null (a NaN when written) back to NaN."""
    return float("nan") if value is None else float(value)


# ---------------------------------------------------------------------------- control-region fit
def run_scale_factor_plots(
    plot_data: str,
    *,
    yields_dir: str,
    slices_plot: str,
    features_dir: str,
    styles: Styles,
    lumi: float | None,
    workers: int = 1,
) -> None:
    """Pre- and post-fit data/MC of the fit variable and of every training feature per control
    region, and the scale factors of the m_jj slices against the inclusive fit."""
    from vhbb.plots import style

    doc = _read_json(plot_data)
    inclusive = ScaleFactorFit.from_dict(doc["inclusive"])
    variable = doc["variable"]
    jobs: list[tuple[Path, list[style.Panel], str]] = []
    for region, entry in doc["yields"].items():
        h = RegionHistogram.from_dict(entry)
        for stage, values in (("prefit", {}), ("postfit", inclusive.values)):
            title = f"{region}, {stage.replace('fit', '-fit')}"
            panels = [style.Panel(h.scaled(values), title)]
            jobs.append((Path(yields_dir) / stage / f"{region}.png", panels, variable))
        for feature, f_entry in doc["features"][region].items():
            h = RegionHistogram.from_dict(f_entry)
            panels = [
                style.Panel(h, f"{region}, pre-fit"),
                style.Panel(h.scaled(inclusive.values), f"{region}, post-fit SFs"),
            ]
            jobs.append((Path(features_dir) / region / f"{feature}.png", panels, feature))
    style.data_mc_batch(jobs, styles=styles, lumi=lumi, workers=workers)
    slices = doc["mjj_slices"]
    style.scale_factor_slices(
        slices_plot,
        np.asarray(slices["edges"], dtype=np.float64),
        [ScaleFactorFit.from_dict(fit) for fit in slices["fits"]],
        inclusive,
        styles=styles,
        lumi=lumi,
    )


# ---------------------------------------------------------------------------- 2D histograms
def hists_projections(
    regions: Mapping[str, bn.RegionHists],
    meta: Mapping[str, Any],
    sr_data: Mapping[str, np.ndarray] | None,
    window: Sequence[float],
) -> list[dict[str, Any]]:
    """The stacked m_jj and score figures of every region (arguments of
    :func:`vhbb.plots.fit.stacked` but the path, styles and scale).

    Control regions: MC times the fit fraction against the fit half of the data.  Signal region,
    blinded (``sr_data``: its data events): data inside ``window`` hidden in m_jj, the score in
    the m_jj side bands only (data and MC alike)."""
    from vhbb.plots.style import axis_label

    sr = meta["signal_region"]
    procs = list(meta["mc_processes"])
    out = []
    for region, rh in regions.items():
        is_sr = region == sr
        cr_scale = 1.0 if is_sr else float(meta["cr_data_fit_fraction"])
        mjj_edges, s_edges = rh.mjj_edges, rh.score_edges
        for axis, edges, xlabel in (
            (0, mjj_edges, axis_label("m_jj")),
            (1, s_edges, "Classifier score"),
        ):
            keep, data_hist, hidden, title = None, rh.data, None, region
            if is_sr and meta["blinded"] and sr_data is not None:
                m_jj, score = sr_data["m_jj"], sr_data["score"]
                if axis == 0:
                    data_hist, _ = bn.histogram2d(
                        m_jj, score, np.ones(len(m_jj)), mjj_edges, s_edges
                    )
                    hidden = (float(window[0]), float(window[1]))
                else:
                    side = (m_jj < window[0]) | (m_jj >= window[1])
                    data_hist, _ = bn.histogram2d(
                        m_jj[side], score[side], np.ones(int(side.sum())), mjj_edges, s_edges
                    )
                    centres = 0.5 * (mjj_edges[1:] + mjj_edges[:-1])
                    keep = (centres < window[0]) | (centres >= window[1])
                    title = f"{region}, m_jj side bands"
            mask = np.ones(len(mjj_edges) - 1, dtype=bool) if keep is None else keep
            out.append(
                {
                    "name": f"{region}/{'m_jj' if axis == 0 else 'score'}",
                    "edges": edges,
                    "mc": {
                        p: cr_scale * rh.mc[p]["nominal"][0][mask].sum(axis=1 - axis) for p in procs
                    },
                    "mc_sumw2": cr_scale**2
                    * sum(rh.mc[p]["nominal"][1][mask].sum(axis=1 - axis) for p in procs),
                    "data": None if data_hist is None else data_hist[mask].sum(axis=1 - axis),
                    "xlabel": xlabel,
                    "title": title,
                    "hidden": hidden,
                    "data_label": "Data" if is_sr else "Data (fit half)",
                }
            )
    return out


def run_hists_plots(
    hists_path: str,
    plot_data: str,
    *,
    plots_dir: str,
    styles: Styles,
    lumi: float | None,
    window: Sequence[float],
) -> None:
    """Signal-region templates per process and the stacked m_jj and score distributions of every
    region (linear and log)."""
    from vhbb.plots import fit as fit_plots

    regions, _, meta = bn.read_hists(hists_path)
    sr = meta["signal_region"]
    plots = Path(plots_dir)
    for p in meta["mc_processes"]:
        fit_plots.hist2d(
            plots / "templates" / f"{p}.png",
            regions[sr].mc[p]["nominal"][0],
            regions[sr].mjj_edges,
            regions[sr].score_edges,
            title=f"{styles[p]['label']}, {sr}",
            lumi=lumi,
        )
    for fig in hists_projections(regions, meta, read_plot_data(plot_data), window):
        name = fig.pop("name")
        for scale in ("linear", "log"):
            fit_plots.stacked(
                plots / f"{name}_{scale}.png",
                styles=styles,
                log=scale == "log",
                lumi=lumi,
                **fig,
            )


# ---------------------------------------------------------------------------- signal-strength fit
def run_signal_fit_plots(
    json_path: str, plot_data: str, *, plots_dir: str, styles: Styles, lumi: float | None
) -> None:
    """Likelihood scan, pre- and post-fit yields of the channel bins and the nuisance pulls."""
    from vhbb.plots import fit as fit_plots

    doc, yields = _read_json(json_path), _read_json(plot_data)
    model, mode = doc["model"], doc["mode"]
    plots = Path(plots_dir)
    scan = doc["scan"]
    fit_plots.likelihood_scan(
        plots / "scan.png",
        np.asarray(scan["mu"], dtype=np.float64),
        np.asarray([_num(v) for v in scan["minus_2_delta_lnl"]], dtype=np.float64),
        mu_hat=doc["mu"],
        interval=(-doc["mu_err_down"], doc["mu_err_up"]),
        title=f"{model}, {mode}; Z = {_num(doc['significance']):.2f}",
        lumi=lumi,
    )
    observed = np.asarray(yields["observed"], dtype=np.float64)
    edges = np.arange(len(observed) + 1, dtype=np.float64)
    for stage in ("prefit", "postfit"):
        fit_plots.stacked(
            plots / f"{stage}.png",
            edges,
            {p: np.asarray(yields[stage][p], dtype=np.float64) for p in yields["processes"]},
            np.asarray(yields["mc_sumw2"], dtype=np.float64),
            observed,
            styles=styles,
            xlabel="bin (signal region unrolled, then control regions)",
            title=f"{mode}, {stage.replace('fit', '-fit')}",
            log=True,
            data_label="Asimov (SR) / data (CR)" if mode == "simultaneous" else "Asimov",
            lumi=lumi,
        )
    nuisances = doc["nuisances"]
    names = [
        k for k, v in nuisances.items() if v["pull"] is not None and not k.startswith("gamma_")
    ]
    fit_plots.pulls(
        plots / "pulls.png",
        names,
        np.array([nuisances[k]["pull"] for k in names]),
        np.array([nuisances[k]["constraint"] for k in names]),
        title=f"{model}, {mode}",
        lumi=lumi,
    )


# ---------------------------------------------------------------------------- diagnostics
def run_diagnostics_plots(
    json_path: str, plot_data: str, *, plots_dir: str, lumi: float | None
) -> None:
    """Impacts, correlations, goodness of fit, injection and closure pulls of one fit."""
    from vhbb.plots import diagnostics as dp

    doc = _read_json(json_path)
    pulls = _read_json(plot_data)["closure_pulls"]
    plots = Path(plots_dir)
    title = f"{doc['model']}, {doc['mode']}"
    imp = doc["impacts"]
    for entry in imp["nuisances"].values():
        for key in ("postfit", "prefit"):
            if entry.get(key) is not None:
                entry[key] = [_num(v) for v in entry[key]]
    gof = {**doc["goodness_of_fit"], "p_value": _num(doc["goodness_of_fit"]["p_value"])}
    dp.impacts(plots / "impacts.png", imp, title=title, lumi=lumi)
    dp.correlation(plots / "correlation.png", doc["correlation"], title=title, lumi=lumi)
    dp.goodness_of_fit(plots / "gof.png", gof, title=title, lumi=lumi)
    dp.injection(plots / "injection.png", doc["injection"], title=title, lumi=lumi)
    dp.pulls_histograms(plots / "closure_pulls.png", pulls, title=title, lumi=lumi)


def run_binning_scan_plot(json_path: str, *, plot_path: str, lumi: float | None) -> None:
    """sigma_mu and the significance versus the number of bins (with and without MC stat)."""
    from vhbb.plots import diagnostics as dp

    doc = _read_json(json_path)
    dp.binning_scan(Path(plot_path), doc, title=doc["model"], lumi=lumi)
