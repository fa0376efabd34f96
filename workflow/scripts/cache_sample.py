"""Merge one sample's cached files and normalise its weights (rule cache_sample)."""

from vhbb import cache
from vhbb.logs import run_script


def main(smk) -> None:  # type: ignore[no-untyped-def]
    cache.run_cache_sample(list(smk.input), smk.output.parquet, smk.output.stats, **smk.params.spec)


run_script(snakemake, main)
