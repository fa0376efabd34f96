"""Figures of the control-region fit from its plot data (rule scale_factors_plots)."""

from vhbb.core.logs import run_script
from vhbb.fit import figures


def main(smk) -> None:  # type: ignore[no-untyped-def]
    figures.run_scale_factor_plots(
        smk.input.plot_data,
        yields_dir=smk.output.yields,
        slices_plot=smk.output.slices,
        features_dir=smk.output.features,
        styles=smk.params.styles,
        lumi=smk.params.lumi,
        workers=smk.threads,
    )


run_script(snakemake, main)
