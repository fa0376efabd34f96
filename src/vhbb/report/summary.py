"""The analysis at a glance: ``results/summary.json`` and a self-contained ``summary.html``.

:func:`collect` reads what the chain already wrote -- the export summary, the control-region
fit, every model's ``metrics.json``, the scans' ``best.json``, the signal-strength fits and their
diagnostics, the weight validation -- and the shared check records
(:mod:`vhbb.core.checks`) that stages write (weights, selection); for stages that do not write
records yet (evaluation, fits, diagnostics) the checks are derived here from their result files.
:func:`render_html` turns the summary into one HTML page (inline CSS, figures embedded as data
URIs); every number on the page carries its exact JSON value in a ``data-value`` attribute and
is displayed rounded.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from vhbb.core.checks import Check, compare, read_checks

STATUS_ORDER = {"fail": 0, "warn": 1, "pass": 2}
#: Methods whose purpose is a score independent of m_jj (the sculpting check applies to them).
DECORRELATING = ("disco", "adversarial", "disco_then_adversarial")


# --------------------------------------------------------------------------- reading
def _load(path: str | Path | None) -> Any:
    if path is None or not Path(path).exists():
        return None
    return json.loads(Path(path).read_text())


def _value(node: Any) -> float | None:
    if isinstance(node, Mapping):
        node = node.get("value")
    return None if node is None else float(node)


# --------------------------------------------------------------------------- checks
def model_checks(model: str, metrics: Mapping[str, Any], threshold: float) -> list[Check]:
    """Collapse, sculpting, data/MC and VZ checks of one evaluated model (out of fold)."""
    oof = metrics["variants"]["out_of_fold"]
    out = [
        Check(
            stage="evaluation",
            name="not collapsed",
            status="fail" if metrics.get("collapsed") else "pass",
            where=model,
            message="; ".join(metrics.get("collapse", {}).get("reasons", [])),
        )
    ]
    if metrics.get("method") in DECORRELATING:
        highest = _value(oof["sculpting"].get("highest", {}).get("chi2_ndf_ref"))
        out.append(compare("evaluation", "sculpting chi2/ndf (top quantile, ref. count)", model,
                           highest, threshold, "<="))  # fmt: skip
    dm = oof.get("data_mc", {})
    for region, entry in sorted((dm.get("regions") or {}).items()):
        chi2 = entry.get("chi2")
        if isinstance(chi2, Mapping) and "p_value" in chi2:
            out.append(compare("evaluation", "data/MC chi2 p-value", f"{model}/{region}",
                               _value(chi2["p_value"]), 0.01, ">"))  # fmt: skip
    vz = oof.get("vz_peak", {})
    if vz.get("visible") is not None:
        out.append(
            Check(
                stage="evaluation",
                name="VZ peak visible and gone without VZ",
                status="pass" if vz.get("visible") and vz.get("disappears_without_vz") else "warn",
                where=model,
                value=_value(vz.get("with_vz", {}).get("significance")),
                message=str(vz.get("reason") or ""),
            )
        )
    return out


def _median_expected(expected: Any) -> float | None:
    """The median expected limit of a ``limits.expected`` band (five values) or a number."""
    if isinstance(expected, list | tuple):
        return None if len(expected) != 5 or expected[2] is None else float(expected[2])
    return None if expected is None else float(expected)


def fit_checks(model: str, mode: str, result: Mapping[str, Any]) -> list[Check]:
    status = result.get("status", {})
    ok = bool(status.get("valid")) and bool(status.get("covariance_accurate", True))
    out = [
        Check(
            stage="fit",
            name="fit converged",
            status="pass" if ok else "fail",
            where=f"{model}/{mode}",
            value=status.get("edm"),
            message=", ".join(f"{k}={v}" for k, v in status.items() if isinstance(v, bool)),
        )
    ]
    pull = result.get("truth_pull")
    if pull:  # an observed fit of the toy's pseudo-data: the closure against the hidden truth
        mism = pull.get("mismodelling") or {}
        out.append(
            compare(
                "fit",
                "closure |mu-hat - mu_true| / sigma",
                f"{model}/{mode}",
                abs(float(pull["pull"])),
                3.0,
                "<",
                message=f"mu_true = {pull['mu_true']}, pull {pull['pull']:+.2f}; mismodelling "
                + ("on" if mism.get("enabled") else "off")
                + "; MC corrected by "
                + (", ".join(pull.get("corrections") or []) or "nothing"),
            )
        )
    return out


def diagnostics_checks(model: str, mode: str, diag: Mapping[str, Any]) -> list[Check]:
    out = []
    for kind, block in sorted((diag.get("closure") or {}).items()):
        for par, pull in sorted((block.get("pulls") or {}).items()):
            ok = pull.get("mean_ok", True) and pull.get("width_ok", True)
            out.append(
                Check(
                    stage="diagnostics",
                    name="closure pull mean and width",
                    status="pass" if ok else "fail",
                    where=f"{model}/{mode}/{kind}/{par}",
                    value=pull.get("width"),
                    message=f"mean {pull.get('mean', math.nan):.3f}, "
                    f"width {pull.get('width', math.nan):.3f}",
                )
            )
    for par, entry in sorted(((diag.get("impacts") or {}).get("nuisances") or {}).items()):
        if entry.get("constrained"):
            out.append(
                Check(
                    stage="diagnostics",
                    name="post-fit constraint",
                    status="warn",
                    where=f"{model}/{mode}/{par}",
                    value=entry.get("constraint"),
                    message="post-fit error below the configured fraction of the prior",
                )
            )
    return out


#: Stages in the order of the chain: an upstream failure (a gate run in warn mode) is listed
#: before the downstream failures it may cause.
STAGE_ORDER = {"weights": 0, "fit": 1, "diagnostics": 2, "evaluation": 3, "selection": 4}


def sort_checks(checks: Iterable[Check]) -> list[Check]:
    """Failures first, then warnings, then passes; within each, stages in chain order (the
    weight gate first); de-duplicated by (stage, name, where)."""
    seen: dict[tuple[str, str, str], Check] = {}
    for c in checks:
        seen.setdefault((c.stage, c.name, c.where), c)
    return sorted(
        seen.values(),
        key=lambda c: (STATUS_ORDER[c.status], STAGE_ORDER.get(c.stage, 9), c.name, c.where),
    )


# --------------------------------------------------------------------------- summary
def collect(
    *,
    export_summary: str,
    scale_factors: str,
    metrics: Mapping[str, str],
    best: Mapping[str, str],
    fits: Mapping[str, str],
    diagnostics: Mapping[str, str],
    check_files: Sequence[str],
    settings: Mapping[str, Any],
    figures: Mapping[str, str],
    links: Sequence[str],
) -> dict[str, Any]:
    """The summary as a JSON-ready dict (``fits``/``diagnostics`` keys: ``model/mode``)."""
    exp = _load(export_summary)
    sf = _load(scale_factors)
    truth = settings.get("truth_scale_factors") or {}
    # stages that write check records (weights, selection) are read, never re-derived
    checks: list[Check] = list(read_checks(check_files))
    models = []
    for name, path in sorted(metrics.items()):
        m = _load(path)
        oof = m["variants"]["out_of_fold"]
        checks += model_checks(name, m, float(settings["sculpting_threshold"]))
        models.append(
            {
                "model": name,
                "method": m.get("method"),
                "auc": _value(oof["separation"]["auc"]),
                "z_asimov": _value(oof["significance"]["asimov"]),
                "z_fast_fit": _value(oof["significance"]["fast_fit"]),
                "chi2_ndf_ref_highest": _value(oof["sculpting"]["highest"].get("chi2_ndf_ref")),
                "inverse_jsd": _value(oof["jsd"]["inverse_jsd"]),
                "dcor2": _value(oof["decorrelation"].get("dcor2")),
                "collapsed": bool(m.get("collapsed")),
            }
        )
    selections = {}
    for scan, path in sorted(best.items()):
        b = _load(path)
        selections[scan] = {
            "selected": b.get("selected"),
            "passes_cuts": bool(b.get("passes_cuts")),
            "rule": b.get("rule"),
            "reason": b.get("reason"),
        }
    fit_rows = []
    for key, path in sorted(fits.items()):
        r = _load(path)
        model, mode = key.split("/", 1)
        checks += fit_checks(model, mode, r)
        fit_rows.append(
            {
                "model": model,
                "mode": mode,
                "mu": r["mu"],
                "mu_err_up": r["mu_err_up"],
                "mu_err_down": r["mu_err_down"],
                "significance": r["significance"],
                "limit": (r.get("limits") or {}).get("observed"),
                # the median of the expected band (-2, -1, 0, +1, +2 sigma)
                "limit_expected": _median_expected((r.get("limits") or {}).get("expected")),
            }
        )
    for key, path in sorted(diagnostics.items()):
        model, mode = key.split("/", 1)
        checks += diagnostics_checks(model, mode, _load(path))
    ordered = sort_checks(checks)
    counts = {s: sum(c.status == s for c in ordered) for s in STATUS_ORDER}
    return {
        "checks": [c.as_dict() for c in ordered],
        "check_counts": counts,
        "inputs": {
            region: {
                "n_events": entry["n_events"],
                "processes": {
                    p: {"events": v["events"], "yield": v["yield"]}
                    for p, v in sorted(entry["processes"].items())
                },
            }
            for region, entry in (exp or {}).get("regions", {}).items()
        },
        "scale_factors": {
            p: {
                "value": v["value"],
                "error": math.hypot(v.get("hesse_error") or 0.0, v.get("mc_stat_error") or 0.0),
                "truth": truth.get(p),
            }
            for p, v in ((sf or {}).get("scale_factors") or {}).items()
        },
        "models": models,
        "selection": selections,
        "fits": fit_rows,
        "figures": {k: v for k, v in figures.items() if Path(v).exists()},
        "links": list(links),
        "provenance": settings.get("provenance", {}),
    }


# --------------------------------------------------------------------------- HTML
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1100px;
padding:1.5rem;color:#1d1d1f;line-height:1.4}
h1{font-size:1.6rem;margin:0 0 .3rem}
h2{font-size:1.2rem;margin:1.6rem 0 .5rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.3rem 0 1rem;font-size:.9rem}
th,td{padding:.25rem .6rem;vertical-align:top;
border-bottom:1px solid #eee;text-align:left} th{background:#f5f5f7} td.num{text-align:right;
font-variant-numeric:tabular-nums} .pass{color:#0a7d28;font-weight:600} .warn{color:#b26a00;
font-weight:600} .fail{color:#c1121f;font-weight:700} .banner{padding:.7rem 1rem;border-radius:6px;
margin:1rem 0;font-weight:600} .banner.fail{background:#fde8ea} .banner.pass{background:#e6f4ea}
.banner.warn{background:#fff4e0} figure{display:inline-block;margin:.5rem;vertical-align:top}
figure img{max-width:520px;width:100%;border:1px solid #eee} figcaption{font-size:.85rem;color:#555}
.small{font-size:.85rem;color:#555}
"""


