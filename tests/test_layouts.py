"""Bring your own ntuples: toy formats (TTree / RNTuple), the real RNTuple NanoAOD file, and
declarative layouts of other schemas, each checked against an independent computation."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pandas as pd
import pytest
import uproot
import vector
from conftest import REPO, SHARED_DATA

from vhbb import config
from vhbb.core.errors import ConfigError, DataError, InputError
from vhbb.data import cache, toy

CFG = config.load_config([REPO / "config" / "config.yaml"])
FLAT = CFG["samples"]["layouts"]["flat"]
NANO = CFG["samples"]["layouts"]["nanoaod"]
PRESEL = CFG["regions"]["preselection"]
REGIONS = CFG["regions"]["definitions"]
RNTUPLE_FILE = (
    SHARED_DATA / "cmsopendata2015_ttbar_19980_NANOAOD_RNTupleImporter_rntuple_v1-0-0-1.root"
)
JES = {"constant": 0.015, "over_pt": 1.5}


def _cache(path, layout, **kw):  # type: ignore[no-untyped-def]
    args = {
        "sample": "s",
        "is_mc": True,
        "layout": layout,
        "preselection": "pt_jj > 0",
        "regions": {"all": "met_pt >= 0"},
        "nan_policy": "drop",
        "chunk_size": 1000,
    }
    args.update(kw)
    return cache.cache_file(str(path), **args)


# ---------------------------------------------------------------- independent reference
def _dphi(a: float, b: float) -> float:
    d = abs(a - b) % (2 * np.pi)
    return min(d, 2 * np.pi - d)


def reference_event(
    pair: list[tuple[float, float, float, float, float]],
    add: list[tuple[float, float, float]],
    met: tuple[float, float],
    soft: float,
    sign: float = 0.0,
    add_pt_min: float = 30.0,
    add_eta_max: float = 2.5,
) -> dict[str, float]:
    """The cached columns of one event, computed jet by jet with ``vector`` objects.

    ``pair``: the two b-jet candidates (pt, eta, phi, mass, btag); ``add``: the additional
    jets (pt, eta, phi); ``sign``: 0 nominal, +1/-1 the parametrised JES variation (every jet
    scaled by 1 + sign * (0.015 + 1.5/pT), the change propagated to MET).
    """

    def scale(pt: float) -> float:
        return 1.0 + sign * (JES["constant"] + JES["over_pt"] / max(pt, 1.0))

    mx, my = met[0] * np.cos(met[1]), met[0] * np.sin(met[1])
    jets = []
    for pt, eta, phi, mass, _ in pair:
        s = scale(pt)
        mx -= pt * (s - 1) * np.cos(phi)
        my -= pt * (s - 1) * np.sin(phi)
        jets.append(vector.obj(pt=pt * s, eta=eta, phi=phi, mass=mass * s))
    adds = []
    for pt, eta, phi in add:
        s = scale(pt)
        mx -= pt * (s - 1) * np.cos(phi)
        my -= pt * (s - 1) * np.sin(phi)
        adds.append((pt * s, eta, phi))
    met_pt, met_phi = float(np.hypot(mx, my)), float(np.arctan2(my, mx))
    j1, j2 = jets
    dijet = j1 + j2
    counted = [a for a in adds if a[0] > add_pt_min and abs(a[1]) < add_eta_max]
    lead, sub = (j1, j2) if j1.pt >= j2.pt else (j2, j1)
    return {
        "m_jj": dijet.mass,
        "pt_jj": dijet.pt,
        "j1_pt": lead.pt,
        "j2_pt": sub.pt,
        "j1_eta": lead.eta,
        "j2_eta": sub.eta,
        "met_pt": met_pt,
        "dphi_jj_met": _dphi(dijet.phi, met_phi),
        "n_add_jets": float(len(counted)),
        "add_jet_max_pt": max([a[0] for a in counted], default=0.0),
        "min_dphi_jet_met": min(
            _dphi(p, met_phi) for p in [j1.phi, j2.phi] + [a[2] for a in counted]
        ),
        "pt_balance": dijet.pt / max(met_pt, 1e-6),
        "dr_jj": j1.deltaR(j2),
        "deta_jj": abs(j1.eta - j2.eta),
        "btag_max": max(p[4] for p in pair),
        "btag_min": min(p[4] for p in pair),
        "soft_activity": soft,
    }


def assert_columns(
    frame: pd.DataFrame, expected: list[dict[str, float]], rtol: float = 1e-6
) -> None:
    assert len(frame) == len(expected)
    for name in expected[0]:
        want = np.array([e[name] for e in expected], dtype=np.float64)
        got = frame[name].to_numpy(np.float64)
        # the cache stores float32: compare to float32 precision of the value, else 1e-6
        np.testing.assert_allclose(
            got, want.astype(np.float32).astype(np.float64), rtol=rtol, atol=1e-6, err_msg=name
        )


# ---------------------------------------------------------------- 1. toy format
@pytest.fixture(scope="module")
def toy_branches():
    return toy.generate_mc_file("ZH", 4000, toy.derive_seed(4, "ZH", 0), 0)


@pytest.mark.parametrize(("fmt", "cls"), [("ttree", "TTree"), ("rntuple", "RNTuple")])
def test_toy_format_is_explicit(tmp_path, toy_branches, fmt, cls):
    path = tmp_path / f"{fmt}.root"
    toy.write_tree(path, toy_branches, format=fmt)
    with uproot.open(path) as fin:
        obj = fin["Events"]
        base = uproot.behaviors.TTree.TTree if cls == "TTree" else uproot.behaviors.RNTuple.RNTuple
        assert isinstance(obj, base)
        other = uproot.behaviors.RNTuple.RNTuple if cls == "TTree" else uproot.behaviors.TTree.TTree
        assert not isinstance(obj, other)
        assert obj.num_entries == 4000
    assert [p.name for p in tmp_path.iterdir()] == [f"{fmt}.root"]


def test_toy_formats_cache_to_identical_frames(tmp_path, toy_branches):
    frames = {}
    for fmt in ("ttree", "rntuple"):
        path = tmp_path / f"{fmt}.root"
        toy.write_tree(path, toy_branches, format=fmt)
        frames[fmt] = _cache(path, FLAT, preselection=PRESEL, regions=REGIONS, chunk_size=1500)
    pd.testing.assert_frame_equal(frames["ttree"][0], frames["rntuple"][0], check_exact=True)
    assert frames["ttree"][1]["sum_gen_weight"] == frames["rntuple"][1]["sum_gen_weight"]
    assert len(frames["ttree"][0]) > 0


def test_toy_format_in_config_and_file_spec(tmp_path):
    assert CFG["toy"]["format"] == "ttree"
    spec = toy.file_spec({**CFG, "toy": {**CFG["toy"], "format": "rntuple"}}, "VZ", 0)
    assert spec["format"] == "rntuple"
    spec["n_events"] = 200
    toy.run_toy_file(tmp_path / "vz.root", **spec)
    with uproot.open(tmp_path / "vz.root") as fin:
        assert isinstance(fin["Events"], uproot.behaviors.RNTuple.RNTuple)
    with pytest.raises(ConfigError, match=r"toy\.format.*ttree, rntuple"):
        toy.write_tree(tmp_path / "x.root", {"a": np.zeros(2)}, format="parquet")
    bad = {**CFG["toy"], "format": "hdf5"}
    with pytest.raises(ConfigError, match="format"):
        config.validate({**CFG, "toy": bad})


# ---------------------------------------------------------------- 2. real RNTuple NanoAOD
@pytest.fixture(scope="module")
def rntuple_file():
    if not RNTUPLE_FILE.exists():
        pytest.skip(f"the real RNTuple NanoAOD file is absent ({RNTUPLE_FILE})")
    return str(RNTUPLE_FILE)


def _nanoaod_reference(path: str, pt_min: float, eta_max: float, sign: float) -> list[dict]:
    fields = ["Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass", "Jet_btagDeepB", "MET_pt", "MET_phi"]
    fields += ["SoftActivityJetNjets5", "event"]
    with uproot.open(path) as fin:
        arrays = fin["Events"].arrays(fields)
    arrays = arrays[fields]  # RNTuple.arrays may add internal fields: keep what was asked for
    out = []
    for ev in arrays.to_list():
        jets = [
            (pt, eta, phi, m, b)
            for pt, eta, phi, m, b in zip(
                ev["Jet_pt"],
                ev["Jet_eta"],
                ev["Jet_phi"],
                ev["Jet_mass"],
                ev["Jet_btagDeepB"],
                strict=True,
            )
            if pt > pt_min and abs(eta) < eta_max
        ]
        if len(jets) < 2:
            continue
        order = sorted(range(len(jets)), key=lambda i: -jets[i][4])  # stable: ties keep order
        pair = [jets[i] for i in order[:2]]
        add = [jets[i][:3] for i in order[2:8]]
        out.append(
            reference_event(
                pair, add, (ev["MET_pt"], ev["MET_phi"]), ev["SoftActivityJetNjets5"], sign
            )
        )
    return out


def test_real_rntuple_nanoaod_is_cached_like_a_hand_computation(rntuple_file):
    with uproot.open(rntuple_file) as fin:
        assert isinstance(fin["Events"], uproot.behaviors.RNTuple.RNTuple)
    layout = {**NANO, "jet_eta_max": 10.0}
    frame, stats = _cache(rntuple_file, layout)
    assert stats["n_read"] == 10 and len(frame) > 0
    assert stats["sum_gen_weight"] == pytest.approx(10.0)
    assert (frame["region"] == "all").all()
    assert frame["event"].tolist() == list(range(44727241, 44727251))[: len(frame)]
    assert_columns(frame, _nanoaod_reference(rntuple_file, 30.0, 10.0, 0.0))
    assert stats["jes_sources"] == ["total"]  # the layouts' default: one source, 0.015 + 1.5/pT
    for var, sign in (("jes_totalUp", 1.0), ("jes_totalDown", -1.0)):
        ref = _nanoaod_reference(rntuple_file, 30.0, 10.0, sign)
        renamed = frame[[f"{c}_{var}" for c in cache.VARIED_COLUMNS]].rename(
            columns=lambda c, v=var: c.removesuffix(f"_{v}")
        )
        assert_columns(renamed, [{c: r[c] for c in cache.VARIED_COLUMNS} for r in ref])


# ---------------------------------------------------------------- 4. declarative layouts
def random_jets(rng: np.random.Generator, n: int, max_jets: int = 8) -> dict[str, ak.Array]:
    counts = rng.integers(0, max_jets + 1, n)
    total = int(counts.sum())
    pt = 15.0 + rng.exponential(50.0, total)
    eta = rng.normal(0.0, 1.6, total)
    phi = rng.uniform(-np.pi, np.pi, total)
    mass = rng.uniform(3.0, 25.0, total)
    btag = rng.random(total)
    return {
        k: ak.unflatten(v, counts)
        for k, v in {"pt": pt, "eta": eta, "phi": phi, "mass": mass, "btag": btag}.items()
    }


def _pair_and_add(jets: dict, i: int, choice: str, idx=None, pt_min=30.0, eta_max=2.5):  # type: ignore[no-untyped-def]
    """One event's pair and additional jets by hand (lists of tuples)."""
    all_jets = list(
        zip(*(jets[q][i].tolist() for q in ("pt", "eta", "phi", "mass", "btag")), strict=True)
    )
    good = [k for k, j in enumerate(all_jets) if j[0] > pt_min and abs(j[1]) < eta_max]
    if choice == "index":
        if min(idx) < 0:
            return None
        pair = [all_jets[idx[0]], all_jets[idx[1]]]
        add = [all_jets[k][:3] for k in good if k not in idx][:6]
        return pair, add
    if len(good) < 2:
        return None
    key = 4 if choice == "btag" else 0
    order = sorted(good, key=lambda k: -all_jets[k][key])
    return [all_jets[k] for k in order[:2]], [all_jets[k][:3] for k in order[2:8]]


