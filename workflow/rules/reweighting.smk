# Data-driven reweighting of mismodelled inputs (vhbb.fit.reweighting): derived from
# control-region data the fits do not see, validated on the fit half; the histograms and the
# evaluation apply it to every MC event (see hists_inputs and evaluate_inputs).


rule derive_reweighting:
    """Correction of one mismodelled input from control-region data, with its validation."""
    input:
        cache=expand("results/cache/{sample}.parquet", sample=SAMPLES),
    output:
        correction="results/reweighting/{name}.json",
        validation="results/reweighting/{name}/validation.json",
        checks="results/checks/reweighting/{name}.json",
    log:
        "logs/reweighting/{name}.log",
    benchmark:
        "logs/benchmarks/derive_reweighting/reweighting/{name}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=3000,
        runtime=10,
    params:
        samples=SAMPLES,
        spec=lambda wc: P.reweighting(config, wc.name),
    script:
        "../scripts/derive_reweighting.py"
