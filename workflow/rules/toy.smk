rule toy_file:
    """Generate one toy ntuple file (one job per file, seeded by sample and file index)."""
    output:
        "resources/ntuples/{sample}/part{index}.root",
    log:
        "logs/toy/{sample}/part{index}.log",
    benchmark:
        "logs/benchmarks/toy_file/toy/{sample}/part{index}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        spec=lambda wc: P.toy_file(config, wc.sample, int(wc.index)),
    script:
        "../scripts/toy_file.py"
