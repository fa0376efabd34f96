# Config validation, wildcard constraints and the helper functions that map config to files.
import vhbb.params as P
from vhbb.config import validate, load_schema

validate(config, load_schema(workflow.source_path("../schemas/config.schema.yaml")))


SAMPLES = list(config["samples"]["list"])
REGIONS = list(config["export"]["regions"])
ENV = "../../envs/vhbb.yaml"


wildcard_constraints:
    sample="|".join(SAMPLES),
    index=r"\d+",
    region="|".join(REGIONS),


def toy_files():
    return [
        f"resources/ntuples/{s}/part{i}.root"
        for s in P.toy_samples(config)
        for i in range(P.n_files(config, s))
    ]


def cache_parts(wildcards):
    return [
        f"results/cache/parts/{wildcards.sample}/part{i}.parquet"
        for i in range(P.n_files(config, wildcards.sample))
    ]


def cache_input(wildcards):
    """Local input files are declared (Snakemake tracks them); root:// URLs go via params."""
    path = P.input_path(config, wildcards.sample, int(wildcards.index))
    return [] if "://" in path else [path]


def cache_outputs():
    return expand("results/cache/{sample}.parquet", sample=SAMPLES)


def export_outputs():
    return expand("results/export/{region}.h5", region=REGIONS)


def all_targets():
    return export_outputs()
