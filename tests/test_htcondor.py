"""profiles/htcondor with the real executor plugin, against a local stand-in for the schedd.

No HTCondor pool or daemon can run on the test machines.  tests/cluster/condor_standin.py
replaces ``htcondor2.Schedd`` (and nothing else) before it calls Snakemake's main: the plugin
builds real ``htcondor2.Submit`` descriptions and follows the jobs through the real
``htcondor2.JobEventLog`` reading the user event log the stand-in writes.  What is *not* tested
here: matchmaking, file transfer, held jobs, a real schedd's answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, skip_or_fail, snakemake_cmd

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:The environment variable CONDOR_CONFIG:UserWarning"),
]

STANDIN = REPO / "tests" / "cluster" / "condor_standin.py"
PROFILE = REPO / "profiles" / "htcondor"
PLUGIN_VERSION = "0.3.0"  # the version the stand-in was written against
GPU_KEYS = ("request_gpus", "require_gpus", "gpus_minimum_memory", "gpus_minimum_capability")


@pytest.fixture(scope="module", autouse=True)
def _plugin() -> None:
    try:
        got = version("snakemake-executor-plugin-htcondor")
    except PackageNotFoundError:
        skip_or_fail("snakemake-executor-plugin-htcondor is not installed (pip install .[test])")
    if got != PLUGIN_VERSION:
        skip_or_fail(f"snakemake-executor-plugin-htcondor {got}; the stand-in targets 0.3.0")
    try:
        import htcondor2  # noqa: F401
    except ImportError as exc:
        skip_or_fail(f"the htcondor Python bindings (htcondor2) cannot be imported: {exc}")


def site_profile(cluster_run) -> Path:  # type: ignore[no-untyped-def]
    """profiles/htcondor without GPU requests, polling every second (test speed)."""
    return cluster_run.profile("htcondor", GPU_KEYS, **{"seconds-between-status-checks": 1})


def run_standin(workdir: Path, cmd: list[str], records: Path) -> subprocess.CompletedProcess:
    # cmd is `python -m snakemake ...`: the stand-in runner takes the same arguments
    assert cmd[1:3] == ["-m", "snakemake"]
    runner = [sys.executable, str(STANDIN), *cmd[3:]]
    env = {**os.environ, "VHBB_CONDOR_STANDIN_RECORDS": str(records)}
    return subprocess.run(
        ["timeout", "-s", "INT", "-k", "30", "300", *runner],
        capture_output=True,
        text=True,
        cwd=workdir,
        env=env,
    )


def submits(records: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in records.read_text().splitlines()]


def events(workdir: Path) -> dict[int, list[tuple[int, Any]]]:
    """The user event log, parsed by the real htcondor2 reader: cluster -> [(type, rc)]."""
    import htcondor2

    log = workdir / ".snakemake" / "htcondor" / "snakemake-rules.log"
    out: dict[int, list[tuple[int, Any]]] = {}
    for event in htcondor2.JobEventLog(str(log)).events(stop_after=0):
        out.setdefault(event.cluster, []).append((int(event.type), event.get("ReturnValue")))
    return out


def test_profile_parses(tmp_path: Path) -> None:
    cmd = snakemake_cmd(tmp_path, "-n", "--workflow-profile", str(PROFILE), "export")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    out = proc.stdout + proc.stderr
    assert "request_memory=3000" in out and "request_memory=8000" in out
    assert "getenv=True" in out


def test_standin_runs_cache_stage(cluster_run, tmp_path: Path) -> None:
    workdir = cluster_run.workdir
    records = tmp_path / "submits.jsonl"
    profile = site_profile(cluster_run)
    cmd = snakemake_cmd(workdir, "--workflow-profile", str(profile), "results/cache/ZH.parquet")
    proc = run_standin(workdir, cmd, records)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
    assert (workdir / "results" / "cache" / "ZH.parquet").exists()

    subs = submits(records)
    by_rule: dict[str, list[dict[str, str]]] = {}
    for sub in subs:
        rule = sub["submit"]["batch_name"].strip('"').rsplit("-", 1)[0]
        by_rule.setdefault(rule, []).append(sub["submit"])
    assert {r: len(s) for r, s in by_rule.items()} == {
        "toy_file": 2,
        "cache_file": 2,
        "cache_sample": 1,
    }
    expected_memory = {"toy_file": "2000", "cache_file": "3000", "cache_sample": "4000"}
    for rule, descs in by_rule.items():
        for desc in descs:
            assert desc["request_cpus"] == "1"  # from the rule's threads
            assert desc["request_memory"] == expected_memory[rule]  # from the profile
            assert desc["request_disk"] == "2000000"
            assert desc["getenv"] == "True"
            assert "should_transfer_files" not in desc  # shared filesystem
            assert desc["executable"] == sys.executable
            assert f"--target-jobs {rule}:" in desc["arguments"]
    # every job submitted, executed and terminated with return value 0, as the reader saw it
    log = events(workdir)
    assert sorted(log) == sorted(s["cluster"] for s in subs)
    for cluster_events in log.values():
        assert cluster_events == [(0, None), (1, None), (5, 0)]


def test_standin_failed_job_is_retried(cluster_run, tmp_path: Path) -> None:
    workdir = cluster_run.workdir
    records = tmp_path / "submits.jsonl"
    cmd = cluster_run.test_workflow(site_profile(cluster_run), "flaky.txt")
    proc = run_standin(workdir, cmd, records)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
    subs = submits(records)
    # attempt 1 asks for 100 MB and fails; the retry asks for 200 MB (request_memory=100*attempt)
    assert [s["submit"]["request_memory"] for s in subs] == ["100", "200"]
    log = events(workdir)
    assert [log[s["cluster"]][-1] for s in subs] == [(5, 1), (5, 0)]
    assert (workdir / "flaky.txt").read_text().strip() == "200"
