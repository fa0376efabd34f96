"""Dry-run DAG build of a big hyperparameter scan vs a trivial Snakefile with as many jobs.

The workflow (config.yaml) with its ``disco_lambda`` scan widened to a 2D grid of ``points``
models (``disco.lambda`` x ``lr``): one training job per point and fold, plus scoring, evaluation
and plots per point.  ``snakemake -n all`` in an empty directory (so every job is planned) is
timed end to end (interpreter start, parse, DAG, listing; wall and CPU seconds, CPU being the
robust figure on a busy machine), and so is the same dry run of a
generated Snakefile with the same number of trivial jobs (one rule, ``touch``), in the same run.
The ratio says what the workflow's own parse-time code (config validation, params helpers, input
functions) costs on top of Snakemake.  Anchor: Snakemake builds 1000 trivial jobs in ~4 s and
5000 in ~13 s on the development machine.
"""

from __future__ import annotations

import logging
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]
TRIVIAL = """
N = {n}


rule all:
    input:
        expand("out/{{i}}.txt", i=range(N)),


rule make:
    output:
        "out/{{i}}.txt",
    shell:
        "touch {{output}}"
"""


def _cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _dry_run(cmd: list[str], cwd: Path) -> dict:
    """Wall and CPU seconds (CPU: robust on a busy machine) and the number of jobs planned."""
    t0, c0 = time.perf_counter(), _cpu_children()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=3600)
    seconds, cpu = time.perf_counter() - t0, _cpu_children() - c0
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"dry run failed: {' '.join(cmd)}\n{out[-3000:]}")
    total = re.search(r"^total\s+(\d+)\s*$", out, re.M)
    if total is None:
        raise RuntimeError(f"no job stats in the dry run:\n{out[-3000:]}")
    return {"seconds": seconds, "cpu_seconds": cpu, "jobs": int(total.group(1))}


def _grid(points: int) -> dict[str, list[float]]:
    """A disco.lambda x lr grid of exactly ``points`` models (lr: up to 20 values)."""
    n_lr = next(k for k in range(min(points, 20), 0, -1) if points % k == 0)
    n_lambda = points // n_lr
    return {
        "disco.lambda": [round(1.0 + 2.0 * i, 3) for i in range(n_lambda)],
        "lr": [round(1e-4 * (1 + i), 6) for i in range(n_lr)],
    }


def workflow_dry_run(points: int, workdir: Path) -> dict:
    overlay = workdir / "scan.yaml"
    overlay.write_text(
        yaml.safe_dump({"scans": {"disco_lambda": {"base": "disco", "grid": _grid(points)}}})
    )
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(REPO / "config" / "config.yaml"),
        str(overlay),
        "-n",
        "--cores",
        "1",
        "--quiet",
        "rules",
        "all",
    ]
    return _dry_run(cmd, workdir)


def trivial_dry_run(n_jobs: int, workdir: Path) -> dict:
    snakefile = workdir / "Snakefile"
    snakefile.write_text(TRIVIAL.format(n=n_jobs - 1))  # + the "all" job
    cmd = [sys.executable, "-m", "snakemake", "-s", str(snakefile), "-d", str(workdir)]
    return _dry_run([*cmd, "-n", "--cores", "1", "--quiet", "rules", "all"], workdir)


def run(quick: bool = False) -> dict:
    points = 25 if quick else 500
    with tempfile.TemporaryDirectory(prefix="bench_dag_") as tmp:
        wf_dir, base_dir = Path(tmp) / "workflow", Path(tmp) / "trivial"
        wf_dir.mkdir()
        base_dir.mkdir()
        ours = workflow_dry_run(points, wf_dir)
        base = trivial_dry_run(ours["jobs"], base_dir)
    result = {
        "scan_points": points,
        "training_jobs": 2 * points,
        "workflow": ours,
        "trivial_baseline": base,
        "ratio": ours["seconds"] / base["seconds"],
        "cpu_ratio": ours["cpu_seconds"] / base["cpu_seconds"],
        "ms_per_job": 1e3 * ours["seconds"] / ours["jobs"],
        "baseline_ms_per_job": 1e3 * base["seconds"] / base["jobs"],
    }
    log.info(
        "DAG of %d scan points (%d jobs): %.1f s (CPU %.1f s); trivial Snakefile, same number "
        "of jobs: %.1f s (CPU %.1f s); ratio %.2f (CPU %.2f)",
        points,
        ours["jobs"],
        ours["seconds"],
        ours["cpu_seconds"],
        base["seconds"],
        base["cpu_seconds"],
        result["ratio"],
        result["cpu_ratio"],
    )
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(run(quick="--quick" in sys.argv))
