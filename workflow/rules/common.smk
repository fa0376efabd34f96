# Config validation, wildcard constraints and the helper functions that map config to files.
import re

import vhbb.config.params as P
from vhbb.config import validate, load_schema

validate(config, load_schema())
# expand every scan now: an unknown path or a value its key's schema refuses fails here
P.all_models(config)


SAMPLES = list(config["samples"]["list"])
REGIONS = list(config["export"]["regions"])
MODELS = P.enabled_models(config)
FOLDS = list(range(config["export"]["folds"]))
TRAINING_REGION = config["export"]["training_region"]
# models whose training is another's: copied, not trained again (rule alias_model)
ALIASES = P.model_aliases(config)
ALIAS_PATTERN = "|".join(re.escape(m) for m in ALIASES) or "(?!)"
ENV = "../../envs/vhbb.yaml"


wildcard_constraints:
    sample="|".join(SAMPLES),
    index=r"\d+",
    region="|".join(REGIONS),
    model=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    fold=r"\d+",


# Local runs: a server imports the heavy libraries once and forks a ready process per job
# (vhbb.core.prefork; config `prefork`, README: Speed).  Cluster executors never start it.
PREFORK = {}


onstart:
    if config.get("prefork", True) and workflow.local_exec:
        from vhbb.core import prefork

        PREFORK["server"] = prefork.start(log_path="logs/prefork.log")


def stop_prefork():
    if PREFORK:
        from vhbb.core import prefork

        prefork.stop(PREFORK.pop("server"))


onsuccess:
    stop_prefork()


onerror:
    stop_prefork()


def toy_files():
    return [
        f"resources/ntuples/{s}/part{i}.root"
        for s in P.toy_samples(config)
        for i in range(P.n_files(config, s))
    ]


def cache_parts(wildcards):
    """The sample's cached files; for data with samples.overlap_removal, also those of the
    data samples ranked before it (their events are removed from this sample)."""
    return [
        f"results/cache/parts/{s}/part{i}.parquet"
        for s in [*P.overlap_with(config, wildcards.sample), wildcards.sample]
        for i in range(P.n_files(config, s))
    ]


def cache_input(wildcards):
    """Local input files are declared (Snakemake tracks them); root:// URLs go via params."""
    path = P.input_path(config, wildcards.sample, int(wildcards.index))
    return [] if "://" in path else [path]


def cache_outputs():
    return expand("results/cache/{sample}.parquet", sample=SAMPLES)


def export_outputs():
    return expand("results/export/{region}.h5", region=REGIONS)


def train_inputs(wildcards):
    """The export always; the transformed weights and control regions when the model needs them."""
    needs = P.train_needs(config, wildcards.model)
    inputs = {"export": f"results/export/{TRAINING_REGION}.h5"}
    if needs["weights"]:
        inputs["weights"] = f"results/weights/{TRAINING_REGION}.h5"
    if needs["domain"]:
        inputs["control_regions"] = [
            f"results/export/{r}.h5" for r in REGIONS if r != TRAINING_REGION
        ]
        inputs["scale_factors"] = "results/fits/scale_factors.json"
    return inputs


def model_outputs():
    return expand(
        "results/models/{model}/fold{fold}/model.pt", model=MODELS, fold=FOLDS
    )


def score_outputs():
    return expand(
        "results/scores/{model}/{sample}.parquet", model=MODELS, sample=SAMPLES
    )


def weights_outputs():
    return (
        expand("results/weights/{region}.h5", region=REGIONS)
        + expand("results/weights/{region}/validation.json", region=REGIONS)
        + expand("results/weights/{region}/plots", region=REGIONS)
    )


# Derived reweightings of mismodelled inputs (workflow/rules/reweighting.smk).
REWEIGHTING = [e["name"] for e in P.reweighting_list(config)]


def reweighting_outputs():
    return expand("results/reweighting/{name}.json", name=REWEIGHTING)


def hists_inputs(wildcards):
    """Cached events and the model's out-of-fold scores of every sample, the reweightings."""
    return {
        "cache": expand("results/cache/{sample}.parquet", sample=SAMPLES),
        "scores": expand(
            "results/scores/{model}/{sample}.parquet",
            model=wildcards.model,
            sample=SAMPLES,
        ),
        "reweighting": reweighting_outputs(),
    }


DATA_SAMPLES = [s for s in SAMPLES if P.is_data(config, s)]


def plot_data_inputs(wildcards):
    """Cached events of the data samples and the model's fold models."""
    return {
        "cache": expand("results/cache/{sample}.parquet", sample=DATA_SAMPLES),
        "models": expand(
            "results/models/{model}/fold{fold}/model.pt",
            model=wildcards.model,
            fold=FOLDS,
        ),
    }


def fit_outputs():
    """Histograms, signal-strength fits, workspaces and figures of the models in fit.models."""
    models = P.fit_models(config)
    return (
        expand("results/hists/{model}/hists.h5", model=models)
        + expand(
            "results/fits/{model}/{mode}/signal_strength.json",
            model=models,
            mode=config["fit"]["modes"],
        )
        + expand(
            "results/fits/{model}/{mode}/workspace.json",
            model=models,
            mode=[
                m
                for m in ("simultaneous", "constrained")
                if m in config["fit"]["modes"]
            ],
        )
        + fit_plot_outputs()
    )


