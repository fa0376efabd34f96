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
        plot_data=expand("results/weights/{region}/plot_data.json", region=REGIONS),
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


rule weights_plots:
    """Per region and variable: all MC and one ratio panel per process (w'/w, paired test)."""
    input:
        "results/weights/{region}/plot_data.json",
    output:
        plots=report(
            directory("results/weights/{region}/plots"),
            patterns=["{variable}.png"],
            caption="../report/weights_ratio.rst",
            category="Weights",
            subcategory="{region}",
            labels={"region": "{region}", "variable": "{variable}"},
        ),
    log:
        "logs/weights/{region}_plots.log",
    benchmark:
        "logs/benchmarks/weights_plots/weights/{region}_plots.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        labels={n: p.get("label", n) for n, p in config["samples"]["processes"].items()},
    script:
        "../scripts/weights_plots.py"