@pytest.fixture(scope="module")
def cartesian_file(tmp_path_factory):
    """Jets as (Px, Py, Pz, E), MET as (px, py), tree 'tree', weight = product of 3 branches,
    keys under other names, and a Runs tree with genEventSumw."""
    rng = np.random.default_rng(11)
    n = 400
    jets = random_jets(rng, n)
    v = vector.zip({k: jets[k] for k in ("pt", "eta", "phi", "mass")})
    met_pt, met_phi = 80 + rng.exponential(60, n), rng.uniform(-np.pi, np.pi, n)
    branches = {
        "evt": np.arange(1, n + 1, dtype=np.uint64),
        "lumi": np.full(n, 7, dtype=np.uint32),
        "jet_Px": v.px,
        "jet_Py": v.py,
        "jet_Pz": v.pz,
        "jet_E": v.E,
        "jet_csv": jets["btag"],
        "met_px": met_pt * np.cos(met_phi),
        "met_py": met_pt * np.sin(met_phi),
        "w_gen": np.where(rng.random(n) < 0.1, -1.0, 1.0) * 2.0,
        "w_pu": rng.uniform(0.5, 1.5, n),
        "w_lep": rng.uniform(0.9, 1.1, n),
        "nSoft": rng.integers(0, 9, n).astype(np.int32),
    }
    path = tmp_path_factory.mktemp("cart") / "cart.root"
    toy.write_tree(path, branches, name="tree")
    with uproot.update(path) as fout:
        fout.mktree("Runs", {"genEventSumw": np.float64}).extend(
            {"genEventSumw": np.array([300.0, 123.5])}
        )
    return path, branches


