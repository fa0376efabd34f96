"""Merge one sample's cached files and normalise its weights (rule cache_sample)."""

from pathlib import Path

from vhbb.core.logs import run_script


def main(smk) -> None:  # type: ignore[no-untyped-def]
    # imported here: a pre-forked job (vhbb.core.prefork) skips this process's imports
    from vhbb.data import cache

    spec = dict(smk.params.spec)
    # data overlap removal: the inputs also hold the parts of the higher-priority data samples
    # (results/cache/parts/{sample}/part{i}.parquet)
    higher = spec.pop("overlap_with", [])
    parts = [p for p in smk.input if Path(p).parent.name == spec["sample"]]
    overlap = {s: [p for p in smk.input if Path(p).parent.name == s] for s in higher}
    cache.run_cache_sample(
        parts, smk.output.parquet, smk.output.stats, overlap_parts=overlap or None, **spec
    )


run_script(snakemake, main)
