"""The shared training engine and the decorrelated classifier methods."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import REPO

from vhbb import config
from vhbb.config.models import method_names, resolve_model
from vhbb.core.errors import ConfigError, InputError, VhbbError
from vhbb.ml import engine, methods, train
from vhbb.stats.metrics import ks_distance

torch = pytest.importorskip("torch")

CFG = config.load_config([REPO / "config" / "config.yaml"])
ROLES = {p: v["role"] for p, v in CFG["samples"]["processes"].items()}


@pytest.fixture(scope="module")
def sr_data(toy_sr_export):
    return toy_sr_export


def _spec(method: str, **over):  # type: ignore[no-untyped-def]
    name = {"none": "nn_massless"}.get(method, method)
    name = {"disco_then_adversarial": "disco_adversarial"}.get(name, name)
    spec = resolve_model(CFG["models"], name)
    spec.update(epochs=8, lr=0.005, batch_size=1024, layers=[64, 64], checkpoint_every=1)
    spec["adversary"].update(pretrain_clf_epochs=2, pretrain_adv_epochs=2)
    spec["systematic"].update(pretrain_clf_epochs=2, pretrain_adv_epochs=1)
    spec["disco"] = dict(spec["disco"], **{"lambda": 5.0})
    spec.update(over)
    return spec


def _fit(sr_data, spec, **kw):  # type: ignore[no-untyped-def]
    data, names, mean, std = sr_data
    return train.build_and_train(
        spec, data, feature_names=names, mean=mean, std=std, fold=0, seed=3, progress=False, **kw
    )


def _out_of_fold_dcor(sr_data, clf) -> float:  # type: ignore[no-untyped-def]
    from vhbb.stats.metrics import distance_correlation_sq

    data = sr_data[0]
    sel = (data["fold"] == 0) & (data["decorr_weight"] > 0)
    score = train.predict(clf, data["x"][sel])
    return distance_correlation_sq(data["m_jj"][sel], score, data["decorr_weight"][sel])


@pytest.fixture(scope="module")
def baseline(sr_data):
    clf, hist = _fit(sr_data, _spec("none"))
    return clf, hist, _out_of_fold_dcor(sr_data, clf)


def test_massless_baseline_sculpts(baseline):
    _, hist, dcor = baseline
    assert hist["epochs"][-1]["val/auc"] > 0.85
    assert dcor > 0.1, "a mass-less classifier still learns m_jj through its correlated inputs"


@pytest.mark.parametrize("method", ["disco", "adversarial", "disco_then_adversarial"])
def test_decorrelation_lowers_dcor(sr_data, baseline, method):
    clf, hist = _fit(sr_data, _spec(method))
    dcor = _out_of_fold_dcor(sr_data, clf)
    assert dcor < 0.6 * baseline[2], (method, dcor, baseline[2])
    assert hist["epochs"][-1]["val/auc"] > 0.7
    assert not hist["collapsed"]
    phases = [e["phase"] for e in hist["epochs"]]
    if "adversarial" in method:
        assert phases[-1] == "joint" and "adversary" in phases


def test_systematic_adversary_lowers_jes_score_shift(sr_data, baseline):
    spec = _spec("systematic_adversary", epochs=4)
    spec["systematic"]["lambda"] = 20.0
    _clf, hist = _fit(sr_data, spec)
    shift = hist["epochs"][-1]["val/sys_score_shift"]
    assert shift < baseline[1]["epochs"][-1]["val/sys_score_shift"]


def test_systematic_inputs_draw_every_jes_variation(sr_data):
    """x_var takes each event's input under one JES variation, every source and side (6 for
    the toy's three sources) drawn alike, seeded; with one source, the former up/down coin."""
    data = sr_data[0]
    keys = train.jes_input_keys(data)
    sides = ("Up", "Down")
    assert keys == [f"x_jes_{s}{d}" for s in ("absolute", "pt", "flavour") for d in sides]
    mask = np.zeros(len(data["x"]), bool)
    mask[::3] = True
    kw = {"device": "cpu", "scales": {"m": (0.0, 1.0), "pt": (0.0, 1.0)}, "seed": 4}
    out = train.batch_tensors(data, mask, with_variations=True, **kw)
    x_var = out["x_var"].numpy()
    rows = np.flatnonzero(mask)
    hit = np.array([np.all(x_var == data[k][rows], axis=1) for k in keys])  # (6, N)
    assert hit.any(axis=0).all()
    # the variation drawn per event (the first match: varied inputs can coincide)
    pick = np.argmax(hit, axis=0)
    share = np.bincount(pick, minlength=len(keys)) / len(pick)
    assert share.min() > 0.12 and share.max() < 0.21, share
    again = train.batch_tensors(data, mask, with_variations=True, **kw)["x_var"].numpy()
    np.testing.assert_array_equal(x_var, again)
    assert "x_var" not in train.batch_tensors(data, mask, with_variations=False, **kw)
    one = {k: v for k, v in data.items() if not k.startswith("x_jes") or "absolute" in k}
    x_one = train.batch_tensors(one, mask, with_variations=True, **kw)["x_var"].numpy()
    up = np.random.default_rng(4 + 17).random(len(rows)) < 0.5
    want = np.where(up[:, None], one["x_jes_absoluteUp"][rows], one["x_jes_absoluteDown"][rows])
    np.testing.assert_array_equal(x_one, want)


