"""What each rule depends on: canonical config slices passed to rules as ``params``.

Snakemake reruns a job when its params change, so every rule gets exactly the config it reads
(canonical: sorted keys, plain JSON types, no volatile values) and nothing else.  A change to a
control-region cut therefore reruns caching and everything downstream, a change of the ZH toy
size reruns the ZH toy files (and the pseudo-data, whose expected yields do not depend on it: they
do not rerun).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from vhbb.core.provenance import canonical
from vhbb.data.toy import file_spec


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
        from vhbb.core.errors import ConfigError

        raise ConfigError(
            f"config error at 'samples.list.{sample}.layout': unknown layout '{name}'; "
            f"defined layouts: {', '.join(sorted(layouts))}"
        )
    return dict(layouts[name])


def _ordered_jes(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A layout with its JES sources (``jes_sources``, ``jes.sources``) in the order-keeping list
    form of :func:`vhbb.data.jes.as_list` (canonical JSON sorts mapping keys; the source order
    is the order of the cached variations and of the fit parameters)."""
    from vhbb.data import jes as jesmod

    out = dict(spec)
    if out.get("jes_sources"):
        out["jes_sources"] = jesmod.as_list(out["jes_sources"])
    if (out.get("jes") or {}).get("sources"):
        out["jes"] = {**out["jes"], "sources": jesmod.as_list(out["jes"]["sources"])}
    return out


def cache_file(config: Mapping, sample: str) -> dict[str, Any]:
    """Params of caching one file of ``sample``."""
    return canonical(
        {
            "sample": sample,
            "is_mc": not is_data(config, sample),
            "layout": _ordered_jes(layout(config, sample)),
            "preselection": config["regions"]["preselection"],
            "regions": config["regions"]["definitions"],
            "nan_policy": config["samples"]["nan_policy"],
            "chunk_size": config["samples"]["chunk_size"],
        }
    )


def overlap_priority(config: Mapping) -> list[str]:
    """Data samples in overlap-removal priority order (empty when the removal is disabled)."""
    overlap = config["samples"].get("overlap_removal", {})
    if not overlap.get("enabled", False):
        return []
    data = [n for n in config["samples"]["list"] if is_data(config, n)]
    priority = overlap.get("priority")
    return list(priority) if priority is not None else data


def overlap_with(config: Mapping, sample: str) -> list[str]:
    """The data samples ranked before ``sample``: their events are removed from it."""
    order = overlap_priority(config)
    return order[: order.index(sample)] if sample in order else []


def cache_sample(config: Mapping, sample: str) -> dict[str, Any]:
    """Params of merging and normalising one sample (``overlap_with``: only when non-empty)."""
    spec = config["samples"]["list"][sample]
    mc = not is_data(config, sample)
    params: dict[str, Any] = {
        "sample": sample,
        "is_mc": mc,
        "xsec_pb": spec.get("xsec_pb") if mc else None,
        "lumi": config["lumi"] if mc else None,
    }
    higher = overlap_with(config, sample)
    if higher:
        params["overlap_with"] = higher
    return canonical(params)


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


def scale_factor_fit(config: Mapping) -> dict[str, Any]:
    """Params of the control-region scale-factor fit (``fit.scale_factors`` and what it reads).

    Checked here (so a bad setting fails before any job runs): the regions are exported and are
    not the blinded training region, and the bin and slice edges increase.
    """
    from vhbb.core.errors import ConfigError

    settings = config["fit"]["scale_factors"]
    export_cfg = config["export"]
    for region in settings["regions"]:
        if region not in export_cfg["regions"]:
            raise ConfigError(
                f"config error at 'fit.scale_factors.regions': '{region}' is not exported "
                f"(export.regions: {', '.join(export_cfg['regions'])})"
            )
        if config["blinding"]["enabled"] and region == export_cfg["training_region"]:
            raise ConfigError(
                f"config error at 'fit.scale_factors.regions': '{region}' is the blinded "
                "training region; fit control regions only"
            )
    for key in ("bins", "mjj_slices"):
        edges = settings[key]
        if any(b <= a for a, b in itertools.pairwise(edges)):
            raise ConfigError(
                f"config error at 'fit.scale_factors.{key}': edges must increase, got {edges}"
            )
    return canonical(
        {
            "settings": {
                **settings,
                "bins": [float(b) for b in settings["bins"]],
                "mjj_slices": [float(b) for b in settings["mjj_slices"]],
            },
            "processes": {
                n: {
                    "role": p["role"],
                    "scale_factor": p.get("scale_factor", False),
                    "label": p.get("label", n),
                    "color": p.get("color"),
                }
                for n, p in config["samples"]["processes"].items()
            },
            "lumi": config["lumi"],
        }
    )


