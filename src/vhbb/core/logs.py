"""Logging set-up shared by every workflow script."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup(log_file: str | Path | None = None, level: int = logging.INFO) -> logging.Logger:
    """Send log records to ``log_file`` (if given) and to stderr; return the package logger."""
    root = logging.getLogger()
    root.setLevel(level)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(stream)
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file, mode="w")
        handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(handler)
    return logging.getLogger("vhbb")


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def limit_threads(n: int) -> None:
    """Keep a job to the ``threads`` Snakemake gave it: torch's intra-op pool (set now when
    torch is loaded, else through ``OMP_NUM_THREADS`` when it is imported) and the BLAS pools
    loaded after this call.  Without it every torch job takes one thread per core, and
    ``snakemake --cores N`` running N single-thread jobs oversubscribes the machine N-fold."""
    import os
    import sys

    n = max(1, int(n))
    for name in THREAD_VARIABLES:
        os.environ[name] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    if "numpy" in sys.modules:  # already loaded (a pre-forked job): limit its BLAS pool now
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            return
        threadpool_limits(n)


def run_script(smk, main) -> None:  # type: ignore[no-untyped-def]
    """Run a workflow script's ``main(snakemake)`` with logging to the rule's log file.

    A :class:`~vhbb.core.errors.VhbbError` (bad input, bad config) ends the job with its one-line
    message in the log and on stderr, without a Python traceback; other exceptions keep theirs.
    In a local run with a pre-fork server (:mod:`vhbb.core.prefork`) the job runs in a process
    forked from it, which runs this script again; its exit status becomes this process's.
    """
    from vhbb.core import prefork

    status = prefork.delegate()  # a local run's pre-forked process takes the job, if one can
    if status is not None:
        raise SystemExit(status)
    from vhbb.core.errors import VhbbError

    log_file = smk.log[0] if len(smk.log) else None
    logger = setup(log_file)
    if prefork.in_child():
        logger.info("prefork: running in a process forked from the server (pid %d)", os.getpid())
    limit_threads(int(getattr(smk, "threads", 1) or 1))
    try:
        main(smk)
    except VhbbError as exc:
        logger.error("%s", exc)
        raise SystemExit(1) from None
    except Exception:
        logger.exception("unexpected failure")
        raise
