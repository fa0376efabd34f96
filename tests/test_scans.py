"""Scans: static expansion, names, config errors, model resolution, DAG, selection, summary."""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest
from conftest import REPO, run_snakemake

import vhbb.config.params as P
from vhbb.config import load_config, scans
from vhbb.config.models import resolve_model
from vhbb.core.errors import ConfigError
from vhbb.evaluation import scans as scan_summary


@pytest.fixture(scope="module")
def config() -> dict:
    return load_config([REPO / "config" / "config.yaml", REPO / "config" / "test.yaml"])


def with_scans(config: dict, spec: dict) -> dict:
    out = copy.deepcopy(config)
    out["scans"] = spec
    return out


def test_grid_names_are_readable_and_ordered(config):
    cfg = with_scans(
        config, {"g": {"base": "disco", "grid": {"disco.lambda": [100, 5], "epochs": [200]}}}
    )
    names = [p.name for p in scans.scan_points(cfg, "g")]
    assert names == ["disco-lambda_100-epochs_200", "disco-lambda_5-epochs_200"]


def test_a_point_with_another_models_training_is_an_alias(config):
    """Equal training params (5 == 5.0 from the grid) make an alias of the first such model;
    another value, or another seed, trains."""
    lam = resolve_model(config["models"], "adversarial")["adversary"]["lambda"]
    grid = {"adversary.lambda": [int(lam), lam * 2]}
    cfg = with_scans(config, {"a": {"base": "adversarial", "grid": grid}})
    assert P.model_aliases(cfg) == {f"adversarial-lambda_{int(lam)}": "adversarial"}
    seeded = with_scans(config, {"a": {"base": "adversarial", "grid": {**grid, "seed": [5]}}})
    assert P.model_aliases(seeded) == {}


def test_ambiguous_keys_use_the_full_path_and_values_are_path_safe(config):
    grid = {"adversary.lambda": [0.5], "disco.lambda": [1e-5], "layers": [[64, 32]]}
    cfg = with_scans(config, {"g": {"base": "adversarial", "grid": grid}})
    (point,) = scans.scan_points(cfg, "g")
    assert point.name == "adversarial-adversary.lambda_0.5-disco.lambda_1e-05-layers_64x32"
    assert scans.NAME_RE.match(point.name)


def test_random_scan_is_seeded_and_reproducible(config):
    spec = {"r": {"base": "disco", "random": {"n": 5, "seed": 3, "parameters": {
        "disco.lambda": {"log_uniform": [1, 500]}, "batch_size": {"values": [256, 512]},
        "epochs": {"int_uniform": [2, 4]}}}}}  # fmt: skip
    a = [p.name for p in scans.scan_points(with_scans(config, spec), "r")]
    b = [p.name for p in scans.scan_points(with_scans(config, spec), "r")]
    assert a == b and 1 <= len(a) <= 5
    for p in scans.scan_points(with_scans(config, spec), "r"):
        assert 1 <= p.overrides["disco.lambda"] <= 500
        assert p.overrides["batch_size"] in (256, 512)
        assert 2 <= p.overrides["epochs"] <= 4
    spec["r"]["random"]["seed"] = 4
    assert [p.name for p in scans.scan_points(with_scans(config, spec), "r")] != a


def test_seed_variants(config):
    cfg = with_scans(config, {"s": {"base": "disco", "seeds": 3}})
    names = [p.name for p in scans.scan_points(cfg, "s")]
    assert names == ["disco-seed1", "disco-seed2", "disco-seed3"]
    base = P.train(cfg, "disco")["seed"]
    assert [P.train(cfg, n)["seed"] for n in names] == [base + 1, base + 2, base + 3]


@pytest.mark.parametrize(
    "path, fragment",
    [
        ("disco.lamda", "unknown hyperparameter path 'disco.lamda' (did you mean 'lambda'"),
        ("learning_rate", "unknown hyperparameter path 'learning_rate'"),
        ("epochs.x", "'epochs' is not a group"),
        ("adversary", "is a group"),
    ],
)
def test_unknown_scan_path_is_a_config_error_naming_it(config, path, fragment):
    cfg = with_scans(config, {"bad": {"base": "disco", "grid": {path: [1]}}})
    with pytest.raises(ConfigError) as err:
        P.all_models(cfg)
    assert fragment in str(err.value) and "scans.bad" in str(err.value)


def test_unknown_base_and_collisions(config):
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        P.all_models(with_scans(config, {"x": {"base": "nope", "seeds": 1}}))
    cfg = with_scans(config, {"x": {"base": "disco", "seeds": 1}})
    cfg["models"]["list"]["disco-seed1"] = {"preset": "base", "method": "none"}
    with pytest.raises(ConfigError, match="collides"):
        P.all_models(cfg)


