"""The Snakemake HTML report of the finished end-to-end run: every plot category, every file,
captions rendered (reStructuredText to HTML, Jinja wildcards filled in)."""

from __future__ import annotations

import json
import re
import shutil
import zipfile

import pytest
from conftest import REPO, run_snakemake

pytestmark = pytest.mark.e2e
RULE_BLOCK = re.compile(r"^(?:rule|checkpoint) (\w+):\s*$", re.M)


def categories_by_rule() -> dict[str, set[str]]:
    """``category=`` of every ``report()`` output, per rule (from workflow/rules/*.smk)."""
    out: dict[str, set[str]] = {}
    for path in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        text = path.read_text()
        heads = list(RULE_BLOCK.finditer(text))
        for i, head in enumerate(heads):
            block = text[head.end() : heads[i + 1].start() if i + 1 < len(heads) else len(text)]
            cats = set(re.findall(r'(?<!sub)category="([^"]+)"', block))
            if cats:
                out[head.group(1)] = cats
    return out


def js_object(html: str, name: str) -> dict:
    match = re.search(rf"var {name} = (\{{.*?\}});\s*\n", html, re.S)
    assert match, f"no '{name}' in report.html"
    return json.loads(match.group(1))


@pytest.fixture(scope="module")
def report(e2e_run, tmp_path_factory):
    """(zip listing, root folder, categories, results, workdir) of ``snakemake --report``."""
    # from a copy: Snakemake writes its log and I/O cache into the working directory
    tmp = tmp_path_factory.mktemp("report")
    workdir, out = tmp / "run", tmp / "report.zip"
    shutil.copytree(e2e_run, workdir, symlinks=True)
    run_snakemake(workdir, "--report", str(out))
    with zipfile.ZipFile(out) as zf:
        names = set(zf.namelist())
        html_name = next(n for n in names if n.endswith("report.html"))
        html = zf.read(html_name).decode()
        root = html_name.rsplit("/", 1)[0]
    return names, root, js_object(html, "categories"), js_object(html, "results"), workdir


def test_report_has_every_plot_category(report):
    _, _, categories, results, workdir = report
    declared = categories_by_rule()
    assert {"weights_plots", "scale_factors_plots", "train_model", "hists_plots"} <= set(declared)
    rules_in_report = {r["job_properties"]["rule"] for r in results.values()}
    expected = set().union(*(declared[r] for r in rules_in_report))
    assert set(categories) == expected
    # every rule with report outputs whose jobs are in the default target is in the report
    stats = run_snakemake(workdir, "-n", "--forceall", "--quiet", "rules", "all")
    planned = set(re.findall(r"^(\w+)\s+\d+\s*$", stats.stdout, re.M)) - {"total"}
    assert set(declared) & planned == rules_in_report
    for name, subcats in categories.items():
        assert subcats, f"category '{name}' is empty"


def test_report_files_are_in_the_zip(report):
    names, root, categories, results, _ = report
    listed = {f for subcats in categories.values() for files in subcats.values() for f in files}
    assert listed == set(results)
    for key, entry in results.items():
        assert f"{root}/{entry['data_uri']}" in names, key
        # figures, and the summary page (an HTML file: the landing category)
        expected = "text/html" if key.endswith("summary.html") else "image/png"
        assert entry["mime_type"] == expected, key


def test_report_captions_rendered(report):
    _, _, _, results, _ = report
    for key, entry in results.items():
        caption = entry["caption"]
        assert caption.lstrip().startswith("<"), f"caption not rendered to HTML: {key}"
        for raw in ("{{", "}}", "``", ":math:"):
            assert raw not in caption, f"unrendered {raw!r} in the caption of {key}"
    # wildcards are filled in: the weights figures name their region, the loss curves their model
    for key, entry in results.items():
        props = entry["job_properties"]
        wildcards = dict(w.split("=", 1) for w in props["wildcards"].split(", ") if "=" in w)
        if props["rule"] == "weights_plots":
            assert wildcards["region"] in entry["caption"], key
        if props["rule"] == "train_model":
            assert wildcards["model"] in json.dumps(entry), key


def test_summary_takes_the_median_of_the_expected_limit_band():
    """signal_strength.json stores the expected CLs limits as the five-point band: the summary
    page shows its median (the default chain's summary failed on the list)."""
    from vhbb.report.summary import _median_expected

    assert _median_expected([0.6, 0.8, 1.1, 1.6, 2.2]) == 1.1
    assert _median_expected(1.3) == 1.3
    assert _median_expected(None) is None and _median_expected([]) is None
