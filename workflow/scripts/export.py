"""Export the analysis regions to HDF5 (rule export)."""

from vhbb.core.logs import run_script
from vhbb.data import export


def main(smk) -> None:  # type: ignore[no-untyped-def]
    export.run_export(
        dict(zip(smk.params.sample_names, smk.input, strict=True)),
        dict(zip(smk.params.regions, smk.output.regions, strict=True)),
        smk.output.summary,
        smk.params.spec,
    )


run_script(snakemake, main)
