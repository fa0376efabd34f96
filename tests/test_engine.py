"""The engine's early stopping (best-epoch restore, resume), and its safe checkpoints."""

from __future__ import annotations

import pathlib

import pytest

from vhbb.core.errors import ConfigError
from vhbb.ml import engine

torch = pytest.importorskip("torch")

# a validation objective with its minimum at epoch 4, then rising (over-training)
CURVE = {e: (e - 4) ** 2 + 1.0 for e in range(1, 100)}


def setup(seed: int = 0):  # type: ignore[no-untyped-def]
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    opt = engine.make_optimizer(list(net.parameters()), "adam", 0.01)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 3, generator=g)
    data = {"train": {"x": x, "y": (x[:, 0] > 0).float()}}

    def objective(nets, b):  # type: ignore[no-untyped-def]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            nets["net"](b["x"]).squeeze(-1), b["y"]
        )
        return {"total": loss}

    phases = [engine.Phase("main", 30, [engine.Step("net", objective)], {"net": 0.01})]
    return {"net": net}, {"net": opt}, data, phases


def run(tmp=None, validate=None, every=1):  # type: ignore[no-untyped-def]
    nets, opts, data, phases = setup()
    snapshots = {}

    def v():  # type: ignore[no-untyped-def]
        epoch = len(snapshots) + 1
        snapshots[epoch] = {k: t.clone() for k, t in nets["net"].state_dict().items()}
        return {"val/bce": CURVE[epoch]} if validate is None else validate(epoch)

    rule = engine.EarlyStopping(objective=lambda e: e["val/bce"], patience=3, min_delta=0.0)
    hist = engine.train(
        nets, opts, data, phases, batch_size=64, seed=5, validate=v, checkpoint_dir=tmp,
        checkpoint_every=every, early_stopping=rule, progress=False,
    )  # fmt: skip
    return nets["net"], hist, snapshots


def test_early_stopping_stops_and_restores_the_best_epoch():
    net, hist, snaps = run()
    assert hist.best_epoch == 4 and hist.stop_epoch == 7 < hist.max_epochs == 30
    assert "early stopping at epoch 7" in hist.stopped and "best epoch 4" in hist.stopped
    for k, t in net.state_dict().items():
        assert torch.equal(t, snaps[4][k])
    assert [e["val/objective"] for e in hist.epochs] == [CURVE[e] for e in range(1, 8)]


def test_no_stop_restores_the_best_and_says_maximum_reached():
    nets, opts, data, phases = setup()
    phases[0].epochs = 3
    rule = engine.EarlyStopping(objective=lambda e: -e["epoch"], patience=2)
    hist = engine.train(nets, opts, data, phases, batch_size=64, seed=5,
                        validate=lambda: {}, early_stopping=rule, progress=False)  # fmt: skip
    assert hist.best_epoch == 3 and hist.stop_epoch == 3
    assert hist.stopped.startswith("maximum epochs reached")


def test_min_epochs_keeps_the_warm_up_out_of_the_best_and_the_stop():
    """An objective lowest in the first epochs (a nearly constant score has dCor ~ 0): with
    min_epochs 6 the restored epoch is the best one from epoch 6 on, never epoch 1-5."""
    nets, opts, data, phases = setup()
    curve = {e: 1.0 / e if e >= 8 else 0.1 * e for e in range(1, 100)}  # min at 1, then at 8+
    snaps = {}

    def v():  # type: ignore[no-untyped-def]
        epoch = len(snaps) + 1
        snaps[epoch] = {k: t.clone() for k, t in nets["net"].state_dict().items()}
        return {"val/bce": curve[epoch] if epoch < 12 else 1.0}

    rule = engine.EarlyStopping(objective=lambda e: e["val/bce"], patience=3, min_epochs=6)
    hist = engine.train(nets, opts, data, phases, batch_size=64, seed=5, validate=v,
                        early_stopping=rule, progress=False)  # fmt: skip
    assert hist.best_epoch == 11 and hist.stop_epoch == 14
    for k, t in nets["net"].state_dict().items():
        assert torch.equal(t, snaps[11][k])
    # without the warm-up, epoch 1 is restored and the training stops at epoch 4
    nets, opts, data, phases = setup()
    snaps.clear()
    rule = engine.EarlyStopping(objective=lambda e: e["val/bce"], patience=3)
    hist = engine.train(nets, opts, data, phases, batch_size=64, seed=5, validate=v,
                        early_stopping=rule, progress=False)  # fmt: skip
    assert hist.best_epoch == 1 and hist.stop_epoch == 4
    with pytest.raises(ValueError, match="min_epochs"):
        engine.EarlyStopping(objective=lambda e: 0.0, min_epochs=-1)


