"""Evaluate one model: metrics.json (schema-validated) and the plot data (rule evaluate_model)."""

from vhbb.core.logs import run_script
from vhbb.evaluation import evaluate as evaluation


def main(smk) -> None:  # type: ignore[no-untyped-def]
    samples = smk.params.samples
    weights = list(smk.input.get("weights", []))
    evaluation.run_evaluate(
        cache_files=dict(zip(samples, smk.input.cache, strict=True)),
        score_files=dict(zip(samples, smk.input.scores, strict=True)),
        export_path=smk.input.export,
        model_paths=list(smk.input.models),
        history_paths=list(smk.input.histories),
        scale_factors_path=smk.input.scale_factors,
        weights_files=dict(zip(smk.params.weight_regions, weights, strict=True)),
        metrics_path=smk.output.metrics,
        plot_data_path=smk.output.plot_data,
        spec=smk.params.spec,
        reweighting_files=dict(zip(smk.params.reweighting, smk.input.reweighting, strict=True)),
        model=smk.wildcards.model,
    )


run_script(snakemake, main)