CARTESIAN = {
    "kind": "custom",
    "tree": "tree",
    "keys": {"run": 1, "luminosityBlock": "lumi", "event": "evt"},
    "jets": {"px": "jet_Px", "py": "jet_Py", "pz": "jet_Pz", "E": "jet_E", "btag": "jet_csv"},
    "pair": {"choice": "btag"},
    "met": {"px": "met_px", "py": "met_py"},
    "soft_activity": "nSoft",
    "weight": "w_gen * w_pu * w_lep",
    "normalisation": {"from": "runs"},
    "columns": {"w_pu_col": "w_pu", "met_px_half": "met_px / 2"},
}


def _layout(raw: dict) -> dict:
    """A layout with the schema's defaults filled in (as the config loader does)."""
    import copy

    cfg = copy.deepcopy(CFG)
    cfg["samples"]["layouts"]["x"] = copy.deepcopy(raw)
    return config.validate(cfg)["samples"]["layouts"]["x"]


def test_custom_cartesian_layout_matches_vector(cartesian_file):
    path, br = cartesian_file
    frame, stats = _cache(path, _layout(CARTESIAN))
    assert stats["sum_gen_weight"] == pytest.approx(423.5)  # from the Runs tree
    assert stats["sum_gen_weight_events"] == pytest.approx(
        float(np.sum(br["w_gen"] * br["w_pu"] * br["w_lep"]))
    )
    four = {q: [] for q in ("pt", "eta", "phi", "mass")}
    for px, py, pz, e in zip(br["jet_Px"], br["jet_Py"], br["jet_Pz"], br["jet_E"], strict=True):
        objs = [vector.obj(px=a, py=b, pz=c, E=d) for a, b, c, d in zip(px, py, pz, e, strict=True)]
        for q in four:
            four[q].append([getattr(o, q) for o in objs])
    jets = {q: ak.Array(four[q]) for q in four} | {"btag": br["jet_csv"]}
    expected, rows = [], []
    for i in range(len(br["evt"])):
        got = _pair_and_add(jets, i, "btag")
        if got is None:
            continue
        mx, my = br["met_px"][i], br["met_py"][i]
        met = (float(np.hypot(mx, my)), float(np.arctan2(my, mx)))
        expected.append(reference_event(*got, met, float(br["nSoft"][i])))
        rows.append(i)
    assert stats["n_pair"] == len(rows) and 0 < len(rows) < len(br["evt"])
    assert_columns(frame, expected)
    rows = np.array(rows)
    assert frame["event"].tolist() == br["evt"][rows].tolist()
    assert (frame["run"] == 1).all() and (frame["luminosityBlock"] == 7).all()
    np.testing.assert_allclose(
        frame["gen_weight"], (br["w_gen"] * br["w_pu"] * br["w_lep"])[rows], rtol=1e-12
    )
    np.testing.assert_allclose(frame["w_pu_col"], br["w_pu"][rows], rtol=1e-6)
    np.testing.assert_allclose(frame["met_px_half"], br["met_px"][rows] / 2, rtol=1e-6)
    assert {"m_jj_jes_totalUp", "region_jes_totalDown"} <= set(frame.columns)
    merged, mstats = cache.merge_sample(
        [frame], [stats], sample="s", is_mc=True, xsec_pb=2.0, lumi_fb=1.0
    )
    assert mstats["sum_gen_weight"] == pytest.approx(423.5)
    np.testing.assert_allclose(merged["weight"], merged["gen_weight"] * 2000.0 / 423.5)


