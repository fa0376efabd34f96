"""Signal-strength fit of one model in one mode (rule signal_fit); a failed fit exits 1."""

from vhbb import signal_fit
from vhbb.logs import run_script


def main(smk) -> None:  # type: ignore[no-untyped-def]
    signal_fit.run_signal_fit(
        smk.input.hists,
        smk.input.scale_factors,
        mode=smk.wildcards.mode,
        json_path=smk.output.json,
        plots_dir=smk.output.plots,
        spec=smk.params.spec,
    )


run_script(snakemake, main)
