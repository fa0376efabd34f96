"""Out-of-fold scores of every sample (rule score_model)."""

from vhbb.core.logs import run_script


def main(smk) -> None:  # type: ignore[no-untyped-def]
    # imported here: a pre-forked job (vhbb.core.prefork) skips this process's imports
    from vhbb.ml import scoring as apply

    samples = smk.params.samples
    apply.run_scores(
        list(smk.input.models),
        dict(zip(samples, smk.input.cache, strict=True)),
        dict(zip(samples, smk.output, strict=True)),
        smk.params.is_mc,
        smk.params.blinding,
    )


run_script(snakemake, main)