def test_domain_adaptation_lowers_data_mc_ks(sr_data):
    """Domain data: MC and 'data' differing in one input (soft activity, scaled by 1.4)."""
    data, names, _, _ = sr_data
    rng = np.random.default_rng(5)
    idx = rng.choice(len(data["x"]), 20_000, replace=False)
    x_mc = data["x"][idx[:10_000]]
    x_data = data["x"][idx[10_000:]].copy()
    sa = names.index("soft_activity")
    x_data[:, sa] = rng.poisson(1.4 * np.maximum(x_data[:, sa], 0.1))
    domain = {
        "x": np.concatenate([x_mc, x_data]),
        "is_data": np.r_[np.zeros(10_000, bool), np.ones(10_000, bool)],
        "weight": np.ones(20_000),
    }
    spec_none = _spec("none")
    spec_da = _spec("domain_adaptation", epochs=6)
    spec_da["domain"].update({"lambda": 3.0, "pretrain_epochs": 1, "every": 2, "batch_size": 512})
    spec_none["exclude_features"] = spec_da["exclude_features"]
    _, hist_da = _fit(sr_data, spec_da, domain=domain)
    clf_none, _ = _fit(sr_data, spec_none)
    s = train.predict(clf_none, domain["x"])
    d = domain["is_data"]
    ks_none = ks_distance(s[d], np.ones(d.sum()), s[~d], np.ones((~d).sum()))
    assert hist_da["epochs"][-1]["val/data_mc_ks"] < ks_none


def test_deterministic_on_cpu(sr_data):
    spec = _spec("disco", epochs=2)
    a, _ = _fit(sr_data, spec)
    b, _ = _fit(sr_data, spec)
    x = sr_data[0]["x"][:2000]
    np.testing.assert_array_equal(train.predict(a, x), train.predict(b, x))


def test_resume_equals_uninterrupted(sr_data, tmp_path):
    """Interrupt a run after epoch 3 (an exception at the 4th validation), resume from the
    checkpoint: the model equals an uninterrupted run's, bit for bit (CPU).  Every epoch is
    validated here (``validate_every: 1``), so the 4th validation is the 4th epoch."""
    spec = _spec("adversarial", epochs=2, validate_every=1)
    full, _ = _fit(sr_data, spec)
    ckpt = tmp_path / "ckpt"
    calls = {"n": 0}
    original = train.build_and_train

    class Stop(Exception):
        pass

    def stop_after_three(*args, **kwargs):  # type: ignore[no-untyped-def]
        real_train = engine.train

        def wrapped(*a, **k):  # type: ignore[no-untyped-def]
            validate = k["validate"]

            def v():  # type: ignore[no-untyped-def]
                calls["n"] += 1
                if calls["n"] == 4:
                    raise Stop
                return validate()

            k["validate"] = v
            return real_train(*a, **k)

        engine.train = wrapped
        try:
            return original(*args, **kwargs)
        finally:
            engine.train = real_train

    with pytest.raises(Stop):
        stop_after_three(
            spec, sr_data[0], feature_names=sr_data[1], mean=sr_data[2], std=sr_data[3],
            fold=0, seed=3, progress=False, checkpoint_dir=ckpt,
        )  # fmt: skip
    state = torch.load(ckpt / "last.pt", weights_only=False)
    assert state["epoch"] == 3
    resumed, hist = _fit(sr_data, spec, checkpoint_dir=ckpt)
    assert len(hist["epochs"]) == 2 + 2 + 2
    for (ka, va), (kb, vb) in zip(
        full.state_dict().items(), resumed.state_dict().items(), strict=True
    ):
        assert ka == kb
        assert torch.equal(va, vb), ka


