"""Signal-strength fit of one model in one mode (rule signal_fit); a failed fit exits 1."""

from vhbb.core.logs import run_script
from vhbb.fit import signal_fit


def main(smk) -> None:  # type: ignore[no-untyped-def]
    signal_fit.run_signal_fit(
        smk.input.hists,
        smk.input.scale_factors,
        mode=smk.wildcards.mode,
        json_path=smk.output.json,
        plot_data=smk.output.plot_data,
        spec=smk.params.spec,
    )


run_script(snakemake, main)