def enabled_models(config: Mapping) -> list[str]:
    """Models trained by the default target (``models.enabled``), checked against the list."""
    from vhbb.core.errors import ConfigError

    models = config.get("models", {})
    enabled = list(models.get("enabled", []))
    for name in enabled:
        if name not in models.get("list", {}):
            raise ConfigError(
                f"config error at 'models.enabled': unknown model '{name}'; defined: "
                f"{', '.join(sorted(models.get('list', {})))}"
            )
    return enabled


def train(config: Mapping, model: str) -> dict[str, Any]:
    """Params of training one model (all folds share them; the fold is a wildcard)."""
    from vhbb.config.models import resolve_model

    spec = resolve_model(config["models"], model, scans=config.get("scans"))
    return canonical(
        {
            "spec": spec,
            "roles": {n: p["role"] for n, p in config["samples"]["processes"].items()},
            "device": config["device"],
            "seed": int(config["seed"]) + int(spec.get("seed", 0)),
        }
    )


def train_needs(config: Mapping, model: str) -> dict[str, bool]:
    """Which optional inputs a model's training reads."""
    from vhbb.config.models import resolve_model

    spec = resolve_model(config["models"], model, scans=config.get("scans"))
    transformed = "transformed" in (spec["weight_strategy"], spec["decorrelation_weight"])
    return {
        "weights": transformed,
        "domain": spec["method"] == "domain_adaptation",
    }


def weights(config: Mapping) -> dict[str, Any]:
    """Params of the negative-weight transformation (``weights`` and what it reads).

    ``settings`` has the conditioning variables resolved (null: training features + m_jj +
    pt_jj); every named variable must be an export column (checked here, before any job runs):
    a base variable (training feature, ``m_jj``, ``pt_jj``), its JES variation
    ``<base>_jes_<source>Up/Down`` (the sources are known to the export only: checked by the
    weights job) or, in ``validation.extra_variables``, a pattern (``*``, ``?``: ``m_jj_jes_*``).
    """
    import difflib

    from vhbb.core.errors import ConfigError
    from vhbb.data import jes as jesmod

    settings = dict(config["weights"])
    features = list(config["features"]["training"])
    base = list(dict.fromkeys([*features, "m_jj", "pt_jj"]))
    known = base + [f"{b}_jes_<source>{side}" for b in base for side in ("Up", "Down")]

    def is_column(name: str, patterns: bool) -> bool:
        if name in base:
            return True
        wild = [i for i, ch in enumerate(name) if ch in "*?["]
        if wild:
            head = name[: wild[0]]
            return patterns and any(
                f"{b}_jes_".startswith(head) or head.startswith(f"{b}_jes_") for b in base
            )
        return any(
            name.startswith(f"{b}_") and jesmod.source_of(name[len(b) + 1 :]) is not None
            for b in base
        )

    conditioning = list(settings.get("conditioning") or base)
    settings["conditioning"] = list(dict.fromkeys(conditioning))
    checks = [("conditioning", c) for c in conditioning] + [
        ("validation.extra_variables", c) for c in settings["validation"]["extra_variables"]
    ]
    for key, name in checks:
        if not is_column(name, patterns=key != "conditioning"):
            close = difflib.get_close_matches(name, known, n=2)
            raise ConfigError(
                f"config error at 'weights.{key}': '{name}' is not an export column"
                + (f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else "")
            )
    if settings.get("pool_regions", True):
        _check_pooling(config, settings["conditioning"])
    return canonical(
        {
            "settings": settings,
            "roles": {n: p["role"] for n, p in config["samples"]["processes"].items()},
            "device": config.get("device", "auto"),
            "seed": config.get("seed", 0),
        }
    )


