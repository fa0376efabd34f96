"""Resolve best:<scan> when the job runs: copy the chosen point's files (rules best_*)."""

from vhbb.core.logs import run_script
from vhbb.evaluation import scans


def main(smk) -> None:  # type: ignore[no-untyped-def]
    per_model = len(smk.output)
    files = list(smk.input.files)
    sources = {
        m: files[i * per_model : (i + 1) * per_model] for i, m in enumerate(smk.params.points)
    }
    if smk.params.kind == "metrics":
        scans.run_best_metrics(smk.input.best, sources, list(smk.output), smk.wildcards.scan)
    else:
        scans.run_best_copy(smk.input.best, sources, list(smk.output))


run_script(snakemake, main)
