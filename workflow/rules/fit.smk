# Statistical fits: the model-independent control-region scale-factor fit.
SF_REGIONS = P.scale_factor_fit(config)["settings"]["regions"]


rule scale_factors:
    """Fit TT/Zhf/Zlf scale factors to the control-region data reserved for fits (cr_split 1)."""
    input:
        regions=expand("results/export/{region}.h5", region=SF_REGIONS),
    output:
        json="results/fits/scale_factors.json",
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
        "logs/fits/scale_factors.log",
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        spec=P.scale_factor_fit(config),
    script:
        "../scripts/scale_factors.py"


# Signal-strength fit of a trained model in m_jj x score (vhbb.binning, vhbb.signal_fit).


rule hists:
    """2D m_jj x score histograms per process and region, merged binning, data/MC plots."""
    input:
        unpack(hists_inputs),
    output:
        h5="results/hists/{model}/hists.h5",
        root="results/hists/{model}/hists.root",
        binning="results/hists/{model}/binning.json",
        plots=report(
            directory("results/hists/{model}/plots"),
            patterns=["{name}.png"],
            caption="../report/signal_hists.rst",
            category="Signal-strength fit",
            subcategory="Templates and data/MC ({model})",
        ),
    log:
        "logs/hists/{model}.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=6000,
        runtime=30,
    params:
        samples=SAMPLES,
        spec=lambda wc: P.hists(config, wc.model),
    script:
        "../scripts/hists.py"


rule signal_fit:
    """Asimov signal-strength fit (mu, MINOS interval, q0 significance) in one mode."""
    input:
        hists="results/hists/{model}/hists.h5",
        scale_factors="results/fits/scale_factors.json",
    output:
        json="results/fits/{model}/{mode}/signal_strength.json",
        plots=report(
            directory("results/fits/{model}/{mode}/plots"),
            patterns=["{name}.png"],
            caption="../report/signal_fit.rst",
            category="Signal-strength fit",
            subcategory="{model}: {mode}",
        ),
    log:
        "logs/fits/{model}/{mode}.log",
    wildcard_constraints:
        mode="fixed|constrained|simultaneous",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        spec=lambda wc: P.signal_fit(config, wc.model, wc.mode),
    script:
        "../scripts/signal_fit.py"


rule workspace:
    """pyhf (HistFactory JSON) workspace of the simultaneous or constrained fit."""
    input:
        hists="results/hists/{model}/hists.h5",
        scale_factors="results/fits/scale_factors.json",
    output:
        "results/fits/{model}/{mode}/workspace.json",
    log:
        "logs/fits/{model}/{mode}_workspace.log",
    wildcard_constraints:
        mode="constrained|simultaneous",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        spec=lambda wc: P.signal_fit(config, wc.model, wc.mode),
    script:
        "../scripts/workspace.py"
