# vhbb: a CMS-style VH(bb), Z->nunu analysis with a mass-decorrelated classifier.
# This file is the table of contents; the rules live in workflow/rules/*.smk and the logic in
# the importable package src/vhbb.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/toy.smk"
include: "workflow/rules/cache.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/weights.smk"
include: "workflow/rules/reweighting.smk"
include: "workflow/rules/fit.smk"
include: "workflow/rules/diagnostics.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/summary.smk"


rule all:
    default_target: True
    input:
        all_targets(),


rule ntuples:
    input:
        toy_files(),


rule cache:
    input:
        cache_outputs(),


rule export:
    input:
        export_outputs(),


rule weights:
    input:
        weights_outputs(),


rule fit:
    input:
        rules.scale_factors.output,
        fit_outputs(),


rule train:
    input:
        model_outputs(),


rule scores:
    input:
        score_outputs(),


rule evaluate:
    input:
        evaluation_outputs(),
