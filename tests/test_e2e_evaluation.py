"""Evaluation outputs of the session-wide end-to-end run (config/test.yaml)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO

import vhbb.config.params as P
from vhbb.config import load_config
from vhbb.evaluation import evaluate as evaluation

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def config() -> dict:
    return load_config([REPO / "config" / "config.yaml", REPO / "config" / "test.yaml"])


def test_every_metrics_file_follows_the_schema(e2e_run: Path, config):
    models = P.evaluation_models(config)
    assert len(models) >= len(config["models"]["enabled"]) + 2  # + the test scan's points
    for model in models:
        path = e2e_run / "results" / "evaluation" / model / "metrics.json"
        metrics = json.loads(path.read_text())
        evaluation.validate_metrics(metrics)
        oof = metrics["variants"]["out_of_fold"]
        assert isinstance(metrics["collapsed"], bool)
        assert metrics["weights"]["positive"] in ("transformed", "abs")
        assert len(oof["sculpting"]["quantiles"]) == config["evaluation"]["score_quantiles"]
        for key in ("auc", "auc_truncated", "r50"):
            m = oof["separation"][key]
            assert m["value"] is not None or m["reason"]
        assert set(oof["data_mc"]["regions"]) == set(config["fit"]["scale_factors"]["regions"])
        assert metrics["variants"]["validation"]["folds"]
        fast = oof["significance"]["fast_fit"]
        if metrics["collapsed"]:
            assert fast["value"] is None and "collapsed" in fast["reason"]


def test_plots_and_roc_comparison(e2e_run: Path, config):
    results = e2e_run / "results" / "evaluation"
    assert (results / "roc_all.png").stat().st_size > 0
    for model in P.evaluation_models(config):
        names = {p.name for p in (results / model / "plots").glob("*.png")}
        assert {"score_linear.png", "score_log.png", "mjj_quantiles.png", "vz_peak.png"} <= names
    assert (results / "systematic_adversary" / "plots" / "score_jes.png").exists()
    assert (results / "domain_adaptation" / "plots" / "score_data_mc.png").exists()


def test_scan_summary_and_selection(e2e_run: Path, config):
    for scan in P.scan_names(config):
        out = e2e_run / "results" / "scans" / scan
        best = json.loads((out / "best.json").read_text())
        points = list(P.scan_summary(config, scan)["points"])
        assert best["rule"]["variant"] == "validation"
        # the scan's points and the other scans' candidates it names (scans.<name>.candidates)
        pool = set(points) | set(P.scan_summary(config, scan)["selection"]["candidates"])
        assert {c["model"] for c in best["candidates"]} == pool
        assert best["selected"] is None or best["selected"] in pool
        md = (out / "summary.md").read_text()
        for point in points:
            assert point in md
        assert (out / "summary.csv").read_text().count("\n") >= len(points) + 1
        assert (out / "pareto.png").stat().st_size > 0
        assert list((out / "heatmaps").glob("*.png"))


def test_a_scan_point_equal_to_a_model_is_not_trained_again(e2e_run: Path, config):
    """adversarial_lambda's point at the base lambda is the adversarial model (same params):
    its outputs are copies (rule alias_model), and its evaluation equals the model's."""
    assert P.model_aliases(config) == {"adversarial-lambda_5": "adversarial"}
    models = e2e_run / "results" / "models"
    for fold in (0, 1):
        alias, model = (
            models / "adversarial-lambda_5" / f"fold{fold}",
            models / "adversarial" / f"fold{fold}",
        )
        for name in ("model.pt", "model.onnx", "loss.png"):
            assert (alias / name).read_bytes() == (model / name).read_bytes()
        history = json.loads((alias / "history.json").read_text())
        assert history["model"] == "adversarial-lambda_5" and history["same_as"] == "adversarial"
        assert history["epochs"] == json.loads((model / "history.json").read_text())["epochs"]
        bench = e2e_run / "logs" / "benchmarks"
        assert (
            bench / "alias_model" / "train" / "adversarial-lambda_5" / f"fold{fold}.tsv"
        ).exists()
        assert not (bench / "train_model" / "train" / "adversarial-lambda_5").exists()
    metrics = {
        m: json.loads((e2e_run / "results" / "evaluation" / m / "metrics.json").read_text())
        for m in ("adversarial", "adversarial-lambda_5")
    }
    a, b = (metrics[m]["variants"]["out_of_fold"]["separation"]["auc"] for m in metrics)
    assert a == b
