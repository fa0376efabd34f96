"""A pre-forking job server: the heavy libraries are imported once per Snakemake run, not once
per job.

A local ``snakemake --cores N`` run starts one Python process per job, and most of the chain's
jobs are short: a job that imports torch, pandas and pyarrow spends 2-3 s on imports alone, a
plotting job ~1 s on matplotlib and mplhep (about a fifth of the default chain's job time).  The
technique is that of Python's ``multiprocessing`` forkserver and of gunicorn's ``--preload``:

* the Snakefile's ``onstart`` handler starts :func:`serve` (``python -m vhbb.core.prefork
  serve``) when the jobs run on this machine (``workflow.local_exec``; never for cluster
  executors) and config ``prefork`` is true; it imports :data:`PRELOAD` and listens on a Unix
  socket in a private temporary directory (mode 0700);
* a job's script calls :func:`vhbb.core.logs.run_script`, which first offers the job to the
  server (:func:`delegate`): it sends its stdin/stdout/stderr file descriptors (``SCM_RIGHTS``),
  its argv, working directory and environment; the server forks, the child takes them over and
  runs the same script file (``runpy``) with the libraries already imported, and reports its
  exit status back;
* the job's process waits and exits with the child's status; SIGTERM/SIGINT/SIGHUP it receives
  (Snakemake cancelling a job) are forwarded to the child's process group, and a child whose
  job process has gone is killed.

Nothing of the job's computation differs: the child runs the job's own script, in the job's
directory, with the job's environment and thread limits (:func:`vhbb.core.logs.limit_threads`),
and writes to the job's log and stderr.  Whenever the server cannot take a job (no server, a
stale socket, another Python installation such as a ``--use-conda`` environment, a batch job
under Slurm or HTCondor, a server that does not answer) the job runs in its own process as
before.  The server exits when its Snakemake process ends.

Caveat: Snakemake's ``benchmark:`` files measure the job's process, so their wall time is right
but memory and CPU time are those of the waiting process, not of the forked child.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: Imported by the server before it accepts jobs (each optional: a missing one is skipped).
#: vhbb itself is not preloaded, so every job imports the package's current code.
PRELOAD = (
    "numpy",
    "pandas",
    "pyarrow.parquet",
    "yaml",
    "jsonschema",
    "h5py",
    "scipy.special",
    "scipy.optimize",
    "scipy.interpolate",
    "iminuit",
    "awkward",
    "uproot",
    "vector",
    "hist",
    "matplotlib",
    "matplotlib.pyplot",
    "mplhep",
    "torch",
    "torch._dynamo",  # imported by the first optimiser a training creates (~1.6 s)
    "onnx",
    "correctionlib.schemav2",
    "sklearn.metrics",
    "sklearn.ensemble",
    "threadpoolctl",
    "tqdm",
    "snakemake.script",
)
#: The job's environment variable that names the server's socket.
SOCKET_VARIABLE = "VHBB_PREFORK_SOCKET"
#: Set in a forked child (its ``run_script`` then runs the job itself).
CHILD_VARIABLE = "VHBB_PREFORK_CHILD"
#: Batch systems whose jobs must not be taken over by a server outside their allocation.
BATCH_VARIABLES = ("SLURM_JOB_ID", "_CONDOR_JOB_AD", "PBS_JOBID", "LSB_JOBID")
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
CONNECT_TIMEOUT_S = 5.0
#: The private temporary directory of a server's socket (:func:`start`).
DIRECTORY_PREFIX = "vhbb-prefork-"


def _send(conn: socket.socket, message: Mapping[str, Any], fds: Sequence[int] = ()) -> None:
    data = json.dumps(message).encode()
    header = struct.pack("!I", len(data))
    if fds:
        socket.send_fds(conn, [header + data], list(fds))
    else:
        conn.sendall(header + data)


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def _recv(conn: socket.socket, with_fds: int = 0) -> tuple[dict[str, Any] | None, list[int]]:
    """One message (and up to ``with_fds`` descriptors); ``(None, [])`` at end of stream."""
    fds: list[int] = []
    if with_fds:
        first, fds, _flags, _addr = socket.recv_fds(conn, 65536, with_fds)
        if not first:
            return None, fds
    else:
        first = _recv_exact(conn, 4) or b""
        if not first:
            return None, []
    if len(first) < 4:
        rest = _recv_exact(conn, 4 - len(first))
        if rest is None:
            return None, fds
        first += rest
    (length,) = struct.unpack("!I", first[:4])
    body = first[4:]
    if len(body) < length:
        more = _recv_exact(conn, length - len(body))
        if more is None:
            return None, fds
        body += more
    return json.loads(body[:length]), fds


def _installation() -> dict[str, str]:
    """What makes two Python processes interchangeable for running a job."""
    return {"executable": os.path.realpath(sys.executable), "prefix": sys.prefix}


# -- the job's side ----------------------------------------------------------------------------


def in_child() -> bool:
    """Whether this process is a job forked from the server."""
    return os.environ.get(CHILD_VARIABLE) == "1"


def delegate(socket_path: str | None = None) -> int | None:
    """Offer this job (the running script) to the server; return the child's exit status, or
    None when no server takes it (the caller then runs the job itself)."""
    if in_child():
        return None
    path = socket_path or os.environ.get(SOCKET_VARIABLE)
    if not path or any(v in os.environ for v in BATCH_VARIABLES) or not sys.argv[0]:
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(CONNECT_TIMEOUT_S)
        conn.connect(path)
        request = {
            "argv": [os.path.abspath(sys.argv[0]), *sys.argv[1:]],
            "cwd": os.getcwd(),
            "env": dict(os.environ),
            "installation": _installation(),
        }
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        _send(conn, request, fds=[0, 1, 2])
        reply, _ = _recv(conn)
    except OSError:
        conn.close()
        return None
    if reply is None or "pid" not in reply:  # refused (another installation) or gone
        conn.close()
        return None
    conn.settimeout(None)
    child = int(reply["pid"])

    def forward(signum: int, _frame: Any) -> None:
        with contextlib.suppress(OSError):
            _send(conn, {"signal": int(signum)})

    previous = {s: signal.signal(s, forward) for s in SIGNALS}
    try:
        while True:
            try:
                reply, _ = _recv(conn)
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries recv itself
                continue
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        conn.close()
    if reply is None or "exit" not in reply:
        sys.stderr.write(
            f"vhbb prefork: the job's forked process (pid {child}) ended without an exit status "
            "(killed or crashed); see the job's log\n"
        )
        return 1
    return int(reply["exit"])


# -- the server's side -------------------------------------------------------------------------


def preload(modules: Sequence[str] = PRELOAD) -> list[str]:
    """Import ``modules`` (the ones that import); return their names."""
    import importlib

    os.environ.setdefault("MPLBACKEND", "Agg")
    loaded = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # an optional (or broken) library is not preloaded
            continue
        loaded.append(name)
    return loaded


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    with contextlib.suppress(Exception):
        sys.stderr.write(f"{code}\n")
    return 1


def _run_child(conn: socket.socket, request: Mapping[str, Any], fds: Sequence[int]) -> None:
    """In the forked child: become the job, run its script, report the status; never returns."""
    import runpy
    import threading
    import traceback

    for s in (*SIGNALS, signal.SIGCHLD, signal.SIGPIPE):
        signal.signal(s, signal.SIG_DFL)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # as in any Python process
    os.setpgid(0, 0)  # the job and whatever it starts: one group to signal
    for target, fd in zip((0, 1, 2), fds, strict=True):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ[CHILD_VARIABLE] = "1"
    argv = list(request["argv"])
    sys.argv = argv
    sys.path[0] = os.path.dirname(argv[0])
    _send(conn, {"pid": os.getpid()})

    def watch() -> None:
        """Forward the job process's signals; end the job when its process has gone."""
        while True:
            try:
                message, _ = _recv(conn)
            except OSError:
                message = None
            if message is None:
                os.killpg(0, signal.SIGKILL)
                return
            if "signal" in message:
                os.killpg(0, int(message["signal"]))

    threading.Thread(target=watch, name="prefork-watch", daemon=True).start()
    status = 0
    try:
        runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as exc:
        status = _exit_status(exc.code)
    except BaseException:  # reported as the interpreter does
        traceback.print_exc()
        status = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with contextlib.suppress(OSError):
        _send(conn, {"exit": status})
    os._exit(status)


