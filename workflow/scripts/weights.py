"""Transform the negative MC weights of all exported regions (rule transform_weights)."""

from vhbb.core.logs import run_script
from vhbb.ml import weights


def main(smk) -> None:  # type: ignore[no-untyped-def]
    regions = list(smk.params.regions)
    weights.run_weights(
        dict(zip(regions, smk.input, strict=True)),
        outputs={
            r: {
                "h5": smk.output.h5[i],
                "validation": smk.output.validation[i],
                "checks": smk.output.checks[i],
                "plot_data": smk.output.plot_data[i],
            }
            for i, r in enumerate(regions)
        },
        spec=smk.params.spec,
    )


run_script(snakemake, main)
