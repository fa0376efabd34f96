# Statistics II: fit diagnostics on pseudo-experiments, the 2D profile scan, binning scan, CMS
# Combine export (vhbb.fit.diagnostics, vhbb.fit.binning_scan, vhbb.fit.combine); figures by plot
# rules (vhbb.fit.figures, see fit.smk; the 2D scan's by vhbb.plots.diagnostics.scan_2d).


rule diagnostics:
    """Impacts, correlations, goodness of fit, injection, closure and VZ check of one fit."""
    input:
        hists="results/hists/{model}/hists.h5",
        scale_factors="results/fits/scale_factors.json",
    output:
        json="results/fits/{model}/{mode}/diagnostics.json",
        plot_data="results/fits/{model}/{mode}/diagnostics_plot_data.json",
    log:
        "logs/fits/{model}/{mode}_diagnostics.log",
    benchmark:
        "logs/benchmarks/diagnostics/fits/{model}/{mode}_diagnostics.tsv"
    wildcard_constraints:
        mode="fixed|constrained|simultaneous",
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        spec=lambda wc: without_plot_options(P.diagnostics(config, wc.model, wc.mode)),
    script:
        "../scripts/diagnostics.py"


rule diagnostics_plots:
    """Impact ranking, correlation matrix, GoF, injection and closure-pull figures of one fit."""
    input:
        json="results/fits/{model}/{mode}/diagnostics.json",
        plot_data="results/fits/{model}/{mode}/diagnostics_plot_data.json",
    output:
        plots=report(
            directory("results/fits/{model}/{mode}/diagnostics"),
            patterns=["{name}.png"],
            caption="../report/diagnostics.rst",
            category="Fit diagnostics",
            subcategory="{model}: {mode}",
        ),
    log:
        "logs/fits/{model}/{mode}_diagnostics_plots.log",
    benchmark:
        "logs/benchmarks/diagnostics_plots/fits/{model}/{mode}_diagnostics_plots.tsv"
    wildcard_constraints:
        mode="fixed|constrained|simultaneous",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        lumi=PLOT_LUMI,
    script:
        "../scripts/diagnostics_plots.py"


rule scan_2d:
    """Two-parameter profile-likelihood scan (default mu x mu_VZ) of one fit."""
    input:
        hists="results/hists/{model}/hists.h5",
        scale_factors="results/fits/scale_factors.json",
    output:
        json="results/fits/{model}/{mode}/scan_2d.json",
    log:
        "logs/fits/{model}/{mode}_scan_2d.log",
    benchmark:
        "logs/benchmarks/scan_2d/fits/{model}/{mode}_scan_2d.tsv"
    wildcard_constraints:
        mode="fixed|constrained|simultaneous",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        spec=lambda wc: without_plot_options(P.scan_2d(config, wc.model, wc.mode)),
    script:
        "../scripts/scan_2d.py"


rule scan_2d_plot:
    """68 % and 95 % contours of the two-parameter profile scan of one fit."""
    input:
        json="results/fits/{model}/{mode}/scan_2d.json",
    output:
        plots=report(
            directory("results/fits/{model}/{mode}/scan_2d"),
            patterns=["{name}.png"],
            caption="../report/scan_2d.rst",
            category="Fit diagnostics",
            subcategory="{model}: {mode}",
        ),
    log:
        "logs/fits/{model}/{mode}_scan_2d_plot.log",
    benchmark:
        "logs/benchmarks/scan_2d_plot/fits/{model}/{mode}_scan_2d_plot.tsv"
    wildcard_constraints:
        mode="fixed|constrained|simultaneous",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        lumi=PLOT_LUMI,
    script:
        "../scripts/scan_2d_plot.py"


rule combine:
    """CMS Combine datacard and shapes ROOT file of one fit mode."""
    input:
        hists="results/hists/{model}/hists.h5",
        scale_factors="results/fits/scale_factors.json",
    output:
        card="results/fits/{model}/{mode}/combine/datacard.txt",
        shapes="results/fits/{model}/{mode}/combine/shapes.root",
        summary="results/fits/{model}/{mode}/combine/summary.json",
    log:
        "logs/fits/{model}/{mode}_combine.log",
    benchmark:
        "logs/benchmarks/combine/fits/{model}/{mode}_combine.tsv"
    wildcard_constraints:
        mode="fixed|constrained|simultaneous",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        spec=lambda wc: without_plot_options(P.signal_fit(config, wc.model, wc.mode)),
    script:
        "../scripts/combine.py"


rule binning_scan:
    """Expected sigma_mu and significance versus n x n signal-region bins."""
    input:
        unpack(hists_inputs),
        scale_factors="results/fits/scale_factors.json",
    output:
        json="results/fits/{model}/binning_scan.json",
    log:
        "logs/fits/{model}/binning_scan.log",
    benchmark:
        "logs/benchmarks/binning_scan/fits/{model}/binning_scan.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        samples=SAMPLES,
        spec=lambda wc: without_plot_options(P.binning_scan(config, wc.model)),
    script:
        "../scripts/binning_scan.py"


rule binning_scan_plot:
    """sigma_mu and significance versus the number of bins, with and without MC statistics."""
    input:
        json="results/fits/{model}/binning_scan.json",
    output:
        plot=report(
            "results/fits/{model}/binning_scan.png",
            caption="../report/binning_scan.rst",
            category="Fit diagnostics",
            subcategory="{model}: binning scan",
        ),
    log:
        "logs/fits/{model}/binning_scan_plot.log",
    benchmark:
        "logs/benchmarks/binning_scan_plot/fits/{model}/binning_scan_plot.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        lumi=PLOT_LUMI,
    script:
        "../scripts/binning_scan_plot.py"