def _num(value: Any, digits: int = 3) -> str:
    """A number as ``<span data-value=exact>rounded</span>`` (``-`` when missing)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return '<span class="num" data-value="null">–</span>'
    v = float(value)
    shown = f"{v:.{digits}g}" if abs(v) >= 1e4 or (v != 0 and abs(v) < 1e-3) else f"{v:.{digits}f}"
    if float(v).is_integer() and abs(v) >= 100:
        shown = f"{int(v)}"
    return f'<span class="num" data-value="{json.dumps(v)}">{shown}</span>'


def _td(value: Any, digits: int = 3) -> str:
    return f'<td class="num">{_num(value, digits)}</td>'


def _status(check: Mapping[str, Any]) -> str:
    s = check["status"]
    label = "fail (warned)" if s == "fail" and check.get("warned") else s
    return f'<span class="status {s}" data-status="{s}">{label}</span>'


def _img(path: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{html.escape(Path(path).name)}" src="data:image/png;base64,{data}">'


def render_html(summary: Mapping[str, Any], title: str = "vhbb analysis summary") -> str:
    e = html.escape
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}"
             f"</title><style>{CSS}</style></head><body>", f"<h1>{e(title)}</h1>"]  # fmt: skip
    prov = summary.get("provenance") or {}
    parts.append(
        "<p class='small'>"
        + " · ".join(f"{e(str(k))}: <code>{e(str(v))}</code>" for k, v in prov.items())
        + "</p>"
    )
    counts = summary["check_counts"]
    worst = "fail" if counts["fail"] else ("warn" if counts["warn"] else "pass")
    parts.append(
        f"<div class='banner {worst}' id='verdict'>{counts['fail']} failed, {counts['warn']} "
        f"warnings, {counts['pass']} passed checks</div>"
    )
    # checks (failures first)
    parts.append("<h2>Checks</h2><table id='checks'><tr><th>status</th><th>stage</th><th>check</th>"
                 "<th>where</th><th>value</th><th>threshold</th><th>note</th></tr>")  # fmt: skip
    for c in summary["checks"]:
        thr = (
            ""
            if c.get("threshold") is None
            else f"{e(c.get('comparison') or '')} {_num(c['threshold'])}"
        )
        parts.append(
            f"<tr class='check' data-check='{e(c['stage'])}/{e(c['name'])}/{e(c['where'])}'>"
            f"<td>{_status(c)}</td><td>{e(c['stage'])}</td><td>{e(c['name'])}</td>"
            f"<td>{e(c['where'])}</td>{_td(c.get('value'))}<td>{thr}</td>"
            f"<td class='small'>{e(c.get('message') or '')}</td></tr>"
        )
    parts.append("</table>")
    # signal strength
    parts.append("<h2>Signal strength</h2><table id='fits'><tr><th>model</th><th>mode</th>"
                 "<th>μ</th><th>−σ</th><th>+σ</th><th>Z (exp.)</th><th>limit (obs.)</th>"
                 "<th>limit (exp.)</th></tr>")  # fmt: skip
    for f in summary["fits"]:
        parts.append(
            f"<tr><td>{e(f['model'])}</td><td>{e(f['mode'])}</td>{_td(f['mu'])}"
            f"{_td(f['mu_err_down'])}{_td(f['mu_err_up'])}{_td(f['significance'])}"
            f"{_td(f.get('limit'))}{_td(f.get('limit_expected'))}</tr>"
        )
    parts.append("</table>")
    # scale factors
    parts.append("<h2>Control-region scale factors</h2><table id='scale_factors'><tr>"
                 "<th>process</th><th>fitted</th><th>error</th><th>truth (toy)</th>"
                 "</tr>")  # fmt: skip
    for p, v in summary["scale_factors"].items():
        parts.append(f"<tr><td>{e(p)}</td>{_td(v['value'])}{_td(v['error'])}{_td(v['truth'])}</tr>")
    parts.append("</table>")
    # models
    parts.append("<h2>Models</h2>")
    for scan, sel in summary["selection"].items():
        verdict = "passes every cut" if sel["passes_cuts"] else "NO candidate passes every cut"
        rule = e(json.dumps(sel["rule"]))
        parts.append(f"<p>Scan <b>{e(scan)}</b>: selected <b>{e(str(sel['selected']))}</b> "
                     f"({verdict}; rule: <code>{rule}</code>)</p>")  # fmt: skip
    parts.append("<table id='models'><tr><th>model</th><th>method</th><th>AUC</th><th>Z Asimov</th>"
                 "<th>Z fast fit</th><th>χ²/ndf ref. (top quantile)</th><th>1/JSD</th>"
                 "<th>dCor²</th><th>collapsed</th></tr>")  # fmt: skip
    for m in summary["models"]:
        parts.append(
            f"<tr><td>{e(m['model'])}</td><td>{e(str(m['method']))}</td>{_td(m['auc'])}"
            f"{_td(m['z_asimov'])}{_td(m['z_fast_fit'])}{_td(m['chi2_ndf_ref_highest'])}"
            f"{_td(m['inverse_jsd'], 4)}{_td(m['dcor2'])}"
            f"<td>{'yes' if m['collapsed'] else 'no'}</td></tr>"
        )
    parts.append("</table>")
    # inputs
    parts.append("<h2>Inputs</h2><table id='inputs'><tr><th>region</th><th>process</th>"
                 "<th>events</th><th>yield</th></tr>")  # fmt: skip
    for region, entry in summary["inputs"].items():
        for p, v in entry["processes"].items():
            parts.append(
                f"<tr><td>{e(region)}</td><td>{e(p)}</td>{_td(v['events'])}{_td(v['yield'])}</tr>"
            )
    parts.append("</table>")
    if summary["figures"]:
        parts.append("<h2>Figures</h2>")
        for name, path in summary["figures"].items():
            parts.append(f"<figure>{_img(path)}<figcaption>{e(name)}</figcaption></figure>")
    if summary["links"]:
        parts.append("<h2>Detailed files</h2><ul class='small'>")
        parts += [f"<li><code>{e(link)}</code></li>" for link in summary["links"]]
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def run_summary(
    *, inputs: Mapping[str, Any], settings: Mapping[str, Any], json_path: str, html_path: str
) -> dict[str, Any]:
    """Rule driver: collect, write ``summary.json``, render ``summary.html`` (atomic)."""
    from vhbb import __version__
    from vhbb.core.io import atomic_path, write_json
    from vhbb.core.provenance import git_commit

    settings = {
        **settings,
        "provenance": {
            "version": __version__,
            "commit": git_commit(),
            "config_hash": settings.get("config_hash"),
        },
    }
    summary = collect(**inputs, settings=settings)
    write_json(json_path, summary)
    with atomic_path(html_path) as tmp:
        tmp.write_text(render_html(summary))
    return summary
