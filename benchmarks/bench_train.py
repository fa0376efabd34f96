"""Training throughput of the shared engine against a plain loop of the same model.

The anchor is a **plain loop** over on-device tensor slices: the classifier built by vhbb's
own :class:`vhbb.ml.networks.Classifier` (3x128 MLP, the base preset's dropout), Adam at the
preset's learning rate, batch 4096, ``x[idx], y[idx], w[idx]`` for index slices of a seeded
random permutation, the weighted cross-entropy, no validation, nothing else.

Against it, the engine's real entry point: :func:`vhbb.ml.train.build_and_train` (which calls
:func:`vhbb.ml.engine.train`) with the base preset of ``config/config.yaml`` (early stopping,
its ``validate_every``, checkpoints every ``checkpoint_every`` epochs into a scratch folder,
the validation of :func:`vhbb.ml.train.validator` on held-out events a quarter the size of
the training set, as the export's 20 % validation fraction gives), batch 4096, for ``none``,
``disco`` and ``adversarial``.  The engine's rate is training events x epochs over the wall
time of the whole ``engine.train`` call (validation, early-stopping bookkeeping, checkpoints
and the best-epoch restore included), the fastest of 2 (``--quick``) or 3 identical
trainings (a busy host's stalls are not the engine's); a warm-up call runs first.  Extra
rows validate every 4th epoch (``validate_every: 4``; the base preset validates every 2nd).

The ratio engine / plain is printed in the same run (acceptance of issue #17: >= 0.9 for
``none``, >= 0.5 for ``disco``, CPU, 2 threads).  The plain loop is timed before and after
the engine runs (each the fastest of as many blocks of as many epochs) and the ratios use
the faster of the two (the conservative ratio).  A
``DataLoader(TensorDataset)`` loop of the same model is an extra line (not with ``--quick``).
On CUDA, when present, the same rows follow with more events.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
BATCH = 4096
THREADS = int(os.environ.get("VHBB_BENCH_THREADS", "2"))  # 1: CPU-time ratios on a busy host
SEED = 1
EVERY = 4  # the validation interval of the extra rows


def _data(n_train: int, n_features: int = 15, seed: int = 0) -> dict[str, np.ndarray]:
    """Toy MC of the training region: ``n_train`` training and ``n_train / 4`` validation
    events of the fold-0 model (every event is in fold 1)."""
    n = n_train + n_train // 4
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, n_features)).astype(np.float32)
    label = (x[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(np.int64)
    m = 100 + 20 * x[:, 1] + 10 * x[:, 0]
    nonres = (label == 0) & (rng.random(n) < 0.7)
    validation = np.zeros(n, dtype=bool)
    validation[rng.permutation(n)[: n - n_train]] = True
    return {
        "x": x,
        "x_jesUp": x * 1.01,
        "x_jesDown": x * 0.99,
        "label": label,
        "loss_weight": np.ones(n),
        "decorr_weight": nonres.astype(np.float64),
        "decorr_weight_all": np.ones(n),
        "m_jj": m.astype(np.float64),
        "pt_jj": (200 + 50 * x[:, 2]).astype(np.float64),
        "fold": np.ones(n, dtype=np.int8),
        "validation": validation,
    }


def _base_preset() -> dict[str, Any]:
    import yaml

    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    return dict(cfg["models"]["presets"]["base"])


def _spec(method: str, epochs: int, **overrides: Any) -> dict[str, Any]:
    spec = _base_preset()
    spec.update(method=method, epochs=epochs, batch_size=BATCH, **overrides)
    # adversarial: straight into the joint phase (the min-max is what is timed)
    spec["adversary"] = {**spec["adversary"], "pretrain_clf_epochs": 0, "pretrain_adv_epochs": 0}
    return spec


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _engine_rate(
    method: str,
    data: dict,
    device: str,
    epochs: int,
    warm_up: bool = False,
    repeats: int = 1,
    **overrides: Any,
) -> dict[str, Any]:
    """Events/s of :func:`build_and_train`: the wall time of its ``engine.train`` call, the
    fastest of ``repeats`` identical trainings; ``warm_up``: a one-epoch call first."""
    from vhbb.ml import engine, train

    n_train = int((~data["validation"]).sum())
    nf = data["x"].shape[1]
    spent: list[float] = []
    cpu: list[float] = []
    real_train = engine.train

    def timed(*args: Any, **kwargs: Any) -> Any:
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        out = real_train(*args, **kwargs)
        _sync(device)
        spent.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        return out

    engine.train = timed
    try:
        hists = []
        for n_epochs in ([1] if warm_up else []) + [epochs] * repeats:
            with tempfile.TemporaryDirectory() as scratch:
                _, hist = train.build_and_train(
                    _spec(method, n_epochs, **overrides), data,
                    feature_names=[f"f{i}" for i in range(nf)], mean=[0.0] * nf,
                    std=[1.0] * nf, fold=0, device=device, seed=SEED,
                    checkpoint_dir=Path(scratch) / "ckpt", progress=False,
                )  # fmt: skip
            hists.append(hist)
    finally:
        engine.train = real_train
    best = min(range(len(spent) - repeats, len(spent)), key=spent.__getitem__)
    hist = hists[best]
    ran = len(hist["epochs"])
    secs = [e["seconds"] for e in hist["epochs"]]
    return {
        "events_per_s": n_train * ran / spent[best],
        "events_per_cpu_s": n_train * ran / cpu[best],
        "epochs": ran,
        "wall_s": spent[best],
        "wall_s_repeats": spent[-repeats:],
        "epoch_median_s": float(np.median(secs)),
        "validate_every": hist.get("validate_every", {}),
        "validated_epochs": sum(1 for e in hist["epochs"] if "val/bce" in e),
    }


def _model(nf: int, spec: dict[str, Any], device: Any) -> Any:
    import torch

    from vhbb.ml.networks import Classifier

    torch.manual_seed(SEED)
    return Classifier(nf, range(nf), [0.0] * nf, [1.0] * nf, spec["layers"], spec["dropout"]).to(
        device
    )


def _plain_rate(data: dict, device: str, epochs: int, repeats: int = 1) -> tuple[float, float]:
    """The anchor: a loop over random-permutation slices of on-device tensors (events per
    second of wall time and of process CPU time, the fastest of ``repeats`` blocks of
    ``epochs`` epochs)."""
    import torch

    dev = torch.device(device)
    spec = _spec("none", epochs)
    train_ev = ~data["validation"]
    x = torch.as_tensor(data["x"][train_ev], device=dev)
    y = torch.as_tensor(data["label"][train_ev], dtype=torch.float32, device=dev)
    w = torch.ones(len(x), device=dev)
    model = _model(x.shape[1], spec, dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=spec["lr"])
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    gen = torch.Generator().manual_seed(SEED)
    n = len(x)

    def epoch() -> None:
        perm = torch.randperm(n, generator=gen).to(dev)
        for start in range(0, n, BATCH):
            idx = perm[start : start + BATCH]
            loss = (w[idx] * bce(model(x[idx]), y[idx], reduction="none")).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    epoch()  # warm-up
    rates = []
    for _ in range(repeats):
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(epochs):
            epoch()
        _sync(device)
        rates.append(
            (n * epochs / (time.perf_counter() - t0), n * epochs / (time.process_time() - c0))
        )
    return max(rates)


def _dataloader_rate(data: dict, device: str, epochs: int) -> float:
    """The former baseline: a ``DataLoader(TensorDataset)`` loop of the same model."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    dev = torch.device(device)
    spec = _spec("none", epochs)
    train_ev = ~data["validation"]
    ds = TensorDataset(
        torch.as_tensor(data["x"][train_ev]),
        torch.as_tensor(data["label"][train_ev], dtype=torch.float32),
        torch.ones(int(train_ev.sum())),
    )
    model = _model(data["x"].shape[1], spec, dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=spec["lr"])
    loader = DataLoader(ds, batch_size=BATCH, shuffle=True)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(epochs):
        for xb, yb, wb in loader:
            xb, yb, wb = xb.to(dev), yb.to(dev), wb.to(dev)
            loss = (wb * bce(model(xb), yb, reduction="none")).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    _sync(device)
    return len(ds) * epochs / (time.perf_counter() - t0)


