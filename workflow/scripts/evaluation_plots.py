"""Per-model evaluation plots from the plot data (rule evaluation_plots)."""

from vhbb.core.logs import run_script
from vhbb.plots import evaluation as eval_plots


def main(smk) -> None:  # type: ignore[no-untyped-def]
    eval_plots.run_model_plots(smk.input.plot_data, smk.output.plots, smk.wildcards.model)


run_script(snakemake, main)