class Killed(Exception):
    pass


@pytest.mark.parametrize("kill_at", [3, 6, 7])
def test_killed_and_resumed_training_gives_the_identical_result(tmp_path, kill_at):
    """Killed after epoch ``kill_at - 1`` (before, inside and at the end of the patience)."""
    ref, ref_hist, _ = run()

    def dies(epoch):  # type: ignore[no-untyped-def]
        if epoch == kill_at:
            raise Killed
        return {"val/bce": CURVE[epoch]}

    with pytest.raises(Killed):
        run(tmp_path, validate=dies)
    # the resumed run's validation counter restarts: index the curve by the history instead
    nets, opts, data, phases = setup()

    def v_resumed():  # type: ignore[no-untyped-def]
        return {}

    rule = engine.EarlyStopping(objective=lambda e: CURVE[e["epoch"]], patience=3)
    hist = engine.train(
        nets, opts, data, phases, batch_size=64, seed=5, validate=v_resumed,
        checkpoint_dir=tmp_path, early_stopping=rule, progress=False,
    )  # fmt: skip
    assert (hist.best_epoch, hist.stop_epoch) == (ref_hist.best_epoch, ref_hist.stop_epoch)
    for k, t in nets["net"].state_dict().items():
        assert torch.equal(t, ref.state_dict()[k])


def test_corrupt_checkpoint_is_discarded_and_training_completes(tmp_path, caplog):
    ref, _, _ = run()
    (tmp_path / "last.pt").write_bytes(b"\x00not a checkpoint")
    net, hist, _ = run(tmp_path)
    assert "does not load" in caplog.text and str(tmp_path / "last.pt") in caplog.text
    assert hist.stop_epoch == 7
    for k, t in net.state_dict().items():
        assert torch.equal(t, ref.state_dict()[k])


class Planted:
    """Pickled, it would create a file when unpickled without ``weights_only``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_planted_pickle_in_checkpoints_is_not_executed(tmp_path, caplog):
    marker = tmp_path / "pwned"
    ckpt_dir = tmp_path / "ckpt"
    ckpt_dir.mkdir()
    torch.save({"networks": Planted(str(marker))}, ckpt_dir / "last.pt")
    assert not marker.exists()
    _, hist, _ = run(ckpt_dir)
    assert not marker.exists(), "the planted checkpoint ran code"
    assert "does not load" in caplog.text
    assert hist.stop_epoch == 7
    # the control: the same file unpickled without weights_only would have run the code
    torch.save({"networks": Planted(str(marker))}, tmp_path / "again.pt")
    torch.load(tmp_path / "again.pt", weights_only=False)
    assert marker.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu_names_the_key():
    with pytest.raises(ConfigError, match=r"config error at 'device'.*use device: auto or cpu"):
        engine.resolve_device("cuda")
    with pytest.raises(ConfigError, match="'device'"):
        engine.resolve_device("tpu9")


def test_signed_weight_failures_are_flagged():
    from vhbb.ml.train import signed_weight_warnings

    epochs = [
        {"epoch": i, "clf/bce": b, "val/bce": v}
        for i, (b, v) in enumerate([(0.6, 0.60), (0.3, 0.61), (-0.2, 0.7), (-5.0, 2.0)], 1)
    ]
    lines = signed_weight_warnings(epochs, "raw")
    assert any("below zero from epoch 3" in x and "'raw'" in x for x in lines)
    assert any("validation loss rises" in x for x in lines)
    healthy = [
        {"epoch": i, "clf/bce": 0.6 - 0.01 * i, "val/bce": 0.6 - 0.005 * i} for i in range(6)
    ]
    assert signed_weight_warnings(healthy, "raw") == []


# ----------------------------------------------------------------------------- validation interval
def run_every(every, tmp=None, patience=3, kill_at_call=None):  # type: ignore[no-untyped-def]
    """The setup's training validated every ``every`` epochs, early stopping on ``CURVE``."""
    nets, opts, data, phases = setup()
    calls = []

    def v():  # type: ignore[no-untyped-def]
        calls.append(1)
        if kill_at_call is not None and len(calls) == kill_at_call:
            raise Killed
        return {"val/seen": float(len(calls))}

    rule = engine.EarlyStopping(objective=lambda e: CURVE[e["epoch"]], patience=patience)
    hist = engine.train(
        nets, opts, data, phases, batch_size=64, seed=5, validate=v, checkpoint_dir=tmp,
        checkpoint_every=2, early_stopping=rule, progress=False, validate_every=every,
    )  # fmt: skip
    return nets["net"], hist