def _check_pooling(config: Mapping, conditioning: list[str]) -> None:
    """``weights.pool_regions`` estimates ``E[w|x]`` once from all exported regions: valid only
    when region membership is a function of ``x``, i.e. every variable that defines an exported
    region (``regions.definitions``; the common preselection does not separate them) is
    conditioned on.  A missing one is a config error naming the region and the variable."""
    from vhbb.core.errors import ConfigError
    from vhbb.data.expressions import names

    exported = list(config["export"]["regions"])
    if len(exported) < 2:
        return
    definitions = config["regions"]["definitions"]
    for region in exported:
        missing = sorted(names(str(definitions[region])) - set(conditioning))
        if missing:
            raise ConfigError(
                f"config error at 'weights.conditioning': region '{region}' is defined by "
                f"{', '.join(repr(m) for m in missing)} (regions.definitions.{region}), which "
                "the weight estimate does not condition on; with weights.pool_regions: true "
                "one estimate of E[w|x] serves all exported regions, which is valid only when "
                "every region-defining variable is in x. Add it to weights.conditioning (an "
                "export column) or set weights.pool_regions: false (one estimate per region)"
            )


def fit_models(config: Mapping) -> list[str]:
    """Models whose histograms, signal-strength fits and workspaces are in the default target.

    Path names: ``best:<scan>`` becomes ``best-<scan>`` (its scores are the scan's choice).
    """
    from vhbb.config.loading import model_path_name

    return [model_path_name(m) for m in config.get("fit", {}).get("models", [])]


def hists(config: Mapping, model: str) -> dict[str, Any]:
    """Params of the m_jj x score histograms of ``model`` (binning, regions, blinding, split,
    the weight systematics to histogram: ``fit.systematics.weights``).

    Other fit-only options (mode, the other systematics, POI bounds) are not here: changing
    them reruns the fits, not the histograms.
    """
    from vhbb.core.errors import ConfigError

    fit = config["fit"]
    edges = fit["binning"]["mjj_edges"]
    if any(b <= a for a, b in itertools.pairwise(edges)):
        raise ConfigError(
            f"config error at 'fit.binning.mjj_edges': edges must increase, got {edges}"
        )
    return canonical(
        {
            "model": model,
            "samples": {n: {"process": s["process"]} for n, s in config["samples"]["list"].items()},
            "processes": {
                n: {"role": p["role"], "label": p.get("label", n), "color": p.get("color")}
                for n, p in config["samples"]["processes"].items()
            },
            "binning": {**fit["binning"], "mjj_edges": [float(e) for e in edges]},
            "signal_region": config["export"]["training_region"],
            "control_regions": list(fit["scale_factors"]["regions"]),
            "blinding": config["blinding"],
            "cr_data_fit_fraction": config["export"]["cr_data_fit_fraction"],
            "seed": config["seed"],
            "lumi": config["lumi"],
            "weight_systematics": weight_systematics(config),
            "reweighting": reweighting_list(config),
        }
    )


