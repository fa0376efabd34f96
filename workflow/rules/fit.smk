# Statistical fits: the model-independent control-region scale-factor fit, the 2D histograms and
# the signal-strength fit (vhbb.fit.scale_factors, vhbb.fit.hists, vhbb.fit.signal_fit).
#
# Compute rules write JSON/HDF5 only; every figure is drawn by a plot rule (*_plots, drawn by
# vhbb.fit.figures) from those files.  The plot options (process labels and colours, the lumi of
# the CMS label, the blinding window) are params of the plot rules only, so changing them reruns
# no fit.
from vhbb.fit.figures import plot_styles, without_plot_options

SF_REGIONS = P.scale_factor_fit(config)["settings"]["regions"]
PLOT_STYLES = plot_styles(config["samples"]["processes"])
PLOT_LUMI = config["lumi"]


rule scale_factors:
    """Fit TT/Zhf/Zlf scale factors to the control-region data reserved for fits (cr_split 1)."""
    input:
        regions=expand("results/export/{region}.h5", region=SF_REGIONS),
    output:
        json="results/fits/scale_factors.json",
        plot_data="results/fits/scale_factors/plot_data.json",
    log:
        "logs/fits/scale_factors.log",
    benchmark:
        "logs/benchmarks/scale_factors/fits/scale_factors.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        spec=without_plot_options(P.scale_factor_fit(config)),
    script:
        "../scripts/scale_factors.py"


rule scale_factors_plots:
    """Pre/post-fit data/MC, input features and scale factors versus m_jj of the CR fit."""
    input:
        plot_data="results/fits/scale_factors/plot_data.json",
    output:
        yields=report(
            directory("results/fits/scale_factors/yields"),
            patterns=["{stage}/{region}.png"],
            caption="../report/scale_factors_yields.rst",
            category="Control-region fit",
            subcategory="Pre- and post-fit yields",
            labels={"region": "{region}", "fit": "{stage}"},
        ),
        slices=report(
            "results/fits/scale_factors/sf_vs_mjj.png",
            caption="../report/scale_factors_mjj.rst",
            category="Control-region fit",
            subcategory="m_jj dependence",
            labels={"figure": "scale factors vs m_jj"},
        ),
        features=report(
            directory("results/fits/scale_factors/features"),
            patterns=["{region}/{feature}.png"],
            caption="../report/scale_factors_features.rst",
            category="Control-region fit",
            subcategory="Input features",
            labels={"region": "{region}", "feature": "{feature}"},
        ),
    log:
        "logs/fits/scale_factors_plots.log",
    benchmark:
        "logs/benchmarks/scale_factors_plots/fits/scale_factors_plots.tsv"
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        styles=PLOT_STYLES,
        lumi=PLOT_LUMI,
    script:
        "../scripts/scale_factors_plots.py"


# Signal-strength fit of a trained model in m_jj x score (vhbb.fit.templates, vhbb.fit.signal_fit).


rule hists:
    """2D m_jj x score histograms per process and region, merged signal-region binning."""
    input:
        unpack(hists_inputs),
    output:
        h5="results/hists/{model}/hists.h5",
        root="results/hists/{model}/hists.root",
        binning="results/hists/{model}/binning.json",
    log:
        "logs/hists/{model}.log",
    benchmark:
        "logs/benchmarks/hists/hists/{model}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=6000,
        runtime=30,
    params:
        samples=SAMPLES,
        reweighting=REWEIGHTING,
        spec=lambda wc: without_plot_options(P.hists(config, wc.model)),
    script:
        "../scripts/hists.py"


rule hists_plot_data:
    """Signal-region data outside the blinding window, for the blinded figures."""
    input:
        unpack(plot_data_inputs),
    output:
        "results/hists/{model}/plot_data.h5",
    log:
        "logs/hists/{model}_plot_data.log",
    benchmark:
        "logs/benchmarks/hists_plot_data/hists/{model}_plot_data.tsv"
    wildcard_constraints:
        model=r"(?!best-)[^/]+",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        samples=DATA_SAMPLES,
        spec=lambda wc: P.hists_plot_data(config),
    script:
        "../scripts/hists_plot_data.py"


