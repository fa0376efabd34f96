"""Impacts, correlations, GoF, injection and closure figures of one fit (rule diagnostics_plots)."""

from vhbb.core.logs import run_script
from vhbb.fit import figures


def main(smk) -> None:  # type: ignore[no-untyped-def]
    figures.run_diagnostics_plots(
        smk.input.json,
        smk.input.plot_data,
        plots_dir=smk.output.plots,
        lumi=smk.params.lumi,
    )


run_script(snakemake, main)
