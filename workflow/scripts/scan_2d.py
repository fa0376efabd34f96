"""Two-parameter profile-likelihood scan of one model in one mode (rule scan_2d)."""

from vhbb.core.logs import run_script
from vhbb.fit import diagnostics


def main(smk) -> None:  # type: ignore[no-untyped-def]
    diagnostics.run_scan_2d(
        smk.input.hists,
        smk.input.scale_factors,
        mode=smk.wildcards.mode,
        json_path=smk.output.json,
        spec=smk.params.spec,
    )


run_script(snakemake, main)
