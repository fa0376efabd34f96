"""Cache one ROOT file: derived columns, preselection, regions (rule cache_file)."""

from vhbb.core.logs import run_script


def main(smk) -> None:  # type: ignore[no-untyped-def]
    # imported here: a pre-forked job (vhbb.core.prefork) skips this process's imports
    from vhbb.data import cache

    cache.run_cache_file(smk.params.path, smk.output[0], **smk.params.spec)


run_script(snakemake, main)
