"""Derive and validate one data-driven reweighting (rule derive_reweighting)."""

from vhbb.core.logs import run_script
from vhbb.fit import reweighting


def main(smk) -> None:  # type: ignore[no-untyped-def]
    reweighting.run_derive(
        dict(zip(smk.params.samples, smk.input.cache, strict=True)),
        name=smk.wildcards.name,
        correction_path=smk.output.correction,
        validation_path=smk.output.validation,
        checks_path=smk.output.checks,
        spec=smk.params.spec,
    )


run_script(snakemake, main)
