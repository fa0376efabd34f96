rule export_regions:
    """Write the HDF5 export of every region (features, labels, weights, keys, folds)."""
    input:
        expand("results/cache/{sample}.parquet", sample=SAMPLES),
    output:
        regions=expand("results/export/{region}.h5", region=REGIONS),
        summary="results/export/summary.json",
    log:
        "logs/export.log",
    benchmark:
        "logs/benchmarks/export_regions/export.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=6000,
        runtime=30,
    params:
        sample_names=SAMPLES,
        regions=REGIONS,
        spec=P.export(config),
    script:
        "../scripts/export.py"
