"""Kill a running `snakemake` mid-training, rerun with --rerun-incomplete: the resumed model
equals an uninterrupted run's (CPU), because the engine checkpoints every epoch to an
undeclared folder (results/checkpoints/) that Snakemake's clean-up of the failed job keeps."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from conftest import run_snakemake, snakemake_cmd

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.e2e

TARGET = "results/models/nn_mass/fold0/model.pt"
OVERLAY = """
models:
  list:
    nn_mass: {preset: base, method: none, epochs: 30, batch_size: 16, checkpoint_every: 1}
"""


def _state(path):  # type: ignore[no-untyped-def]
    return torch.load(path, weights_only=True)["state_dict"]


def test_kill_and_resume_equals_uninterrupted(e2e_run, tmp_path):
    import shutil

    overlay = tmp_path / "slow.yaml"
    overlay.write_text(OVERLAY)
    reference = tmp_path / "reference"
    shutil.copytree(e2e_run, reference, symlinks=True)
    run_snakemake(reference, "--cores", "2", TARGET, overlays=[overlay])

    work = tmp_path / "interrupted"
    shutil.copytree(e2e_run, work, symlinks=True)
    cmd = snakemake_cmd(work, "--cores", "2", TARGET, overlays=(str(overlay),))
    proc = subprocess.Popen(
        cmd, cwd=work, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    ckpt = work / "results" / "checkpoints" / "nn_mass" / "fold0" / "last.pt"
    deadline = time.time() + 300
    killed_at = None
    try:
        while time.time() < deadline and proc.poll() is None:
            if ckpt.exists():
                try:
                    epoch = torch.load(ckpt, weights_only=False)["epoch"]
                except Exception:  # being replaced atomically; try again
                    epoch = 0
                if epoch >= 3:
                    os.killpg(proc.pid, signal.SIGKILL)
                    killed_at = epoch
                    break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    if killed_at is None:
        pytest.fail("training finished before a checkpoint could be interrupted; make it slower")
    assert not (work / TARGET).exists()
    assert ckpt.exists(), "the checkpoint must survive the kill"
    # a SIGKILL leaves Snakemake's lock behind: unlock, then rerun the incomplete job
    run_snakemake(work, "--unlock", TARGET, overlays=[overlay])
    run_snakemake(work, "--cores", "2", "--rerun-incomplete", TARGET, overlays=[overlay])
    log = (work / "logs" / "train" / "nn_mass" / "fold0.log").read_text()
    assert "resumed from" in log
    assert not ckpt.exists(), "checkpoints are removed after success"
    ref, got = _state(reference / TARGET), _state(work / TARGET)
    for key in ref:
        assert torch.equal(ref[key], got[key]), key