def test_nan_loss_stops_naming_epoch_and_term(tmp_path):
    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    data = {"train": {"x": torch.randn(64, 2)}}
    epoch = {"n": 0}

    def objective(nets, b):  # type: ignore[no-untyped-def]
        loss = nets["net"](b["x"]).pow(2).mean()
        bad = loss * (math.inf if epoch["n"] >= 2 else 1.0)
        return {"total": loss, "penalty": bad}

    def validate():  # type: ignore[no-untyped-def]
        epoch["n"] += 1
        return {}

    phase = engine.Phase("main", 5, [engine.Step("net", objective)], {"net": 0.1})
    with pytest.raises(engine.TrainingError, match=r"epoch 3 .*net/penalty"):
        engine.train(
            {"net": net}, {"net": opt}, data, [phase], batch_size=16, seed=0,
            validate=validate, checkpoint_dir=tmp_path, progress=False,
        )  # fmt: skip
    assert torch.load(tmp_path / "last.pt", weights_only=False)["epoch"] == 2


def test_batches_without_nonresonant_background_skip_the_term(sr_data):
    data = dict(sr_data[0])
    data["decorr_weight"] = np.zeros_like(data["decorr_weight"])
    _clf, hist = train.build_and_train(
        _spec("disco", epochs=1), data, feature_names=sr_data[1], mean=sr_data[2],
        std=sr_data[3], fold=0, seed=1, progress=False,
    )  # fmt: skip
    last = hist["epochs"][-1]
    assert last["clf/skipped_batches"] == 1.0 and last["clf/disco"] == 0.0


def test_collapse_is_flagged(sr_data):
    data = dict(sr_data[0])
    data["x"] = np.ones_like(data["x"])  # no information: the score is one value
    _, hist = train.build_and_train(
        _spec("none", epochs=1), data, feature_names=sr_data[1], mean=sr_data[2],
        std=sr_data[3], fold=0, seed=1, progress=False,
    )  # fmt: skip
    assert hist["collapsed"] is True


def test_every_schema_method_is_registered_and_nothing_else():
    assert set(methods.names()) == set(method_names())
    with pytest.raises(ConfigError, match="unknown training method 'magic'"):
        methods.get("magic")


def test_a_new_method_is_one_registered_build_function(sr_data):
    """The driver and the engine know no method by name: a method registered here trains."""
    from vhbb.ml.methods.base import Plan, classifier_phase

    @methods.register("test_only_two_phases")
    def build(ctx):  # type: ignore[no-untyped-def]
        plan = Plan.classifier(ctx)
        plan.phases = [classifier_phase(ctx, 1, "first"), classifier_phase(ctx, 1, "second")]
        plan.metrics.append(lambda: {"val/extra": 1.0})
        return plan

    try:
        _, hist = _fit(sr_data, {**_spec("none"), "method": "test_only_two_phases"})
    finally:
        methods._REGISTRY.pop("test_only_two_phases")
    assert [e["phase"] for e in hist["epochs"]] == ["first", "second"]
    assert hist["method"] == "test_only_two_phases" and hist["epochs"][-1]["val/extra"] == 1.0


def test_domain_inputs_need_a_scale_factor_result(tmp_path):
    spec = {"method": "domain_adaptation"}
    assert train.domain_inputs({"method": "disco"}, [], None, 0) is None
    with pytest.raises(ConfigError, match="needs the control-region scale factors"):
        train.domain_inputs(spec, [], None, 0)
    bad = tmp_path / "scale_factors.json"
    bad.write_text(json.dumps({"scale_factors": {"TT": 1.1}}))
    with pytest.raises(InputError, match="not a scale-factor fit result"):
        train.domain_inputs(spec, [], bad, 0)


def test_unknown_method_and_preset():
    models = {
        "presets": {"p": {"layers": [4]}},
        "list": {"a": {"preset": "p", "method": "magic"}, "b": {"preset": "q", "method": "none"}},
    }
    with pytest.raises(VhbbError, match="unknown method 'magic'"):
        resolve_model(models, "a")
    with pytest.raises(VhbbError, match=r"unknown (or circular )?preset 'q'"):
        resolve_model(models, "b")


