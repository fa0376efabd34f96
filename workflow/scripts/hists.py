"""Fill the m_jj x score histograms of one model (rule hists)."""

from vhbb import signal_fit
from vhbb.logs import run_script


def main(smk) -> None:  # type: ignore[no-untyped-def]
    signal_fit.run_hists(
        dict(zip(smk.params.samples, smk.input.cache, strict=True)),
        dict(zip(smk.params.samples, smk.input.scores, strict=True)),
        h5_path=smk.output.h5,
        root_path=smk.output.root,
        binning_json=smk.output.binning,
        plots_dir=smk.output.plots,
        spec=smk.params.spec,
    )


run_script(snakemake, main)