def test_scan_points_resolve_like_models(config):
    names = P.all_models(config)
    assert names[: len(config["models"]["enabled"])] == config["models"]["enabled"]
    points = [n for n in names if n.startswith("disco-lambda_")]
    assert points == ["disco-lambda_5", "disco-lambda_100"]
    spec = resolve_model(config["models"], "disco-lambda_100", scans=config["scans"])
    base = resolve_model(config["models"], "disco")
    assert spec["disco"]["lambda"] == 100
    assert {k: v for k, v in spec.items() if k != "disco"} == {
        k: v for k, v in base.items() if k != "disco"
    }
    assert P.train(config, "disco-lambda_100")["spec"] == spec
    with pytest.raises(ConfigError, match="unknown model"):
        resolve_model(config["models"], "disco-lambda_7", scans=config["scans"])


def test_schema_rejects_a_scan_with_two_kinds(tmp_path):
    overlay = tmp_path / "o.yaml"
    overlay.write_text("scans:\n  s: {base: disco, seeds: 2, grid: {epochs: [1]}}\n")
    with pytest.raises(ConfigError):
        load_config([REPO / "config" / "config.yaml", overlay])


def test_dry_run_lists_every_point_and_fold(tmp_path):
    overlay = tmp_path / "scan.yaml"
    overlay.write_text(
        "scans:\n  disco_lambda: {base: disco, grid: {disco.lambda: [5, 100]}}\n"
        "  two: {base: adversarial, grid: {adversary.lambda: [1, 2], epochs: [3]},\n"
        "        candidates: [nn_massless]}\n"
        "fit:\n  models: ['best:two']\n"
    )
    proc = run_snakemake(tmp_path, "-n", "--cores", "2", "all", overlays=[overlay])
    out = proc.stdout
    jobs = set(re.findall(r"wildcards: model=([^,\s]+), fold=(\d)", out))
    for point in ("disco-lambda_5", "disco-lambda_100", "adversarial-lambda_1-epochs_3",
                  "adversarial-lambda_2-epochs_3"):  # fmt: skip
        assert {(point, "0"), (point, "1")} <= jobs, point
        assert f"results/evaluation/{point}/metrics.json" in out
    for scan in ("disco_lambda", "two"):
        assert f"results/scans/{scan}/best.json" in out
    # best:two in fit.models: its scores come from the scan's choice
    assert "rule best_scores" in out and "results/scores/best-two/ZH.parquet" in out
    # best:two may choose a candidate: every best_* job reads the candidates' files too
    for rule in ("best_scores", "best_plot_data"):
        job = out.split(f"rule {rule}:")[1].split("\n\n")[0]
        assert "/nn_massless/" in job, rule
    assert "results/hists/best-two/hists.h5" in out


# ------------------------------------------------------------------------------ selection
def fake_metrics(z_val, z_oof, chi2_val, chi2_oof, *, collapsed=False, vz=True):
    def m(v):
        return {"value": v, "error": None, "reason": None if v is not None else "undefined"}

    def variant(z, chi2):
        return {
            "separation": {"auc": m(0.8), "auc_truncated": m(0.7), "r50": m(5.0)},
            "significance": {"asimov": m(1.0), "simple": m(1.0), "n_bins": 3,
                             "fast_fit": {**m(z), "n_bins": 3, "method": "x"}},
            "sculpting": {"mean": {"chi2_ndf": m(chi2), "chi2_ndf_ref": m(chi2),
                                   "ks_distance": m(0.1)}, "highest": {"chi2_ndf": m(chi2)},
                          # the selection's figure: the worst quantile's chi2/ndf at ref. count
                          "quantiles": [{"chi2_ndf_ref": m(1.0)}, {"chi2_ndf_ref": m(chi2)}]},
            "jsd": {"inverse_jsd": m(10.0 / chi2 if chi2 else None)},
            "decorrelation": {"dcor2": m(0.01), "cvm": m(0.001), "pearson": m(0.01)},
            "data_mc": {"max_ks_distance": m(0.05)},
            "vz_peak": {"visible": vz, "with_vz": {"significance": m(5.0)},
                        "without_vz": {"significance": m(0.5)}},
        }  # fmt: skip

    return {
        "method": "disco",
        "collapsed": collapsed,
        "variants": {
            "out_of_fold": variant(z_oof, chi2_oof),
            "validation": variant(z_val, chi2_val),
        },
    }


