"""sigma_mu and significance versus the number of 2D bins (rule binning_scan)."""

from vhbb.core.logs import run_script
from vhbb.fit import binning_scan


def main(smk) -> None:  # type: ignore[no-untyped-def]
    binning_scan.run_binning_scan(
        dict(zip(smk.params.samples, smk.input.cache, strict=True)),
        dict(zip(smk.params.samples, smk.input.scores, strict=True)),
        smk.input.scale_factors,
        json_path=smk.output.json,
        spec=smk.params.spec,
    )


run_script(snakemake, main)
