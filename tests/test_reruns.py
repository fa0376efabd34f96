"""What a config change reruns: exactly the jobs that read the changed value, then downstream.

Every test reuses the session's finished end-to-end run (a private copy), writes an overlay that
changes ONE value and dry-runs ``snakemake -n all``.  Checked per change:

* the jobs whose *params* changed (reason "Params have changed") are exactly the expected ones,
  rule and wildcards (rules added after this file was written may also be triggered, but never
  one of the named upstream rules);
* every other planned job is downstream of those: the planned set equals their downstream
  closure in the job graph, which is computed from a dry run of the whole workflow (inputs and
  outputs of every job), not hard-coded;
* nothing upstream reruns (explicit list of rules that must not appear).

All dry runs: a few seconds each.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import REPO, run_snakemake

from vhbb import config as vconfig
from vhbb.config import params as P

pytestmark = pytest.mark.e2e
CFG = vconfig.load_config([REPO / "config" / "config.yaml", REPO / "config" / "test.yaml"])

# The rules that existed when these tests were written: for them the triggered set is exact.
# Every figure of the fits is drawn by a plot rule (*_plots, binning_scan_plot) of its own.
KNOWN_RULES = {
    "toy_file",
    "cache_file",
    "cache_sample",
    "export_regions",
    "transform_weights",
    "weights_plots",
    "scale_factors",
    "train_model",
    "score_model",
    "hists",
    "hists_plot_data",
    "best_plot_data",
    "signal_fit",
    "workspace",
    "diagnostics",
    "combine",
    "binning_scan",
    "evaluate_model",
    "evaluation_plots",
    "scale_factors_plots",
    "hists_plots",
    "signal_fit_plots",
    "diagnostics_plots",
    "binning_scan_plot",
    "compare_roc",
    "scan_summary",
    "best_scores",
    "best_evaluation",
    "all",
}
UPSTREAM = ["toy_file", "cache_file", "cache_sample", "export_regions", "transform_weights"]
BEFORE_FITS = [*UPSTREAM, "scale_factors", "train_model", "score_model"]
# Rules that only draw figures from computed files (their params: the plot options).
PLOT_RULES = {
    "weights_plots",
    "scale_factors_plots",
    "hists_plots",
    "signal_fit_plots",
    "diagnostics_plots",
    "binning_scan_plot",
    "evaluation_plots",
    "compare_roc",
}
COMPUTE_RULES = sorted(KNOWN_RULES - PLOT_RULES - {"all"})
PARAMS_CHANGED = "Params have changed since last execution"
JOB_HEADER = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):\s*$")
JOB_FIELD = re.compile(r"^\s{4}(\w+): ?(.*)$")


@dataclass(frozen=True)
class Job:
    rule: str
    wildcards: tuple[tuple[str, str], ...] = ()

    def wc(self, name: str) -> str | None:
        return dict(self.wildcards).get(name)

    def __repr__(self) -> str:
        return f"{self.rule}({', '.join(f'{k}={v}' for k, v in self.wildcards)})"


@dataclass
class Planned:
    input: list[str]
    output: list[str]
    reason: str


def parse_dry_run(text: str) -> dict[Job, Planned]:
    """The jobs of a ``snakemake -n`` listing (rule, wildcards, input, output, reason)."""
    jobs: dict[Job, Planned] = {}
    rule: str | None = None
    fields: dict[str, str] = {}

    def close() -> None:
        if rule is None:
            return
        wildcards: tuple[tuple[str, str], ...] = ()
        if fields.get("wildcards"):
            pairs = [w.split("=", 1) for w in fields["wildcards"].split(", ")]
            wildcards = tuple(sorted((k, v) for k, v in pairs))
        split = lambda key: [f for f in fields.get(key, "").split(", ") if f]  # noqa: E731
        job = Job(rule, wildcards)
        assert job not in jobs, f"job listed twice: {job}"
        jobs[job] = Planned(split("input"), split("output"), fields.get("reason", ""))

    for line in text.splitlines():
        header = JOB_HEADER.match(line)
        if header:
            close()
            rule, fields = header.group(1), {}
            continue
        field = JOB_FIELD.match(line) if rule is not None else None
        if field:
            fields[field.group(1)] = field.group(2)
        elif rule is not None and not line.startswith(" "):
            close()
            rule, fields = None, {}
    close()
    return jobs


def dry_run(workdir: Path, *args: str, overlays: Iterable[Path] = ()) -> dict[Job, Planned]:
    proc = run_snakemake(workdir, "-n", "--cores", "1", *args, overlays=tuple(overlays))
    return parse_dry_run(proc.stdout + "\n" + proc.stderr)


class Graph:
    """The job graph of the whole workflow (every job planned, from inputs and outputs)."""

    def __init__(self, jobs: dict[Job, Planned]) -> None:
        self.jobs = set(jobs)
        producer = {out: job for job, p in jobs.items() for out in p.output}
        self.children: dict[Job, set[Job]] = defaultdict(set)
        for job, p in jobs.items():
            for path in p.input:
                if path in producer:
                    self.children[producer[path]].add(job)

    def select(self, rule: str, **wildcards: str) -> set[Job]:
        return {
            j
            for j in self.jobs
            if j.rule == rule and all(j.wc(k) == v for k, v in wildcards.items())
        }

    def downstream(self, jobs: Iterable[Job]) -> set[Job]:
        """``jobs`` and everything that (transitively) consumes their outputs."""
        seen: set[Job] = set()
        todo = list(jobs)
        while todo:
            job = todo.pop()
            if job not in seen:
                seen.add(job)
                todo.extend(self.children[job])
        return seen


@pytest.fixture(scope="module")
def graph(tmp_path_factory) -> Graph:
    """Dry run in an empty directory: every job of ``all`` is planned, with its files."""
    g = Graph(dry_run(tmp_path_factory.mktemp("graph"), "all"))
    assert g.select("train_model") and g.select("all")
    return g


def overlay(tmp_path: Path, change: dict) -> Path:
    path = tmp_path / "overlay.yaml"
    path.write_text(yaml.safe_dump(change))
    return path


def check_reruns(
    workdir: Path,
    tmp_path: Path,
    graph: Graph,
    change: dict,
    expected: set[Job],
    forbidden: Iterable[str],
) -> dict[Job, Planned]:
    plan = dry_run(workdir, "all", overlays=[overlay(tmp_path, change)])
    triggered = {j for j, p in plan.items() if PARAMS_CHANGED in p.reason}
    known = {j for j in triggered if j.rule in KNOWN_RULES}
    assert expected, "the expected set must not be empty"
    assert known == expected, (
        f"params changed for {sorted(known - expected, key=repr)} (not expected); "
        f"not for {sorted(expected - known, key=repr)} (expected)"
    )
    closure = graph.downstream(triggered)
    assert set(plan) == closure, (
        f"planned but not downstream: {sorted(set(plan) - closure, key=repr)}; "
        f"downstream but not planned: {sorted(closure - set(plan), key=repr)}"
    )
    bad = sorted((j for j in plan if j.rule in set(forbidden)), key=repr)
    assert not bad, f"must not rerun: {bad}"
    return plan


def union(*sets: set[Job]) -> set[Job]:
    return set().union(*sets)


def fit_jobs(graph: Graph, *rules: str) -> set[Job]:
    return union(*(graph.select(r, model=m) for r in rules for m in P.fit_models(CFG)))


# ----------------------------------------------------------------------------------------- tests
def test_parse_dry_run_listing():
    text = (
        "[Mon Nov 23 02:52:31 2026]\n"
        "rule signal_fit:\n"
        "    input: results/hists/disco/hists.h5, results/fits/scale_factors.json\n"
        "    output: results/fits/disco/fixed/signal_strength.json\n"
        "    jobid: 66\n"
        "    reason: Params have changed since last execution: {'spec'}\n"
        "    wildcards: model=disco, mode=fixed\n"
        "Shell command: None\n\n"
        "localrule all:\n"
        "    input: results/fits/disco/fixed/signal_strength.json\n"
        "    reason: Input files updated by another job: x\n"
        "Job stats:\n"
    )
    jobs = parse_dry_run(text)
    fit = Job("signal_fit", (("mode", "fixed"), ("model", "disco")))
    assert set(jobs) == {fit, Job("all")}
    assert jobs[fit].input == ["results/hists/disco/hists.h5", "results/fits/scale_factors.json"]
    assert PARAMS_CHANGED in jobs[fit].reason
    g = Graph(jobs)
    assert g.downstream([fit]) == {fit, Job("all")}


def test_finished_run_is_up_to_date(workdir_copy):
    """No volatile params: a second dry run of the finished run has nothing to do."""
    plan = dry_run(workdir_copy, "all")
    assert not plan, f"a finished run would rerun: {sorted(plan, key=repr)}"


def test_signal_fit_option_reruns_the_fits_only(workdir_copy, tmp_path, graph):
    """fit.systematics.jes: the signal-strength fits, workspaces, datacards and diagnostics.

    Not the histograms, the binning scan (lnN only) or the evaluation (its fast significance has
    no JES), nor anything upstream."""
    expected = fit_jobs(graph, "signal_fit", "workspace", "combine", "diagnostics")
    assert {j.wc("mode") for j in expected if j.rule == "signal_fit"} == set(CFG["fit"]["modes"])
    check_reruns(
        workdir_copy,
        tmp_path,
        graph,
        {"fit": {"systematics": {"jes": not CFG["fit"]["systematics"]["jes"]}}},
        expected,
        [*BEFORE_FITS, "hists", "binning_scan", "evaluate_model"],
    )


def test_fit_binning_option_reruns_histograms_and_downstream(workdir_copy, tmp_path, graph):
    """fit.binning.score.count: the histograms of the fitted models and the evaluations (their
    fast significance bins the same way), then downstream; not the binning scan (its own n x n
    counts) nor anything upstream."""
    count = CFG["fit"]["binning"]["score"]["count"]
    plan = check_reruns(
        workdir_copy,
        tmp_path,
        graph,
        {"fit": {"binning": {"score": {"count": count + 1}}}},
        fit_jobs(graph, "hists") | graph.select("evaluate_model"),
        [*BEFORE_FITS, "binning_scan"],
    )
    assert fit_jobs(graph, "signal_fit") <= set(plan)


def test_disco_lambda_retrains_disco_only(workdir_copy, tmp_path, graph):
    """models.list.disco.disco.lambda: both folds of disco (not its scan points, which set their
    own lambda, nor any other model), then its scores, evaluation and fits."""
    plan = check_reruns(
        workdir_copy,
        tmp_path,
        graph,
        {"models": {"list": {"disco": {"disco": {"lambda": 33.0}}}}},
        graph.select("train_model", model="disco"),
        [*UPSTREAM, "scale_factors"],
    )
    folds = {j.wc("fold") for j in plan if j.rule == "train_model"}
    assert folds == {str(k) for k in range(CFG["export"]["folds"])}
    assert {j.wc("model") for j in plan if j.rule in {"train_model", "score_model"}} == {"disco"}
    assert {j.wc("model") for j in plan if j.rule == "evaluate_model"} == {"disco"}


def test_region_cut_recaches_everything_but_not_the_toys(workdir_copy, tmp_path, graph):
    """regions.definitions.CR_tt: every cached file and sample and everything downstream."""
    cut = CFG["regions"]["definitions"]["CR_tt"]
    assert ">= 2" in cut
    plan = check_reruns(
        workdir_copy,
        tmp_path,
        graph,
        {"regions": {"definitions": {"CR_tt": cut.replace(">= 2", ">= 3")}}},
        graph.select("cache_file"),
        ["toy_file"],
    )
    assert graph.select("cache_sample") | graph.select("export_regions") <= set(plan)


def test_toy_size_regenerates_that_sample_only(workdir_copy, tmp_path, graph):
    """toy.events.ZH: the ZH toy files, then downstream; not the pseudo-data (expected yields do
    not depend on the MC size) nor the other samples' files."""
    plan = check_reruns(
        workdir_copy,
        tmp_path,
        graph,
        {"toy": {"events": {"ZH": CFG["toy"]["events"]["ZH"] + 100}}},
        graph.select("toy_file", sample="ZH"),
        [],
    )
    assert len(graph.select("toy_file", sample="ZH")) == CFG["toy"]["files_per_sample"]
    assert {j.wc("sample") for j in plan if j.rule in {"toy_file", "cache_file"}} == {"ZH"}
    assert {j.wc("sample") for j in plan if j.rule == "cache_sample"} == {"ZH"}