def test_selection_uses_validation_figures():
    metrics = {
        # best out-of-fold significance, but worse on validation
        "a": fake_metrics(z_val=1.0, z_oof=3.0, chi2_val=1.0, chi2_oof=1.0),
        "b": fake_metrics(z_val=2.0, z_oof=1.5, chi2_val=1.0, chi2_oof=1.0),
        # best validation significance but sculpts on validation (passes out of fold)
        "c": fake_metrics(z_val=5.0, z_oof=1.0, chi2_val=9.0, chi2_oof=1.0),
        "d": fake_metrics(z_val=4.0, z_oof=4.0, chi2_val=1.0, chi2_oof=1.0, vz=False),
    }
    best = scan_summary.select(metrics, metric="chi2_ndf_ref", threshold=3.0, require_vz=True)
    assert best["selected"] == "b" and best["passes_cuts"]
    assert best["rule"]["variant"] == "validation"
    reasons = {c["model"]: c["reasons"] for c in best["candidates"]}
    assert any("fails the threshold" in r for r in reasons["c"])
    assert reasons["d"] == ["VZ peak: not visible"]
    jsd = scan_summary.select(metrics, metric="inverse_jsd", threshold=5.0, require_vz=False)
    assert jsd["selected"] == "d"


def test_collapsed_model_does_not_break_summary_or_selection(tmp_path):
    metrics = {
        "disco-lambda_5": fake_metrics(1.0, 1.0, 1.0, 1.0),
        "disco-lambda_100": fake_metrics(None, None, 1.0, 1.0, collapsed=True),
        "nn_massless": fake_metrics(3.0, 3.0, 10.0, 10.0),
    }
    files = {}
    for name, m in metrics.items():
        files[name] = str(tmp_path / f"{name}.json")
        (tmp_path / f"{name}.json").write_text(json.dumps(m))
    outputs = {k: str(tmp_path / "out" / v) for k, v in {
        "csv": "summary.csv", "md": "summary.md", "best": "best.json", "heatmaps": "heatmaps",
        "pareto": "pareto.png"}.items()}  # fmt: skip
    best = scan_summary.run_scan_summary(
        scan="s",
        metrics_files=files,
        points={"disco-lambda_5": {"disco.lambda": 5}, "disco-lambda_100": {"disco.lambda": 100}},
        selection={"metric": "chi2_ndf_ref", "threshold": 3.0, "require_vz": True},
        outputs=outputs,
    )
    assert best["selected"] == "disco-lambda_5"
    saved = json.loads((tmp_path / "out" / "best.json").read_text())
    assert saved["selected"] == "disco-lambda_5"
    assert saved["reported"]["z_fast_fit"]["value"] == 1.0
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "disco-lambda_100" in md and "n/a" in md
    assert (tmp_path / "out" / "pareto.png").stat().st_size > 0
    assert list((tmp_path / "out" / "heatmaps").glob("*.png"))
    # best-<scan> consumers resolve the choice from best.json
    assert scan_summary.resolve_best(outputs["best"]) == "disco-lambda_5"


def test_all_collapsed_selects_nothing_with_a_reason():
    metrics = {"x": fake_metrics(None, None, 1.0, 1.0, collapsed=True)}
    best = scan_summary.select(metrics, metric="chi2_ndf_ref", threshold=3.0, require_vz=True)
    assert best["selected"] is None and "collapsed" in best["reason"]


def test_pareto_front():
    from vhbb.plots.evaluation import pareto_front

    x = [0.9, 0.8, 0.85, 0.7, np.nan]
    y = [1.0, 3.0, 0.5, 2.0, 5.0]
    assert pareto_front(x, y) == [1, 0]


def test_best_references_map_to_path_names(config):
    cfg = copy.deepcopy(config)
    cfg["fit"]["models"] = ["disco", "best:disco_lambda"]
    assert P.fit_models(cfg) == ["disco", "best-disco_lambda"]
    cfg["evaluation"]["models"] = ["nn_mass", "best:disco_lambda"]
    assert P.evaluation_models(cfg) == ["nn_mass", "best-disco_lambda"]
    cfg["evaluation"]["models"] = ["best:nope"]
    with pytest.raises(ConfigError, match="unknown scan 'nope'"):
        P.evaluation_models(cfg)


def test_selection_requires_a_gain_over_the_mjj_only_baseline():
    metrics = {
        "a": fake_metrics(z_val=3.0, z_oof=3.0, chi2_val=1.0, chi2_oof=1.0),
        "b": fake_metrics(z_val=2.0, z_oof=2.0, chi2_val=1.0, chi2_oof=1.0),
    }
    for name, gain_sig in (("a", 1.5), ("b", 4.0)):
        for v in metrics[name]["variants"].values():
            v["baseline"] = {"gain_significance": {"value": gain_sig, "error": None}}
    best = scan_summary.select(metrics, metric="chi2_ndf_ref", threshold=3.0, require_vz=True,
                               min_gain_significance=3.0)  # fmt: skip
    assert best["selected"] == "b" and best["passes_cuts"]
    reasons = {c["model"]: c["reasons"] for c in best["candidates"]}
    assert any("m_jj-only baseline" in r for r in reasons["a"])
    none = scan_summary.select({"a": metrics["a"]}, metric="chi2_ndf_ref", threshold=3.0,
                               require_vz=True, min_gain_significance=3.0)  # fmt: skip
    assert not none["passes_cuts"]
