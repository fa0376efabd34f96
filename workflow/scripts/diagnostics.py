"""Fit diagnostics of one model in one mode (rule diagnostics)."""

from vhbb import diagnostics
from vhbb.logs import run_script


def main(smk) -> None:  # type: ignore[no-untyped-def]
    diagnostics.run_diagnostics(
        smk.input.hists,
        smk.input.scale_factors,
        mode=smk.wildcards.mode,
        json_path=smk.output.json,
        plots_dir=smk.output.plots,
        spec=smk.params.spec,
        workers=smk.threads,
    )


run_script(snakemake, main)
