"""correctionlib scale factors named by a layout: per-jet products, per-event factors, the
variation columns (ratios to the nominal weight) and errors that name the file."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from conftest import REPO
from test_layouts import _pair_and_add, random_jets

from vhbb import config
from vhbb.core.errors import ConfigError, InputError
from vhbb.data import cache, toy

correctionlib = pytest.importorskip("correctionlib")
cs = pytest.importorskip("correctionlib.schemav2")

CFG = config.load_config([REPO / "config" / "config.yaml"])
PT_EDGES = [20.0, 50.0, 100.0, 1000.0]
ETA_EDGES = [0.0, 1.2, 2.5]
SF = {  # (pt bin, |eta| bin) tables per systematic
    "central": np.array([[1.00, 1.10], [0.90, 0.95], [1.05, 1.20]]),
    "up": np.array([[1.10, 1.25], [1.00, 1.05], [1.15, 1.30]]),
    "down": np.array([[0.90, 0.95], [0.80, 0.85], [0.95, 1.10]]),
}
MET_EDGES = [0.0, 150.0, 250.0, 10000.0]
MET_SF = [0.97, 1.02, 1.08]


def _sf(pt: float, abseta: float, syst: str) -> float:
    """The table lookup by hand (clamped at the edges, like flow='clamp')."""
    i = int(np.clip(np.searchsorted(PT_EDGES, pt, side="right") - 1, 0, len(PT_EDGES) - 2))
    j = int(np.clip(np.searchsorted(ETA_EDGES, abseta, side="right") - 1, 0, len(ETA_EDGES) - 2))
    return float(SF[syst][i, j])


def _met_sf(met: float) -> float:
    return MET_SF[int(np.clip(np.searchsorted(MET_EDGES, met, side="right") - 1, 0, 2))]


@pytest.fixture(scope="module")
def sf_file(tmp_path_factory):
    def table(values: np.ndarray):  # type: ignore[no-untyped-def]
        return cs.MultiBinning(
            nodetype="multibinning",
            inputs=["pt", "abseta"],
            edges=[PT_EDGES, ETA_EDGES],
            content=[float(v) for v in values.ravel()],
            flow="clamp",
        )

    btag = cs.Correction(
        name="btag_sf",
        version=1,
        inputs=[
            cs.Variable(name="systematic", type="string"),
            cs.Variable(name="pt", type="real"),
            cs.Variable(name="abseta", type="real"),
        ],
        output=cs.Variable(name="weight", type="real"),
        data=cs.Category(
            nodetype="category",
            input="systematic",
            content=[cs.CategoryItem(key=k, value=table(v)) for k, v in SF.items()],
        ),
    )
    met = cs.Correction(
        name="met_trigger",
        version=1,
        inputs=[cs.Variable(name="met", type="real")],
        output=cs.Variable(name="weight", type="real"),
        data=cs.Binning(
            nodetype="binning", input="met", edges=MET_EDGES, content=MET_SF, flow="clamp"
        ),
    )
    path = tmp_path_factory.mktemp("sf") / "sf.json"
    cset = cs.CorrectionSet(schema_version=2, corrections=[btag, met])
    path.write_text(cset.model_dump_json(exclude_unset=True))
    return path


@pytest.fixture(scope="module")
def ntuple(tmp_path_factory):
    rng = np.random.default_rng(21)
    n = 300
    jets = random_jets(rng, n)
    branches = {
        "run": np.ones(n, dtype=np.uint32),
        "luminosityBlock": np.ones(n, dtype=np.uint32),
        "event": np.arange(n, dtype=np.uint64),
        "Jet_pt": jets["pt"],
        "Jet_eta": jets["eta"],
        "Jet_phi": jets["phi"],
        "Jet_mass": jets["mass"],
        "Jet_btagDeepB": jets["btag"],
        "MET_pt": 100 + rng.exponential(80, n),
        "MET_phi": rng.uniform(-np.pi, np.pi, n),
        "genWeight": rng.choice([-1.0, 1.0], n, p=[0.1, 0.9]),
        "SoftActivityJetNjets5": rng.integers(0, 6, n).astype(np.int32),
    }
    path = tmp_path_factory.mktemp("nt") / "nano.root"
    toy.write_tree(path, branches)
    return path, branches, jets


def _layout(sf_file, jets: str = "pair", **over) -> dict:  # type: ignore[no-untyped-def]
    btag = {
        "file": str(sf_file),
        "correction": "btag_sf",
        "name": "btag",
        "scope": "jet",
        "jets": jets,
        "inputs": {"pt": "pt", "abseta": "abs(eta)"},
        "systematic": {"input": "systematic", "nominal": "central", "up": "up", "down": "down"},
    }
    btag.update(over)
    trig = {
        "file": str(sf_file),
        "correction": "met_trigger",
        "scope": "event",
        "inputs": {"met": "met_pt"},
    }
    cfg = copy.deepcopy(CFG)
    cfg["samples"]["layouts"]["x"] = {
        **CFG["samples"]["layouts"]["nanoaod"],
        "jet_eta_max": 2.4,
        "corrections": [btag, trig],
    }
    return config.validate(cfg)["samples"]["layouts"]["x"]


def _cache(path, layout, is_mc=True):  # type: ignore[no-untyped-def]
    return cache.cache_file(
        str(path),
        sample="s",
        is_mc=is_mc,
        layout=layout,
        preselection="pt_jj > 0",
        regions={"all": "met_pt >= 0"},
        chunk_size=120,
    )


@pytest.mark.parametrize("jets", ["pair", "selected"])
def test_weights_equal_a_hand_computation(sf_file, ntuple, jets):
    path, br, jet_arrays = ntuple
    frame, stats = _cache(path, _layout(sf_file, jets))
    assert stats["sum_gen_weight"] == pytest.approx(float(br["genWeight"].sum()))  # before SFs
    want = {"central": [], "up": [], "down": []}
    trig, rows = [], []
    for i in range(len(br["event"])):
        got = _pair_and_add(jet_arrays, i, "btag", pt_min=30.0, eta_max=2.4)
        if got is None:
            continue
        pair, _ = got
        if jets == "pair":
            used = [(j[0], j[1]) for j in pair]
        else:
            all_sel = [
                (p, e)
                for p, e in zip(jet_arrays["pt"][i], jet_arrays["eta"][i], strict=True)
                if p > 30.0 and abs(e) < 2.4
            ]
            used = all_sel
        for syst in want:
            want[syst].append(np.prod([_sf(p, abs(e), syst) for p, e in used]))
        rows.append(i)
    rows = np.array(rows)
    assert len(rows) == len(frame) > 0
    for row in frame.itertuples():
        trig.append(_met_sf(float(np.float32(row.met_pt))))
    nominal = np.array(want["central"]) * np.array(trig)
    np.testing.assert_allclose(frame["gen_weight"], br["genWeight"][rows] * nominal, rtol=1e-6)
    for syst, col in (("up", "weight_btagUp"), ("down", "weight_btagDown")):
        np.testing.assert_allclose(
            frame[col], np.array(want[syst]) / np.array(want["central"]), rtol=1e-6
        )
    assert "weight_met_triggerUp" not in frame  # no systematic: no variation columns


def test_flat_layout_with_corrections(sf_file):
    ev = toy.generate_mc_file("TT", 2000, toy.derive_seed(8, "TT", 0), 0)
    flat = CFG["samples"]["layouts"]["flat"]
    layout = {**flat, "corrections": [_layout(sf_file)["corrections"][0]]}
    frame = cache._process_chunk(
        ev, "flat", layout, True, "genWeight", "pt_jj > 0", {"a": "met_pt >= 0"},
        {"n_read": 0, "sum_gen_weight": 0.0, "n_pair": 0, "n_nan_dropped": 0}, "drop", "toy",
    )  # fmt: skip
    sf = np.array(
        [
            _sf(p1, abs(e1), "central") * _sf(p2, abs(e2), "central")
            for p1, e1, p2, e2 in zip(
                ev["Jet1_pt"], ev["Jet1_eta"], ev["Jet2_pt"], ev["Jet2_eta"], strict=True
            )
        ]
    )
    rows = frame["event"].to_numpy().astype(int) - 1  # toy event numbers start at 1
    assert len(rows) > 0
    np.testing.assert_allclose(frame["gen_weight"], (ev["genWeight"] * sf)[rows], rtol=1e-6)
    assert {"weight_btagUp", "weight_btagDown"} <= set(frame.columns)


def test_data_gets_no_corrections(sf_file, ntuple):
    path, _, _ = ntuple
    frame, _ = _cache(path, _layout(sf_file), is_mc=False)
    assert (frame["gen_weight"] == 1).all() and "weight_btagUp" not in frame


def test_errors_name_the_file(sf_file, ntuple, tmp_path):
    path, _, _ = ntuple
    layout = _layout(sf_file)
    missing = tmp_path / "nope.json"
    layout["corrections"][0]["file"] = str(missing)
    with pytest.raises(InputError, match=rf"correction file not found: {missing}"):
        _cache(path, layout)
    layout = _layout(sf_file, correction="btag_SF")
    with pytest.raises(
        ConfigError, match=rf"correction 'btag_SF' not in {sf_file}.*holds: btag_sf, met_trigger"
    ):
        _cache(path, layout)
    layout = _layout(sf_file, inputs={"pt": "ptt", "abseta": "abs(eta)"})
    with pytest.raises(InputError, match=rf"input column 'ptt'.*branch of {path}.*pt"):
        _cache(path, layout)
    layout = _layout(sf_file, inputs={"pt": "pt"})
    with pytest.raises(ConfigError, match=rf"btag_sf' of {sf_file} needs the input 'abseta'"):
        _cache(path, layout)


def test_selected_product_is_empty_safe(sf_file, ntuple):
    path, _, _ = ntuple
    frame, _ = _cache(path, _layout(sf_file, "all"))
    assert np.isfinite(frame["gen_weight"]).all()


def test_string_inputs_are_literals(tmp_path, ntuple):
    """A string input other than the systematic one is a literal, not a column."""
    wp = cs.Correction(
        name="wp_sf",
        version=1,
        inputs=[cs.Variable(name="wp", type="string"), cs.Variable(name="pt", type="real")],
        output=cs.Variable(name="weight", type="real"),
        data=cs.Category(
            nodetype="category",
            input="wp",
            content=[cs.CategoryItem(key="M", value=1.5), cs.CategoryItem(key="T", value=2.0)],
        ),
    )
    path = tmp_path / "wp.json.gz"
    import gzip

    cset = cs.CorrectionSet(schema_version=2, corrections=[wp])
    path.write_bytes(gzip.compress(cset.model_dump_json(exclude_unset=True).encode()))
    spec = {"file": str(path), "correction": "wp_sf", "scope": "event", "inputs": {"wp": "T"}}
    spec["inputs"]["pt"] = "j1_pt"
    layout = {**CFG["samples"]["layouts"]["nanoaod"], "corrections": [spec]}
    nt, br, _ = ntuple
    frame, _ = _cache(nt, layout)
    rows = frame["event"].to_numpy().astype(int)
    np.testing.assert_allclose(frame["gen_weight"], 2.0 * br["genWeight"][rows])
