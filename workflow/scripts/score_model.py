"""Out-of-fold scores of every sample (rule score_model)."""

from vhbb.core.logs import run_script
from vhbb.ml import scoring as apply


def main(smk) -> None:  # type: ignore[no-untyped-def]
    samples = smk.params.samples
    apply.run_scores(
        list(smk.input.models),
        dict(zip(samples, smk.input.cache, strict=True)),
        dict(zip(samples, smk.output, strict=True)),
        smk.params.is_mc,
        smk.params.blinding,
    )


run_script(snakemake, main)
