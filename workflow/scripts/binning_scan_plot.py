"""Figure of one model's binning scan (rule binning_scan_plot)."""

from vhbb.core.logs import run_script
from vhbb.fit import figures


def main(smk) -> None:  # type: ignore[no-untyped-def]
    figures.run_binning_scan_plot(smk.input.json, plot_path=smk.output.plot, lumi=smk.params.lumi)


run_script(snakemake, main)
