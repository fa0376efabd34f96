"""Train one model fold (rule train_model)."""

from vhbb.core.logs import run_script
from vhbb.ml import train


def main(smk) -> None:  # type: ignore[no-untyped-def]
    p = smk.params.train
    fold = int(smk.wildcards.fold)
    train.run_train(
        export_path=smk.input.export,
        outputs=dict(smk.output.items()),
        spec=p["spec"],
        model=smk.wildcards.model,
        fold=fold,
        roles=p["roles"],
        device=p["device"],
        seed=p["seed"] + 1000 * fold,
        checkpoint_dir=smk.params.checkpoint_dir,
        weights_path=smk.input.get("weights"),
        cr_paths=list(smk.input.get("control_regions", [])),
        scale_factors_path=smk.input.get("scale_factors"),
    )


run_script(snakemake, main)