def weight_systematics(config: Mapping) -> str | list[str]:
    """``fit.systematics.weights``: ``"auto"`` or the listed names (checked against the other
    fit parameter names: ``mu``, ``jes``, ``jes_*``, ``sf_*``, ``gamma_*``, ``staterror_*``, lnN
    terms)."""
    from vhbb.core.errors import ConfigError

    syst = config["fit"]["systematics"]
    setting = syst.get("weights", "auto")
    if setting == "auto":
        return "auto"
    names = [str(n) for n in setting]
    reserved = [
        n
        for n in names
        if n in ("mu", "jes")
        or n.startswith(("jes_", "sf_", "gamma_", "staterror_"))
        or n in syst.get("lnN", {})
    ]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if reserved or dupes:
        raise ConfigError(
            "config error at 'fit.systematics.weights': "
            + (f"{', '.join(reserved)} clash with other fit parameters" if reserved else "")
            + ("; " if reserved and dupes else "")
            + (f"{', '.join(dupes)} listed twice" if dupes else "")
        )
    return names


def reweighting_list(config: Mapping) -> list[dict[str, Any]]:
    """The derived reweightings the histograms and the evaluation apply (name, variable,
    whether a nuisance covers it), checked: control regions that exist, no name clash."""
    from vhbb.core.errors import ConfigError

    out = []
    defined = set(config["regions"]["definitions"])
    for name, entry in sorted(config.get("reweighting", {}).items()):
        if not entry.get("enabled", True):
            continue
        bad = [r for r in entry["regions"] if r not in defined]
        if bad:
            raise ConfigError(
                f"config error at 'reweighting.{name}.regions': {', '.join(bad)} not in "
                "regions.definitions"
            )
        edges = entry["edges"]
        if any(b <= a for a, b in itertools.pairwise(edges)):
            raise ConfigError(f"config error at 'reweighting.{name}.edges': edges must increase")
        if name in ("mu", "jes") or name.startswith(("jes_", "sf_", "gamma_", "staterror_")):
            raise ConfigError(
                f"config error at 'reweighting.{name}': the name clashes with a fit parameter"
            )
        out.append(
            {
                "name": name,
                "variable": entry["variable"],
                "uncertainty": bool(entry.get("uncertainty", True)),
            }
        )
    return out


def reweighting(config: Mapping, name: str) -> dict[str, Any]:
    """Params of deriving the reweighting ``name``: its settings, the samples and the split."""
    reweighting_list(config)
    entry = config["reweighting"][name]
    return canonical(
        {
            "reweighting": {
                "min_data": 50,
                "uncertainty": True,
                "min_p_value": 0.01,
                "on_failure": "fail",
                **{k: v for k, v in entry.items() if k != "enabled"},
            },
            "samples": {n: {"process": s["process"]} for n, s in config["samples"]["list"].items()},
            "processes": {
                n: {"role": p["role"]} for n, p in config["samples"]["processes"].items()
            },
            "cr_data_fit_fraction": config["export"]["cr_data_fit_fraction"],
            "seed": config["seed"],
        }
    )


def hists_plot_data(config: Mapping) -> dict[str, Any]:
    """Params of the signal-region data of the blinded figures (the window included)."""
    return canonical(
        {
            "samples": {n: {"process": s["process"]} for n, s in config["samples"]["list"].items()},
            "processes": {
                n: {"role": p["role"]} for n, p in config["samples"]["processes"].items()
            },
            "signal_region": config["export"]["training_region"],
            "blinding": config["blinding"],
        }
    )


def signal_fit(config: Mapping, model: str, mode: str) -> dict[str, Any]:
    """Params of the signal-strength fit of ``model`` in ``mode`` (and of its workspace)."""
    from vhbb.core.errors import ConfigError

    fit = config["fit"]
    processes = config["samples"]["processes"]
    for name, per_proc in fit["systematics"].get("lnN", {}).items():
        for proc in per_proc:
            if proc not in processes or processes[proc]["role"] == "data":
                raise ConfigError(
                    f"config error at 'fit.systematics.lnN.{name}': '{proc}' is not an MC process"
                )
    weight_systematics(config)
    sr_data = signal_region_data(config)
    lo, hi = fit["poi_bounds"]
    if not lo < 1.0 < hi:
        raise ConfigError(f"config error at 'fit.poi_bounds': must contain 1, got {[lo, hi]}")
    return canonical(
        {
            "model": model,
            "mode": mode,
            "systematics": fit["systematics"],
            "poi_bounds": [float(lo), float(hi)],
            "control_region_data": fit["control_region_data"],
            "signal_region_data": sr_data,
            "truth": toy_truth(config) if sr_data == "observed" else None,
            "processes": {
                n: {"role": p["role"], "label": p.get("label", n), "color": p.get("color")}
                for n, p in processes.items()
            },
            "lumi": config["lumi"],
        }
    )


