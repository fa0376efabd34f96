"""profiles/slurm against a real one-node Slurm cluster started by tests/cluster/slurm.sh.

The workflow runs through snakemake-executor-plugin-slurm (pinned in docs/scale.md) with a
workflow profile generated from profiles/slurm (GPU requests removed), in a temporary working
directory.  What the jobs got is read back from Slurm's own records (squeue keeps finished jobs for
MinJobAge = 600 s).  Needs root and Debian's slurm-wlm + munge (.ci/system-packages.sh); skipped
otherwise, except under CI=true where a skip is a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, skip_or_fail, snakemake_cmd

pytestmark = pytest.mark.slow

SLURM_SH = REPO / "tests" / "cluster" / "slurm.sh"
GPU_KEYS = ("gpu", "gpus", "gres", "cpus_per_gpu", "gpu_model", "tasks_per_gpu")
PLUGIN_VERSION = "2.8.0"


def _find(binary: str) -> str | None:
    return shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/sbin")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    missing = [b for b in ("munged", "slurmctld", "slurmd", "sbatch", "squeue") if not _find(b)]
    if missing:
        skip_or_fail(f"Slurm binaries not found ({', '.join(missing)}): run .ci/system-packages.sh")
    if os.geteuid() != 0:
        skip_or_fail("the test Slurm cluster must be started as root")
    conf = Path("/etc/slurm/slurm.conf")
    if conf.exists() and not conf.is_symlink():
        skip_or_fail("/etc/slurm/slurm.conf belongs to a real Slurm installation")
    try:
        from importlib.metadata import version

        got = version("snakemake-executor-plugin-slurm")
    except Exception:
        skip_or_fail("snakemake-executor-plugin-slurm is not installed")
    if got != PLUGIN_VERSION:
        skip_or_fail(f"snakemake-executor-plugin-slurm {got} installed, profile tested with 2.8.0")
    state = tmp_path_factory.mktemp("slurm")
    env = dict(
        os.environ,
        SLURM_TEST_CTLD_PORT=str(_free_port()),
        SLURM_TEST_SLURMD_PORT=str(_free_port()),
    )
    started = subprocess.run(
        ["bash", str(SLURM_SH), "start", str(state)], env=env, capture_output=True, text=True
    )
    if started.returncode != 0:
        logs = "".join(p.read_text()[-3000:] for p in (state / "log").glob("*.log"))
        subprocess.run(["bash", str(SLURM_SH), "stop", str(state)], env=env)
        pytest.fail(f"slurm.sh start failed:\n{started.stdout}{started.stderr}\n{logs}")
    try:
        yield state
    finally:
        subprocess.run(["bash", str(SLURM_SH), "stop", str(state)], env=env, check=False)


def jobs_of(prefix: str) -> list[dict[str, str]]:
    """Slurm's records of the jobs of one Snakemake run (job names start with ``prefix``)."""
    fields = ("id", "state", "name", "comment", "mem", "cpus", "time")
    out = subprocess.run(
        ["squeue", "--states=all", "-h", "-o", "%i|%T|%j|%k|%m|%C|%l"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [dict(zip(fields, line.split("|"), strict=True)) for line in out.splitlines()]
    return sorted((r for r in rows if r["name"].startswith(prefix)), key=lambda r: int(r["id"]))


def with_timeout(cmd: list[str], seconds: int) -> list[str]:
    # SIGINT makes Snakemake cancel its Slurm jobs (scancel) before it exits
    return ["timeout", "-s", "INT", "-k", "30", str(seconds), *cmd]


def fail_msg(proc: subprocess.CompletedProcess | subprocess.Popen, out: str) -> str:
    return f"snakemake exited with {proc.returncode}:\n{out[-6000:]}"


def test_export_through_slurm(slurm_cluster: Path, cluster_run, tmp_path: Path) -> None:
    """The test workflow's `export` target, every job submitted with sbatch by the profile."""
    workdir = cluster_run.workdir
    # one file per sample keeps the run short; the toy ntuples are written locally first
    overlay = tmp_path / "one_file.yaml"
    overlay.write_text("toy: {files_per_sample: 1, data_files: 1}\n")
    local = subprocess.run(
        snakemake_cmd(workdir, "--cores", "2", "ntuples", overlays=(str(overlay),)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert local.returncode == 0, fail_msg(local, local.stdout + local.stderr)

    profile = cluster_run.profile("slurm", GPU_KEYS, **{"slurm-jobname-prefix": "vhbbexport"})
    cmd = snakemake_cmd(
        workdir, "--workflow-profile", str(profile), "export", overlays=(str(overlay),)
    )
    proc = subprocess.run(with_timeout(cmd, 400), capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, fail_msg(proc, out)
    assert "SLURM run ID: vhbbexport_" in out
    assert (workdir / "results" / "export" / "summary.json").exists()

    jobs = jobs_of("vhbbexport_")
    by_rule: dict[str, list[dict[str, str]]] = {}
    for job in jobs:
        rule = job["comment"].removeprefix("rule_").split("_wildcards_")[0]
        by_rule.setdefault(rule, []).append(job)
    # 7 samples x 1 file; no toy_file job (written locally); `export` itself runs locally
    assert {r: len(j) for r, j in by_rule.items()} == {
        "cache_file": 7,
        "cache_sample": 7,
        "export_regions": 1,
    }
    assert all(j["state"] == "COMPLETED" for j in jobs)
    # sbatch --mem / --cpus-per-task / -t as Slurm recorded them: memory from the profile's
    # attempt-scaled set-resources (attempt 1), wall time from the rules or the profile
    expected = {
        "cache_file": ("3000M", "1", "30:00"),
        "cache_sample": ("4000M", "1", "20:00"),
        "export_regions": ("8000M", "1", "2:00:00"),
    }
    for rule, (mem, cpus, limit) in expected.items():
        for job in by_rule[rule]:
            assert (job["mem"], job["cpus"], job["time"]) == (mem, cpus, limit), job


def test_retry_and_cancelled_job(slurm_cluster: Path, cluster_run, tmp_path: Path) -> None:
    """A job failing once is resubmitted with more memory; a job cancelled with scancel is
    reported as failed and resubmitted (--retries 1 from the profile)."""
    workdir = cluster_run.workdir
    profile = cluster_run.profile("slurm", GPU_KEYS, **{"slurm-jobname-prefix": "vhbbretry"})
    cmd = cluster_run.test_workflow(profile, "all")
    log = tmp_path / "snakemake.out"
    with log.open("w") as sink:
        proc = subprocess.Popen(with_timeout(cmd, 300), stdout=sink, stderr=subprocess.STDOUT)
        cancelled = None
        deadline = time.monotonic() + 150
        while cancelled is None and time.monotonic() < deadline and proc.poll() is None:
            for job in jobs_of("vhbbretry_"):
                if job["comment"] == "rule_sleeper" and job["state"] == "RUNNING":
                    subprocess.run(["scancel", job["id"]], check=True)
                    cancelled = job["id"]
            time.sleep(0.5)
        proc.wait(timeout=330)
    out = log.read_text()
    assert cancelled is not None, f"the sleeper job never ran:\n{out[-6000:]}"
    assert proc.returncode == 0, fail_msg(proc, out)

    jobs = jobs_of("vhbbretry_")
    flaky = [j for j in jobs if j["comment"] == "rule_flaky"]
    sleeper = [j for j in jobs if j["comment"] == "rule_sleeper"]
    # attempt 1 fails with 100 MB, attempt 2 gets 200 MB (mem_mb = 100 * attempt) and succeeds
    assert [(j["state"], j["mem"]) for j in flaky] == [("FAILED", "100M"), ("COMPLETED", "200M")]
    assert [(j["state"], j["mem"]) for j in sleeper] == [
        ("CANCELLED", "100M"),
        ("COMPLETED", "200M"),
    ]
    assert sleeper[0]["id"] == cancelled
    assert f"SLURM-job '{cancelled}' failed, SLURM status is: 'CANCELLED'" in out
    assert (workdir / "flaky.txt").read_text().strip() == "200"
    assert (workdir / "sleeper.txt").read_text().strip() == "200"
