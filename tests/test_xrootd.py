"""Remote input over XRootD: a local xrootd server (Debian's xrootd-server) serves toy ntuples.

The caching function reads ``root://localhost:PORT//<dir>/part0.root`` with the same result as the
local file, and the workflow caches a sample whose ``files`` are root:// URLs (the rules pass
URLs via params and declare no input for them).  Needs the ``xrootd`` server binary and the
Python packages ``xrootd`` and ``fsspec-xrootd`` (extra ``test``); skipped otherwise, except under
CI=true where a skip is a failure.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, require_module, run_snakemake, skip_or_fail

from vhbb import config as vconfig
from vhbb.config import params as P
from vhbb.data.cache import cache_file

SAMPLE = "ZH"
CFG = vconfig.load_config([REPO / "config" / "config.yaml", REPO / "config" / "test.yaml"])


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toy ntuples of one sample and its cache, made locally."""
    workdir = tmp_path_factory.mktemp("xrootd-local")
    run_snakemake(workdir, "--cores", "2", f"results/cache/{SAMPLE}.parquet", timeout=600)
    return workdir


@pytest.fixture(scope="module")
def xrootd(local_run: Path) -> Iterator[tuple[str, Path]]:
    """An xrootd server on localhost exporting a copy of the sample's toy ntuples.

    Yields the URL prefix ``root://localhost:PORT/`` and the exported directory.
    """
    binary = shutil.which("xrootd") or shutil.which("xrootd", path="/usr/bin:/usr/sbin")
    if binary is None:
        skip_or_fail("the xrootd server is not installed (Debian: xrootd-server)")
    require_module("XRootD", "uproot reads root:// through the xrootd Python bindings")
    require_module("fsspec_xrootd", "uproot reads root:// through fsspec-xrootd")
    # a world-traversable directory: xrootd refuses to run as root and drops to user xrootd
    base = Path(tempfile.mkdtemp(prefix="vhbb-xrootd-", dir="/tmp"))
    base.chmod(0o755)
    data, admin = base / "data", base / "admin"
    data.mkdir()
    admin.mkdir()
    for src in sorted((local_run / "resources" / "ntuples" / SAMPLE).glob("part*.root")):
        shutil.copy(src, data / src.name)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (base / "xrootd.cfg").write_text(
        f"all.export {data}\nall.adminpath {admin}\nall.pidpath {admin}\nxrd.port {port}\n"
    )
    log_file = admin / "xrootd.log"  # written by the server's user
    cmd = [binary, "-c", str(base / "xrootd.cfg"), "-l", str(log_file)]
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("xrootd")
        except KeyError:
            skip_or_fail("running as root, but there is no user 'xrootd' to run the server as")
        for path in (data, admin, *data.iterdir()):
            os.chown(path, user.pw_uid, user.pw_gid)
        cmd += ["-R", "xrootd"]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            if server.poll() is not None:
                log = log_file.read_text() if log_file.exists() else ""
                pytest.fail(f"xrootd exited ({server.returncode}): {server.stdout.read()}{log}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                pytest.fail("xrootd did not listen within 20 s")
            time.sleep(0.2)
        yield f"root://localhost:{port}/", data
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(base, ignore_errors=True)


def test_cache_file_reads_root_url(local_run: Path, xrootd: tuple[str, Path]) -> None:
    prefix, data = xrootd
    spec = P.cache_file(CFG, SAMPLE)
    local = local_run / "resources" / "ntuples" / SAMPLE / "part0.root"
    url = f"{prefix}/{data}/part0.root"
    frame_local, stats_local = cache_file(str(local), **spec)
    frame_remote, stats_remote = cache_file(url, **spec)
    assert len(frame_remote) > 0
    pd.testing.assert_frame_equal(frame_remote, frame_local)
    # the stats name the file they came from (repeated-event errors name it); all else equal
    assert stats_remote.pop("input") == url and stats_local.pop("input") == str(local)
    assert stats_remote == stats_local


def test_workflow_caches_root_urls(
    local_run: Path, xrootd: tuple[str, Path], tmp_path: Path
) -> None:
    prefix, data = xrootd
    urls = [f"{prefix}/{p}" for p in sorted(data.glob("part*.root"))]
    overlay = tmp_path / "remote.yaml"
    overlay.write_text(
        yaml.safe_dump({"samples": {"list": {SAMPLE: {"source": "files", "files": urls}}}})
    )
    workdir = tmp_path / "run"
    workdir.mkdir()
    target = f"results/cache/{SAMPLE}.parquet"
    run_snakemake(workdir, "--cores", "2", target, overlays=(overlay,), timeout=600)
    # nothing was generated locally: the sample came over root://
    assert not (workdir / "resources" / "ntuples").exists()
    remote = pd.read_parquet(workdir / target)
    pd.testing.assert_frame_equal(remote, pd.read_parquet(local_run / target))
    stats = json.loads((workdir / f"results/cache/{SAMPLE}.json").read_text())
    stats_local = json.loads((local_run / f"results/cache/{SAMPLE}.json").read_text())
    for key in ("n_files", "n_read", "n_selected", "sum_gen_weight", "norm_factor", "n_region"):
        assert stats[key] == stats_local[key], key
    logs = " ".join(p.read_text() for p in (workdir / "logs" / "cache" / SAMPLE).glob("*.log"))
    assert "root://localhost" in logs