@pytest.fixture(scope="module")
def analysis_file(tmp_path_factory):
    """An analysis-style tree: Jet_* arrays, hJidx (two indices per event), H_mass."""
    rng = np.random.default_rng(12)
    n = 300
    jets = random_jets(rng, n, max_jets=7)
    counts = ak.to_numpy(ak.num(jets["pt"]))
    idx = np.full((n, 2), -1, dtype=np.int32)
    for i, c in enumerate(counts):
        if c >= 2:
            idx[i] = rng.choice(c, 2, replace=False)
    branches = {
        "run": np.full(n, 3, dtype=np.uint32),
        "luminosityBlock": np.full(n, 1, dtype=np.uint32),
        "event": np.arange(n, dtype=np.uint64),
        "Jet_pt": jets["pt"],
        "Jet_eta": jets["eta"],
        "Jet_phi": jets["phi"],
        "Jet_mass": jets["mass"],
        "Jet_btag": jets["btag"],
        "hJidx": idx,
        "hJidx0": idx[:, 0].copy(),
        "hJidx1": idx[:, 1].copy(),
        "H_mass": rng.uniform(50, 200, n),
        "met_pt": 100 + rng.exponential(50, n),
        "met_phi": rng.uniform(-np.pi, np.pi, n),
        "genWeight": np.ones(n),
    }
    path = tmp_path_factory.mktemp("ana") / "ana.root"
    toy.write_tree(path, branches, format="rntuple", name="Events")
    return path, branches, jets


ANALYSIS = {
    "kind": "custom",
    "jets": {"pt": "Jet_pt", "eta": "Jet_eta", "phi": "Jet_phi", "mass": "Jet_mass",
             "btag": "Jet_btag"},
    "pair": {"choice": "index", "index": ["hJidx"]},
    "met": {"pt": "met_pt", "phi": "met_phi"},
    "columns": {"h_mass": "H_mass"},
}  # fmt: skip


@pytest.mark.parametrize("index", [["hJidx"], ["hJidx0", "hJidx1"]])
def test_custom_index_layout_matches_hand_computation(analysis_file, index):
    path, br, jets = analysis_file
    layout = _layout({**ANALYSIS, "pair": {"choice": "index", "index": index}})
    frame, stats = _cache(path, layout)
    expected, rows = [], []
    for i in range(len(br["event"])):
        got = _pair_and_add(jets, i, "index", idx=br["hJidx"][i].tolist())
        if got is None:
            continue
        expected.append(reference_event(*got, (br["met_pt"][i], br["met_phi"][i]), 0.0))
        rows.append(i)
    assert stats["n_pair"] == len(rows) and len(rows) < len(br["event"])
    assert_columns(frame, expected)
    np.testing.assert_allclose(frame["h_mass"], br["H_mass"][rows], rtol=1e-6)
    assert frame["event"].tolist() == br["event"][rows].tolist()


def test_custom_pt_choice(analysis_file):
    path, br, jets = analysis_file
    frame, _ = _cache(path, _layout({**ANALYSIS, "pair": {"choice": "pt"}}))
    expected = [
        reference_event(*got, (br["met_pt"][i], br["met_phi"][i]), 0.0)
        for i in range(len(br["event"]))
        if (got := _pair_and_add(jets, i, "pt")) is not None
    ]
    assert_columns(frame, expected)


def test_nanoaod_kind_is_a_preset_of_custom():
    from vhbb.data.layouts import nanoaod_preset

    preset = nanoaod_preset(NANO)
    assert preset["kind"] == "custom" and preset["jets"]["btag"] == NANO["btag_branch"]
    assert preset["met"] == {"pt": "MET_pt", "phi": "MET_phi"}