def serve(socket_path: str | Path, parent_pid: int | None = None) -> None:
    """Preload, then fork a child per job until ``parent_pid`` (the Snakemake process) ends or
    SIGTERM arrives.  The socket file (and :func:`start`'s directory) is removed on the way
    out, also when Snakemake was killed and never called :func:`stop`."""
    path = Path(socket_path)
    loaded = preload()
    sys.stderr.write(f"vhbb prefork: preloaded {', '.join(loaded)}\n")
    sys.stderr.flush()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    stopping = False

    def stop(_signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        server.bind(str(path))
    finally:
        os.umask(old_umask)
    server.listen(64)
    server.settimeout(1.0)
    mine = _installation()
    try:
        while not stopping:
            if parent_pid is not None and not _alive(parent_pid):
                break
            try:
                conn, _ = server.accept()
            except (TimeoutError, InterruptedError):
                continue
            except OSError:
                if stopping:
                    break
                raise
            _take(server, conn, mine)
    finally:
        server.close()
        with contextlib.suppress(OSError):
            if path.exists():
                path.unlink()
        if path.parent.name.startswith(DIRECTORY_PREFIX):  # start()'s private directory
            with contextlib.suppress(OSError):
                path.parent.rmdir()


def _take(server: socket.socket, conn: socket.socket, mine: Mapping[str, str]) -> None:
    """Read one request on ``conn`` and fork its child (or refuse it)."""
    fds: list[int] = []
    try:
        conn.settimeout(CONNECT_TIMEOUT_S)
        request, fds = _recv(conn, with_fds=3)
        conn.settimeout(None)
        if request is None or len(fds) != 3 or request.get("installation") != dict(mine):
            _send(conn, {"refused": "another Python installation" if request else "bad request"})
            return
        pid = os.fork()
        if pid == 0:
            server.close()
            try:
                _run_child(conn, request, fds)
            finally:
                os._exit(1)
    except OSError:
        pass
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        conn.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- the workflow's side (onstart / onsuccess / onerror) --------------------------------------


def start(log_path: str | Path, wait_s: float = 60.0) -> Any:
    """Start :func:`serve` for this process (the Snakemake run) and point the jobs at it.

    The socket lies in a fresh private directory under the temporary directory (a Unix socket's
    path is limited to ~100 characters, which a workflow directory may exceed).  Returns a
    handle for :func:`stop`, or None when the server did not come up within ``wait_s`` (the
    jobs then run in their own processes).  Sets :data:`SOCKET_VARIABLE` in this process's
    environment, which the local jobs inherit.
    """
    import subprocess
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix=DIRECTORY_PREFIX))
    path = directory / "socket"
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != SOCKET_VARIABLE}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vhbb.core.prefork", "serve", str(path), str(os.getpid())],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,
        )
    handle = (proc, directory)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if path.exists():
            os.environ[SOCKET_VARIABLE] = str(path)
            return handle
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    stop(handle)
    return None


def stop(handle: Any) -> None:
    """End the server started by :func:`start` (no-op for None) and remove its directory."""
    import shutil

    os.environ.pop(SOCKET_VARIABLE, None)
    if handle is None:
        return
    proc, directory = handle
    proc.terminate()
    with contextlib.suppress(Exception):
        proc.wait(timeout=10)
    shutil.rmtree(directory, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) in (2, 3) and args[0] == "serve":
        serve(args[1], int(args[2]) if len(args) == 3 else None)
        return 0
    sys.stderr.write("usage: python -m vhbb.core.prefork serve SOCKET [PARENT_PID]\n")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
