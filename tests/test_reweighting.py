"""The data-driven reweighting of a mismodelled input (vhbb.fit.reweighting): the derived ratio
against the analytic one, the correctionlib file against the in-memory factors, the yields it
keeps, its validation gate, and read_events applying it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from vhbb.core.checks import CheckFailed
from vhbb.data.events import read_events
from vhbb.fit import reweighting as R

REGIONS = ["CR_a", "CR_b"]
EDGES = list(range(0, 26))
# process: (MC events, soft-activity mean, region probabilities CR_a / CR_b / SR)
PROCS = {"A": (60_000, 2.0, [0.6, 0.2, 0.2]), "B": (60_000, 4.0, [0.2, 0.6, 0.2])}


def _sample(rng, scale: float, fraction: float = 1.0) -> dict[str, np.ndarray]:
    """Events of both processes: Poisson soft activity with mean ``scale * mean_p``."""
    parts = []
    for proc, (n, mean, probs) in PROCS.items():
        m = int(n * fraction)
        parts.append(
            {
                "x": rng.poisson(scale * mean, m).astype(float),
                "region": rng.choice([*REGIONS, "SR"], size=m, p=probs),
                "process": np.full(m, proc),
                "weight": np.full(m, 1.0 / fraction),
            }
        )
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


@pytest.fixture(scope="module")
def derived():
    rng = np.random.default_rng(3)
    mc = _sample(rng, 1.0)
    data = _sample(rng, 1.25, fraction=0.5)  # the data: mean soft activity 25 % higher
    result = R.derive(data, mc, REGIONS, EDGES, min_data=50)
    return mc, data, result


def test_derived_ratio_matches_the_analytic_poisson_tilt(derived):
    """Data ~ Poisson(1.25 lambda_p): the true ratio is 1.25**k exp(-0.25 lambda_p), a common
    1.25**k times a per-process constant -- what the per-process normalisation absorbs."""
    mc, _, result = derived
    e = np.asarray(result["edges"])
    lo = e[:-1]
    ratio, err = np.asarray(result["ratio"]), np.asarray(result["ratio_error"])
    single = (e[1:] - lo) == 1  # integer bins: r(k) ~ c 1.25**k
    k = lo[single]
    r = ratio[single] * result["process_normalisation"]["A"]
    truth = 1.25**k * np.exp(-0.25 * PROCS["A"][1])
    pulls = (r - truth) / (err[single] * result["process_normalisation"]["A"])
    assert stats.chi2.sf(np.sum(pulls**2), len(pulls)) > 1e-3, pulls
    # every process keeps its total MC yield
    for p in PROCS:
        sel = mc["process"] == p
        f = R.factor(result, mc["x"][sel], mc["process"][sel])
        assert np.sum(mc["weight"][sel] * f) == pytest.approx(mc["weight"][sel].sum(), rel=1e-9)
        up = R.factor(result, mc["x"][sel], mc["process"][sel], "up")
        assert np.sum(mc["weight"][sel] * up) == pytest.approx(mc["weight"][sel].sum(), rel=1e-9)


def test_validation_fails_before_and_passes_after_on_independent_data(derived):
    mc, _, result = derived
    check = _sample(np.random.default_rng(4), 1.25, fraction=0.5)
    val = R.validate(check, mc, REGIONS, result, min_p_value=0.01)
    for r in REGIONS:
        assert val["regions"][r]["before"]["p_value"] < 1e-6
        assert val["regions"][r]["after"]["p_value"] > 0.01
    assert val["passes"]


def test_chi2_shape_against_scipy():
    d = np.array([10.0, 20.0, 30.0])
    m = np.array([12.0, 18.0, 30.0]) * 2.0
    m2 = np.array([1.0, 2.0, 3.0])
    chi2, ndf, p = R.chi2_shape(d, m, m2)
    exp, var = m / 2.0, m2 / 4.0
    ref = np.sum((d - exp) ** 2 / (exp + var))
    assert chi2 == pytest.approx(ref) and ndf == 2 and p == pytest.approx(stats.chi2.sf(ref, 2))


def test_correctionlib_file_equals_the_factors(derived, tmp_path):
    correctionlib = pytest.importorskip("correctionlib")
    result = derived[2]
    path = tmp_path / "c.json"
    path.write_text(R.correction_set("soft", "soft_activity", result).model_dump_json())
    corr = correctionlib.CorrectionSet.from_file(str(path))["soft"]
    x = np.array([-1.0, 0.0, 0.5, 3.0, 14.9, 24.0, 40.0])
    for proc in PROCS:
        for side in R.SIDES:
            got = corr.evaluate(side, proc, x)
            want = R.factor(result, x, np.full(len(x), proc), side)
            np.testing.assert_allclose(got, want, rtol=1e-12)


def _cache_files(tmp_path, ev: dict[str, np.ndarray], proc: str) -> tuple[str, str]:
    n = len(ev["x"])
    keys = {"run": np.ones(n, np.int64), "luminosityBlock": np.ones(n, np.int64),
            "event": np.arange(n, dtype=np.uint64)}  # fmt: skip
    region = ev["region"]
    cache = pd.DataFrame(
        {
            **keys,
            "weight": ev["weight"],
            "region": region,
            "m_jj": np.full(n, 100.0),
            "soft_activity": ev["x"],
            **{f"region_{v}": region for v in ("jesUp", "jesDown")},
            **{f"m_jj_{v}": np.full(n, 100.0) for v in ("jesUp", "jesDown")},
        }
    )
    scores = pd.DataFrame({**keys, **{c: np.full(n, 0.5) for c in
                                       ("score", "score_jesUp", "score_jesDown")}})  # fmt: skip
    cp, sp = tmp_path / f"{proc}.parquet", tmp_path / f"{proc}_scores.parquet"
    cache.to_parquet(cp)
    scores.to_parquet(sp)
    return str(cp), str(sp)


def test_read_events_applies_the_correction_and_its_nuisance(derived, tmp_path):
    pytest.importorskip("correctionlib")
    mc, _, result = derived
    path = tmp_path / "c.json"
    path.write_text(R.correction_set("soft", "soft_activity", result).model_dump_json())
    sel = mc["process"] == "B"
    ev = {k: v[sel][:5000] for k, v in mc.items()}
    cp, sp = _cache_files(tmp_path, ev, "B")
    entry = {"name": "soft", "variable": "soft_activity", "file": str(path), "uncertainty": True}
    out = read_events(cp, sp, "sampleB", True, ["soft"], [entry], process="B")
    f = R.factor(result, ev["x"], ev["process"])
    np.testing.assert_allclose(out["weight"], ev["weight"] * f, rtol=1e-12)
    np.testing.assert_allclose(out["reweighting_factor"], f, rtol=1e-12)
    up = R.factor(result, ev["x"], ev["process"], "up")
    np.testing.assert_allclose(out["weight_softUp"], up / f, rtol=1e-12)
    np.testing.assert_allclose(out["weight_softDown"], 1.0 / f, rtol=1e-12)
    # without the name in the weight systematics: the correction only
    plain = read_events(cp, sp, "sampleB", True, [], [entry], process="B")
    assert "weight_softUp" not in plain
    np.testing.assert_allclose(plain["weight"], out["weight"])
    # data are never reweighted
    data = read_events(cp, sp, "data", False, [], [entry], process="data")
    np.testing.assert_allclose(data["weight"], ev["weight"])


def test_run_derive_gates_an_uncorrectable_mismodelling(tmp_path):
    """Data whose mismodelling differs between the regions cannot be fixed by one common
    correction: the validation fails the job, or (warn) every output carries the warning."""
    rng = np.random.default_rng(8)
    mc = _sample(rng, 1.0)
    data = {}
    for scale, region in ((1.4, "CR_a"), (0.8, "CR_b")):
        ev = _sample(rng, scale)
        keep = ev["region"] == region
        for k, v in ev.items():
            data.setdefault(k, []).append(v[keep])
    data = {k: np.concatenate(v) for k, v in data.items()}
    files, samples, processes = {}, {}, {"A": {"role": "x"}, "B": {"role": "x"},
                                         "data": {"role": "data"}}  # fmt: skip
    for proc in PROCS:
        sel = mc["process"] == proc
        files[proc], _ = _cache_files(tmp_path, {k: v[sel] for k, v in mc.items()}, proc)
        samples[proc] = {"process": proc}
    files["data"], _ = _cache_files(tmp_path, {**data, "weight": np.ones(len(data["x"]))}, "data")
    samples["data"] = {"process": "data"}
    spec = {
        "reweighting": {"variable": "soft_activity", "regions": REGIONS, "edges": EDGES,
                        "min_data": 50, "uncertainty": True, "min_p_value": 0.01,
                        "on_failure": "fail"},
        "samples": samples, "processes": processes, "cr_data_fit_fraction": 0.5, "seed": 1,
    }  # fmt: skip
    out = {f"{k}_path": str(tmp_path / f"{k}.json") for k in ("correction", "validation", "checks")}
    with pytest.raises(CheckFailed, match="reweighting soft"):
        R.run_derive(files, name="soft", spec=spec, **out)
    assert not (tmp_path / "correction.json").exists()
    spec["reweighting"]["on_failure"] = "warn"
    doc = R.run_derive(files, name="soft", spec=spec, **out)
    assert doc["warnings"] and doc["checks"]["fail"] >= 1
    assert json.loads((tmp_path / "validation.json").read_text())["warnings"] == doc["warnings"]
