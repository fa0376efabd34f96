"""Run Snakemake with the HTCondor executor plugin against a local stand-in for the schedd.

    python tests/cluster/condor_standin.py <snakemake arguments>

No HTCondor daemons can be installed on the test machines, so this runner replaces the one object
of the ``htcondor2`` bindings that talks to a schedd (``htcondor2.Schedd``) by :class:`Schedd`
below and then starts Snakemake's own ``main``.  Everything else is real: the executor plugin
builds its submit description with the real ``htcondor2.Submit``, and it follows the jobs with the
real ``htcondor2.JobEventLog`` reading the user event log that the stand-in writes in HTCondor's
format (submit 000, execute 001, terminated 005, aborted 009 events).

The stand-in runs each submitted job at once as a local process in the submit directory (a shared
filesystem, ``should_transfer_files`` is not supported), with HTCondor's environment rules:
``getenv = True`` passes the submitter's environment on, otherwise the job gets only the
``environment`` key and the ``_CONDOR_*`` variables.  Every submit description is appended as a
JSON line to the file named by ``VHBB_CONDOR_STANDIN_RECORDS`` (default
``condor-submits.jsonl``) for the tests to check.

Written against snakemake-executor-plugin-htcondor 0.3.0 and htcondor 24.12 (``htcondor2``).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import htcondor2

HOST = "<127.0.0.1:9618?addrs=127.0.0.1-9618&alias=localhost>"
_lock = threading.Lock()
_next_cluster = [0]
_procs: dict[int, subprocess.Popen] = {}
_finished: dict[int, dict[str, Any]] = {}
_logs: dict[int, str] = {}


def _event(log: str, code: int, cluster: int, body: str) -> None:
    """Append one event to a user event log, in HTCondor's text format."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    text = f"{code:03d} ({cluster:03d}.000.000) {stamp} {body}\n...\n"
    with _lock, open(log, "a", encoding="utf-8") as out:
        out.write(text)
        out.flush()


def _terminated(return_value: int) -> str:
    usage = "Usr 0 00:00:00, Sys 0 00:00:00"
    lines = [
        "Job terminated.",
        f"\t(1) Normal termination (return value {return_value})",
        f"\t\t{usage}  -  Run Remote Usage",
        f"\t\t{usage}  -  Run Local Usage",
        f"\t\t{usage}  -  Total Remote Usage",
        f"\t\t{usage}  -  Total Local Usage",
        "\t0  -  Run Bytes Sent By Job",
        "\t0  -  Run Bytes Received By Job",
        "\t0  -  Total Bytes Sent By Job",
        "\t0  -  Total Bytes Received By Job",
    ]
    return "\n".join(lines)


def _job_environment(desc: dict[str, str], scratch: str) -> dict[str, str]:
    getenv = desc.get("getenv", "false").strip().lower() in ("true", "yes", "1")
    env = dict(os.environ) if getenv else {}
    for item in shlex.split(desc.get("environment", "")):
        key, _, value = item.partition("=")
        env[key] = value
    env.update({"_CONDOR_SCRATCH_DIR": scratch, "TMPDIR": scratch, "_CONDOR_SLOT": "slot1"})
    return env


def _run(cluster: int, desc: dict[str, str], iwd: str) -> None:
    log = desc["log"]

    def expand(value: str) -> str:
        return value.replace("$(ClusterId)", str(cluster)).replace("$(Cluster)", str(cluster))

    scratch = Path(iwd, ".snakemake", "condor-standin-scratch", str(cluster))
    scratch.mkdir(parents=True, exist_ok=True)
    command = [desc["executable"], *shlex.split(desc.get("arguments", ""))]
    _event(log, 1, cluster, f"Job executing on host: {HOST}\n\tSlotName: slot1@localhost")
    with (
        open(expand(desc["output"]) if "output" in desc else os.devnull, "w") as out,
        open(expand(desc["error"]) if "error" in desc else os.devnull, "w") as err,
    ):
        proc = subprocess.Popen(
            command,
            cwd=iwd,
            env=_job_environment(desc, str(scratch)),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
        with _lock:
            _procs[cluster] = proc
        rc = proc.wait()
    with _lock:
        _procs.pop(cluster, None)
        removed = cluster in _finished
        if not removed:
            _finished[cluster] = {"ClusterId": cluster, "JobStatus": 4, "ExitCode": rc}
    if not removed:
        _event(log, 5, cluster, _terminated(rc))


class SubmitResult:
    def __init__(self, cluster: int) -> None:
        self._cluster = cluster

    def cluster(self) -> int:
        return self._cluster

    def num_procs(self) -> int:
        return 1


class Schedd:
    """The calls of htcondor2.Schedd that the executor plugin makes, served locally."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def submit(self, description: htcondor2.Submit, count: int = 1, **kwargs: Any) -> SubmitResult:
        desc = {str(k): str(v) for k, v in dict(description).items()}
        if desc.get("should_transfer_files", "").upper() == "YES":
            raise htcondor2.HTCondorException(
                "the stand-in schedd only supports a shared filesystem"
            )
        with _lock:
            _next_cluster[0] += 1
            cluster = _next_cluster[0]
            _logs[cluster] = desc["log"]
        records = os.environ.get("VHBB_CONDOR_STANDIN_RECORDS", "condor-submits.jsonl")
        with _lock, open(records, "a", encoding="utf-8") as out:
            out.write(json.dumps({"cluster": cluster, "submit": desc}) + "\n")
        batch = desc.get("batch_name", "").strip('"')
        _event(desc["log"], 0, cluster, f"Job submitted from host: {HOST}\n    Batch name: {batch}")
        threading.Thread(target=_run, args=(cluster, desc, os.getcwd()), daemon=True).start()
        return SubmitResult(cluster)

    def act(self, action: Any, job_spec: Iterable[str] | str, **kwargs: Any) -> None:
        specs = [job_spec] if isinstance(job_spec, str) else list(job_spec)
        for spec in specs:
            cluster = int(str(spec).split(".")[0])
            with _lock:
                proc = _procs.get(cluster)
                if cluster in _finished or cluster not in _logs:
                    continue
                _finished[cluster] = {"ClusterId": cluster, "JobStatus": 3}
            if proc is not None:
                proc.terminate()
            _event(_logs[cluster], 9, cluster, "Job was aborted.\n\tvia condor_rm (by user root)")

    def query(self, constraint: str = "", projection: Any = None, **kwargs: Any) -> list:
        return []

    def history(self, constraint: str = "", projection: Any = None, **kwargs: Any) -> list:
        with _lock:
            return list(_finished.values())


def main(argv: list[str]) -> None:
    htcondor2.Schedd = Schedd  # type: ignore[misc,assignment]
    if "htcondor" in sys.modules:  # the version-1 bindings, should a plugin import them
        sys.modules["htcondor"].Schedd = Schedd  # type: ignore[attr-defined]

    from snakemake.cli import main as snakemake_main

    snakemake_main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
