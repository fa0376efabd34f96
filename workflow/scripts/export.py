"""Export the analysis regions to HDF5 (rule export)."""

from vhbb.core.logs import run_script


def main(smk) -> None:  # type: ignore[no-untyped-def]
    # imported here: a pre-forked job (vhbb.core.prefork) skips this process's imports
    from vhbb.data import export

    export.run_export(
        dict(zip(smk.params.sample_names, smk.input, strict=True)),
        dict(zip(smk.params.regions, smk.output.regions, strict=True)),
        smk.output.summary,
        smk.params.spec,
    )


run_script(snakemake, main)
