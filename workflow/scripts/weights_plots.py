"""Validation figures of the weight transformation, one region (rule weights_plots)."""

from vhbb.core.logs import run_script
from vhbb.plots.weights import run_weights_plots


def main(smk) -> None:  # type: ignore[no-untyped-def]
    run_weights_plots(smk.input[0], smk.output.plots, smk.params.labels)


run_script(snakemake, main)