def test_custom_layout_errors_name_the_file(analysis_file, cartesian_file, tmp_path):
    path, br, _ = analysis_file
    bad = _layout({**ANALYSIS, "jets": {**ANALYSIS["jets"], "pt": "Jet_pT"}})
    with pytest.raises(InputError, match=rf"branch 'Jet_pT' missing in {path}.*Jet_pt"):
        _cache(path, bad)
    with pytest.raises(InputError, match=r"tree 'Evnts' not found in .*the file holds: Events"):
        _cache(path, _layout({**ANALYSIS, "tree": "Evnts"}))
    broken = dict(br)
    broken["hJidx"] = br["hJidx"].copy()
    broken["hJidx"][5] = [0, 40]
    out = tmp_path / "broken.root"
    toy.write_tree(out, broken)
    with pytest.raises(DataError, match=rf"jet index out of range in {out} \(entry 5\)"):
        _cache(out, _layout(ANALYSIS))
    cpath, _ = cartesian_file
    with pytest.raises(InputError, match=r"normalisation tree 'Runz' not found in .*tree, Runs"):
        _cache(cpath, _layout({**CARTESIAN, "normalisation": {"from": "runs", "tree": "Runz"}}))
    with pytest.raises(ConfigError, match=r"jets"):
        _layout({"kind": "custom", "met": {"pt": "a", "phi": "b"}})
    with pytest.raises(ConfigError):
        _layout({**ANALYSIS, "jets": {"pt": "Jet_pt", "px": "Jet_px"}})


def test_fixed_normalisation_value(analysis_file):
    path, _, _ = analysis_file
    layout = _layout({**ANALYSIS, "normalisation": {"from": "value", "value": 1000.0}})
    frame, stats = _cache(path, layout)
    merged, mstats = cache.merge_sample(
        [frame, frame.iloc[:0]], [stats, stats], sample="s", is_mc=True, xsec_pb=1.0, lumi_fb=1.0
    )
    assert mstats["sum_gen_weight"] == 1000.0
    np.testing.assert_allclose(merged["weight"], merged["gen_weight"])


def test_extra_columns_may_define_regions_when_every_layout_has_them():
    """A custom layout's extra ``columns`` are cached columns for the config check: a region may
    cut on one when every layout in use defines it; otherwise the check names it."""
    import copy

    from vhbb.config.loading import check_consistency

    base = config.load_config([REPO / "config" / "config.yaml"])
    cfg = copy.deepcopy(base)
    cfg["regions"]["definitions"]["SR_medhigh_Znn"] += " and h_mass > 0"
    with pytest.raises(ConfigError, match=r"unknown column 'h_mass'"):
        check_consistency(cfg)
    for name in cfg["samples"]["layouts"]:
        cfg["samples"]["layouts"][name]["columns"] = {"h_mass": "m_jj"}
    check_consistency(cfg)  # every layout defines it now


# ---------------------------------------------------------------- 5. JES variations from branches
JES_REGIONS = {"hi": "j1_pt >= 90 and met_pt >= 120", "lo": "j1_pt < 90 or met_pt < 120"}
SIDES = {"jes_totalUp": "Up", "jes_totalDown": "Down"}  # the single-source form: 'total'


@pytest.fixture(scope="module")
def jes_file(tmp_path_factory):
    """A NanoAOD-like TTree with NanoAOD-tools' JES branches (Jet_pt_jesTotalUp/Down, ...)."""
    rng = np.random.default_rng(15)
    n = 500
    jets = random_jets(rng, n, max_jets=9)
    counts = ak.num(jets["pt"])
    total = int(ak.sum(counts))
    met_pt, met_phi = 60 + rng.exponential(70, n), rng.uniform(-np.pi, np.pi, n)
    v = vector.zip({k: jets[k] for k in ("pt", "eta", "phi", "mass")})
    branches = {
        "run": np.full(n, 1, dtype=np.uint32),
        "luminosityBlock": np.full(n, 2, dtype=np.uint32),
        "event": np.arange(n, dtype=np.uint64),
        "Jet_pt": jets["pt"],
        "Jet_eta": jets["eta"],
        "Jet_phi": jets["phi"],
        "Jet_mass": jets["mass"],
        "Jet_btagDeepB": jets["btag"],
        "Jet_Px": v.px,
        "Jet_Py": v.py,
        "Jet_Pz": v.pz,
        "Jet_E": v.E,
        "MET_pt": met_pt,
        "MET_phi": met_phi,
        "SoftActivityJetNjets5": rng.integers(0, 7, n).astype(np.int32),
        "genWeight": np.where(rng.random(n) < 0.2, -1.0, 1.0),
    }
    for side, sign in (("Up", 1.0), ("Down", -1.0)):
        shift = ak.unflatten(1.0 + sign * rng.uniform(0.02, 0.12, total), counts)
        branches[f"Jet_pt_jesTotal{side}"] = jets["pt"] * shift
        mass_shift = ak.unflatten(1.0 + sign * rng.uniform(0.0, 0.2, total), counts)
        branches[f"Jet_mass_jesTotal{side}"] = jets["mass"] * mass_shift
        vmet = met_pt * (1.0 + sign * rng.uniform(0.05, 0.25, n))
        vphi = met_phi + rng.normal(0.0, 0.1, n)
        branches[f"MET_pt_jesTotal{side}"] = vmet
        branches[f"MET_phi_jesTotal{side}"] = vphi
        branches[f"MET_px_jesTotal{side}"] = vmet * np.cos(vphi)
        branches[f"MET_py_jesTotal{side}"] = vmet * np.sin(vphi)
        # the parametrised variation written as branches (the cross-check with scale_jes)
        unc = JES["constant"] + JES["over_pt"] / np.maximum(jets["pt"], 1.0)
        branches[f"Jet_pt_param{side}"] = jets["pt"] * (1.0 + sign * unc)
    branches["Jet_pt_short"] = jets["pt"][:, :1]  # one value per event: not one per jet
    path = tmp_path_factory.mktemp("jes") / "nano_jes.root"
    toy.write_tree(path, branches)
    return path, branches


