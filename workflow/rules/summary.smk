# The analysis at a glance: one page with the headline results and the status of every check.


rule summary:
    """results/summary.json and a self-contained results/summary.html (report landing page)."""
    input:
        unpack(summary_inputs),
    output:
        json="results/summary.json",
        html=report(
            "results/summary.html",
            caption="../report/summary.rst",
            category="0 Summary",
            labels={"page": "summary"},
        ),
    log:
        "logs/summary.log",
    benchmark:
        "logs/benchmarks/summary/summary.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        settings=P.summary(config),
        links=summary_links(),
    script:
        "../scripts/summary.py"
