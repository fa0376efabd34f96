"""Combine export round trip: parse the card, read the shapes back with uproot, compare exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vhbb.fit.combine import parse_datacard, read_shapes, write_datacard
from vhbb.stats import likelihood as lk


def _constrained(model: lk.Model) -> lk.Model:
    names = ["sf_TT", "sf_Zhf", "sf_Zlf"]
    cov = np.array([[0.01, 0.002, 0.0], [0.002, 0.02, -0.001], [0.0, -0.001, 0.005]])
    centre = np.array([model.init[model.index(n)] for n in names])
    nominal = {p: model.nominal[k] for k, p in enumerate(model.processes)}
    sumw2 = {p: model.sumw2[k] for k, p in enumerate(model.processes)}
    # two JES sources as the chain names them: the toy model's jes and a pT-like tilt
    jes = {
        p: (model.nominal[k] + model.histo_up[0, k], model.nominal[k] - model.histo_down[0, k])
        for k, p in enumerate(model.processes)
    }
    tilt = np.linspace(-0.02, 0.04, model.n_bins)
    jes_pt = {
        p: (model.nominal[k] * (1 + tilt), model.nominal[k] * (1 - 0.8 * tilt))
        for k, p in enumerate(model.processes)
    }
    return lk.make_model(
        {ch.name: ch.n_bins for ch in model.channels},
        nominal,
        sumw2=sumw2,
        norm_factors={
            "mu": lk.NormFactor(("ZH",), 1.0, (-20, 20)),
            **{n: lk.NormFactor((n[3:],), c, (0, 10)) for n, c in zip(names, centre, strict=True)},
        },
        histosys={"jes_absolute": jes, "jes_pt": jes_pt},
        normsys={"lumi": {"ZH": (1 / 1.025, 1.025)}, "xs_VZ": {"VZ": (0.9, 1.12)}},
        stat="profile",
        gauss=(names, centre, cov),
        stat_scale={n[3:]: c for n, c in zip(names, centre, strict=True)},
    )


@pytest.mark.parametrize("kind", ["simultaneous", "fixed", "constrained"])
def test_round_trip(tmp_path, kind):
    model, asimov = lk.toy_model(4, 3, stat="profile", jes_asymmetry=0.03)
    if kind == "fixed":
        model = model.with_fixed({"sf_TT": 1.08, "sf_Zhf": 1.22, "sf_Zlf": 0.91})
    elif kind == "constrained":
        model = _constrained(model)
        asimov = lk.asimov(model)
    observed = np.round(asimov * 1.02)
    summary = write_datacard(model, observed, tmp_path, signal=["ZH"])
    card = parse_datacard(tmp_path / "datacard.txt")
    shapes = read_shapes(card, tmp_path)

    # header and blocks
    assert card["imax"] == len(model.channels) and card["kmax"] == "*"
    assert card["jmax"] == len(model.processes) - 1
    assert card["shapes"][0]["nominal"] == "$CHANNEL/$PROCESS"
    assert card["shapes"][0]["systematic"] == "$CHANNEL/$PROCESS_$SYSTEMATIC"
    assert card["channels"] == [ch.name for ch in model.channels]
    assert all(r == -1 for r in card["rate"])
    assert {c["process"] for c in card["columns"]} == set(model.processes)
    assert all((c["index"] <= 0) == (c["process"] == "ZH") for c in card["columns"])
    assert card["auto_mc_stats"] == [{"channel": "*", "args": ["0", "1", "1"]}]
    for k, ch in enumerate(model.channels):
        assert card["observation"][k] == observed[ch.start : ch.stop].sum()

    # scale of the nominal yields: fixed / Gaussian-constrained factors are folded in
    scale = {p: 1.0 for p in model.processes}
    for p in ("TT", "Zhf", "Zlf"):
        i = model.index(f"sf_{p}")
        if model.fixed[i] or kind == "constrained":
            scale[p] = float(model.init[i])
    for col in card["columns"]:
        ch = model.channel(col["channel"])
        p_i = model.processes.index(col["process"])
        sl = slice(ch.start, ch.stop)
        values, variances = shapes[ch.name][col["process"]]
        s = scale[col["process"]]
        np.testing.assert_array_equal(values, model.nominal[p_i, sl] * s)
        np.testing.assert_array_equal(variances, model.sumw2[p_i, sl] * s**2)
        shape_names = [model.names[int(i)] for i in model.histo_index]
        want = ["jes_absolute", "jes_pt"] if kind == "constrained" else ["jes"]
        assert shape_names == want
        for h, name in enumerate(shape_names):  # every JES source: its own shape line
            assert card["systematics"][name]["type"] == "shape"
            up, _ = shapes[ch.name][f"{col['process']}_{name}Up"]
            down, _ = shapes[ch.name][f"{col['process']}_{name}Down"]
            np.testing.assert_array_equal(
                up, (model.nominal[p_i, sl] + model.histo_up[h, p_i, sl]) * s
            )
            np.testing.assert_array_equal(
                down, (model.nominal[p_i, sl] - model.histo_down[h, p_i, sl]) * s
            )
    for ch in model.channels:
        np.testing.assert_array_equal(shapes[ch.name]["data_obs"][0], observed[ch.start : ch.stop])

    # lnN values equal the model's factors
    for j, i in enumerate(model.normsys_index):
        entries = card["systematics"][model.names[int(i)]]
        assert entries["type"] == "lnN"
        for col, value in zip(card["columns"], entries["values"], strict=True):
            p_i = model.processes.index(col["process"])
            lo, hi = math.exp(model.normsys_log_lo[j, p_i]), math.exp(model.normsys_log_hi[j, p_i])
            if model.normsys_log_hi[j, p_i] == 0 and model.normsys_log_lo[j, p_i] == 0:
                assert value == "-"
            elif "/" in value:
                a, b = (float(v) for v in value.split("/"))
                assert a == pytest.approx(lo, rel=1e-5) and b == pytest.approx(hi, rel=1e-5)
            else:
                assert float(value) == pytest.approx(hi, rel=1e-5)

    # free scale factors are rateParams (simultaneous only)
    if kind == "simultaneous":
        assert set(card["rate_params"]) == {"sf_TT", "sf_Zhf", "sf_Zlf"}
        tt = card["rate_params"]["sf_TT"][0]
        assert tt["process"] == "TT" and tt["init"] == pytest.approx(1.08)
        assert tt["range"] == (0.0, 10.0)
    else:
        assert card["rate_params"] == {}
    if kind == "constrained":
        assert {f"sf_eig{j}" for j in range(3)} <= set(card["systematics"])
    assert summary["signal"] == ["ZH"]


def test_parser_rejects_bad_card(tmp_path):
    model, asimov = lk.toy_model(2, 2, stat="profile")
    write_datacard(model, asimov, tmp_path, signal=["ZH"])
    text = (tmp_path / "datacard.txt").read_text().replace("lumi lnN", "lumi lnN 1.1")
    (tmp_path / "bad.txt").write_text(text)
    with pytest.raises(ValueError, match="wrong number of entries"):
        parse_datacard(tmp_path / "bad.txt")
