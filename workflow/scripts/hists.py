"""Fill the m_jj x score histograms of one model (rule hists)."""

from vhbb.core.logs import run_script
from vhbb.fit import hists


def main(smk) -> None:  # type: ignore[no-untyped-def]
    hists.run_hists(
        dict(zip(smk.params.samples, smk.input.cache, strict=True)),
        dict(zip(smk.params.samples, smk.input.scores, strict=True)),
        h5_path=smk.output.h5,
        root_path=smk.output.root,
        binning_json=smk.output.binning,
        spec=smk.params.spec,
        reweighting_files=dict(zip(smk.params.reweighting, smk.input.reweighting, strict=True)),
    )


run_script(snakemake, main)
