"""Ntuple caching: layouts (toy flat trees and real CMS NanoAOD), regions, keys, bad input."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import uproot
from conftest import NANOAOD_FILE, REPO

from vhbb import config
from vhbb.core.errors import ConfigError, DataError, InputError
from vhbb.data import cache, toy

CFG = config.load_config([REPO / "config" / "config.yaml"])
FLAT = CFG["samples"]["layouts"]["flat"]
NANO = CFG["samples"]["layouts"]["nanoaod"]
PRESEL = CFG["regions"]["preselection"]
REGIONS = CFG["regions"]["definitions"]


def _cache(path, **kw):  # type: ignore[no-untyped-def]
    args = {
        "sample": "TT",
        "is_mc": True,
        "layout": FLAT,
        "preselection": PRESEL,
        "regions": REGIONS,
        "nan_policy": "drop",
        "chunk_size": 1000,
    }
    args.update(kw)
    return cache.cache_file(str(path), **args)


@pytest.fixture(scope="module")
def toy_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("toy") / "tt.root"
    branches = toy.generate_mc_file("TT", 6000, toy.derive_seed(2, "TT", 0), 0)
    toy.write_tree(path, branches)
    return path


def test_flat_cache_chunking_does_not_change_result(toy_file):
    small, stats_small = _cache(toy_file, chunk_size=700)
    big, stats_big = _cache(toy_file, chunk_size=100_000)
    pd.testing.assert_frame_equal(small, big)
    assert stats_small["sum_gen_weight"] == pytest.approx(stats_big["sum_gen_weight"])
    assert stats_small["n_read"] == 6000
    assert 0 < len(small) < 6000


SOURCES = ("absolute", "pt", "flavour")
VARIATIONS = [f"jes_{s}{side}" for s in SOURCES for side in ("Up", "Down")]


def test_regions_are_exclusive_and_migrate_under_jes(toy_file):
    frame, _ = _cache(toy_file)
    for col in ("region", *(f"region_{v}" for v in VARIATIONS)):
        assert set(frame[col].astype(str)) <= {"none", *REGIONS}
    # each event sits in at most one region by construction; check against the expressions
    cols = {c: frame[c].to_numpy(np.float64) for c in cache.DERIVED_COLUMNS}
    from vhbb.data import expressions

    masks = np.array([expressions.evaluate(e, cols) for e in REGIONS.values()])
    presel = expressions.evaluate(PRESEL, cols)
    assert (masks & presel).sum(axis=0).max() <= 1
    for var in VARIATIONS:
        assert (frame["region"] != frame[f"region_{var}"]).any(), f"{var} migrates no event"


def test_every_jes_source_has_its_columns_migrations_and_metadata(toy_file, tmp_path):
    """Per source: the varied columns and regions (recomputed from the varied columns with the
    region expressions), events migrating, the sources listed in the file and sample metadata."""
    from vhbb.data import expressions, jes

    frame, stats = _cache(toy_file)
    assert stats["jes_sources"] == list(SOURCES)
    assert cache.flat_jes_sources(list(uproot.open(toy_file)["Events"].keys())) == list(SOURCES)
    region_cols = [c for c in frame.columns if c.startswith("region_")]
    assert region_cols == [f"region_{v}" for v in VARIATIONS]
    shifts = {}
    for var in VARIATIONS:
        assert {f"{c}_{var}" for c in cache.VARIED_COLUMNS} <= set(frame.columns)
        ns = {c: frame[c].to_numpy(np.float64) for c in cache.DERIVED_COLUMNS}
        ns.update({c: frame[f"{c}_{var}"].to_numpy(np.float64) for c in cache.VARIED_COLUMNS})
        want = np.full(len(frame), "none", dtype=object)
        presel = expressions.evaluate(PRESEL, ns).astype(bool)
        for name, expr in REGIONS.items():
            want[presel & expressions.evaluate(expr, ns).astype(bool)] = name
        assert frame[f"region_{var}"].astype(str).tolist() == want.tolist(), var
        moved = frame[f"region_{var}"].astype(str) != frame["region"].astype(str)
        assert moved.sum() > 0, var
        shifts[var] = frame[f"m_jj_{var}"].to_numpy(np.float64) / frame["m_jj"].to_numpy()
    # up raises and down lowers m_jj; the sources act differently (pT-dependent, by flavour)
    for source in SOURCES:
        assert (shifts[f"jes_{source}Up"] > 1).all() and (shifts[f"jes_{source}Down"] < 1).all()
    assert np.std(shifts["jes_absoluteUp"]) < 1e-5 < np.std(shifts["jes_ptUp"])
    assert not np.allclose(shifts["jes_flavourUp"], shifts["jes_absoluteUp"])
    # the sources in the parquet metadata, of every file and of the merged sample
    part = tmp_path / "part0.parquet"
    cache.write_parquet(part, frame, stats)
    assert cache.read_metadata(part)["jes_sources"] == list(SOURCES)
    merged, mstats = cache.merge_sample(
        [frame], [cache.read_metadata(part)], sample="TT", is_mc=True, xsec_pb=1.0, lumi_fb=1.0
    )
    assert mstats["jes_sources"] == list(SOURCES)
    out = tmp_path / "TT.parquet"
    cache.write_parquet(out, merged, mstats)
    from vhbb.data.events import jes_sources

    assert jes_sources(str(out)) == list(SOURCES) == jes.sources_in(frame.columns, "region_")
    # files of one sample with other sources are an error
    other = dict(stats, jes_sources=["absolute"])
    with pytest.raises(DataError, match=r"sample 'TT': its files differ in the JES sources"):
        cache.merge_sample(
            [frame, frame.iloc[:0]], [stats, other], sample="TT", is_mc=True, xsec_pb=1.0,
            lumi_fb=1.0,
        )  # fmt: skip
    # data: no JES column, no source
    data, dstats = _cache(toy_file, is_mc=False)
    assert dstats["jes_sources"] == [] and not any("jes" in c for c in data.columns)


def test_single_source_flat_file_is_an_error_with_a_hint(toy_file, tmp_path):
    """A flat MC tree of the older single-source toy (<branch>_jesUp/Down) names the problem."""
    with uproot.open(toy_file) as fin:
        arrays = fin["Events"].arrays(library="np")
    old = {k: v for k, v in arrays.items() if "_jes_" not in k}
    for side in ("Up", "Down"):
        for k in [k for k in arrays if k.endswith(f"_jes_absolute{side}")]:
            old[k.replace(f"_jes_absolute{side}", f"_jes{side}")] = arrays[k]
    path = tmp_path / "old.root"
    toy.write_tree(path, old)
    with pytest.raises(InputError, match=r"no JES variation branches.*older toy.*regenerate"):
        _cache(path)


def test_overlapping_regions_are_an_error(toy_file):
    with pytest.raises(DataError, match=r"regions overlap.*'B'.*'A'"):
        _cache(toy_file, regions={"A": "btag_max > 0.5", "B": "btag_max > 0.8"})


def test_weight_normalisation_sigma_l(toy_file):
    frame, stats = _cache(toy_file, preselection="met_pt > 0")
    merged, mstats = cache.merge_sample(
        [frame], [stats], sample="TT", is_mc=True, xsec_pb=2.0, lumi_fb=41.5
    )
    assert (merged["gen_weight"] < 0).any(), "negative weights must be present"
    # every generated event passes met_pt > 0 and has a pair: sum(w) = sigma * L exactly
    assert len(merged) == 6000
    assert merged["weight"].sum() == pytest.approx(2.0 * 1000 * 41.5, rel=1e-9)
    assert mstats["sigma_l"] == pytest.approx(83000.0)


def test_missing_file():
    with pytest.raises(InputError, match=r"input file not found: /no/such/file.root"):
        _cache("/no/such/file.root")


def test_truncated_file(toy_file, tmp_path):
    broken = tmp_path / "truncated.root"
    data = toy_file.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"truncated.root.*(truncated|corrupt)"):
        _cache(broken)


def test_garbage_file(tmp_path):
    broken = tmp_path / "garbage.root"
    broken.write_bytes(b"this is not a ROOT file" * 100)
    with pytest.raises(InputError, match=r"garbage.root"):
        _cache(broken)


def test_missing_branch_names_branch_file_and_close_matches(toy_file, tmp_path):
    with uproot.open(toy_file) as fin:
        arrays = fin["Events"].arrays(library="np")
    arrays["MET_pT"] = arrays.pop("MET_pt")
    path = tmp_path / "renamed.root"
    toy.write_tree(path, arrays)
    with pytest.raises(InputError, match=r"branch 'MET_pt' missing in .*renamed.root.*MET_pT"):
        _cache(path)


def test_wrong_tree_name(toy_file):
    with pytest.raises(InputError, match=r"tree 'events' not found.*did you mean 'Events'"):
        _cache(toy_file, layout={**FLAT, "tree": "events"})


def test_nan_values_dropped_or_error(toy_file, tmp_path):
    with uproot.open(toy_file) as fin:
        arrays = fin["Events"].arrays(library="np")
    arrays["MET_pt"][:7] = np.nan
    arrays["Jet1_pt"][10:12] = np.inf
    path = tmp_path / "nan.root"
    toy.write_tree(path, arrays)
    frame, stats = _cache(path, preselection="met_pt > -1 or met_pt <= -1")
    assert stats["n_nan_dropped"] == 9
    assert np.isfinite(frame.select_dtypes("number").to_numpy(np.float64)).all()
    with pytest.raises(DataError, match=r"non-finite values of '.*' in .*nan.root"):
        _cache(path, nan_policy="error")


def test_empty_region_gives_valid_empty_output(toy_file, tmp_path):
    frame, stats = _cache(toy_file, preselection="met_pt > 1e9")
    assert len(frame) == 0 and stats["n_selected"] == 0
    assert {"m_jj", "region", *(f"region_{v}" for v in VARIATIONS)} <= set(frame.columns)
    out = tmp_path / "empty.parquet"
    cache.write_parquet(out, frame, stats)
    back = pd.read_parquet(out)
    assert len(back) == 0 and {f"m_jj_{v}" for v in VARIATIONS} <= set(back.columns)


def test_unknown_column_in_region(toy_file):
    with pytest.raises(ConfigError, match=r"unknown column.*'mjj'"):
        _cache(toy_file, regions={"SR": "mjj > 50"})


def test_all_negative_weights_is_an_error(toy_file):
    frame, stats = _cache(toy_file)
    stats = dict(stats, sum_gen_weight=-5.0)
    with pytest.raises(DataError, match=r"sample 'TT'.*sum of generator weights.*<= 0"):
        cache.merge_sample([frame], [stats], sample="TT", is_mc=True, xsec_pb=1.0, lumi_fb=1.0)


# ---------------------------------------------------------------- real CMS NanoAOD
@pytest.fixture(scope="module")
def nanoaod():
    if not NANOAOD_FILE.exists():
        pytest.skip(f"the real NanoAOD file is absent ({NANOAOD_FILE})")
    return str(NANOAOD_FILE)


def test_nanoaod_loose_selection(nanoaod):
    frame, stats = _cache(
        nanoaod,
        layout={**NANO, "jet_eta_max": 10.0},
        preselection="pt_jj > 0",
        regions={"loose": "met_pt >= 0"},
    )
    assert stats["n_read"] == 200
    assert stats["n_pair"] == 34  # events with two jets of pT > 30 GeV (the file's README)
    assert len(frame) == 34 and (frame["region"] == "loose").all()
    assert (frame["gen_weight"] < 0).sum() > 0
    assert stats["sum_gen_weight"] == pytest.approx((200 - 2 * 26) * 225892.45, rel=1e-6)
    # four-vector quantities are physical; JES variations exist and move m_jj
    assert (frame["m_jj"] > 0).all() and (frame["dr_jj"] > 0.3).all()
    assert stats["jes_sources"] == ["total"]  # the nanoaod layout's default source
    assert (frame["m_jj_jes_totalUp"] > frame["m_jj"]).all()
    # m_jj cross-check with an independent computation
    with uproot.open(nanoaod) as fin:
        ev = fin["Events"].arrays(
            ["Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass", "Jet_btagDeepB", "event"]
        )
    row = frame.iloc[0]
    e = ev[ev.event == row["event"]][0]
    good = np.asarray(e.Jet_pt) > 30
    idx = np.argsort(-np.asarray(e.Jet_btagDeepB)[good], kind="stable")[:2]
    pt, eta, phi, m = (
        np.asarray(getattr(e, f"Jet_{q}"))[good][idx] for q in ("pt", "eta", "phi", "mass")
    )
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    energy = np.sqrt(px**2 + py**2 + pz**2 + m**2)
    mass = np.sqrt(energy.sum() ** 2 - px.sum() ** 2 - py.sum() ** 2 - pz.sum() ** 2)
    assert row["m_jj"] == pytest.approx(mass, rel=1e-5)


def test_nanoaod_btag_selection_is_empty_but_valid(nanoaod, tmp_path):
    frame, stats = _cache(
        nanoaod,
        layout=NANO,
        preselection="pt_jj > 0",
        regions={"SR": "btag_max > 0.9 and btag_min > 0.6"},
    )
    assert stats["n_read"] == 200
    assert len(frame) > 0 and (frame["region"] == "none").all()
    merged, mstats = cache.merge_sample(
        [frame[frame["region"] == "SR"]], [stats], sample="tt", is_mc=True, xsec_pb=1.0, lumi_fb=1.0
    )
    assert len(merged) == 0
    cache.write_parquet(tmp_path / "tt.parquet", merged, mstats)
    assert len(pd.read_parquet(tmp_path / "tt.parquet")) == 0


def test_nanoaod_copy_with_missing_branch(nanoaod, tmp_path):
    copy = tmp_path / "nano.root"
    shutil.copy(nanoaod, copy)
    with pytest.raises(InputError, match=r"branch 'Jet_btagDeepX' missing.*Jet_btagDeep"):
        _cache(
            copy,
            layout={**NANO, "btag_branch": "Jet_btagDeepX"},
            preselection="pt_jj > 0",
            regions={"a": "pt_jj > 0"},
        )


def test_region_column_names_from_category_codes():
    from vhbb.data.events import _column

    cats = pd.Categorical(["SR", "none", None, "CR_tt"], categories=["none", "SR", "CR_tt"])
    got = _column(pd.Series(cats))
    # as the object array's astype(str) that it replaces (missing: "nan")
    want = pd.Series(cats).to_numpy().astype(str)
    assert got.tolist() == want.tolist() == ["SR", "none", "nan", "CR_tt"]
    assert got.dtype.kind == "U"
    np.testing.assert_array_equal(_column(pd.Series([1.5, 2.0])), [1.5, 2.0])
