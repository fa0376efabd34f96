"""Templates and data/MC figures of one model's histograms (rule hists_plots)."""

from vhbb.core.logs import run_script
from vhbb.fit import figures


def main(smk) -> None:  # type: ignore[no-untyped-def]
    figures.run_hists_plots(
        smk.input.hists,
        smk.input.plot_data,
        plots_dir=smk.output.plots,
        styles=smk.params.styles,
        lumi=smk.params.lumi,
        window=smk.params.window,
    )


run_script(snakemake, main)
