"""ROC curves of all evaluated models in one figure (rule compare_roc)."""

from vhbb.core.logs import run_script
from vhbb.plots import evaluation as eval_plots


def main(smk) -> None:  # type: ignore[no-untyped-def]
    models = smk.params.models
    eval_plots.run_roc_all(dict(zip(models, smk.input, strict=True)), smk.output[0])


run_script(snakemake, main)
