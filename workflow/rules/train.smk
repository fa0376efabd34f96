ruleorder: alias_model > train_model


rule train_model:
    """Train one fold model (on the other folds) with the shared training engine."""
    input:
        unpack(train_inputs),
    output:
        checkpoint="results/models/{model}/fold{fold}/model.pt",
        onnx="results/models/{model}/fold{fold}/model.onnx",
        history="results/models/{model}/fold{fold}/history.json",
        config="results/models/{model}/fold{fold}/config.json",
        plot=report(
            "results/models/{model}/fold{fold}/loss.png",
            caption="../report/loss_curves.rst",
            category="Training",
            subcategory="{model}",
            labels={"model": "{model}", "fold": "{fold}"},
        ),
    log:
        "logs/train/{model}/fold{fold}.log",
    benchmark:
        "logs/benchmarks/train_model/train/{model}/fold{fold}.tsv"
    priority: selection_priority
    conda:
        ENV
    threads: 1  # two one-thread trainings beat one with two threads (README: Speed)
    resources:
        mem_mb=6000,
        runtime=120,
    params:
        train=lambda wc: P.train(config, wc.model),
        checkpoint_dir=lambda wc: f"results/checkpoints/{wc.model}/fold{wc.fold}",
    script:
        "../scripts/train_model.py"


rule alias_model:
    """A model whose training is another's (P.model_aliases): copy that model's outputs."""
    input:
        checkpoint=lambda wc: f"results/models/{ALIASES[wc.model]}/fold{wc.fold}/model.pt",
        onnx=lambda wc: f"results/models/{ALIASES[wc.model]}/fold{wc.fold}/model.onnx",
        history=lambda wc: f"results/models/{ALIASES[wc.model]}/fold{wc.fold}/history.json",
        config=lambda wc: f"results/models/{ALIASES[wc.model]}/fold{wc.fold}/config.json",
        plot=lambda wc: f"results/models/{ALIASES[wc.model]}/fold{wc.fold}/loss.png",
    output:
        checkpoint="results/models/{model}/fold{fold}/model.pt",
        onnx="results/models/{model}/fold{fold}/model.onnx",
        history="results/models/{model}/fold{fold}/history.json",
        config="results/models/{model}/fold{fold}/config.json",
        plot=report(
            "results/models/{model}/fold{fold}/loss.png",
            caption="../report/loss_curves.rst",
            category="Training",
            subcategory="{model}",
            labels={"model": "{model}", "fold": "{fold}"},
        ),
    log:
        "logs/train/{model}/fold{fold}.log",
    benchmark:
        "logs/benchmarks/alias_model/train/{model}/fold{fold}.tsv"
    wildcard_constraints:
        model=ALIAS_PATTERN,
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        same_as=lambda wc: ALIASES[wc.model],
    script:
        "../scripts/alias_model.py"


rule score_model:
    """Score every cached event of every sample with the fold model that did not see it."""
    input:
        models=lambda wc: expand(
            "results/models/{model}/fold{fold}/model.pt", model=wc.model, fold=FOLDS
        ),
        cache=expand("results/cache/{sample}.parquet", sample=SAMPLES),
    output:
        expand("results/scores/{{model}}/{sample}.parquet", sample=SAMPLES),
    log:
        "logs/scores/{model}.log",
    benchmark:
        "logs/benchmarks/score_model/scores/{model}.tsv"
    priority: selection_priority
    conda:
        ENV
    threads: 1  # 9 core-s a model on one thread, 12 on two (README: Speed)
    resources:
        mem_mb=6000,
        runtime=60,
    params:
        samples=SAMPLES,
        is_mc={s: not P.is_data(config, s) for s in SAMPLES},
        blinding={
            "enabled": config["blinding"]["enabled"],
            "signal_region": config["export"]["training_region"],
        },
    script:
        "../scripts/score_model.py"