def test_validation_interval_and_early_stopping_record_are_consistent():
    _, hist = run_every(3)
    validated = [e["epoch"] for e in hist.epochs if e["validated"]]
    assert validated == [3, 6]  # CURVE: 2 at epoch 3, 5 at 6 (3 epochs without improvement)
    assert all("val/seen" in e and "val/objective" in e for e in hist.epochs if e["validated"])
    assert not any(
        "val/seen" in e or "val/objective" in e for e in hist.epochs if not e["validated"]
    )
    assert (hist.best_epoch, hist.stop_epoch) == (3, 6)
    assert hist.stop_epoch - hist.best_epoch >= 3  # patience counts epochs, not validations
    assert hist.validate_every == {"main": 3} and hist.to_dict()["validate_every"] == {"main": 3}
    assert "early stopping at epoch 6" in hist.stopped and "best epoch 3" in hist.stopped
    # every epoch validated: the interval 1 is the former behaviour
    _, each = run_every(1)
    assert all(e["validated"] for e in each.epochs) and (each.best_epoch, each.stop_epoch) == (4, 7)


def test_phase_interval_overrides_and_last_epoch_of_a_phase_is_validated():
    nets, opts, data, phases = setup()
    step = phases[0].steps
    phases = [
        engine.Phase("pre", 5, step, {"net": 0.01}, validate_every=2),
        engine.Phase("main", 4, step, {"net": 0.01}),
    ]
    hist = engine.train(nets, opts, data, phases, batch_size=64, seed=5, validate=lambda: {},
                        progress=False, validate_every=3)  # fmt: skip
    assert [e["epoch"] for e in hist.epochs if e["validated"]] == [2, 4, 5, 8, 9]
    assert hist.validate_every == {"pre": 2, "main": 3}
    with pytest.raises(ValueError, match="validate_every"):
        engine.train(nets, opts, data, phases, batch_size=64, seed=5, progress=False,
                     validate_every=0)  # fmt: skip


def test_two_runs_with_the_same_seed_give_identical_weights(tmp_path):
    a, ha = run_every(2, tmp_path / "a")
    b, hb = run_every(2, tmp_path / "b")
    assert [e["epoch"] for e in ha.epochs] == [e["epoch"] for e in hb.epochs]
    for k, t in a.state_dict().items():
        assert torch.equal(t, b.state_dict()[k])


@pytest.mark.parametrize("kill_at_call", [2, 3])
def test_resume_with_a_validation_interval_equals_uninterrupted(tmp_path, kill_at_call):
    ref, ref_hist = run_every(2, patience=4)
    with pytest.raises(Killed):
        run_every(2, tmp_path, patience=4, kill_at_call=kill_at_call)
    net, hist = run_every(2, tmp_path, patience=4)
    assert (hist.best_epoch, hist.stop_epoch) == (ref_hist.best_epoch, ref_hist.stop_epoch)
    for k, t in net.state_dict().items():
        assert torch.equal(t, ref.state_dict()[k])


def test_a_batch_slices_only_what_the_objective_reads():
    seen = {}
    data = {"x": torch.arange(10.0), "y": torch.arange(10.0) * 2, "unused": torch.zeros(10)}
    batch = engine._Batch(data, torch.tensor([1, 3]))
    assert "unused" in batch and "nope" not in batch and sorted(batch) == ["unused", "x", "y"]
    seen["y"] = batch["y"]
    assert torch.equal(seen["y"], torch.tensor([2.0, 6.0])) and batch["y"] is seen["y"]
    assert set(batch._cache) == {"y"} and batch.get("nope") is None


def test_the_spec_interval_reaches_every_phase_of_a_method():
    from vhbb.ml import methods
    from vhbb.ml.methods.base import Context
    from vhbb.ml.networks import Classifier

    clf = Classifier(3, [0, 1, 2], [0.0] * 3, [1.0] * 3, [8])
    spec = {"lr": 0.01, "optimizer": "adam", "epochs": 4, "disco": {"lambda": 1.0}}
    for name in ("none", "disco"):
        plan = methods.get(name).build(Context({**spec, "validate_every": 2}, clf, "cpu"))
        assert [p.validate_every for p in plan.phases] == [2]
        plan = methods.get(name).build(Context(spec, clf, "cpu"))
        assert [p.validate_every for p in plan.phases] == [None]