def fit_plot_outputs():
    """Figures of the plot rules of fit.smk: the control-region fit, then the histograms and
    signal-strength fits of the models in fit.models."""
    models = P.fit_models(config)
    return (
        [
            "results/fits/scale_factors/yields",
            "results/fits/scale_factors/sf_vs_mjj.png",
            "results/fits/scale_factors/features",
        ]
        + expand("results/hists/{model}/plots", model=models)
        + expand(
            "results/fits/{model}/{mode}/plots",
            model=models,
            mode=config["fit"]["modes"],
        )
    )


def diagnostics_outputs():
    """Diagnostics, Combine datacards and binning scans (with their figures) of fit.models."""
    models = P.fit_models(config)
    diag_modes = P.diagnostics_modes(config)
    out = (
        expand(
            "results/fits/{model}/{mode}/diagnostics.json",
            model=models,
            mode=diag_modes,
        )
        + expand(
            "results/fits/{model}/{mode}/diagnostics", model=models, mode=diag_modes
        )
        + expand(
            "results/fits/{model}/{mode}/scan_2d",
            model=models,
            mode=P.scan_2d_modes(config),
        )
        + expand(
            "results/fits/{model}/{mode}/combine/datacard.txt",
            model=models,
            mode=P.combine_modes(config),
        )
    )
    if config["fit"]["binning_scan"]["enabled"]:
        out += expand(
            "results/fits/{model}/binning_scan.{ext}", model=models, ext=["json", "png"]
        )
    return out


def all_targets():
    return (
        export_outputs()
        + weights_outputs()
        + ["results/fits/scale_factors.json"]
        + reweighting_outputs()
        + score_outputs()
        + fit_outputs()
        + diagnostics_outputs()
        + evaluation_outputs()
        + ["results/summary.json", "results/summary.html"]
    )


# Evaluation and scans (workflow/rules/evaluate.smk).
EVAL_MODELS = P.evaluation_models(config)
SCANS = P.scan_names(config)
EVAL_REGIONS = [TRAINING_REGION, *config["fit"]["scale_factors"]["regions"]]


def evaluate_inputs(wildcards):
    """Scores and cache of every sample, the fold models (validation scores), histories."""
    m = wildcards.model
    inputs = {
        "cache": expand("results/cache/{sample}.parquet", sample=SAMPLES),
        "scores": expand(
            "results/scores/{model}/{sample}.parquet", model=m, sample=SAMPLES
        ),
        "export": f"results/export/{TRAINING_REGION}.h5",
        "models": expand(
            "results/models/{model}/fold{fold}/model.pt", model=m, fold=FOLDS
        ),
        "histories": expand(
            "results/models/{model}/fold{fold}/history.json", model=m, fold=FOLDS
        ),
        "scale_factors": "results/fits/scale_factors.json",
        "reweighting": reweighting_outputs(),
    }
    if config["evaluation"]["positive_weight"] == "transformed":
        inputs["weights"] = expand("results/weights/{region}.h5", region=EVAL_REGIONS)
    return inputs


def scan_models(scan):
    """What best:<scan> can choose: the scan's points, then its selection candidates."""
    spec = P.scan_summary(config, scan)
    return list(dict.fromkeys([*spec["points"], *spec["selection"]["candidates"]]))


# What best:<scan> chooses from is trained, scored and evaluated first: the selected model's
# fits and diagnostics wait for all of it, and the other models' jobs fill the cores meanwhile.
SELECTION_MODELS = {m for scan in P.scan_names(config) for m in scan_models(scan)}


def selection_priority(wildcards):
    return 1 if wildcards.model in SELECTION_MODELS else 0


def scan_summary_models(wildcards):
    import vhbb.config.scans as S

    points = list(P.scan_summary(config, wildcards.scan)["points"])
    return points + S.compare_models(config, wildcards.scan)


def evaluation_outputs():
    models = EVAL_MODELS
    return (
        expand("results/evaluation/{model}/metrics.json", model=models)
        + expand("results/evaluation/{model}/plots", model=models)
        + (["results/evaluation/roc_all.png"] if models else [])
        + expand(
            "results/scans/{scan}/{name}",
            scan=SCANS,
            name=["best.json", "summary.csv", "summary.md", "pareto.png"],
        )
    )


# The summary page (workflow/rules/summary.smk).
SUMMARY_KEYS = P.summary_keys(config)


def summary_inputs(wildcards):
    """Result files the summary page reads; figure folders of the first simultaneous fit."""
    k = SUMMARY_KEYS
    return {
        "export_summary": "results/export/summary.json",
        "scale_factors": "results/fits/scale_factors.json",
        "metrics": expand("results/evaluation/{m}/metrics.json", m=k["metrics"]),
        "best": expand("results/scans/{s}/best.json", s=k["best"]),
        "fits": [f"results/fits/{f}/signal_strength.json" for f in k["fits"]],
        "diagnostics": [f"results/fits/{d}/diagnostics.json" for d in k["diagnostics"]],
        "checks": expand("results/checks/weights/{r}.json", r=k["weights"])
        + expand("results/checks/selection/{s}.json", s=k["best"])
        + expand("results/checks/reweighting/{n}.json", n=REWEIGHTING),
        "figures": expand("results/scans/{s}/pareto.png", s=k["best"]),
        "figure_dirs": [
            f"results/fits/{d}/{sub}"
            for d in k["shown"]
            for sub in ("plots", "diagnostics")
        ],
    }


def summary_links():
    return sorted(
        set(
            v
            for x in summary_inputs(None).values()
            for v in ([x] if isinstance(x, str) else x)
        )
    )
