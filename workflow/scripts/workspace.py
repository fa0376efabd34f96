"""Export the signal-strength model of one mode as a pyhf workspace (rule workspace)."""

from vhbb.core.logs import run_script
from vhbb.fit import signal_fit


def main(smk) -> None:  # type: ignore[no-untyped-def]
    signal_fit.run_workspace(
        smk.input.hists,
        smk.input.scale_factors,
        mode=smk.wildcards.mode,
        path=smk.output[0],
        spec=smk.params.spec,
    )


run_script(snakemake, main)
