"""Toy generation, ntuple caching and export rates; caching against a bare uproot read.

Caching is measured per core (one process, as one Snakemake job per file) and compared with a
bare ``uproot.iterate`` of the same branches over the same files in the same run, for the toy
(flat) preset and for a NanoAOD-layout file (the largest toy sample's first file written with
jagged ``Jet_*`` collections and cached with the ``nanoaod`` layout of the config; the bare read
is ``library="ak"``, as caching reads it).  Each timing is the best of :data:`REPEATS` runs,
taken alternately, so that a loaded machine disturbs both sides alike.  Peak memory of caching
is measured in a subprocess for two chunk sizes: it follows the chunk size, not the file size.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REPEATS = 2
log = logging.getLogger(__name__)

# The probe's own peak: Linux's VmHWM belongs to the process image (reset by exec), whereas
# ru_maxrss survives exec and reported the benchmark's parent process (~900 MB at every chunk
# size) instead of the caching job.
MEMORY_PROBE = r"""
import json, resource, sys
from pathlib import Path
from vhbb.data import cache
spec = json.loads(sys.argv[2])
cache.cache_file(sys.argv[1], **spec)
status = Path("/proc/self/status")
lines = status.read_text().splitlines() if status.exists() else []
hwm = [int(line.split()[1]) / 1024 for line in lines if line.startswith("VmHWM:")]
print(hwm[0] if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def _peak_mb(path: str, spec: dict) -> float:
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, path, json.dumps(spec)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(out.stdout.strip().splitlines()[-1])


def _best(*fns):  # type: ignore[no-untyped-def]
    """Best wall time of each function over :data:`REPEATS` alternating runs."""
    best = [float("inf")] * len(fns)
    for _ in range(REPEATS):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def nanoaod_branches(branches: dict, seed: int = 5) -> dict:
    """The toy branches in the NanoAOD layout: jagged ``Jet_*`` (the two b-jet candidates and
    the additional jets, shuffled inside each event; additional jets get a mass of 5 GeV and a
    b-tag score below 0.5), ``MET_*``, soft activity, weight and keys."""
    import awkward as ak
    import numpy as np

    rng = np.random.default_rng(seed)
    n = len(branches["event"])
    cols: dict[str, list] = {q: [] for q in ("pt", "eta", "phi", "mass", "btag")}
    for slot in (1, 2):
        for q in cols:
            cols[q].append(np.asarray(branches[f"Jet{slot}_{q}"], np.float64))
    k = 1
    while f"AddJet{k}_pt" in branches:
        for q in ("pt", "eta", "phi"):
            cols[q].append(np.asarray(branches[f"AddJet{k}_{q}"], np.float64))
        cols["mass"].append(np.full(n, 5.0))
        cols["btag"].append(rng.random(n) * 0.5)
        k += 1
    mat = {q: np.stack(v, axis=1) for q, v in cols.items()}
    present = mat["pt"] > 0
    perm = np.argsort(rng.random(present.shape), axis=1)
    perm = np.take_along_axis(
        perm, np.argsort(~np.take_along_axis(present, perm, 1), axis=1, kind="stable"), 1
    )  # present jets first, shuffled
    counts = present.sum(axis=1)
    inside = np.arange(present.shape[1])[None, :] < counts[:, None]
    out = {key: branches[key] for key in ("run", "luminosityBlock", "event")}
    names = {"pt": "Jet_pt", "eta": "Jet_eta", "phi": "Jet_phi", "mass": "Jet_mass"}
    names["btag"] = "Jet_btagDeepB"
    for q, name in names.items():
        values = np.take_along_axis(mat[q], perm, 1).astype(np.float32)
        out[name] = ak.unflatten(values[inside], counts)
    out["MET_pt"] = np.asarray(branches["MET_pt"], np.float32)
    out["MET_phi"] = np.asarray(branches["MET_phi"], np.float32)
    out["SoftActivityJetNjets5"] = np.asarray(branches["SoftActivityJetNjets5"], np.int32)
    out["genWeight"] = np.asarray(branches["genWeight"], np.float32)
    return out


def run(quick: bool = False) -> dict:
    import uproot

    from vhbb import config
    from vhbb.config import params
    from vhbb.data import cache, export, layouts, toy

    cfg = config.load_config([REPO / "config" / "config.yaml"])
    if quick:
        cfg["toy"]["events"] = {k: v // 20 for k, v in cfg["toy"]["events"].items()}
    tmp = Path(tempfile.mkdtemp(prefix="vhbb-bench-"))
    mc_samples = [s for s in params.toy_samples(cfg) if not params.is_data(cfg, s)]
    # --- generation
    t0 = time.perf_counter()
    n_generated = 0
    files: dict[str, list[str]] = {}
    for sample in params.toy_samples(cfg):
        for i in range(params.n_files(cfg, sample)):
            path = tmp / sample / f"part{i}.root"
            n_generated += toy.run_toy_file(path, **toy.file_spec(cfg, sample, i))
            files.setdefault(sample, []).append(str(path))
    t_gen = time.perf_counter() - t0
    # --- toy preset: bare uproot read of the same branches (baseline) against caching
    layout = cfg["samples"]["layouts"]["flat"]
    chunk = cfg["samples"]["chunk_size"]
    counts = {"bare": 0, "cache": 0}

    def bare_toy() -> None:
        counts["bare"] = 0
        for sample in mc_samples:
            for path in files[sample]:
                # every branch caching reads: the nominal ones and those of each JES source
                tree = uproot.open(path)["Events"]
                branches = cache.flat_branches(
                    layout, True, cache.flat_jes_sources(list(tree.keys()))
                )
                branches += cache.flat_weight_variations(list(tree.keys()))
                for arrays in uproot.iterate(
                    f"{path}:Events", branches, step_size=chunk, library="np"
                ):
                    counts["bare"] += len(arrays["event"])

    def cache_toy() -> None:  # MC caching only (the bare read covers the MC files)
        counts["cache"] = 0
        for sample in mc_samples:
            spec = params.cache_file(cfg, sample)
            for path in files[sample]:
                counts["cache"] += cache.cache_file(path, **spec)[1]["n_read"]

    t_bare, t_cache = _best(bare_toy, cache_toy)
    n_read, n_cached = counts["bare"], counts["cache"]
    # --- NanoAOD layout: the largest MC sample's first file, jets as jagged collections
    nano_sample = max(mc_samples, key=lambda s: cfg["toy"]["events"][s])
    fs = toy.file_spec(cfg, nano_sample, 0)
    flat = toy.generate_mc_file(
        fs["process"],
        fs["n_events"],
        toy.derive_seed(fs["seed"], nano_sample, 0),
        0,
        jes=fs["jes_sources"],
    )
    nano_path = str(tmp / "nanoaod" / "part0.root")
    toy.write_tree(nano_path, nanoaod_branches(flat), fs["compression"])
    nano_layout = cfg["samples"]["layouts"]["nanoaod"]
    nano_spec = {**params.cache_file(cfg, nano_sample), "layout": nano_layout}
    nano_read = layouts.custom_branches(layouts.nanoaod_preset(nano_layout), True)

    def bare_nano() -> None:
        counts["bare"] = 0
        for arrays in uproot.iterate(
            f"{nano_path}:Events", nano_read, step_size=chunk, library="ak"
        ):
            counts["bare"] += len(arrays)

    def cache_nano() -> None:
        counts["cache"] = cache.cache_file(nano_path, **nano_spec)[1]["n_read"]

    t_bare_nano, t_cache_nano = _best(bare_nano, cache_nano)
    n_nano = counts["cache"]
    # --- caching (same files)
    t0 = time.perf_counter()
    frames, stats = {}, {}
    for sample in params.toy_samples(cfg):
        spec = params.cache_file(cfg, sample)
        parts, pstats = [], []
        for path in files[sample]:
            frame, st = cache.cache_file(path, **spec)
            parts.append(frame)
            pstats.append(st)
        cs = params.cache_sample(cfg, sample)
        frames[sample], stats[sample] = cache.merge_sample(
            parts,
            pstats,
            sample=sample,
            is_mc=cs["is_mc"],
            xsec_pb=cs["xsec_pb"],
            lumi_fb=cs["lumi"] or 0,
        )
    t_cache_total = time.perf_counter() - t0
    # --- export
    spec = params.export(cfg)
    t0 = time.perf_counter()
    n_export = 0
    for region in cfg["export"]["regions"]:
        table = export.region_table(
            frames,
            region=region,
            samples=spec["samples"],
            processes=spec["processes"],
            features=spec["features"],
            export_cfg=spec["export"],
            blinded=spec["blinded"],
            seed=spec["seed"],
        )
        export.write_h5(tmp / f"{region}.h5", table, {"region": region})
        n_export += len(table["label"])
    t_export = time.perf_counter() - t0
    # --- peak memory vs chunk size (one file)
    probe_sample = max(mc_samples, key=lambda s: cfg["toy"]["events"][s])
    probe_file = files[probe_sample][0]
    spec = params.cache_file(cfg, probe_sample)
    mem = {}
    for size in (5_000, 50_000, 200_000):
        mem[size] = _peak_mb(probe_file, {**spec, "chunk_size": size})
    n_probe = uproot.open(probe_file)["Events"].num_entries
    result = {
        "events_generated": n_generated,
        "generation_events_per_s": n_generated / t_gen,
        "bare_uproot_events_per_s": n_read / t_bare,
        "caching_events_per_s_per_core": n_cached / t_cache,
        "caching_over_bare_uproot": (n_cached / t_cache) / (n_read / t_bare),
        "nanoaod_file_events": n_nano,
        "nanoaod_bare_uproot_events_per_s": n_nano / t_bare_nano,
        "nanoaod_caching_events_per_s_per_core": n_nano / t_cache_nano,
        "nanoaod_caching_over_bare_uproot": t_bare_nano / t_cache_nano,
        "caching_all_samples_s": t_cache_total,
        "export_events_per_s": n_export / t_export,
        "export_events": n_export,
        "peak_rss_mb_by_chunk_size": mem,
        "probe_file_events": n_probe,
    }
    log.info(
        "generation %.0f ev/s | toy preset: bare uproot %.0f ev/s, caching %.0f ev/s/core "
        "(ratio %.2f) | NanoAOD layout (%d events): bare uproot %.0f ev/s, caching %.0f "
        "ev/s/core (ratio %.2f) | export %.0f ev/s | peak RSS %s MB for chunk sizes %s (file "
        "of %d events)",
        result["generation_events_per_s"], result["bare_uproot_events_per_s"],
        result["caching_events_per_s_per_core"], result["caching_over_bare_uproot"],
        n_nano, result["nanoaod_bare_uproot_events_per_s"],
        result["nanoaod_caching_events_per_s_per_core"],
        result["nanoaod_caching_over_bare_uproot"],
        result["export_events_per_s"], [round(v) for v in mem.values()], list(mem), n_probe,
    )  # fmt: skip
    return result
