"""The pre-fork job server (vhbb.core.prefork): a job runs in a forked child with its own argv,
directory, environment and streams, and its exit status, failures and signals reach the job's
process; whenever no server can take a job, the job runs in its own process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vhbb.core import prefork

SCRIPT = """\
import os, sys, time
from vhbb.core import prefork
status = prefork.delegate()
if status is not None:
    raise SystemExit(status)
mode = sys.argv[1]
print("child=%s cwd=%s var=%s torch=%s argv=%s" % (
    os.environ.get("VHBB_PREFORK_CHILD"), os.getcwd(), os.environ.get("MY_VAR"),
    "torch" in sys.modules, sys.argv[1:]), flush=True)
if mode == "exit":
    raise SystemExit(int(sys.argv[2]))
if mode == "raise":
    raise RuntimeError("the job failed on purpose")
if mode == "sleep":
    open(sys.argv[2], "w").write(str(os.getpid()))
    time.sleep(120)
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):  # type: ignore[no-untyped-def]
    log = tmp_path_factory.mktemp("prefork") / "server.log"
    handle = prefork.start(log_path=log)
    assert handle is not None, log.read_text()
    path = os.environ[prefork.SOCKET_VARIABLE]
    yield path
    prefork.stop(handle)
    assert not Path(path).exists()


def run(path: str | None, tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    environ = {k: v for k, v in os.environ.items() if k != prefork.SOCKET_VARIABLE}
    environ.update(MY_VAR="from-the-job", **env)
    if path is not None:
        environ[prefork.SOCKET_VARIABLE] = path
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_job_runs_forked_with_its_own_argv_directory_and_environment(server, tmp_path):
    out = run(server, tmp_path, "exit", "0")
    assert out.returncode == 0, out.stderr
    assert f"child=1 cwd={tmp_path} var=from-the-job" in out.stdout
    assert "argv=['exit', '0']" in out.stdout
    pytest.importorskip("torch")
    assert "torch=True" in out.stdout  # preloaded by the server, not imported by the job


def test_exit_status_and_failures_reach_the_jobs_process(server, tmp_path):
    assert run(server, tmp_path, "exit", "3").returncode == 3
    failed = run(server, tmp_path, "raise")
    assert failed.returncode == 1
    assert "RuntimeError: the job failed on purpose" in failed.stderr
    assert "child=1" in failed.stdout


def test_without_a_server_the_job_runs_in_its_own_process(server, tmp_path):
    for out in (
        run(None, tmp_path, "exit", "0"),
        run(str(tmp_path / "no-such-socket"), tmp_path, "exit", "0"),  # stale or gone
        run(server, tmp_path, "exit", "0", SLURM_JOB_ID="42"),  # a batch job is never taken
    ):
        assert out.returncode == 0, out.stderr
        assert "child=None" in out.stdout


def test_another_installation_is_refused(server, monkeypatch):
    monkeypatch.setattr(prefork, "_installation", lambda: {"executable": "x", "prefix": "y"})
    assert prefork.delegate(server) is None


def _gone(pid: int, within_s: float = 20.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_cancelling_the_job_ends_its_forked_process(server, tmp_path, sig):
    """SIGTERM is forwarded to the child; after SIGKILL of the job's process the child sees its
    connection close and ends itself."""
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    pid_file = tmp_path / "child.pid"
    env = dict(os.environ, MY_VAR="x", **{prefork.SOCKET_VARIABLE: server})
    proc = subprocess.Popen([sys.executable, str(script), "sleep", str(pid_file)], env=env)
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    child = int(pid_file.read_text())
    assert child != proc.pid
    proc.send_signal(sig)
    proc.wait(timeout=30)
    assert proc.returncode != 0
    assert _gone(child)


def test_the_server_ends_and_cleans_up_when_its_snakemake_process_is_gone(tmp_path):
    """A Snakemake run that was killed never calls stop(): the server notices that its parent
    process has gone, exits and removes its socket and directory."""
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix=prefork.DIRECTORY_PREFIX))
    socket_path = directory / "socket"
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    server = subprocess.Popen(
        [sys.executable, "-m", "vhbb.core.prefork", "serve", str(socket_path), str(parent.pid)],
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not socket_path.exists():
        assert time.monotonic() < deadline and server.poll() is None
        time.sleep(0.05)
    parent.kill()
    parent.wait()
    assert server.wait(timeout=30) == 0
    assert not directory.exists()