def test_predict_in_cache_sized_batches_equals_one_large_batch():
    """networks.predict's CPU default (PREDICT_BATCH rows a pass) gives every row the output of
    one pass over all rows (the scores of every sample come from it)."""
    import numpy as np
    import torch

    from vhbb.ml import networks

    torch.manual_seed(3)
    net = networks.Classifier(6, [0, 2, 3, 5], [0.0] * 6, [1.0] * 6, [128, 128, 128], 0.05)
    x = np.random.default_rng(4).normal(size=(5000, 6)).astype(np.float32)
    default = networks.predict(net, x, sigmoid=True)
    assert networks.PREDICT_BATCH["cpu"] < len(x)
    whole = networks.predict(net, x, batch_size=len(x), sigmoid=True)
    np.testing.assert_allclose(default, whole, rtol=1e-6, atol=1e-7)
    assert default.dtype == np.float64 and default.shape == (5000,)


def test_cpu_dropout_is_dropout_fixed_by_the_torch_seed():
    """vhbb's CPU Dropout: drops a fraction p of the elements (binomial 5 sigma), scales the kept
    ones by 1 / keep (the mean is kept), is the identity in eval mode, is fixed by
    torch.manual_seed, and its gradient is the mask."""
    import numpy as np
    import torch

    from vhbb.ml.networks import Dropout

    p, n = 0.05, 1_000_000
    d = Dropout(p).train()
    x = torch.ones(n, requires_grad=True)
    torch.manual_seed(11)
    out = d(x)
    dropped = int((out == 0).sum())
    assert abs(dropped - p * n) < 5 * np.sqrt(n * p * (1 - p))
    keep = 1 - round(p * 65536) / 65536
    assert set(torch.unique(out).tolist()) == {0.0, float(torch.tensor(1 / keep))}
    out.sum().backward()
    assert torch.equal(x.grad, out.detach())  # d(x * mask)/dx = mask, and out = mask here
    torch.manual_seed(11)
    assert torch.equal(d(torch.ones(n)), out.detach())
    assert not torch.equal(d(torch.ones(n)), out.detach())  # the next draw differs
    y = torch.randn(50, 7)
    assert torch.equal(d.eval()(y), y)


def test_cpu_dropout_mask_is_the_documented_construction():
    """The mask is 16 bits of ``default_rng(seed).bytes(2 n)`` per element (seed drawn from
    torch's generator), kept at >= round(p 65536): written here with ``bytes`` and
    ``np.where`` (the former construction), equal bit for bit in float32 and float64, for
    element counts that are not a multiple of four."""
    import numpy as np
    import torch

    from vhbb.ml.networks import Dropout, mask_bits

    for seed, n in [(1, 7), (2**61 + 5, 4096 * 128), (99, 2048 * 64 + 3)]:
        expected = np.frombuffer(np.random.default_rng(seed).bytes(2 * n), dtype=np.uint16)
        np.testing.assert_array_equal(mask_bits(seed, n), expected)
    d = Dropout(0.1).train()
    threshold = round(0.1 * 65536)
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(301, 17, dtype=dtype)
        torch.manual_seed(5)
        got = d(x)
        torch.manual_seed(5)
        seed = int(torch.randint(0, 2**62, (1,)).item())
        bits = np.frombuffer(np.random.default_rng(seed).bytes(2 * x.numel()), dtype=np.uint16)
        scale = np.asarray(1 / (1 - threshold / 65536), dtype=x.numpy().dtype)
        mask = np.where(bits >= threshold, scale, scale.dtype.type(0)).reshape(x.shape)
        assert torch.equal(got, x * torch.from_numpy(mask))


def test_classifier_inference_path_equals_the_module_path():
    """Classifier's eval forward without autograd (addmm, in-place ReLU) gives the values of
    the module path bit for bit, for 1 and 2 threads, and the module path is the one taken in
    training or with gradients."""
    import torch

    from vhbb.ml import networks

    torch.manual_seed(7)
    net = networks.Classifier(6, [0, 2, 3, 5], [0.1] * 6, [2.0] * 6, [64, 32], 0.1).eval()
    x = torch.randn(5000, 6)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            with torch.no_grad():
                fast = net(x)
                modules = net.head(net.features(x)).squeeze(-1)
            assert torch.equal(fast, modules)
    finally:
        torch.set_num_threads(threads)
    with torch.enable_grad():
        assert net(x).requires_grad  # the module path: autograd sees it
