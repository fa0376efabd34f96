"""CMS Combine datacard and shapes of one model in one mode (rule combine)."""

from pathlib import Path

from vhbb.core.logs import run_script
from vhbb.fit import combine


def main(smk) -> None:  # type: ignore[no-untyped-def]
    combine.run_combine(
        smk.input.hists,
        smk.input.scale_factors,
        mode=smk.wildcards.mode,
        directory=str(Path(smk.output.card).parent),
        spec=smk.params.spec,
    )


run_script(snakemake, main)
