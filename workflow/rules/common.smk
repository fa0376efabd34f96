# Config validation, wildcard constraints and the helper functions that map config to files.
import vhbb.params as P
from vhbb.config import validate, load_schema

validate(config, load_schema(workflow.source_path("../schemas/config.schema.yaml")))


SAMPLES = list(config["samples"]["list"])
REGIONS = list(config["export"]["regions"])
MODELS = P.enabled_models(config)
FOLDS = list(range(config["export"]["folds"]))
TRAINING_REGION = config["export"]["training_region"]
ENV = "../../envs/vhbb.yaml"


wildcard_constraints:
    sample="|".join(SAMPLES),
    index=r"\d+",
    region="|".join(REGIONS),
    model=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    fold=r"\d+",


def toy_files():
    return [
        f"resources/ntuples/{s}/part{i}.root"
        for s in P.toy_samples(config)
        for i in range(P.n_files(config, s))
    ]


def cache_parts(wildcards):
    return [
        f"results/cache/parts/{wildcards.sample}/part{i}.parquet"
        for i in range(P.n_files(config, wildcards.sample))
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
    return expand("results/weights/{region}.h5", region=REGIONS) + expand(
        "results/weights/{region}/validation.json", region=REGIONS
    )


def hists_inputs(wildcards):
    """Cached events and the model's out-of-fold scores of every sample."""
    return {
        "cache": expand("results/cache/{sample}.parquet", sample=SAMPLES),
        "scores": expand(
            "results/scores/{model}/{sample}.parquet",
            model=wildcards.model,
            sample=SAMPLES,
        ),
    }


def fit_outputs():
    """Histograms, signal-strength fits and workspaces of the models in fit.models."""
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
    )


def diagnostics_outputs():
    """Diagnostics, Combine datacards and binning scans of the models in fit.models."""
    models = P.fit_models(config)
    out = expand(
        "results/fits/{model}/{mode}/diagnostics.json",
        model=models,
        mode=P.diagnostics_modes(config),
    ) + expand(
        "results/fits/{model}/{mode}/combine/datacard.txt",
        model=models,
        mode=P.combine_modes(config),
    )
    if config["fit"]["binning_scan"]["enabled"]:
        out += expand("results/fits/{model}/binning_scan.json", model=models)
    return out


def all_targets():
    return (
        export_outputs()
        + weights_outputs()
        + ["results/fits/scale_factors.json"]
        + score_outputs()
        + fit_outputs()
        + diagnostics_outputs()
        + evaluation_outputs()
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
    }
    if config["evaluation"]["positive_weight"] == "transformed":
        inputs["weights"] = expand("results/weights/{region}.h5", region=EVAL_REGIONS)
    return inputs


def scan_models(scan):
    """The scan's points followed by the models it is compared with."""
    return P.scan_summary(config, scan)["points"].keys()


def scan_summary_models(wildcards):
    import vhbb.scans as S

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
