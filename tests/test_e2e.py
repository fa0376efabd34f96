"""End-to-end run of the test overlay (run once per session, inspected by many tests)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, run_snakemake

from vhbb import config
from vhbb.data import keys
from vhbb.data.export import read_h5

pytestmark = pytest.mark.e2e
CFG = config.load_config([REPO / "config" / "config.yaml", REPO / "config" / "test.yaml"])
SAMPLES = list(CFG["samples"]["list"])
REGIONS = CFG["export"]["regions"]
JES_SOURCES = list(CFG["toy"]["jes_sources"])
JES_VARIATIONS = [f"jes_{s}{side}" for s in JES_SOURCES for side in ("Up", "Down")]


def test_every_rule_logged(e2e_run):
    logs = list((e2e_run / "logs").rglob("*.log"))
    assert any("toy" in str(p) for p in logs) and any("cache" in str(p) for p in logs)
    assert (e2e_run / "logs" / "export.log").read_text().strip()


def test_local_jobs_ran_in_the_prefork_server(e2e_run):
    """The chain's own jobs ran forked from the pre-fork server (config prefork: true), which
    preloaded the libraries; the server has gone with its Snakemake run."""
    server_log = (e2e_run / "logs" / "prefork.log").read_text()
    assert "preloaded numpy, pandas" in server_log and "torch" in server_log
    job_logs = [
        p for p in (e2e_run / "logs").rglob("*.log") if p.name != "prefork.log" and p.stat().st_size
    ]
    forked = [p for p in job_logs if "running in a process forked from the server" in p.read_text()]
    # every job of the chain calls run_script; the first ones may start before the server is up
    assert len(forked) >= 0.8 * len(job_logs), (len(forked), len(job_logs))
    for p in (e2e_run / "logs" / "train").rglob("*.log"):
        assert "running in a process forked from the server" in p.read_text(), p


def test_toy_ntuples_written_per_file(e2e_run):
    for sample in SAMPLES:
        files = sorted((e2e_run / "resources" / "ntuples" / sample).glob("part*.root"))
        expected = CFG["toy"]["data_files"] if sample == "data" else CFG["toy"]["files_per_sample"]
        assert len(files) == expected


@pytest.mark.parametrize("sample", SAMPLES)
def test_cached_sample_keys_unique_and_weights(e2e_run, sample):
    frame = pd.read_parquet(e2e_run / "results" / "cache" / f"{sample}.parquet")
    stats = json.loads((e2e_run / "results" / "cache" / f"{sample}.json").read_text())
    assert len(frame) == stats["n_selected"] > 0
    key = frame[["run", "luminosityBlock", "event"]]
    assert not key.duplicated().any(), f"event key not unique in {sample}"
    # event numbers do repeat across files: the key needs the luminosity block
    assert frame["event"].duplicated().any()
    if sample == "data":
        assert (frame["weight"] == 1).all()
    else:
        assert stats["sigma_l"] == pytest.approx(
            CFG["samples"]["list"][sample]["xsec_pb"] * 1e3 * 41.5
        )
        np.testing.assert_allclose(
            frame["weight"], frame["gen_weight"] * stats["norm_factor"], rtol=1e-12
        )
    assert stats["provenance"]["vhbb_version"]
    assert len(stats["provenance"]["config_hash"]) == 16


def test_regions_exclusive_in_cache(e2e_run):
    for sample in SAMPLES:
        frame = pd.read_parquet(e2e_run / "results" / "cache" / f"{sample}.parquet")
        assert set(frame["region"].astype(str)) <= {"none", *CFG["regions"]["definitions"]}


@pytest.fixture(scope="module")
def exports(e2e_run):
    return {r: read_h5(e2e_run / "results" / "export" / f"{r}.h5") for r in REGIONS}


def test_export_layout_and_attributes(exports):
    features = CFG["features"]["training"]
    for region, (arrays, attrs) in exports.items():
        n = len(arrays["label"])
        assert n > 0
        assert attrs["region"] == region
        assert list(attrs["feature_names"]) == features
        assert list(attrs["jes_sources"]) == JES_SOURCES
        for var in ("nominal", *JES_VARIATIONS):
            assert arrays[f"features/{var}"].shape == (n, len(features))
            if var != "nominal":
                assert arrays[f"m_jj_{var}"].shape == (n,)
        for col in (
            "weight",
            "process",
            "sample",
            "domain",
            "m_jj",
            "pt_jj",
            "run",
            "luminosityBlock",
            "event",
            "fold",
            "validation",
            "cr_split",
        ):
            assert arrays[col].shape == (n,), col
        np.testing.assert_array_equal(
            arrays["m_jj"], arrays["features/nominal"][:, features.index("m_jj")]
        )
        assert len(attrs["standardisation_mean"]) == len(features)
        assert attrs["provenance"]["config_hash"]
        assert attrs["config"]["export"]["folds"] == 2


def test_signal_region_blinded_and_control_region_data_split(exports):
    sr, _ = exports["SR_medhigh_Znn"]
    assert (sr["domain"] == 0).all(), "SR pseudo-data must not be exported while blinded"
    assert (sr["label"] == 1).any() and (sr["weight"] < 0).any()
    for region in ("CR_tt", "CR_Zhf", "CR_Zlf"):
        arrays, _ = exports[region]
        data = arrays["domain"] == 1
        assert data.any()
        frac = arrays["cr_split"][data].mean()
        assert abs(frac - CFG["export"]["cr_data_fit_fraction"]) < 0.05
        assert (arrays["cr_split"][~data] == -1).all()


def test_folds_are_a_function_of_the_key(exports):
    sample_names = exports["CR_Zlf"][1]["sample_names"]
    for arrays, _ in exports.values():
        names = np.array(sample_names)[arrays["sample"]]
        recomputed = np.concatenate(
            [
                keys.fold(
                    s,
                    arrays["run"][names == s],
                    arrays["luminosityBlock"][names == s],
                    arrays["event"][names == s],
                    2,
                )
                for s in dict.fromkeys(names)
            ]
        )
        order = np.concatenate([np.flatnonzero(names == s) for s in dict.fromkeys(names)])
        np.testing.assert_array_equal(arrays["fold"][order], recomputed)
        assert abs(arrays["fold"].mean() - 0.5) < 0.05
        assert abs(arrays["validation"].mean() - CFG["export"]["validation_fraction"]) < 0.05


def test_export_yields_match_cache(e2e_run, exports):
    summary = json.loads((e2e_run / "results" / "export" / "summary.json").read_text())
    for sample in ("ZH", "TT"):
        frame = pd.read_parquet(e2e_run / "results" / "cache" / f"{sample}.parquet")
        for region in REGIONS:
            expected = frame.loc[frame["region"] == region, "weight"].sum()
            got = summary["regions"][region]["processes"].get(sample, {"yield": 0.0})["yield"]
            assert got == pytest.approx(expected, rel=1e-9)


def test_control_regions_have_their_process_majority(e2e_run):
    summary = json.loads((e2e_run / "results" / "export" / "summary.json").read_text())
    for region, process in (("CR_tt", "TT"), ("CR_Zhf", "Zhf"), ("CR_Zlf", "Zlf")):
        yields = {
            p: v["yield"] for p, v in summary["regions"][region]["processes"].items() if p != "data"
        }
        assert yields[process] / sum(yields.values()) > 0.5, (region, yields)


def test_jes_sources_from_the_ntuples_to_the_fit(e2e_run):
    """Every JES source of the toy is one nuisance through the chain: the caches carry its
    columns and list it in their metadata, the scores have its varied scores, the histograms
    its variations, the pyhf workspace one histosys jes_<source> per source and the default
    diagnostics its impact on Asimov with the constraint flag."""
    from vhbb.data.cache import read_metadata
    from vhbb.fit.templates import read_hists

    assert JES_SOURCES == ["absolute", "pt", "flavour"]
    params = [f"jes_{s}" for s in JES_SOURCES]
    results = e2e_run / "results"
    model = CFG["fit"]["models"][0]
    for sample in SAMPLES:
        is_mc = CFG["samples"]["processes"][CFG["samples"]["list"][sample]["process"]]["role"]
        want = [] if is_mc == "data" else JES_SOURCES
        path = results / "cache" / f"{sample}.parquet"
        assert read_metadata(path)["jes_sources"] == want, sample
        stats = json.loads((results / "cache" / f"{sample}.json").read_text())
        assert stats["jes_sources"] == want
        columns = set(pd.read_parquet(path).columns)
        scores = set(pd.read_parquet(results / "scores" / model / f"{sample}.parquet").columns)
        for var in JES_VARIATIONS:
            assert ({f"m_jj_{var}", f"region_{var}"} <= columns) == bool(want), (sample, var)
            assert (f"score_{var}" in scores) == bool(want), (sample, var)
    regions, _, meta = read_hists(results / "hists" / model / "hists.h5")
    assert meta["jes_sources"] == JES_SOURCES
    assert {"nominal", *JES_VARIATIONS} <= set(regions[CFG["export"]["training_region"]].mc["ZH"])
    fits = results / "fits" / model / "simultaneous"
    ws = json.loads((fits / "workspace.json").read_text())
    histosys = {
        m["name"]
        for ch in ws["channels"]
        for sample in ch["samples"]
        for m in sample["modifiers"]
        if m["type"] == "histosys"
    }
    assert set(params) <= histosys and "jes" not in histosys
    for ch in ws["channels"]:  # each source acts in every channel: on every region
        names = {m["name"] for smp in ch["samples"] for m in smp["modifiers"]}
        assert set(params) <= names, ch["name"]
    diag = json.loads((fits / "diagnostics.json").read_text())
    impacts = diag["impacts"]
    assert impacts["data"] == "asimov"
    for name in params:
        entry = impacts["nuisances"][name]
        assert entry["prefit_error"] == pytest.approx(1.0)
        assert isinstance(entry["constrained"], bool) and entry["constraint_ratio"] > 0
        assert entry["constrained"] == (
            entry["constraint_ratio"] < impacts["constraint_flag_fraction"]
        )
        assert name in impacts["ranking"]
    flagged = {c["name"] for c in impacts["constrained_nuisances"]}
    assert flagged == {n for n, e in impacts["nuisances"].items() if e["constrained"]}


def test_rerun_is_a_no_op(e2e_run):
    proc = run_snakemake(e2e_run, "-n", "--cores", "2", "all")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_corrupt_input_fails_cleanly(workdir_copy):
    """A truncated ntuple: the caching job fails with a one-line reason; no output survives."""
    target = workdir_copy / "resources" / "ntuples" / "ZH" / "part0.root"
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 3])
    proc = run_snakemake(workdir_copy, "--cores", "1", "cache", check=False)
    assert proc.returncode != 0
    log = (workdir_copy / "logs" / "cache" / "ZH" / "part0.log").read_text()
    assert "truncated or corrupt" in log and "part0.root" in log
    assert not (workdir_copy / "results" / "cache" / "parts" / "ZH" / "part0.parquet").exists()
    assert not list((workdir_copy / "results" / "cache" / "parts" / "ZH").glob(".*.tmp"))
