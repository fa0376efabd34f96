# Negative-weight transformation: w -> cross-fitted E[w | x], one job per exported region.


rule transform_weights:
    """Replace MC weights by the cross-fitted local mean weight E[w|x] (clipped, yield kept)."""
    input:
        "results/export/{region}.h5",
    output:
        h5="results/weights/{region}.h5",
        validation="results/weights/{region}/validation.json",
        checks="results/checks/weights/{region}.json",
        plots=report(
            directory("results/weights/{region}/plots"),
            patterns=["{variable}.png"],
            caption="../report/weights_ratio.rst",
            category="Weights",
            subcategory="{region}",
            labels={"region": "{region}", "variable": "{variable}"},
        ),
    log:
        "logs/weights/{region}.log",
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=6000,
        runtime=120,
    params:
        spec=P.weights(config),
    script:
        "../scripts/weights.py"