def toy_truth(config: Mapping) -> dict[str, Any] | None:
    """The toy generator's hidden truth when every data sample comes from it, else None."""
    data = [s for n, s in config["samples"]["list"].items() if is_data(config, n)]
    if data and all(s.get("source") == "toy" for s in data):
        return {**config["toy"]["truth"], "mismodelling": dict(config["toy"]["mismodelling"])}
    return None


def signal_region_data(config: Mapping) -> str:
    """``asimov`` or ``observed``: what the signal-region fit sees (``fit.signal_region_data``;
    ``auto``: observed when blinding is off and there are data samples)."""
    from vhbb.core.errors import ConfigError

    choice = config["fit"].get("signal_region_data", "auto")
    blinded = bool(config["blinding"]["enabled"])
    has_data = any(is_data(config, n) for n in config["samples"]["list"])
    if choice == "observed" and (blinded or not has_data):
        raise ConfigError(
            "config error at 'fit.signal_region_data': 'observed' needs the signal-region data "
            + ("(set blinding.enabled: false)" if blinded else "(no data sample is configured)")
        )
    if choice == "auto":
        return "observed" if not blinded and has_data else "asimov"
    return str(choice)


def diagnostics_modes(config: Mapping) -> list[str]:
    """Fit modes with diagnostics (``fit.diagnostics.modes`` that are in ``fit.modes``)."""
    fit = config["fit"]
    diag = fit.get("diagnostics", {})
    if not diag.get("enabled", True):
        return []
    return [m for m in diag.get("modes", [fit["mode"]]) if m in fit["modes"]]


def combine_modes(config: Mapping) -> list[str]:
    """Fit modes exported as Combine datacards (all of ``fit.modes`` when enabled)."""
    fit = config["fit"]
    return list(fit["modes"]) if fit.get("combine", {}).get("enabled", True) else []


def diagnostics(config: Mapping, model: str, mode: str) -> dict[str, Any]:
    """Params of the diagnostics of ``model`` in ``mode``: the fit's params, the diagnostics
    settings, the seed and, when the pseudo-data come from the toy generator, its hidden truth."""
    return canonical(
        {
            **signal_fit(config, model, mode),
            # the 2D scan is its own rule (scan_2d): its settings do not rerun the diagnostics
            "diagnostics": {
                k: v for k, v in config["fit"]["diagnostics"].items() if k != "scan_2d"
            },
            "seed": config["seed"],
            "truth": toy_truth(config),
        }
    )


def scan_2d_modes(config: Mapping) -> list[str]:
    """Fit modes with a two-parameter scan: the diagnosed modes when ``scan_2d.enabled``."""
    scan = config["fit"].get("diagnostics", {}).get("scan_2d", {})
    return diagnostics_modes(config) if scan.get("enabled", True) else []


def scan_2d(config: Mapping, model: str, mode: str) -> dict[str, Any]:
    """Params of the two-parameter profile scan of ``model`` in ``mode``: the fit's params, the
    scan settings (``fit.diagnostics.scan_2d``) and the seed (of the pseudo-data)."""
    from vhbb.core.errors import ConfigError

    scan = dict(config["fit"]["diagnostics"]["scan_2d"])
    params = list(scan["parameters"])
    spec = signal_fit(config, model, mode)
    if "mu_VZ" in params and not any(p["role"] == "resonant" for p in spec["processes"].values()):
        raise ConfigError(
            "config error at 'fit.diagnostics.scan_2d.parameters': mu_VZ needs a process "
            "with role 'resonant'"
        )
    return canonical({**spec, "scan_2d": scan, "seed": config["seed"]})