rule best_plot_data:
    """The blinded figures' data of best:<scan>: the chosen point's, resolved when the job runs."""
    input:
        best="results/scans/{scan}/best.json",
        files=lambda wc: expand(
            "results/hists/{model}/plot_data.h5", model=scan_models(wc.scan)
        ),
    output:
        "results/hists/best-{scan}/plot_data.h5",
    log:
        "logs/scans/{scan}_best_plot_data.log",
    benchmark:
        "logs/benchmarks/best_plot_data/scans/{scan}_best_plot_data.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        points=lambda wc: list(scan_models(wc.scan)),
        kind="plot_data",
    script:
        "../scripts/best_copy.py"


rule hists_plots:
    """Templates and stacked data/MC of m_jj and the score per region (blinding window hidden)."""
    input:
        hists="results/hists/{model}/hists.h5",
        plot_data="results/hists/{model}/plot_data.h5",
    output:
        plots=report(
            directory("results/hists/{model}/plots"),
            patterns=["{name}.png"],
            caption="../report/signal_hists.rst",
            category="Signal-strength fit",
            subcategory="Templates and data/MC ({model})",
        ),
    log:
        "logs/hists/{model}_plots.log",
    benchmark:
        "logs/benchmarks/hists_plots/hists/{model}_plots.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    params:
        styles=PLOT_STYLES,
        lumi=PLOT_LUMI,
        window=config["blinding"]["window"],
    script:
        "../scripts/hists_plots.py"


rule signal_fit:
    """Asimov signal-strength fit (mu, MINOS interval, q0 significance) in one mode."""
    input:
        hists="results/hists/{model}/hists.h5",
        scale_factors="results/fits/scale_factors.json",
    output:
        json="results/fits/{model}/{mode}/signal_strength.json",
        plot_data="results/fits/{model}/{mode}/plot_data.json",
    log:
        "logs/fits/{model}/{mode}.log",
    benchmark:
        "logs/benchmarks/signal_fit/fits/{model}/{mode}.tsv"
    wildcard_constraints:
        mode="fixed|constrained|simultaneous",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        spec=lambda wc: without_plot_options(P.signal_fit(config, wc.model, wc.mode)),
    script:
        "../scripts/signal_fit.py"


rule signal_fit_plots:
    """Likelihood scan, pre-/post-fit yields and nuisance pulls of one signal-strength fit."""
    input:
        json="results/fits/{model}/{mode}/signal_strength.json",
        plot_data="results/fits/{model}/{mode}/plot_data.json",
    output:
        plots=report(
            directory("results/fits/{model}/{mode}/plots"),
            patterns=["{name}.png"],
            caption="../report/signal_fit.rst",
            category="Signal-strength fit",
            subcategory="{model}: {mode}",
        ),
    log:
        "logs/fits/{model}/{mode}_plots.log",
    benchmark:
        "logs/benchmarks/signal_fit_plots/fits/{model}/{mode}_plots.tsv"
    wildcard_constraints:
        mode="fixed|constrained|simultaneous",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        styles=PLOT_STYLES,
        lumi=PLOT_LUMI,
    script:
        "../scripts/signal_fit_plots.py"


rule workspace:
    """pyhf workspace (valid HistFactory JSON) of one fit mode, provenance in a sibling file."""
    input:
        hists="results/hists/{model}/hists.h5",
        scale_factors="results/fits/scale_factors.json",
    output:
        json="results/fits/{model}/{mode}/workspace.json",
        provenance="results/fits/{model}/{mode}/workspace.provenance.json",
    log:
        "logs/fits/{model}/{mode}_workspace.log",
    benchmark:
        "logs/benchmarks/workspace/fits/{model}/{mode}_workspace.tsv"
    wildcard_constraints:
        mode="constrained|simultaneous",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        spec=lambda wc: without_plot_options(P.signal_fit(config, wc.model, wc.mode)),
    script:
        "../scripts/workspace.py"
