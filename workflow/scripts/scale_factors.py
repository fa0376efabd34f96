"""Fit the control-region scale factors; write the JSON and the plots (rule scale_factors)."""

from vhbb import scale_factors
from vhbb.logs import run_script


def main(smk) -> None:  # type: ignore[no-untyped-def]
    settings = smk.params.spec["settings"]
    scale_factors.run_scale_factors(
        dict(zip(settings["regions"], smk.input.regions, strict=True)),
        json_path=smk.output.json,
        yields_dir=smk.output.yields,
        slices_plot=smk.output.slices,
        features_dir=smk.output.features,
        spec=smk.params.spec,
        workers=smk.threads,
    )


run_script(snakemake, main)