def binning_scan(config: Mapping, model: str) -> dict[str, Any]:
    """Params of the binning scan of ``model``: what it reads (signal-region MC per process, the
    m_jj range, score mode and merging of ``fit.binning``, lnN, POI bounds, the bin counts).

    Not the histograms' inner m_jj edges or score count, blinding, data split or plot styles:
    changing those does not rerun the scan.
    """
    fit = config["fit"]
    h = hists(config, model)  # (checks the m_jj edges)
    edges = h["binning"]["mjj_edges"]
    return canonical(
        {
            "model": model,
            "samples": h["samples"],
            "processes": {n: {"role": p["role"]} for n, p in h["processes"].items()},
            "signal_region": h["signal_region"],
            "lumi": h["lumi"],
            "fit": {
                "binning": {
                    "mjj_edges": [edges[0], edges[-1]],  # the scan's range
                    "score": {"mode": fit["binning"]["score"]["mode"]},
                    "merge": fit["binning"]["merge"],
                },
                "systematics": {"lnN": fit["systematics"].get("lnN", {})},
                "poi_bounds": fit["poi_bounds"],
            },
            "counts": list(fit["binning_scan"]["counts"]),
        }
    )


# ----------------------------------------------------------------------------- evaluation, scans
def all_models(config: Mapping) -> list[str]:
    """Every trainable model of the default target: ``models.enabled`` and every scan point."""
    from vhbb.config.scans import expand

    return list(dict.fromkeys([*enabled_models(config), *expand(config)]))


def model_aliases(config: Mapping) -> dict[str, str]:
    """Trainable models whose training is another's, bit for bit: ``{alias: model}``.

    Two models with equal training params (:func:`train`: the resolved spec, roles, device
    and seed) train the same network on CPU, so the later one (in :func:`all_models` order:
    ``models.enabled``, then each scan's points) copies the earlier one's outputs instead of
    training again (rule ``alias_model``).  In the default config ``adversarial-lambda_5``
    (the ``adversarial_lambda`` scan's point at the base model's own lambda) is
    ``adversarial``.
    """
    seen: list[tuple[dict[str, Any], str]] = []
    aliases: dict[str, str] = {}
    for model in all_models(config):
        spec = train(config, model)  # equal as values: a grid's 5 is the preset's 5.0
        same = next((name for other, name in seen if other == spec), None)
        if same is not None:
            aliases[model] = same
        else:
            seen.append((spec, model))
    return aliases


def best_scan(ref: str) -> str | None:
    """The scan of a ``best:<scan>`` reference or ``best-<scan>`` path name (else None)."""
    from vhbb.config.loading import BEST_PREFIX

    if ref.startswith(BEST_PREFIX):
        return ref[len(BEST_PREFIX) :]
    if ref.startswith("best-"):
        return ref[len("best-") :]
    return None


def scan_names(config: Mapping) -> list[str]:
    return list(config.get("scans") or {})


def evaluation_models(config: Mapping) -> list[str]:
    """Path names of the evaluated models (``evaluation.models``, default :func:`all_models`).

    ``best:<scan>`` becomes ``best-<scan>``; an unknown model or scan is a config error.
    """
    from vhbb.config.loading import model_path_name
    from vhbb.core.errors import ConfigError

    refs = config.get("evaluation", {}).get("models")
    if refs is None:
        return all_models(config)
    known = set(config.get("models", {}).get("list", {})) | set(all_models(config))
    out = []
    for ref in refs:
        scan = best_scan(ref) if ref.startswith("best:") else None
        if scan is not None:
            if scan not in scan_names(config):
                raise ConfigError(
                    f"config error at 'evaluation.models': unknown scan '{scan}' in '{ref}'"
                )
        elif ref not in known:
            raise ConfigError(f"config error at 'evaluation.models': unknown model '{ref}'")
        out.append(model_path_name(ref))
    return list(dict.fromkeys(out))


