"""68 % / 95 % contours of the two-parameter profile scan of one fit (rule scan_2d_plot)."""

import json
from pathlib import Path

from vhbb.core.logs import run_script
from vhbb.plots import diagnostics as dp


def main(smk) -> None:  # type: ignore[no-untyped-def]
    doc = json.loads(Path(smk.input.json).read_text())
    out = Path(smk.output.plots)
    out.mkdir(parents=True, exist_ok=True)
    title = f"{doc['model']}, {doc['mode']}"
    dp.scan_2d(out / "scan_2d.png", doc, title=title, lumi=smk.params.lumi)


run_script(snakemake, main)
