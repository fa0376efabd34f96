"""CMS Combine export: a text datacard and a shapes ROOT file (written with uproot).

The card follows the Combine documentation's layout: ``imax``/``jmax``/``kmax`` header, a
``shapes`` line mapping ``$CHANNEL/$PROCESS`` (nominal) and ``$CHANNEL/$PROCESS_$SYSTEMATIC``
(``Up``/``Down`` variations) into one ROOT file, the ``bin``/``observation`` block, the
``bin``/``process``/``process``/``rate`` block (signal processes with indices <= 0, rates ``-1``:
taken from the histograms) and the systematics:

* ``lnN`` lines for the normalisation uncertainties (``kappa`` or ``lo/hi`` per process);
* ``shape`` lines for the JES sources ``jes_<source>`` (and every histosys of the model);
* ``rateParam`` lines for the free scale factors (``simultaneous`` mode), initial value the
  control-region result and range ``[0,10]``; in ``constrained`` mode the nominal yields are
  scaled by the centres and the eigenvectors of the scale-factor covariance become ``lnN``
  lines ``sf_eig<j>`` (log-normal: exact to first order, see :mod:`vhbb.fit.workspace`);
* ``* autoMCStats 0 1 1``: Barlow-Beeston-lite per bin including the signal (the likelihood's
  ``staterror``), from the histograms' bin errors (``sqrt(sumw2)``).

Histograms are the model's unrolled bins (signal region: merged m_jj x score bins in the order of
:mod:`vhbb.fit.templates`; control regions: one bin), x axis the bin index.  Processes with no yield
in a channel are left out of that channel.  Combine's signal strength ``r`` plays the role of
``mu``. :func:`parse_datacard` and :func:`read_shapes` read the export back (the round-trip test).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vhbb.stats.likelihood import Model

log = logging.getLogger(__name__)

SHAPES_FILE = "shapes.root"


def _fmt(value: float) -> str:
    return f"{value:.6g}" if abs(value - 1.0) > 1e-12 else "1"


def _columns(model: Model) -> list[tuple[str, str, int]]:
    """(channel, process, process index) of every non-empty channel x process column."""
    cols = []
    for ch in model.channels:
        sl = slice(ch.start, ch.stop)
        for p_i, proc in enumerate(model.processes):
            if np.any(model.nominal[p_i, sl] > 0):
                cols.append((ch.name, proc, p_i))
    return cols


def _hist(values: np.ndarray, sumw2: np.ndarray | None) -> Any:
    import hist

    edges = np.arange(len(values) + 1, dtype=np.float64)
    axis = hist.axis.Variable(edges, name="bin", label="unrolled bin", flow=False)
    if sumw2 is None:
        h = hist.Hist(axis, storage=hist.storage.Double())
        h.view()[...] = values
        return h
    h = hist.Hist(axis, storage=hist.storage.Weight())
    view = h.view()
    view.value = values
    view.variance = sumw2
    return h


def _gauss_slots(model: Model) -> dict[int, int]:
    """Parameter index -> slot of the Gaussian-constrained normalisation factors."""
    return {} if model.gauss_index is None else {int(i): g for g, i in enumerate(model.gauss_index)}


def _fixed_scale(model: Model) -> np.ndarray:
    """Per process the product of its fixed or Gaussian-constrained factors (the card's yields
    are scaled by them; ``mu`` is Combine's ``r``, the free factors are rateParams)."""
    gauss = _gauss_slots(model)
    scale = np.ones(len(model.processes))
    for k, i in enumerate(model.norm_index):
        i = int(i)
        if model.names[i] == model.poi:
            continue
        if model.fixed[i] or i in gauss:
            scale = np.where(model.norm_mask[k], scale * model.init[i], scale)
    return scale


def _write_shapes(
    model: Model, observed: np.ndarray, cols: Sequence[tuple[str, str, int]], path: Path
) -> None:
    """``data_obs`` per channel, the nominal and every histosys variation per column."""
    import uproot

    from vhbb.core.io import atomic_path

    scale = _fixed_scale(model)
    nominal = model.nominal * scale[:, None]
    sumw2 = model.sumw2 * (scale**2)[:, None]
    with atomic_path(path) as tmp, uproot.recreate(tmp) as fout:
        for ch in model.channels:
            fout[f"{ch.name}/data_obs"] = _hist(observed[ch.start : ch.stop], None)
        for ch_name, proc, p_i in cols:
            sl = slice(model.channel(ch_name).start, model.channel(ch_name).stop)
            fout[f"{ch_name}/{proc}"] = _hist(nominal[p_i, sl], sumw2[p_i, sl])
            for h, i in enumerate(model.histo_index):
                name = model.names[int(i)]
                up = (model.nominal[p_i, sl] + model.histo_up[h, p_i, sl]) * scale[p_i]
                down = (model.nominal[p_i, sl] - model.histo_down[h, p_i, sl]) * scale[p_i]
                fout[f"{ch_name}/{proc}_{name}Up"] = _hist(up, None)
                fout[f"{ch_name}/{proc}_{name}Down"] = _hist(down, None)


def _lnn_rows(model: Model, cols: Sequence[tuple[str, str, int]]) -> list[list[str]]:
    """``lnN`` lines: the normsys terms, then the eigenvectors of the constrained factors."""
    from vhbb.fit.workspace import eigen_decomposition

    rows: list[list[str]] = []
    for j, i in enumerate(model.normsys_index):
        row = []
        for _, _, p_i in cols:
            lo, hi = model.normsys_log_lo[j, p_i], model.normsys_log_hi[j, p_i]
            if lo == 0 and hi == 0:
                row.append("-")
            elif abs(lo + hi) < 1e-12:
                row.append(_fmt(math.exp(hi)))
            else:
                row.append(f"{_fmt(math.exp(lo))}/{_fmt(math.exp(hi))}")
        rows.append([model.names[int(i)], "lnN", *row])
    if model.gauss_index is None:
        return rows
    values, vectors = eigen_decomposition(model.gauss_cov)  # type: ignore[arg-type]
    slots = _gauss_slots(model)
    for j in range(len(values)):
        row = []
        for _, _, p_i in cols:
            entry = "-"
            for k, i in enumerate(model.norm_index):
                if int(i) in slots and model.norm_mask[k, p_i]:
                    g = slots[int(i)]
                    d = math.sqrt(values[j]) * vectors[g, j] / model.gauss_center[g]  # type: ignore[index]
                    entry = f"{_fmt(1.0 - d)}/{_fmt(1.0 + d)}"
            row.append(entry)
        rows.append([f"sf_eig{j}", "lnN", *row])
    return rows


def _shape_rows(model: Model, cols: Sequence[tuple[str, str, int]]) -> list[list[str]]:
    """``shape`` lines: every histosys, ``1`` where it changes the column's template."""
    rows = []
    for h, i in enumerate(model.histo_index):
        row = []
        for c, _, p_i in cols:
            sl = slice(model.channel(c).start, model.channel(c).stop)
            acts = np.any(model.histo_up[h, p_i, sl] != 0) or np.any(
                model.histo_down[h, p_i, sl] != 0
            )
            row.append("1" if acts else "-")
        rows.append([model.names[int(i)], "shape", *row])
    return rows


def _rate_params(model: Model) -> list[str]:
    """``rateParam`` lines of the free scale factors (not ``mu``, not Gaussian-constrained)."""
    gauss = _gauss_slots(model)
    out = []
    for k, i in enumerate(model.norm_index):
        i = int(i)
        if model.fixed[i] or model.names[i] == model.poi or i in gauss:
            continue
        lo, hi = model.bounds[i]
        for p_i, proc in enumerate(model.processes):
            if model.norm_mask[k, p_i]:
                out.append(
                    f"{model.names[i]} rateParam * {proc} {model.init[i]:.6g} [{lo:g},{hi:g}]"
                )
    return out


def write_datacard(
    model: Model,
    observed: np.ndarray,
    directory: str | Path,
    *,
    signal: Sequence[str],
    card_name: str = "datacard.txt",
) -> dict[str, Any]:
    """Write ``datacard.txt`` and ``shapes.root`` into ``directory`` atomically; a summary."""
    from vhbb.core.io import atomic_path

    directory = Path(directory)
    observed = np.asarray(observed, dtype=np.float64)
    cols = _columns(model)
    _write_shapes(model, observed, cols, directory / SHAPES_FILE)
    sig = [p for p in model.processes if p in signal]
    bkg = [p for p in model.processes if p not in signal]
    index = {p: -k for k, p in enumerate(reversed(sig))} | {p: k + 1 for k, p in enumerate(bkg)}
    rate_params = _rate_params(model)
    rule = "-" * 80
    lines = [
        f"# vhbb datacard: model {model.meta.get('mode', '')}; POI mu = Combine's r",
        f"imax {len(model.channels)} number of channels",
        f"jmax {len(model.processes) - 1} number of processes minus 1",
        "kmax * number of nuisance parameters",
        rule,
        f"shapes * * {SHAPES_FILE} $CHANNEL/$PROCESS $CHANNEL/$PROCESS_$SYSTEMATIC",
        rule,
        "bin " + " ".join(ch.name for ch in model.channels),
        "observation "
        + " ".join(f"{observed[ch.start : ch.stop].sum():.6g}" for ch in model.channels),
        rule,
        "bin " + " ".join(c for c, _, _ in cols),
        "process " + " ".join(p for _, p, _ in cols),
        "process " + " ".join(str(index[p]) for _, p, _ in cols),
        "rate " + " ".join("-1" for _ in cols),
        rule,
        *(" ".join(row) for row in [*_lnn_rows(model, cols), *_shape_rows(model, cols)]),
        *rate_params,
    ]
    if model.stat_sigma is not None:
        lines.append("* autoMCStats 0 1 1")
    with atomic_path(directory / card_name) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return {
        "card": str(directory / card_name),
        "shapes": str(directory / SHAPES_FILE),
        "channels": [ch.name for ch in model.channels],
        "processes": list(model.processes),
        "signal": sig,
        "columns": len(cols),
        "rate_params": [r.split()[0] for r in rate_params],
    }


# ---------------------------------------------------------------------------- reading back
def parse_datacard(path: str | Path) -> dict[str, Any]:
    """Parse a datacard written by :func:`write_datacard` (the subset of the syntax it uses)."""
    lines = [
        ln.split("#", 1)[0].strip() for ln in Path(path).read_text().splitlines() if ln.strip()
    ]
    lines = [ln for ln in lines if ln and not ln.startswith("---")]
    out: dict[str, Any] = {"systematics": {}, "rate_params": {}, "shapes": [], "auto_mc_stats": []}
    bin_lines, process_lines = [], []
    for ln in lines:
        tok = ln.split()
        key = tok[0]
        if key in ("imax", "jmax", "kmax"):
            out[key] = tok[1] if tok[1] == "*" else int(tok[1])
        elif key == "shapes":
            out["shapes"].append(
                {
                    "process": tok[1],
                    "channel": tok[2],
                    "file": tok[3],
                    "nominal": tok[4],
                    "systematic": tok[5] if len(tok) > 5 else None,
                }
            )
        elif key == "bin":
            bin_lines.append(tok[1:])
        elif key == "observation":
            out["observation"] = [float(v) for v in tok[1:]]
        elif key == "process":
            process_lines.append(tok[1:])
        elif key == "rate":
            out["rate"] = [float(v) for v in tok[1:]]
        elif len(tok) > 1 and tok[1] == "autoMCStats":
            out["auto_mc_stats"].append({"channel": tok[0], "args": tok[2:]})
        elif len(tok) > 1 and tok[1] == "rateParam":
            lo, hi = tok[5].strip("[]").split(",")
            out["rate_params"].setdefault(tok[0], []).append(
                {
                    "channel": tok[2],
                    "process": tok[3],
                    "init": float(tok[4]),
                    "range": (float(lo), float(hi)),
                }
            )
        elif len(tok) > 1 and tok[1] in ("lnN", "shape"):
            out["systematics"][tok[0]] = {"type": tok[1], "values": tok[2:]}
        else:
            raise ValueError(f"{path}: unexpected datacard line: {ln!r}")
    if len(bin_lines) != 2 or len(process_lines) != 2:
        raise ValueError(f"{path}: expected two bin and two process lines")
    out["channels"] = bin_lines[0]
    out["columns"] = [
        {"channel": c, "process": p, "index": int(i)}
        for c, p, i in zip(bin_lines[1], process_lines[0], process_lines[1], strict=True)
    ]
    for name, syst in out["systematics"].items():
        if len(syst["values"]) != len(out["columns"]):
            raise ValueError(f"{path}: systematic {name} has the wrong number of entries")
    return out


def read_shapes(
    card: Mapping[str, Any], directory: str | Path
) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray | None]]]:
    """``{channel: {histogram: (values, variances)}}`` of the shapes file named by ``card``."""
    import uproot

    spec = card["shapes"][0]
    out: dict[str, dict[str, tuple[np.ndarray, np.ndarray | None]]] = {}
    with uproot.open(Path(directory) / spec["file"]) as fin:
        for ch in card["channels"]:
            out[ch] = {}
            for key in fin[ch].keys(cycle=False):
                h = fin[f"{ch}/{key}"]
                out[ch][key] = (np.asarray(h.values()), np.asarray(h.variances()))
    return out


def run_combine(
    hists_path: str, sf_path: str, *, mode: str, directory: str, spec: Mapping[str, Any]
) -> dict[str, Any]:
    """Rule driver: the datacard of ``mode`` with the fit's observations."""
    from vhbb.core.io import write_json
    from vhbb.fit.signal_fit import read_fit_stage

    stage = read_fit_stage(hists_path, sf_path, mode=mode, spec=spec)
    inp, meta = stage.fit, stage.meta
    summary = write_datacard(
        inp.model, inp.observed, directory, signal=list(meta["signal_processes"])
    )
    summary["observations"] = dict(inp.observations)
    write_json(Path(directory) / "summary.json", summary)
    log.info("%s %s: datacard with %d columns", meta["model"], mode, summary["columns"])
    return summary
