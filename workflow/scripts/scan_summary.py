"""Summary tables, heatmaps, Pareto plot and best.json of one scan (rule scan_summary)."""

from vhbb.core.logs import run_script
from vhbb.evaluation import scans


def main(smk) -> None:  # type: ignore[no-untyped-def]
    p = smk.params.spec
    scans.run_scan_summary(
        scan=p["scan"],
        metrics_files=dict(zip(smk.params.models, smk.input.metrics, strict=True)),
        points=p["points"],
        selection=p["selection"],
        outputs=dict(smk.output.items()),
    )


run_script(snakemake, main)