def test_control_region_fit_option_retrains_domain_adaptation_only(workdir_copy, tmp_path, graph):
    """fit.scale_factors.minos: the scale-factor fit, then what reads it: domain_adaptation's
    training (scale-factor-weighted domain loss), the signal fits, the evaluations."""
    plan = check_reruns(
        workdir_copy,
        tmp_path,
        graph,
        {"fit": {"scale_factors": {"minos": not CFG["fit"]["scale_factors"]["minos"]}}},
        graph.select("scale_factors"),
        [*UPSTREAM],
    )
    domain = [m for m in P.all_models(CFG) if P.train_needs(CFG, m)["domain"]]
    assert domain == ["domain_adaptation"]
    assert {j.wc("model") for j in plan if j.rule in {"train_model", "score_model"}} == {
        "domain_adaptation"
    }
    assert graph.select("train_model", model="domain_adaptation") <= set(plan)


def test_blinding_window_reruns_the_histogram_plots_only(workdir_copy, tmp_path, graph):
    """blinding.window (only the signal-region data/MC figures hide data by it): the side-band
    data of those figures (hists_plot_data: only the data outside the window are stored) and the
    histogram plot jobs, no other computation (not the scores, histograms, fits, binning scan or
    evaluation)."""
    lo, hi = CFG["blinding"]["window"]
    check_reruns(
        workdir_copy,
        tmp_path,
        graph,
        {"blinding": {"window": [lo - 5.0, hi + 5.0]}},
        fit_jobs(graph, "hists_plot_data"),  # (hists_plots: downstream of it)
        [r for r in COMPUTE_RULES if r != "hists_plot_data"],
    )


@pytest.mark.parametrize(
    ("process", "option", "value"), [("TT", "color", "#123456"), ("ZH", "label", "ZH (bb)")]
)
def test_plot_style_reruns_plot_jobs_only(workdir_copy, tmp_path, graph, process, option, value):
    """A process colour or label: the figures drawn with process styles (control-region fit,
    histograms, signal-strength fits), no compute job (no fit, training or evaluation)."""
    assert CFG["samples"]["processes"][process].get(option) != value
    plan = check_reruns(
        workdir_copy,
        tmp_path,
        graph,
        {"samples": {"processes": {process: {option: value}}}},
        graph.select("scale_factors_plots")
        | fit_jobs(graph, "hists_plots", "signal_fit_plots")
        | (graph.select("weights_plots") if option == "label" else set()),  # names processes
        COMPUTE_RULES,
    )
    assert {j.wc("mode") for j in plan if j.rule == "signal_fit_plots"} == set(CFG["fit"]["modes"])
    # the summary page embeds figures (post-fit, impacts, Pareto): it is redrawn with them
    assert {j.rule for j in plan} <= PLOT_RULES | {"all", "summary"}
