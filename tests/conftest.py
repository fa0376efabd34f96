"""Shared fixtures: repository paths, the CI skip policy, the end-to-end run of the test overlay."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
NANOAOD_FILE = SHARED_DATA / "nanoAOD_2015_CMS_Open_Data_ttbar.root"
IN_CI = os.environ.get("CI", "").lower() == "true"


def skip_or_fail(reason: str) -> None:
    """Skip a test whose requirement is missing; under CI=true a skip is a failure."""
    if IN_CI:
        pytest.fail(f"required in CI but unavailable: {reason}")
    pytest.skip(reason)


def require_module(name: str, why: str = "") -> Any:
    """Import and return module ``name``; if it is missing, skip (under CI=true: fail)."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as exc:
        skip_or_fail(f"needs the Python module '{name}' ({exc}){': ' + why if why else ''}")


def snakemake_cmd(workdir: Path, *args: str, overlays: tuple[str, ...] = ()) -> list[str]:
    """A snakemake command line running the repository's workflow in ``workdir``.

    ``overlays`` are extra config files applied after config.yaml and test.yaml (a second
    ``--configfile`` flag would replace the first list, not extend it).
    """
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(REPO / "config" / "config.yaml"),
        str(REPO / "config" / "test.yaml"),
        *overlays,
        *args,
    ]


def run_snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 1200, overlays=()):  # type: ignore[no-untyped-def]
    cmd = snakemake_cmd(workdir, *args, overlays=tuple(str(o) for o in overlays))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=workdir)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake failed ({proc.returncode}): {' '.join(cmd)}\n"
            f"stdout:\n{proc.stdout[-5000:]}\nstderr:\n{proc.stderr[-5000:]}"
        )
    return proc


class ClusterRun:
    """Set-up shared by the Slurm and HTCondor profile tests (fixture ``cluster_run``).

    ``workdir`` is an empty working directory; :meth:`profile` writes a copy of
    ``profiles/<site>/config.yaml`` without the GPU requests (the test clusters have none) and
    with test settings; :meth:`test_workflow` is the command line of the tiny
    ``tests/cluster/Snakefile`` (retry and failure cases) under that profile.
    """

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.workdir = tmp_path / "run"
        self.workdir.mkdir()

    def profile(self, site: str, gpu_keys: tuple[str, ...], **extra: Any) -> Path:
        import yaml

        profile = yaml.safe_load((REPO / "profiles" / site / "config.yaml").read_text())
        profile["set-resources"] = {
            rule: res
            for rule, res in (profile.get("set-resources") or {}).items()
            if not set(res) & set(gpu_keys)
        }
        if "default-resources" in profile:
            profile["default-resources"] = [
                r for r in profile["default-resources"] if r.split("=")[0] not in gpu_keys
            ]
        profile.update(extra)
        dest = self.tmp_path / "profile"
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
        return dest

    def test_workflow(self, profile: Path, target: str, retries: int = 1) -> list[str]:
        return [
            sys.executable, "-m", "snakemake",
            "--snakefile", str(REPO / "tests" / "cluster" / "Snakefile"),
            "--directory", str(self.workdir),
            "--workflow-profile", str(profile),
            "--retries", str(retries),
            target,
        ]  # fmt: skip


@pytest.fixture()
def cluster_run(tmp_path: Path) -> ClusterRun:
    return ClusterRun(tmp_path)


@pytest.fixture(scope="session")
def e2e_run(tmp_path_factory) -> Path:
    """Run the workflow once on the test overlay; many tests inspect the same outputs."""
    workdir = tmp_path_factory.mktemp("e2e")
    run_snakemake(workdir, "--cores", "2", "all")
    return workdir


@pytest.fixture()
def workdir_copy(e2e_run: Path, tmp_path: Path) -> Path:
    """A private copy of the finished end-to-end run (for tests that change or rerun it)."""
    dest = tmp_path / "run"
    shutil.copytree(e2e_run, dest, symlinks=True)
    return dest


@pytest.fixture(scope="session")
def toy_sr_export():
    """A signal-region training set built in memory from the toy generator (no files).

    Returns ``(data, feature_names, mean, std)`` with ``data`` as
    :func:`vhbb.ml.train.load_training_data` returns it, plus ``process``, ``weight`` and
    ``role`` arrays for metrics.  About 22 k events; ~5 s.
    """
    import numpy as np

    from vhbb import config
    from vhbb.data import cache, export, toy

    cfg = config.load_config([REPO / "config" / "config.yaml"])
    roles = {p: v["role"] for p, v in cfg["samples"]["processes"].items()}
    layout = cfg["samples"]["layouts"]["flat"]
    sizes = {
        "ZH": 30_000,
        "VZ": 15_000,
        "Zhf": 60_000,
        "TT": 60_000,
        "Zlf": 20_000,
        "others": 10_000,
    }
    frames = {}
    for name, n in sizes.items():
        ev = toy.generate_mc_file(name, n, toy.derive_seed(77, name, 0), 0)
        stats = {"n_read": 0, "sum_gen_weight": 0.0, "n_pair": 0, "n_nan_dropped": 0}
        frame = cache._process_chunk(
            ev, "flat", layout, True, "genWeight", cfg["regions"]["preselection"],
            cfg["regions"]["definitions"], stats, "drop", name,
        )  # fmt: skip
        xsec = cfg["samples"]["list"][name]["xsec_pb"]
        frame["weight"] = frame["gen_weight"] * xsec * 1e3 * cfg["lumi"] / stats["sum_gen_weight"]
        frames[name] = frame
    samples = {n: {"process": n} for n in frames}
    processes = {n: {"role": roles[n]} for n in frames}
    table = export.region_table(
        frames, region="SR_medhigh_Znn", samples=samples, processes=processes,
        features=cfg["features"]["training"], export_cfg=cfg["export"], blinded=True, seed=1,
    )  # fmt: skip
    mean, std = export.standardisation(table)
    names = list(processes)
    process = np.asarray(names)[table["process"]]
    role = np.array([roles[p] for p in process])
    nonres = role == "nonresonant"
    w = table["weight"]
    data = {
        "x": table["features/nominal"],
        # the JES-varied inputs x_jes_<source>Up/Down (every source of the toy)
        **{
            k.replace("features/", "x_"): v
            for k, v in table.items()
            if k.startswith("features/jes_")
        },
        "label": table["label"].astype(np.int64),
        "loss_weight": w,
        "decorr_weight": np.where(nonres, np.abs(w), 0.0),
        "decorr_weight_all": np.abs(w),
        "m_jj": table["m_jj"].astype(np.float64),
        "pt_jj": table["pt_jj"].astype(np.float64),
        "fold": table["fold"],
        "validation": table["validation"],
        "process": process,
        "role": role,
        "weight": w,
    }
    return data, list(cfg["features"]["training"]), mean, std
