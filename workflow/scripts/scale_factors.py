"""Fit the control-region scale factors; write the JSON and the plot data (rule scale_factors)."""

from vhbb.core.logs import run_script
from vhbb.fit import scale_factors


def main(smk) -> None:  # type: ignore[no-untyped-def]
    settings = smk.params.spec["settings"]
    scale_factors.run_scale_factors(
        dict(zip(settings["regions"], smk.input.regions, strict=True)),
        json_path=smk.output.json,
        plot_data=smk.output.plot_data,
        spec=smk.params.spec,
    )


run_script(snakemake, main)
