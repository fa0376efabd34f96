"""Copy the outputs of the model whose training this one is (rule alias_model)."""

from vhbb.core.logs import run_script
from vhbb.ml import train


def main(smk) -> None:  # type: ignore[no-untyped-def]
    train.copy_model(
        dict(smk.input.items()),
        dict(smk.output.items()),
        model=smk.wildcards.model,
        same_as=smk.params.same_as,
    )


run_script(snakemake, main)