def _jes_side(side: str, mode: str) -> dict:
    if mode == "pt_only":
        return {"pt": f"Jet_pt_jesTotal{side}"}
    if mode == "cartesian":
        return {
            "pt": f"Jet_pt_jesTotal{side}",
            "met": {"px": f"MET_px_jesTotal{side}", "py": f"MET_py_jesTotal{side}"},
        }
    return {
        "pt": f"Jet_pt_jesTotal{side}",
        "mass": f"Jet_mass_jesTotal{side}",
        "met": {"pt": f"MET_pt_jesTotal{side}", "phi": f"MET_phi_jesTotal{side}"},
    }


def _jes_overlay(mode: str) -> dict:
    """The layout of one test case: the nanoaod kind (the numpy reduction) or a custom layout
    with jets as (Px, Py, Pz, E) (the awkward reduction)."""
    jes = {"from": "branches", "up": _jes_side("Up", mode), "down": _jes_side("Down", mode)}
    if mode == "cartesian":
        return {
            "kind": "custom",
            "jets": {"px": "Jet_Px", "py": "Jet_Py", "pz": "Jet_Pz", "E": "Jet_E",
                     "btag": "Jet_btagDeepB"},
            "met": {"pt": "MET_pt", "phi": "MET_phi"},
            "soft_activity": "SoftActivityJetNjets5",
            "jes": jes,
        }  # fmt: skip
    return {"kind": "nanoaod", "btag_branch": "Jet_btagDeepB", "jes": jes}


def _jes_reference(br: dict, i: int, var: str | None, mode: str) -> dict[str, float] | None:
    """One event's cached columns under ``var`` (None: nominal), by hand from the branches: the
    nominal selection and pair; the varied pT (and mass, MET) from the branches, or the mass
    scaled by the pT ratio and the MET shifted by minus the jets' pT shifts (pair + additional
    jets); the sums with ``vector`` (:func:`reference_event`)."""
    pt, eta, phi = (np.asarray(br[f"Jet_{q}"][i], dtype=float) for q in ("pt", "eta", "phi"))
    mass, btag = np.asarray(br["Jet_mass"][i], float), np.asarray(br["Jet_btagDeepB"][i], float)
    good = [k for k in range(len(pt)) if pt[k] > 30.0 and abs(eta[k]) < 2.5]
    if len(good) < 2:
        return None
    order = sorted(good, key=lambda k: -btag[k])  # stable: ties keep the file order
    pair_idx, add_idx = order[:2], order[2:8]
    met = (float(br["MET_pt"][i]), float(br["MET_phi"][i]))
    soft = float(br["SoftActivityJetNjets5"][i])
    if var is None:
        vpt, vmass = pt, mass
    else:
        side = SIDES[var]
        vpt = np.asarray(br[f"Jet_pt_jesTotal{side}"][i], dtype=float)
        if mode == "full":
            vmass = np.asarray(br[f"Jet_mass_jesTotal{side}"][i], dtype=float)
        else:
            vmass = mass * vpt / pt
        if mode == "pt_only":
            mx, my = met[0] * np.cos(met[1]), met[0] * np.sin(met[1])
            for k in pair_idx + add_idx:
                mx -= (vpt[k] - pt[k]) * np.cos(phi[k])
                my -= (vpt[k] - pt[k]) * np.sin(phi[k])
            met = (float(np.hypot(mx, my)), float(np.arctan2(my, mx)))
        elif mode == "cartesian":
            mx, my = br[f"MET_px_jesTotal{side}"][i], br[f"MET_py_jesTotal{side}"][i]
            met = (float(np.hypot(mx, my)), float(np.arctan2(my, mx)))
        else:
            met = (float(br[f"MET_pt_jesTotal{side}"][i]), float(br[f"MET_phi_jesTotal{side}"][i]))
    pair = [(vpt[k], eta[k], phi[k], vmass[k], btag[k]) for k in pair_idx]
    add = [(vpt[k], eta[k], phi[k]) for k in add_idx]
    return reference_event(pair, add, met, soft)


def _region(ref: dict[str, float]) -> str:
    return "hi" if ref["j1_pt"] >= 90 and ref["met_pt"] >= 120 else "lo"


