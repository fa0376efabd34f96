"""Training throughput of the shared engine vs a plain DataLoader loop of the same model.

Events/s per epoch for ``none``, ``disco`` and ``adversarial`` at batch 1024, 4096 and 16384
(the same 3x128 MLP), on CPU and on CUDA when present.  The baseline is a plain
``DataLoader(TensorDataset)`` loop of the ``none`` model measured in the same run.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def _data(n: int, n_features: int = 15, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, n_features)).astype(np.float32)
    label = (x[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(np.int64)
    m = 100 + 20 * x[:, 1] + 10 * x[:, 0]
    nonres = (label == 0) & (rng.random(n) < 0.7)
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
        "fold": np.ones(n, dtype=np.int8),  # every event trains the fold-0 model
        "validation": np.zeros(n, dtype=bool),
    }


def _spec(method: str, batch: int, epochs: int) -> dict[str, Any]:
    return {
        "method": method,
        "layers": [128, 128, 128],
        "dropout": 0.0,
        "optimizer": "adam",
        "lr": 1e-3,
        "batch_size": batch,
        "epochs": epochs,
        "exclude_features": [],
        "checkpoint_every": 1000,
        "collapse_threshold": 0.0,
        "validation_dcor_events": 2,
        "disco": {"lambda": 10.0, "pt_lambda": 0.0},
        "adversary": {
            "head": "gmm",
            "components": 5,
            "layers": [64, 64],
            "lr": 5e-3,
            "lambda": 5.0,
            "steps": 1,
            "pretrain_clf_epochs": 0,
            "pretrain_adv_epochs": 0,
            "joint_lr_factor": 1.0,
            "use_pt": False,
        },
    }


def _engine_rate(method: str, data: dict, batch: int, device: str, epochs: int) -> float:
    from vhbb.ml import train

    n = len(data["x"])
    spec = _spec(method, batch, epochs)
    _, hist = train.build_and_train(
        spec, data, feature_names=[f"f{i}" for i in range(data["x"].shape[1])],
        mean=[0.0] * data["x"].shape[1], std=[1.0] * data["x"].shape[1], fold=0,
        device=device, seed=1, progress=False,
    )  # fmt: skip
    # per-epoch time excludes validation; skip the first (warm-up) epoch
    secs = [e["seconds"] for e in hist["epochs"][1:]] or [hist["epochs"][0]["seconds"]]
    return n / float(np.median(secs))


def _dataloader_rate(data: dict, batch: int, device: str, epochs: int) -> float:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from vhbb.ml.networks import Classifier

    dev = torch.device(device)
    nf = data["x"].shape[1]
    model = Classifier(nf, range(nf), [0.0] * nf, [1.0] * nf, [128, 128, 128]).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ds = TensorDataset(
        torch.as_tensor(data["x"]),
        torch.as_tensor(data["label"], dtype=torch.float32),
        torch.ones(len(data["x"])),
    )
    loader = DataLoader(ds, batch_size=batch, shuffle=True)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        for x, y, w in loader:
            x, y, w = x.to(dev), y.to(dev), w.to(dev)
            loss = (w * bce(model(x), y, reduction="none")).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return len(data["x"]) / float(np.median(times[1:] or times))


def run(quick: bool = False) -> dict:
    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    result: dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    for device in devices:
        n = 100_000 if (quick or device == "cpu") else 1_000_000
        epochs = 3
        data = _data(n)
        res: dict[str, Any] = {"events": n}
        for batch in (1024, 4096, 16384):
            base = _dataloader_rate(data, batch, device, 2)
            row = {"dataloader": base}
            for method in ("none", "disco", "adversarial"):
                rate = _engine_rate(method, data, batch, device, epochs)
                row[method] = rate
                row[f"{method}_over_dataloader"] = rate / base
            res[f"batch_{batch}"] = row
            log.info(
                "%s batch %d: DataLoader %.3g ev/s | none %.3g (x%.1f) | disco %.3g | adv %.3g",
                device, batch, base, row["none"], row["none_over_dataloader"], row["disco"],
                row["adversarial"],
            )  # fmt: skip
        result[device] = res
    return result
