"""What each rule depends on: canonical config slices passed to rules as ``params``.

Snakemake reruns a job when its params change, so every rule gets exactly the config it reads
(canonical: sorted keys, plain JSON types, no volatile values) and nothing else.  A change to a
control-region cut therefore reruns caching and everything downstream, a change of the ZH toy
size reruns the ZH toy files (and the pseudo-data, whose expected yields do not depend on it: they
do not rerun).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .config import canonical
from .toy import file_spec


def toy_samples(config: Mapping) -> list[str]:
    return [n for n, s in config["samples"]["list"].items() if s.get("source") == "toy"]


def is_data(config: Mapping, sample: str) -> bool:
    proc = config["samples"]["list"][sample]["process"]
    return config["samples"]["processes"][proc]["role"] == "data"


def n_files(config: Mapping, sample: str) -> int:
    spec = config["samples"]["list"][sample]
    if spec.get("source") == "toy":
        toy = config["toy"]
        return int(toy["data_files"] if is_data(config, sample) else toy["files_per_sample"])
    return len(spec.get("files", []))


def input_path(config: Mapping, sample: str, index: int) -> str:
    """The ROOT file (local path or root:// URL) of one sample's file index."""
    spec = config["samples"]["list"][sample]
    if spec.get("source") == "toy":
        return f"resources/ntuples/{sample}/part{index}.root"
    return spec["files"][index]


def toy_file(config: Mapping, sample: str, index: int) -> dict[str, Any]:
    return canonical(file_spec(config, sample, index))


def layout(config: Mapping, sample: str) -> dict[str, Any]:
    name = config["samples"]["list"][sample].get("layout", "flat")
    layouts = config["samples"]["layouts"]
    if name not in layouts:
        from .errors import ConfigError

        raise ConfigError(
            f"config error at 'samples.list.{sample}.layout': unknown layout '{name}'; "
            f"defined layouts: {', '.join(sorted(layouts))}"
        )
    return dict(layouts[name])


def cache_file(config: Mapping, sample: str) -> dict[str, Any]:
    """Params of caching one file of ``sample``."""
    return canonical(
        {
            "sample": sample,
            "is_mc": not is_data(config, sample),
            "layout": layout(config, sample),
            "preselection": config["regions"]["preselection"],
            "regions": config["regions"]["definitions"],
            "nan_policy": config["samples"]["nan_policy"],
            "chunk_size": config["samples"]["chunk_size"],
        }
    )


def cache_sample(config: Mapping, sample: str) -> dict[str, Any]:
    """Params of merging and normalising one sample."""
    spec = config["samples"]["list"][sample]
    mc = not is_data(config, sample)
    return canonical(
        {
            "sample": sample,
            "is_mc": mc,
            "xsec_pb": spec.get("xsec_pb") if mc else None,
            "lumi": config["lumi"] if mc else None,
        }
    )


def export(config: Mapping) -> dict[str, Any]:
    """Params of the HDF5 export."""
    return canonical(
        {
            "samples": {n: {"process": s["process"]} for n, s in config["samples"]["list"].items()},
            "processes": {
                n: {"role": p["role"]} for n, p in config["samples"]["processes"].items()
            },
            "features": list(config["features"]["training"]),
            "export": config["export"],
            "blinded": config["blinding"]["enabled"],
            "seed": config["seed"],
        }
    )
