"""Scan, pre-/post-fit yields and pulls of one signal-strength fit (rule signal_fit_plots)."""

from vhbb.core.logs import run_script
from vhbb.fit import figures


def main(smk) -> None:  # type: ignore[no-untyped-def]
    figures.run_signal_fit_plots(
        smk.input.json,
        smk.input.plot_data,
        plots_dir=smk.output.plots,
        styles=smk.params.styles,
        lumi=smk.params.lumi,
    )


run_script(snakemake, main)
