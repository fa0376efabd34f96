"""The summary page: results/summary.json and results/summary.html (rule summary)."""

from pathlib import Path

from vhbb.core.logs import run_script
from vhbb.report.summary import run_summary


def main(smk) -> None:  # type: ignore[no-untyped-def]
    keys = smk.params.settings["keys"]
    inp = smk.input

    def named(names, paths):  # type: ignore[no-untyped-def]
        return dict(zip(names, paths, strict=True))

    figures = {Path(p).parent.name + "/" + Path(p).stem: p for p in inp.figures}
    for folder in inp.figure_dirs:  # the post-fit plot and the impacts of the shown fit
        for name in ("postfit.png", "impacts.png"):
            if (Path(folder) / name).exists():
                figures[f"{Path(folder).parent.parent.name}/{Path(name).stem}"] = str(
                    Path(folder) / name
                )
    run_summary(
        inputs={
            "export_summary": inp.export_summary,
            "scale_factors": inp.scale_factors,
            "metrics": named(keys["metrics"], inp.metrics),
            "best": named(keys["best"], inp.best),
            "fits": named(keys["fits"], inp.fits),
            "diagnostics": named(keys["diagnostics"], inp.diagnostics),
            "check_files": list(inp.get("checks", [])),
            "figures": figures,
            "links": list(smk.params.links),
        },
        settings=smk.params.settings,
        json_path=smk.output.json,
        html_path=smk.output.html,
    )


run_script(snakemake, main)