def test_checkpoint_and_onnx_round_trip(sr_data, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    clf, _ = _fit(sr_data, _spec("none", epochs=1))
    names = sr_data[1]
    train.save_model(clf, tmp_path / "model.pt", _spec("none"), names)
    train.export_onnx(clf, tmp_path / "model.onnx", names)
    loaded = train.load_model(tmp_path / "model.pt")  # weights_only=True inside
    x = sr_data[0]["x"][:5000]
    ref = train.predict(clf, x)
    np.testing.assert_array_equal(train.predict(loaded, x), ref)
    sess = ort.InferenceSession(str(tmp_path / "model.onnx"))
    out = sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0]
    np.testing.assert_allclose(out.reshape(-1), ref, atol=1e-5)
    meta = sess.get_modelmeta().custom_metadata_map
    assert json.loads(meta["feature_names"]) == names
    assert "m_jj" not in json.loads(meta["used_features"])
    # one self-contained file, nothing else left beside it (no hidden *.data / *.tmp litter)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.pt"]


def test_onnx_of_other_layers_takes_torchs_exporter(sr_data, tmp_path):
    """A layer the hand-built graph does not know (Tanh) goes through torch.onnx.export."""
    import torch

    ort = pytest.importorskip("onnxruntime")
    clf, _ = _fit(sr_data, _spec("none", epochs=1))
    clf.body[1] = torch.nn.Tanh()
    names = sr_data[1]
    assert train.onnx_graph(clf, names) is None
    train.export_onnx(clf, tmp_path / "model.onnx", names)
    x = sr_data[0]["x"][:2000]
    sess = ort.InferenceSession(str(tmp_path / "model.onnx"))
    out = sess.run(None, {"features": x.astype(np.float32)})[0]
    np.testing.assert_allclose(out.reshape(-1), train.predict(clf, x), atol=1e-5)
    assert json.loads(sess.get_modelmeta().custom_metadata_map["feature_names"]) == names
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_validation_subsets_are_uniform_draws_not_the_first_events():
    """The export groups events by process; the per-epoch dCor and JES score shift use seeded
    uniform draws of the validation events (before: the first N non-resonant events, in the
    default SR nearly all Zhf).  Values equal the estimators on the drawn rows."""
    from vhbb.ml.networks import Classifier
    from vhbb.stats.disco import distance_corr_sq_values

    rng = np.random.default_rng(5)
    n, nf = 6000, 4
    block = np.repeat([0, 1, 2], n // 3)  # 'processes' in file order; block 0: resonant
    x = rng.normal(size=(n, nf)).astype(np.float32) + block[:, None].astype(np.float32)
    val = {
        "x": torch.as_tensor(x),
        "y": torch.as_tensor((block == 0).astype(np.float32)),
        "w": torch.ones(n),
        "dw": torch.as_tensor((block > 0).astype(np.float32)),
        "m": torch.as_tensor(rng.normal(size=n).astype(np.float32)),
        "x_var": torch.as_tensor(x * 1.05),
        "pw": torch.as_tensor(rng.uniform(0.5, 1.5, n).astype(np.float32)),
    }
    torch.manual_seed(0)
    clf = Classifier(nf, range(nf), [0.0] * nf, [1.0] * nf, [16], 0.0).eval()
    spec = {"validation_dcor_events": 1000, "validation_sys_events": 900, "collapse_threshold": 0}
    with torch.no_grad():
        out = train.validator(spec, clf, val, seed=7)()
        score = torch.sigmoid(clf(val["x"])).numpy()
        s_var = torch.sigmoid(clf(val["x_var"])).numpy()
    draw = np.random.default_rng(7 + 23)
    rows = np.sort(draw.choice(np.flatnonzero(block > 0), size=1000, replace=False))
    assert 0.4 < np.mean(block[rows] == 1) < 0.6  # both non-resonant blocks, not the first only
    wn = torch.ones(len(rows)) * 1.0
    want = distance_corr_sq_values(val["m"][rows], torch.as_tensor(score[rows]), wn)[0]
    assert out["val/dcor_mjj"] == pytest.approx(float(want), rel=1e-5)
    sys_rows = np.sort(draw.choice(n, size=900, replace=False))
    pw = val["pw"].numpy()[sys_rows]
    shift = np.sum(pw * np.abs(score[sys_rows] - s_var[sys_rows])) / pw.sum()
    assert out["val/sys_score_shift"] == pytest.approx(float(shift), rel=1e-5)
    again = train.validator(spec, clf, val, seed=7)
    with torch.no_grad():
        assert again() == out  # the same draw: reproducible
