"""Toy generation, ntuple caching and export rates; caching against a bare uproot read.

Caching is measured per core (one process, as one Snakemake job per file) and compared with a
bare ``uproot.iterate`` of the same branches over the same files in the same run (goal: ratio
>= 0.7).  Peak memory of caching is measured in a subprocess for two chunk sizes: it follows the
chunk size, not the file size.
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
log = logging.getLogger(__name__)

MEMORY_PROBE = r"""
import json, resource, sys
from vhbb.data import cache
spec = json.loads(sys.argv[2])
cache.cache_file(sys.argv[1], **spec)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def _peak_mb(path: str, spec: dict) -> float:
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, path, json.dumps(spec)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(out.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> dict:
    import uproot

    from vhbb import config
    from vhbb.config import params
    from vhbb.data import cache, export, toy

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
    # --- bare uproot read of the same branches (baseline)
    layout = cfg["samples"]["layouts"]["flat"]
    chunk = cfg["samples"]["chunk_size"]
    t0 = time.perf_counter()
    n_read = 0
    for sample in mc_samples:
        branches = cache.flat_branches(layout, True)
        for path in files[sample]:
            for arrays in uproot.iterate(f"{path}:Events", branches, step_size=chunk, library="np"):
                n_read += len(arrays["event"])
    t_bare = time.perf_counter() - t0
    # --- caching (same files)
    t0 = time.perf_counter()
    frames, stats = {}, {}
    n_cached = 0
    for sample in params.toy_samples(cfg):
        spec = params.cache_file(cfg, sample)
        parts, pstats = [], []
        for path in files[sample]:
            frame, st = cache.cache_file(path, **spec)
            parts.append(frame)
            pstats.append(st)
            if sample in mc_samples:
                n_cached += st["n_read"]
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
    # time attributable to MC caching only (the bare read covered MC files)
    t0 = time.perf_counter()
    for sample in mc_samples:
        spec = params.cache_file(cfg, sample)
        for path in files[sample]:
            cache.cache_file(path, **spec)
    t_cache = time.perf_counter() - t0
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
        "caching_all_samples_s": t_cache_total,
        "export_events_per_s": n_export / t_export,
        "export_events": n_export,
        "peak_rss_mb_by_chunk_size": mem,
        "probe_file_events": n_probe,
    }
    log.info(
        "generation %.0f ev/s | bare uproot %.0f ev/s | caching %.0f ev/s/core (ratio %.2f) | "
        "export %.0f ev/s | peak RSS %s MB for chunk sizes %s (file of %d events)",
        result["generation_events_per_s"], result["bare_uproot_events_per_s"],
        result["caching_events_per_s_per_core"], result["caching_over_bare_uproot"],
        result["export_events_per_s"], [round(v) for v in mem.values()], list(mem), n_probe,
    )  # fmt: skip
    return result
