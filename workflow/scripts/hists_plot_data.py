"""Signal-region data outside the blinding window for the blinded figures (rule hists_plot_data)."""

from vhbb.core.logs import run_script


def main(smk) -> None:  # type: ignore[no-untyped-def]
    # imported here: a pre-forked job (vhbb.core.prefork) skips this process's imports
    from vhbb.fit import hists
    from vhbb.ml import scoring

    spec = smk.params.spec
    blinding = spec["blinding"]
    data = None
    if blinding["enabled"]:
        data = scoring.sideband_scores(
            list(smk.input.models),
            dict(zip(smk.params.samples, smk.input.cache, strict=True)),
            spec["signal_region"],
            blinding["window"],
        )
    hists.write_plot_data(
        smk.output[0], data, spec["signal_region"], bool(blinding["enabled"]), blinding["window"]
    )


run_script(snakemake, main)