@pytest.mark.parametrize("mode", ["full", "pt_only", "cartesian"])
def test_jes_from_branches_matches_hand_computation(jes_file, tmp_path, mode):
    """The JES variations read from branches, set up by a config overlay alone: every varied
    column equals the hand computation from the varied branches, and events migrate between
    regions as the varied columns say."""
    import yaml

    path, br = jes_file
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"samples": {"layouts": {"jes": _jes_overlay(mode)}}}))
    cfg = config.load_config([REPO / "config" / "config.yaml", overlay])
    layout = cfg["samples"]["layouts"]["jes"]
    frame, stats = _cache(path, layout, preselection="pt_jj > 0", regions=JES_REGIONS)
    rows = [i for i in range(len(br["event"])) if _jes_reference(br, i, None, mode) is not None]
    assert stats["n_pair"] == len(rows) == len(frame) and 0 < len(rows) < len(br["event"])
    assert frame["event"].tolist() == rows
    nominal = [_jes_reference(br, i, None, mode) for i in rows]
    assert_columns(frame, nominal)  # type: ignore[arg-type]
    assert frame["region"].tolist() == [_region(r) for r in nominal]  # type: ignore[arg-type]
    assert stats["jes_sources"] == ["total"]
    for var in SIDES:
        ref = [_jes_reference(br, i, var, mode) for i in rows]
        renamed = frame[[f"{c}_{var}" for c in cache.VARIED_COLUMNS]].rename(
            columns=lambda c, v=var: c.removesuffix(f"_{v}")
        )
        assert_columns(renamed, [{c: r[c] for c in cache.VARIED_COLUMNS} for r in ref])  # type: ignore[index]
        want = [_region(r) for r in ref]  # type: ignore[arg-type]
        assert frame[f"region_{var}"].tolist() == want
        moved = frame[f"region_{var}"].astype(str) != frame["region"].astype(str)
        assert moved.sum() > 0  # events migrate under the variation
    # the structure downstream of the cache is that of the parametrised variations
    parametrised = {k: v for k, v in layout.items() if k != "jes"}
    ref_frame, _ = _cache(path, parametrised, preselection="pt_jj > 0", regions=JES_REGIONS)
    assert list(frame.columns) == list(ref_frame.columns)
    assert frame.dtypes.to_dict() == ref_frame.dtypes.to_dict()


def test_jes_branches_of_the_parametrised_scaling_reproduce_it(jes_file):
    """Branches holding the parametrised scaling give the parametrised variations (pT only: the
    mass scaled and the MET propagated as scale_jes does)."""
    path, _ = jes_file
    nano = _layout({"kind": "nanoaod", "btag_branch": "Jet_btagDeepB"})
    jes = {"from": "branches", "up": {"pt": "Jet_pt_paramUp"}, "down": {"pt": "Jet_pt_paramDown"}}
    frame, _ = _cache(path, {**nano, "jes": jes}, regions=JES_REGIONS)
    ref, _ = _cache(path, nano, regions=JES_REGIONS)
    assert list(frame.columns) == list(ref.columns) and len(frame) == len(ref) > 0
    for col in frame.columns:
        if col.startswith("region"):
            assert frame[col].tolist() == ref[col].tolist(), col
        else:
            np.testing.assert_allclose(frame[col], ref[col], rtol=1e-6, atol=1e-6, err_msg=col)


def test_jes_branches_not_read_for_data(jes_file, tmp_path):
    """Data read no JES branches (a data file without them caches, without varied columns)."""
    _, br = jes_file
    data = tmp_path / "data.root"
    toy.write_tree(data, {k: v for k, v in br.items() if "jesTotal" not in k})
    layout = _layout(_jes_overlay("full"))
    frame, stats = _cache(data, layout, is_mc=False)
    assert len(frame) == stats["n_pair"] > 0
    assert not any("_jes" in c for c in frame.columns) and stats["jes_sources"] == []


def test_jes_branch_errors(jes_file):
    import re

    path, _ = jes_file
    layout = _layout(_jes_overlay("full"))
    typo = {
        **layout,
        "jes": {**layout["jes"], "up": {**layout["jes"]["up"], "pt": "Jet_pt_jesTotlUp"}},
    }
    with pytest.raises(
        InputError,
        match=rf"branch 'Jet_pt_jesTotlUp' missing in {re.escape(str(path))} \(close matches: "
        r"Jet_pt_jesTotalUp.*\); check the sample's layout "
        r"\(samples\.layouts\.<name>\.jes\.up\.pt\)",
    ):
        _cache(path, typo)
    met = {"pt": "MET_pt_jesTotalDown", "phi": "MET_phi_jesTotlDown"}
    typo = {**layout, "jes": {**layout["jes"], "down": {"pt": "Jet_pt_jesTotalDown", "met": met}}}
    with pytest.raises(InputError, match=r"'MET_phi_jesTotlDown' missing .*jes\.down\.met\.phi"):
        _cache(path, typo)
    # a per-jet branch with the wrong number of values (both reductions)
    for mode in ("full", "cartesian"):
        short = _layout(_jes_overlay(mode))
        short["jes"]["up"]["pt"] = "Jet_pt_short"
        with pytest.raises(
            DataError, match=rf"jet branch 'Jet_pt_short' of {re.escape(str(path))}"
        ):
            _cache(path, short)