def evaluate(config: Mapping, model: str) -> dict[str, Any]:
    """Params of evaluating one model (what run_evaluate reads; not the evaluation list)."""
    from vhbb.config.models import resolve_model

    spec = resolve_model(config["models"], model, scans=config.get("scans"))
    settings = {k: v for k, v in config["evaluation"].items() if k != "models"}
    fit = config["fit"]
    samples, processes = config["samples"]["list"], config["samples"]["processes"]
    excluded = set(spec.get("exclude_features") or [])
    seen = [f for f in config["features"]["training"] if f not in excluded]
    return canonical(
        {
            "method": spec["method"],
            "features_seen": seen,
            "evaluation": settings,
            "samples": {n: {"process": s["process"]} for n, s in samples.items()},
            "processes": {n: {"role": p["role"]} for n, p in processes.items()},
            "signal_region": config["export"]["training_region"],
            "control_regions": list(fit["scale_factors"]["regions"]),
            "cr_data_fit_fraction": config["export"]["cr_data_fit_fraction"],
            "reweighting": reweighting_list(config),
            # the fast significance: binning, lnN and MC statistics (JES needs varied scores)
            "fit": {
                "binning": fit["binning"],
                "systematics": {
                    k: v
                    for k, v in fit["systematics"].items()
                    if k not in ("jes", "weights", "pruning", "smoothing")
                },
                "poi_bounds": fit["poi_bounds"],
            },
            "seed": config["seed"],
        }
    )


def scan_summary(config: Mapping, scan: str) -> dict[str, Any]:
    """Params of a scan's summary and selection."""
    from vhbb.config.scans import point_overrides

    ev = config["evaluation"]
    return canonical(
        {
            "scan": scan,
            "points": point_overrides(config, scan),
            "selection": {
                "metric": ev["sculpting"]["metric"],
                "threshold": ev["sculpting"]["threshold"],
                "require_vz": ev["vz_peak"]["required"],
                "min_gain_significance": ev["baseline"]["min_gain_significance"],
                "require_data_mc": ev["data_mc"]["require"],
                "candidates": list(config["scans"][scan].get("candidates") or []),
            },
        }
    )


def summary_keys(config: Mapping) -> dict[str, list[str]]:
    """What the summary page reads: evaluated models, scans, fitted ``model/mode`` pairs,
    diagnosed pairs and regions with a weight validation (the summary rule's input lists)."""
    fit = config["fit"]
    fits = [f"{m}/{mode}" for m in fit_models(config) for mode in fit["modes"]]
    diags = [f"{m}/{mode}" for m in fit_models(config) for mode in diagnostics_modes(config)]
    shown = [d for d in diags if d.split("/")[-1] == "simultaneous"] or diags
    return {
        "shown": shown[:1],  # the fit whose post-fit plot and impacts the page shows
        "metrics": evaluation_models(config),
        "best": scan_names(config),
        "fits": fits,
        "diagnostics": diags,
        "weights": list(config["export"]["regions"]),
    }


def summary(config: Mapping) -> dict[str, Any]:
    """Params of the summary page: thresholds it applies, the toy's hidden truth, provenance."""
    from vhbb.core.provenance import section_hash

    toy_truth = (
        config.get("toy", {}).get("truth", {})
        if any(s.get("source") == "toy" for s in config["samples"]["list"].values())
        else {}
    )
    return canonical(
        {
            "keys": summary_keys(config),
            "sculpting_threshold": config["evaluation"]["sculpting"]["threshold"],
            "truth_scale_factors": toy_truth.get("scale_factors"),
            "config_hash": section_hash(config),
        }
    )
