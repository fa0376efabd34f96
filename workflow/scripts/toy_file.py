"""Write one toy ntuple file (rule toy_file)."""

from vhbb.core.logs import run_script
from vhbb.data import toy


def main(smk) -> None:  # type: ignore[no-untyped-def]
    toy.run_toy_file(smk.output[0], **smk.params.spec)


run_script(snakemake, main)
