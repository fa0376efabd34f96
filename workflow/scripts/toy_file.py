"""Write one toy ntuple file (rule toy_file)."""

from vhbb import toy
from vhbb.logs import run_script


def main(smk) -> None:  # type: ignore[no-untyped-def]
    toy.run_toy_file(smk.output[0], **smk.params.spec)


run_script(snakemake, main)
