rule cache_file:
    """Read one ROOT file in chunks, derive variables, select events and assign regions."""
    input:
        cache_input,
    output:
        temp("results/cache/parts/{sample}/part{index}.parquet"),
    log:
        "logs/cache/{sample}/part{index}.log",
    benchmark:
        "logs/benchmarks/cache_file/cache/{sample}/part{index}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=3000,
        runtime=30,
    params:
        path=lambda wc: P.input_path(config, wc.sample, int(wc.index)),
        spec=lambda wc: P.cache_file(config, wc.sample),
    script:
        "../scripts/cache_file.py"


rule cache_sample:
    """Merge a sample's cached files; normalise weights to sigma*L."""
    input:
        cache_parts,
    output:
        parquet="results/cache/{sample}.parquet",
        stats="results/cache/{sample}.json",
    log:
        "logs/cache/{sample}.log",
    benchmark:
        "logs/benchmarks/cache_sample/cache/{sample}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        spec=lambda wc: P.cache_sample(config, wc.sample),
    script:
        "../scripts/cache_sample.py"
