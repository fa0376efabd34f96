"""Per-model evaluation plots from the plot data (rule evaluation_plots)."""

from vhbb import eval_plots
from vhbb.logs import run_script


def main(smk) -> None:  # type: ignore[no-untyped-def]
    eval_plots.run_model_plots(smk.input.plot_data, smk.output.plots, smk.wildcards.model)


run_script(snakemake, main)
