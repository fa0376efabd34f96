# Negative-weight transformation: w -> cross-fitted E[w|x], one job for all exported regions
# (one estimate per process from the events of all regions, rescaled per region).


rule transform_weights:
    """Replace MC weights by the cross-fitted local mean weight E[w|x] (clipped, yield kept)."""
    input:
        expand("results/export/{region}.h5", region=REGIONS),
    output:
        h5=expand("results/weights/{region}.h5", region=REGIONS),
        validation=expand("results/weights/{region}/validation.json", region=REGIONS),
        checks=expand("results/checks/weights/{region}.json", region=REGIONS),
        plots=weights_plot_dirs(),
    log:
        "logs/weights/transform_weights.log",
    benchmark:
        "logs/benchmarks/transform_weights/weights/transform_weights.tsv"
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        spec=P.weights(config),
        regions=REGIONS,
    script:
        "../scripts/weights.py"
