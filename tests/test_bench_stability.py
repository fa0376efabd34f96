"""The stability benchmark's pieces (no training) and the seed scans of ``config/full.yaml``."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from conftest import REPO

from vhbb.config import load_config, scans
from vhbb.config.models import resolve_model


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench_stability = _load(REPO / "benchmarks" / "bench_stability.py", "_bench_stability")
bench_run = _load(REPO / "benchmarks" / "run.py", "_bench_run")


@pytest.fixture(scope="module")
def default_config() -> dict[str, Any]:
    return bench_stability.load_default_config()


def test_full_config_scans_the_seeds_of_every_default_decorrelated_model():
    config = load_config([REPO / "config" / "config.yaml", REPO / "config" / "full.yaml"])
    seed_scans = {s["base"]: name for name, s in config["scans"].items() if "seeds" in s}
    points = scans.expand(config)
    for model in bench_stability.METHODS:
        assert model in config["models"]["enabled"]
        scan = seed_scans[model]
        names = scans.points_of(config, scan)
        n = int(config["scans"][scan]["seeds"])
        assert names == [f"{model}-seed{i}" for i in range(1, n + 1)]
        base = resolve_model(config["models"], model)
        for i, name in enumerate(names, start=1):
            assert name in points
            spec = resolve_model(config["models"], name, scans=config["scans"])
            assert spec == {**base, "seed": i}  # only the initialisation changes


def test_benchmark_is_registered_and_trains_the_default_decorrelated_methods(default_config):
    assert bench_run.BENCHMARKS["stability"] == "bench_stability"
    methods = {m: resolve_model(default_config["models"], m)["method"] for m in
               bench_stability.METHODS}  # fmt: skip
    assert methods == {
        "disco": "disco",
        "adversarial": "adversarial",
        "disco_adversarial": "disco_then_adversarial",
    }


def test_toy_and_figures_judge_collapse_with_the_project_verdict(default_config):
    toy = bench_stability.make_toy(default_config, scale=0.03)
    n = len(toy["label"])
    assert toy["x"].shape == (n, len(default_config["features"]["training"]))
    assert set(toy["role"]) >= {"signal", "resonant", "nonresonant"}
    assert np.all(toy["weight"] > 0) and 0 < toy["validation"].mean() < 0.5
    spec = resolve_model(default_config["models"], "disco")
    arrays = bench_stability.training_arrays(spec, toy)
    assert np.all(arrays["decorr_weight"][toy["role"] != "nonresonant"] == 0)
    settings = default_config["evaluation"]
    val = toy["validation"]
    good = bench_stability.figures(
        toy["label"][val] * 0.8 + 0.1, toy, settings, collapsed=False
    )  # a perfect (and m_jj-blind) classifier
    assert not good["collapsed"] and good["auc"] == pytest.approx(1.0)
    assert good["auc_window"] == pytest.approx(1.0)
    flat = bench_stability.figures(np.full(int(val.sum()), 0.5), toy, settings, collapsed=False)
    assert flat["collapsed"] and flat["collapse_reasons"]
    summary = bench_stability.summarise(
        [{"converged": True, **good, "stop_epoch": 10, "seconds": 1.0},
         {"converged": False, **good, "stop_epoch": 60, "seconds": 1.0},
         {"converged": True, **flat, "stop_epoch": 12, "seconds": 1.0}]
    )  # fmt: skip
    assert summary["converged_without_collapse"] == 1
    assert summary["fraction_ok"] == pytest.approx(1 / 3)
    assert summary["stop_epochs"] == [10, 60, 12]