def _device_rows(device: str, n_train: int, epochs: int, quick: bool) -> dict[str, Any]:
    data = _data(n_train)
    res: dict[str, Any] = {"events_train": n_train, "batch": BATCH}
    repeats = 2 if quick else 3
    plain = [_plain_rate(data, device, epochs, repeats)]
    methods = ("none", "disco") if quick else ("none", "disco", "adversarial")
    rows = {m: (m, {}) for m in methods}
    # the preset's validation interval (2); the same trainings validated every 4th epoch
    rows.update({f"{m}_validate_every_{EVERY}": (m, {"validate_every": EVERY}) for m in methods})
    for i, (key, (method, overrides)) in enumerate(rows.items()):
        res[key] = _engine_rate(
            method, data, device, epochs, warm_up=i == 0, repeats=repeats, **overrides
        )
    plain.append(_plain_rate(data, device, epochs, repeats))
    res["plain_runs"] = [p[0] for p in plain]
    res["plain"] = anchor = max(p[0] for p in plain)
    res["plain_per_cpu_s"] = anchor_cpu = max(p[1] for p in plain)
    if not quick:
        res["dataloader"] = _dataloader_rate(data, device, 1)
    log.info(
        "%s, %d threads, batch %d, %d training events: plain loop %.3g ev/s (runs %s)",
        device, THREADS, BATCH, n_train, anchor, ", ".join(f"{p[0]:.3g}" for p in plain),
    )  # fmt: skip
    for method in rows:
        row = res[method]
        row["over_plain"] = row["events_per_s"] / anchor
        row["over_plain_cpu"] = row["events_per_cpu_s"] / anchor_cpu
        log.info(
            "  engine %-24s %.3g ev/s = %.2fx plain (CPU time: %.2fx; %d epochs, %.2f s, "
            "validated %d, epoch median %.3f s)",
            method, row["events_per_s"], row["over_plain"], row["over_plain_cpu"],
            row["epochs"], row["wall_s"], row["validated_epochs"], row["epoch_median_s"],
        )  # fmt: skip
    if "dataloader" in res:
        log.info("  DataLoader loop                 %.3g ev/s = %.2fx plain", res["dataloader"],
                 res["dataloader"] / anchor)  # fmt: skip
    return res


def run(quick: bool = False) -> dict:
    import torch

    torch.set_num_threads(THREADS)
    result: dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    result["cpu"] = _device_rows("cpu", 20_480 if quick else 81_920, 4 if quick else 8, quick)
    if torch.cuda.is_available():
        result["cuda"] = _device_rows("cuda", 200_000 if quick else 1_000_000, 4, quick)
    return result
