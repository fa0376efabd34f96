# Evaluation of trained models, hyperparameter scans and the best:<scan> choice.
import re


wildcard_constraints:
    scan="|".join(re.escape(s) for s in SCANS) or "(?!x)x",


ruleorder: best_scores > score_model
ruleorder: best_evaluation > evaluate_model


rule evaluate_model:
    """Separation, significance, sculpting, data/MC and VZ-peak figures of one model."""
    input:
        unpack(evaluate_inputs),
    output:
        metrics="results/evaluation/{model}/metrics.json",
        plot_data="results/evaluation/{model}/plot_data.json",
    log:
        "logs/evaluation/{model}.log",
    benchmark:
        "logs/benchmarks/evaluate_model/evaluation/{model}.tsv"
    priority: selection_priority
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=6000,
        runtime=60,
    params:
        spec=lambda wc: P.evaluate(config, wc.model),
        samples=SAMPLES,
        weight_regions=EVAL_REGIONS,
        reweighting=REWEIGHTING,
    script:
        "../scripts/evaluate_model.py"


rule evaluation_plots:
    """Score distributions, m_jj per score quantile, VZ peak, method-specific ratios."""
    input:
        plot_data="results/evaluation/{model}/plot_data.json",
    output:
        plots=report(
            directory("results/evaluation/{model}/plots"),
            patterns=["{name}.png"],
            caption="../report/evaluation.rst",
            category="Evaluation",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "{name}"},
        ),
    log:
        "logs/evaluation/{model}_plots.log",
    benchmark:
        "logs/benchmarks/evaluation_plots/evaluation/{model}_plots.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../scripts/evaluation_plots.py"


rule compare_roc:
    """ROC curves of every evaluated model in one figure."""
    input:
        expand("results/evaluation/{model}/plot_data.json", model=EVAL_MODELS),
    output:
        report(
            "results/evaluation/roc_all.png",
            caption="../report/roc_all.rst",
            category="Evaluation",
            subcategory="Comparison",
            labels={"figure": "ROC curves of all models"},
        ),
    log:
        "logs/evaluation/roc_all.log",
    benchmark:
        "logs/benchmarks/compare_roc/evaluation/roc_all.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        models=EVAL_MODELS,
    script:
        "../scripts/compare_roc.py"


rule scan_summary:
    """Table, heatmaps, Pareto plot and selection (best.json, on validation figures)."""
    input:
        metrics=lambda wc: expand(
            "results/evaluation/{model}/metrics.json", model=scan_summary_models(wc)
        ),
    output:
        csv="results/scans/{scan}/summary.csv",
        md="results/scans/{scan}/summary.md",
        best="results/scans/{scan}/best.json",
        checks="results/checks/selection/{scan}.json",
        heatmaps=report(
            directory("results/scans/{scan}/heatmaps"),
            patterns=["{name}.png"],
            caption="../report/scan_heatmaps.rst",
            category="Scans",
            subcategory="{scan}",
            labels={"scan": "{scan}", "figure": "{name}"},
        ),
        pareto=report(
            "results/scans/{scan}/pareto.png",
            caption="../report/scan_pareto.rst",
            category="Scans",
            subcategory="{scan}",
            labels={"scan": "{scan}", "figure": "Pareto front"},
        ),
    log:
        "logs/scans/{scan}.log",
    benchmark:
        "logs/benchmarks/scan_summary/scans/{scan}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        spec=lambda wc: P.scan_summary(config, wc.scan),
        models=scan_summary_models,
    script:
        "../scripts/scan_summary.py"


rule best_scores:
    """Scores of best:<scan>: the chosen point's, resolved from best.json when the job runs."""
    input:
        best="results/scans/{scan}/best.json",
        files=lambda wc: expand(
            "results/scores/{model}/{sample}.parquet",
            model=scan_models(wc.scan),
            sample=SAMPLES,
        ),
    output:
        expand("results/scores/best-{{scan}}/{sample}.parquet", sample=SAMPLES),
    log:
        "logs/scans/{scan}_best_scores.log",
    benchmark:
        "logs/benchmarks/best_scores/scans/{scan}_best_scores.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        points=lambda wc: list(scan_models(wc.scan)),
        kind="scores",
    script:
        "../scripts/best_copy.py"


rule best_evaluation:
    """Metrics of best:<scan>: the chosen point's, marked with the scan."""
    input:
        best="results/scans/{scan}/best.json",
        files=lambda wc: expand(
            "results/evaluation/{model}/{name}",
            model=scan_models(wc.scan),
            name=["metrics.json", "plot_data.json"],
        ),
    output:
        metrics="results/evaluation/best-{scan}/metrics.json",
        plot_data="results/evaluation/best-{scan}/plot_data.json",
    log:
        "logs/scans/{scan}_best_evaluation.log",
    benchmark:
        "logs/benchmarks/best_evaluation/scans/{scan}_best_evaluation.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        points=lambda wc: list(scan_models(wc.scan)),
        kind="metrics",
    script:
        "../scripts/best_copy.py"
