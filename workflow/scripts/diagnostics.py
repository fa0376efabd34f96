"""Fit diagnostics of one model in one mode (rule diagnostics)."""

from vhbb.core.logs import run_script
from vhbb.fit import diagnostics


def main(smk) -> None:  # type: ignore[no-untyped-def]
    diagnostics.run_diagnostics(
        smk.input.hists,
        smk.input.scale_factors,
        mode=smk.wildcards.mode,
        json_path=smk.output.json,
        plot_data=smk.output.plot_data,
        spec=smk.params.spec,
        workers=smk.threads,
    )


run_script(snakemake, main)
