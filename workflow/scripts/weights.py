"""Transform the negative MC weights of one region (rule transform_weights)."""

from vhbb.core.logs import run_script
from vhbb.ml import weights


def main(smk) -> None:  # type: ignore[no-untyped-def]
    import torch

    torch.set_num_threads(max(1, int(smk.threads)))
    weights.run_weights(
        smk.input[0],
        h5_path=smk.output.h5,
        validation_path=smk.output.validation,
        plots_dir=smk.output.plots,
        checks_path=smk.output.checks,
        spec=smk.params.spec,
    )


run_script(snakemake, main)