def test_several_jes_sources_from_branches_and_parametrised(jes_file):
    """``jes.sources`` reads one variation pair per named source (each as the single-source
    form would); parametrised ``jes_sources`` scale the jets per source; the sources are in the
    statistics (the parquet metadata) in their configured order."""
    path, _ = jes_file
    nano = _layout({"kind": "nanoaod", "btag_branch": "Jet_btagDeepB"})
    sides = {"up": _jes_side("Up", "full"), "down": _jes_side("Down", "full")}
    param = {"up": {"pt": "Jet_pt_paramUp"}, "down": {"pt": "Jet_pt_paramDown"}}
    layout = _layout({**nano, "jes": {"from": "branches", "sources": {"tot": sides, "par": param}}})
    frame, stats = _cache(path, layout, regions=JES_REGIONS)
    assert stats["jes_sources"] == ["tot", "par"]
    single, _ = _cache(path, {**nano, "jes": {"from": "branches", **sides}}, regions=JES_REGIONS)
    parametrised, _ = _cache(path, nano, regions=JES_REGIONS)
    for source, ref, ref_source in (("tot", single, "total"), ("par", parametrised, "total")):
        for side in ("Up", "Down"):
            for c in [*cache.VARIED_COLUMNS, "region"]:
                got, want = frame[f"{c}_jes_{source}{side}"], ref[f"{c}_jes_{ref_source}{side}"]
                if c == "region":
                    assert got.tolist() == want.tolist()
                else:
                    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=c)
    # parametrised sources (params keep their order as a list): one pair of variations each
    from vhbb.config import params

    two_sources = {"abs": {"constant": 0.015}, "pt": {"over_pt": 1.5}}
    spec = {
        "samples": {
            "list": {"s": {"process": "p", "layout": "n"}},
            "processes": {"p": {"role": "background"}},
            "layouts": {"n": {**nano, "jes_sources": two_sources}},
            "nan_policy": "drop",
            "chunk_size": 1000,
        },
        "regions": {"preselection": "pt_jj > 0", "definitions": JES_REGIONS},
    }
    two = params.cache_file(spec, "s")["layout"]
    assert [e["name"] for e in two["jes_sources"]] == ["abs", "pt"]
    frame, stats = _cache(path, two, regions=JES_REGIONS)
    assert stats["jes_sources"] == ["abs", "pt"]
    ratio = frame["m_jj_jes_absUp"] / frame["m_jj"]
    np.testing.assert_allclose(ratio, 1.015, rtol=1e-5)  # both jets times 1.015
    lead = frame["j1_pt_jes_ptDown"] / frame["j1_pt"]
    np.testing.assert_allclose(lead, 1.0 - 1.5 / frame["j1_pt"], rtol=1e-4)
    with pytest.raises(ConfigError, match=r"unknown key '.*jes_sources\.fl\.b'.*constant, over_pt"):
        _layout({**nano, "jes_sources": {"fl": {"b": 0.01}}})


def test_jes_schema_rejects_typos():
    side = {"pt": "Jet_pt_jesTotalUp"}
    good = {"kind": "nanoaod", "jes": {"from": "branches", "up": side, "down": side}}
    assert _layout(good)["jes"] == good["jes"]  # no defaults added inside jes
    assert "jes" not in _layout({"kind": "nanoaod"})  # absent: parametrised
    assert _layout({"kind": "nanoaod", "jes": {"from": "parametrised"}})["jes"]["from"]
    cases = [
        ({"from": "branches", "up": {"ptt": "a"}, "down": side}, r"up\.ptt.*did you mean 'pt'"),
        ({"from": "branches", "up": side, "down": side, "dwn": side}, r"jes\.dwn.*'down'"),
        ({"from": "branch", "up": side, "down": side}, r"jes\.from.*'parametrised', 'branches'"),
        ({"from": "branches", "up": side}, r"'down' is a required property"),
        ({"up": side, "down": side}, r"'from' is a required property"),
        ({"from": "branches", "up": {"mass": "m"}, "down": side}, r"jes\.up.*'pt' is a required"),
        ({"from": "parametrised", "up": side}, r"jes\.up.*with 'from: branches' only"),
        ({"from": "branches", "up": {**side, "met": {"pt": "m"}}, "down": side}, r"jes\.up\.met"),
        ({"from": "branches", "up": {**side, "met": {"pt": "m", "ph": "p"}}, "down": side},
         r"jes\.up\.met\.ph.*did you mean 'phi'"),
        ({"from": "branches", "sources": {"a": {"up": side}}}, r"'down' is a required"),
        ({"from": "branches", "sources": {"a": {"up": side, "down": side}}, "up": side},
         r"jes\.up.*either sources or the single-source"),
        ({"from": "parametrised", "sources": {"a": {"up": side, "down": side}}},
         r"jes\.sources.*with 'from: branches' only"),
        ({"from": "branches", "sources": {"9a": {"up": side, "down": side}}}, r"9a"),
    ]  # fmt: skip
    for jes, message in cases:
        with pytest.raises(ConfigError, match=message):
            _layout({"kind": "nanoaod", "jes": jes})
    with pytest.raises(ConfigError, match=r"flat layout reads its JES variations"):
        _layout({"kind": "flat", "jes": good["jes"]})
