"""Decorrelated classifier training: the driver of the methods in :mod:`vhbb.ml.methods`.

Methods (``models.list.<name>.method``), one module each in :mod:`vhbb.ml.methods`:

* ``none`` — weighted cross-entropy;
* ``disco`` — cross-entropy + lambda * dCor^2(score, m_jj) over the non-resonant background
  of the batch (positive weights normalised to mean 1 per batch), optional pT_jj term;
* ``adversarial`` — an adversary sees the score (optionally pT_jj) and models m_jj of the
  non-resonant background (Gaussian-mixture posterior by default, or MSE regression);
  alternating min-max: the adversary minimises its loss, the classifier minimises
  L_clf - lambda * L_adv w.r.t. its own parameters; phases: classifier only, adversary only, both;
* ``disco_then_adversarial`` — DisCo for a fraction of the epochs, then adversarial;
* ``domain_adaptation`` — gradient reversal: a domain head on the classifier's hidden layer
  separates MC (weighted by the control-region scale factors) from pseudo-data in the control
  regions (the domain-training half of the data only); pre-training with the domain head frozen;
* ``systematic_adversary`` — an adversary separates the scores of nominal and JES-varied events;
  the classifier is trained to make them indistinguishable.

Conventions: VZ (role ``resonant``) is background for the classifier but excluded from every
decorrelation term; decorrelation terms use a positive weight (``decorrelation_weight``:
``transformed`` or ``abs``); the loss uses ``weight_strategy`` (raw, abs, drop_negative,
transformed); signal and background are each normalised to the same total, processes inside a
class in proportion to sigma*L.

This module knows no method by name: :func:`build_and_train` builds the classifier and the
batch tensors, asks the registered method for its plan (:func:`vhbb.ml.methods.get`), adds the
validation metrics every method shares and runs :func:`vhbb.ml.engine.train`.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vhbb.core.errors import ConfigError, VhbbError
from vhbb.ml import methods
from vhbb.ml.weights import training_weights

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- data
def class_balanced(weight: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Signal and background each normalised to half of the events (mean weight 1 overall)."""
    out = weight.astype(np.float64).copy()
    n = len(out)
    for cls in (0, 1):
        sel = label == cls
        total = out[sel].sum()
        if sel.any():
            if total <= 0:
                raise VhbbError(f"class {cls} has a non-positive total training weight ({total:g})")
            out[sel] *= 0.5 * n / total
    return out


def fold_masks(fold: np.ndarray, validation: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation events of the model for fold ``k`` (both outside fold k)."""
    other = fold != k
    return other & ~validation, other & validation


def used_features(spec: Mapping[str, Any], feature_names: Sequence[str]) -> list[int]:
    """Indices of the model's inputs: the export features minus ``exclude_features``."""
    exclude = set(spec.get("exclude_features", []))
    unknown = exclude - set(feature_names)
    if unknown:
        raise ConfigError(f"exclude_features: unknown feature(s) {sorted(unknown)}")
    return [i for i, f in enumerate(feature_names) if f not in exclude]


def location_scale(values: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation (1 where it is 0) of a decorrelation variable."""
    return float(np.mean(values)), float(np.std(values) or 1.0)


def batch_tensors(
    data: Mapping[str, np.ndarray],
    mask: np.ndarray,
    *,
    device: Any,
    scales: Mapping[str, tuple[float, float]],
    with_variations: bool,
    seed: int,
) -> dict[str, Any]:
    """Device tensors of the events in ``mask`` (the batch keys of :mod:`vhbb.ml.methods.base`).

    ``scales``: ``m`` and ``pt`` -> (mean, std) of m_jj and pT_jj.  ``with_variations`` (and
    JES-varied inputs in ``data``: every ``x_jes...`` key, :func:`jes_input_keys`): ``x_var``
    takes one JES variation per event, every source and side equally likely (seeded draw,
    ``seed + 17``; with one source: up or down), and ``pw`` its positive weight normalised to
    mean 1.
    """
    import torch

    def tensor(values: Any) -> Any:
        return torch.as_tensor(values, dtype=torch.float32, device=device)

    lw = class_balanced(data["loss_weight"][mask], data["label"][mask])
    dw = data["decorr_weight"][mask]
    (m_mean, m_std), (pt_mean, pt_std) = scales["m"], scales["pt"]
    out = {
        "x": tensor(data["x"][mask]),
        "y": tensor(data["label"][mask]),
        "w": tensor(lw),
        "dw": tensor(dw / dw.mean() if dw.sum() > 0 else dw),
        "m": tensor((data["m_jj"][mask] - m_mean) / m_std),
        "pt": tensor((data["pt_jj"][mask] - pt_mean) / pt_std),
    }
    varied = jes_input_keys(data)
    if with_variations and varied:
        rng = np.random.default_rng(seed + 17)
        rows = np.flatnonzero(mask)
        pick = np.minimum((rng.random(len(rows)) * len(varied)).astype(np.int64), len(varied) - 1)
        x_var = np.empty((len(rows), *np.shape(data[varied[0]])[1:]), dtype=data[varied[0]].dtype)
        for i, key in enumerate(varied):
            sel = pick == i
            x_var[sel] = data[key][rows[sel]]
        out["x_var"] = tensor(x_var)
        pos = np.abs(data["decorr_weight_all"][mask]) if "decorr_weight_all" in data else np.abs(lw)
        out["pw"] = tensor(pos / pos.mean())
    return out


def jes_input_keys(data: Mapping[str, Any]) -> list[str]:
    """The JES-varied inputs of training data: ``x_<variation>`` for every JES variation
    (``x_jes_<source>Up`` / ``Down``, :func:`load_training_data`), in order."""
    return [k for k in data if k.startswith("x_jes")]


# ----------------------------------------------------------------------------- validation
def _subsample(rows: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``n`` of ``rows``: all of them, or a uniform draw without replacement (in order)."""
    if len(rows) <= n:
        return rows
    return np.sort(rng.choice(rows, size=n, replace=False))


def validator(
    spec: Mapping[str, Any],
    clf: Any,
    val: Mapping[str, Any],
    extra: Sequence[Callable[[], dict[str, Any]]] = (),
    *,
    seed: int = 0,
) -> Callable[[], dict[str, Any]]:
    """The per-epoch validation every method shares, then the method's ``extra`` metrics.

    ``val/auc``, ``val/bce``, ``val/score_std``, ``val/dcor_mjj`` (dCor^2 with m_jj over at most
    ``validation_dcor_events`` non-resonant background events), ``val/sys_score_shift`` (mean
    |score shift| under the JES variation over at most ``validation_sys_events`` events, where
    ``val`` has one) and ``collapsed``.  Both subsets are seeded uniform draws (``seed + 23``,
    the same every epoch), not the first events: the export groups events by process, and the
    first 4000 non-resonant events of the default SR were nearly all Zhf (TT, 30 % of the
    non-resonant yield, all but absent from the dCor that early stopping monitors).
    """
    import torch

    from vhbb.ml.methods.base import classifier_loss
    from vhbb.ml.networks import predict_rows
    from vhbb.stats.disco import distance_corr_sq_values
    from vhbb.stats.metrics import roc_auc

    rng = np.random.default_rng(seed + 23)
    nonres = np.flatnonzero(val["dw"].cpu().numpy() > 0)
    val_nonres = torch.as_tensor(
        _subsample(nonres, int(spec.get("validation_dcor_events", 4000)), rng),
        device=val["dw"].device,
    )
    if "x_var" in val:
        sys_rows = torch.as_tensor(
            _subsample(np.arange(len(val["x"])), int(spec.get("validation_sys_events", 4000)), rng),
            device=val["x"].device,
        )
        x_var, pw_sys = val["x_var"][sys_rows], val["pw"][sys_rows]
    y_val = val["y"].cpu().numpy()
    w_val = val["w"].cpu().numpy()

    def forward(x: Any) -> Any:  # in cache-sized row batches (networks.PREDICT_BATCH)
        rows = predict_rows(x.device)
        return torch.cat([clf(x[i : i + rows]) for i in range(0, len(x), rows)])

    def validate() -> dict[str, Any]:
        logit = forward(val["x"])  # one forward pass for the score and the loss
        score = torch.sigmoid(logit)
        s_np = score.cpu().numpy()
        out: dict[str, Any] = {
            "val/auc": roc_auc(y_val, s_np, np.abs(w_val)),
            "val/bce": float(classifier_loss(val, logit)),
            "val/score_std": float(s_np.std()),
        }
        if len(val_nonres) >= 2:
            idx = val_nonres
            wn = val["dw"][idx]
            wn = wn * len(idx) / wn.sum()
            out["val/dcor_mjj"] = float(distance_corr_sq_values(val["m"][idx], score[idx], wn)[0])
        if "x_var" in val:
            s_var = torch.sigmoid(forward(x_var))
            shift = (score[sys_rows] - s_var).abs()
            out["val/sys_score_shift"] = float((pw_sys * shift).sum() / pw_sys.sum())
        out["collapsed"] = bool(s_np.std() < spec["collapse_threshold"])
        for fn in extra:
            out.update(fn())
        return out

    return validate


# ----------------------------------------------------------------------------- training
def build_and_train(
    spec: Mapping[str, Any],
    data: Mapping[str, np.ndarray],
    *,
    feature_names: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    fold: int,
    device: str = "cpu",
    seed: int = 0,
    domain: Mapping[str, np.ndarray] | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """Train one fold model.

    ``data``: arrays over the training region's MC: ``x`` (N, F) raw export features, ``label``,
    ``loss_weight`` (already per strategy, not yet class-balanced), ``decorr_weight`` (positive,
    zero outside the non-resonant background), ``m_jj``, ``pt_jj``, ``fold``, ``validation``,
    optionally the JES-varied inputs ``x_jes_<source>Up`` / ``Down``.  ``domain`` (domain
    adaptation): ``x``, ``is_data``, ``weight``.  Returns the classifier (on CPU, eval mode)
    and the history dict.

    Random numbers: the torch RNG is seeded, the classifier initialised, then the method's
    networks (in the order its build function creates them); the engine reseeds before training.
    """
    import torch

    from vhbb.ml import engine
    from vhbb.ml.methods.base import Context
    from vhbb.ml.networks import Classifier

    method = methods.get(spec["method"])
    dev = engine.resolve_device(device)
    torch.manual_seed(seed)
    used = used_features(spec, feature_names)
    clf = Classifier(len(feature_names), used, mean, std, spec["layers"], spec["dropout"]).to(dev)
    train_mask, val_mask = fold_masks(data["fold"], data["validation"], fold)
    if not train_mask.any():
        raise VhbbError(f"fold {fold}: no training events")
    log.info(
        "%s fold %d: %d training / %d validation events (%d features used of %d), device %s",
        method.name, fold, int(train_mask.sum()), int(val_mask.sum()), len(used),
        len(feature_names), dev,
    )  # fmt: skip
    scales = {"m": location_scale(data["m_jj"]), "pt": location_scale(data["pt_jj"])}
    tensors = {"device": dev, "scales": scales, "seed": seed}
    # JES-varied inputs travel with the training batches only where an objective reads them
    train_set = batch_tensors(data, train_mask, with_variations=method.train_variations, **tensors)
    val_events = val_mask if val_mask.any() else train_mask
    val = batch_tensors(data, val_events, with_variations=True, **tensors)
    plan = method.build(Context(spec, clf, dev, domain))
    history = engine.train(
        plan.networks,
        plan.optimizers,
        {"train": train_set, **plan.datasets},
        plan.phases,
        batch_size={"train": spec["batch_size"], **plan.batch_size},
        seed=seed,
        validate=validator(spec, clf, val, plan.metrics, seed=seed),
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=spec["checkpoint_every"],
        lr_decay=spec.get("lr_decay"),
        early_stopping=early_stopping(spec, plan),
        progress=progress,
    )
    hist = history.to_dict()
    # the restored (best) epoch's flags describe the model that is written
    kept = [e for e in hist["epochs"] if e["epoch"] == hist.get("best_epoch")]
    last = kept[0] if kept else (hist["epochs"][-1] if hist["epochs"] else {})
    hist["collapsed"] = bool(last.get("collapsed", False))
    hist["method"] = method.name
    hist["fold"] = fold
    hist["warnings"] = signed_weight_warnings(hist["epochs"], spec.get("weight_strategy", "raw"))
    for line in hist["warnings"]:
        log.warning("%s fold %d: %s", method.name, fold, line)
    return clf.cpu().eval(), hist


def signed_weight_warnings(epochs: Sequence[Mapping[str, Any]], strategy: str) -> list[str]:
    """The classic failure of negative weights in a loss, flagged: a training cross-entropy
    below zero, or a validation cross-entropy that rises over the last three epochs while the
    training cross-entropy falls."""
    out: list[str] = []
    train_key = next((k for e in epochs for k in e if k.endswith("/bce") and k != "val/bce"), None)
    if train_key is None:
        return out
    below = [e["epoch"] for e in epochs if e.get(train_key, 0.0) < 0]
    if below:
        out.append(
            f"training loss {train_key} below zero from epoch {below[0]} with weight_strategy "
            f"'{strategy}': negative weights dominate the loss; use weight_strategy "
            "transformed (or abs / drop_negative)"
        )
    tail = [e for e in epochs if "val/bce" in e and train_key in e][-4:]
    if len(tail) == 4:
        val_up = all(b["val/bce"] > a["val/bce"] for a, b in itertools.pairwise(tail))
        train_down = all(b[train_key] < a[train_key] for a, b in itertools.pairwise(tail))
        if val_up and train_down:
            out.append(
                f"validation loss rises while the training loss falls (epochs {tail[0]['epoch']}-"
                f"{tail[-1]['epoch']}) with weight_strategy '{strategy}': over-training "
                "(enable early_stopping, which restores the best epoch)"
            )
    return out


def early_stopping(spec: Mapping[str, Any], plan: Any) -> Any:
    """The engine's early stopping on the method's validation objective (``epochs`` is then a
    maximum), or None when ``early_stopping.enabled`` is false."""
    from vhbb.ml import engine

    cfg = spec.get("early_stopping") or {}
    if not cfg.get("enabled", False):
        return None
    return engine.EarlyStopping(
        objective=plan.objective,
        monitor="val/objective",
        patience=int(cfg["patience"]),
        min_delta=float(cfg["min_delta"]),
        phases=plan.monitored_phases,
        min_epochs=int(cfg.get("min_epochs", 0)),
    )


# ----------------------------------------------------------------------------- outputs
ONNX_OPSET = 17  # onnxruntime >= 1.12, ROOT's SOFIE, hls4ml, ...
ONNX_IR_VERSION = 8


def onnx_graph(clf: Any, feature_names: Sequence[str]) -> Any:
    """The ONNX model of sigmoid(classifier), built node by node from the trained layers.

    Input ``features`` (N, F raw, export order), output ``score`` (N): Gather of the used
    features, Sub/Div standardisation, Gemm + Relu per hidden layer (dropout is the identity
    in evaluation), Gemm, Sigmoid, Squeeze: the operations of :class:`Probability`, so
    onnxruntime returns the torch scores to float32 rounding (test).  None for a network with
    another layer type (then :func:`export_onnx` uses torch's exporter).

    Written by hand because torch's exporter (``torch.onnx.export``, dynamo) costs about 3 s
    per training job (its first call in a process), for a graph of eight node types.
    """
    import onnx
    import torch
    from onnx import TensorProto, helper, numpy_helper

    def const(name: str, value: Any) -> Any:
        return numpy_helper.from_array(np.asarray(value), name)

    inits = [
        const("used", clf.used.detach().cpu().numpy().astype(np.int64)),
        const("mean", clf.mean.detach().cpu().numpy().astype(np.float32)),
        const("std", clf.std.detach().cpu().numpy().astype(np.float32)),
        const("squeeze_axes", np.array([1], dtype=np.int64)),
    ]
    nodes = [
        helper.make_node("Gather", ["features", "used"], ["x_used"], axis=1),
        helper.make_node("Sub", ["x_used", "mean"], ["x_centred"]),
        helper.make_node("Div", ["x_centred", "std"], ["h0"]),
    ]
    current, k = "h0", 0
    for layer in [*clf.body, clf.head]:
        if isinstance(layer, torch.nn.Dropout):
            continue
        if isinstance(layer, torch.nn.Linear):
            k += 1
            w = layer.weight.detach().cpu().numpy().astype(np.float32)
            b = layer.bias.detach().cpu().numpy().astype(np.float32)
            inits += [const(f"w{k}", w), const(f"b{k}", b)]
            nodes.append(helper.make_node("Gemm", [current, f"w{k}", f"b{k}"], [f"z{k}"], transB=1))
            current = f"z{k}"
        elif isinstance(layer, torch.nn.ReLU):
            nodes.append(helper.make_node("Relu", [current], [f"a{k}"]))
            current = f"a{k}"
        else:
            return None
    nodes += [
        helper.make_node("Sigmoid", [current], ["probability"]),
        helper.make_node("Squeeze", ["probability", "squeeze_axes"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes,
        "vhbb_score",
        [
            helper.make_tensor_value_info(
                "features", TensorProto.FLOAT, ["batch", len(feature_names)]
            )
        ],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
        producer_name="vhbb",
        ir_version=ONNX_IR_VERSION,
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def export_onnx(clf: Any, path: str | Path, feature_names: Sequence[str]) -> None:
    """ONNX graph of sigmoid(classifier): input ``features`` (N, F raw, export order), output
    ``score`` (N), metadata ``feature_names`` and ``used_features``; one self-contained file,
    written atomically.  :func:`onnx_graph` builds it; torch's exporter covers other layers."""
    import tempfile

    import onnx
    import torch

    from vhbb.core.io import atomic_path
    from vhbb.ml.networks import Probability

    meta = {
        "feature_names": json.dumps(list(feature_names)),
        "used_features": json.dumps([feature_names[i] for i in clf.used.tolist()]),
        "producer": "vhbb",
    }
    proto = onnx_graph(clf, feature_names)
    with atomic_path(path) as tmp, tempfile.TemporaryDirectory() as scratch:
        if proto is None:
            model = Probability(clf).eval()
            for noisy in ("onnx_ir", "onnxscript", "torch.onnx"):
                logging.getLogger(noisy).setLevel(logging.WARNING)
            # the exporter may write the weights to a side file (<name>.data): export into a
            # private folder, then save one self-contained file (no litter beside model.onnx)
            raw = Path(scratch) / "model.onnx"
            torch.onnx.export(
                model,
                (torch.zeros(4, len(feature_names)),),
                str(raw),
                input_names=["features"],
                output_names=["score"],
                dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
                dynamo=True,
                verbose=False,
            )
            proto = onnx.load(str(raw))
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(tmp))


def save_model(
    clf: Any, path: str | Path, spec: Mapping[str, Any], feature_names: Sequence[str]
) -> None:
    """Checkpoint loadable with ``torch.load(..., weights_only=True)`` (tensors and plain types)."""
    import torch

    from vhbb.core.io import atomic_path

    payload = {
        "state_dict": clf.state_dict(),
        "n_export_features": len(feature_names),
        "feature_names": list(feature_names),
        "used": clf.used.tolist(),
        "layers": list(spec["layers"]),
        "dropout": float(spec["dropout"]),
        "method": spec["method"],
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_model(path: str | Path) -> Any:
    """Rebuild a classifier saved by :func:`save_model` (``weights_only=True``)."""
    import torch

    from vhbb.ml.networks import Classifier

    payload = torch.load(path, map_location="cpu", weights_only=True)
    n = payload["n_export_features"]
    clf = Classifier(
        n, payload["used"], [0.0] * n, [1.0] * n, payload["layers"], payload["dropout"]
    )
    clf.load_state_dict(payload["state_dict"])
    clf.feature_names = payload["feature_names"]
    return clf.eval()


def predict(clf: Any, x: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """Scores (sigmoid outputs) of a classifier in batches, float64 (on CPU)."""
    from vhbb.ml import networks

    return networks.predict(clf, x, batch_size=batch_size, sigmoid=True)


def load_training_data(
    export_path: str | Path,
    *,
    roles: Mapping[str, str],
    spec: Mapping[str, Any],
    weights_path: str | Path | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays of the training region's MC for :func:`build_and_train`."""
    from vhbb.data import jes as jesmod
    from vhbb.data.export import export_jes_sources, read_h5

    arrays, attrs = read_h5(export_path)
    mc = arrays["domain"] == 0
    transformed = None
    if weights_path is not None:
        wt_arrays, _ = read_h5(weights_path)
        for key in ("run", "luminosityBlock", "event"):
            if not np.array_equal(wt_arrays[key], arrays[key]):
                raise VhbbError(
                    f"{weights_path} is not aligned with {export_path} ({key} differs); "
                    "rerun the weights stage"
                )
        transformed = wt_arrays["weight_transformed"][mc]
    process_names = list(attrs["process_names"])
    proc = arrays["process"][mc]
    nonres_ids = [i for i, p in enumerate(process_names) if roles.get(p) == "nonresonant"]
    label = arrays["label"][mc].astype(np.int64)
    nonres = np.isin(proc, nonres_ids) & (label == 0)
    weight = arrays["weight"][mc]
    positive = training_weights(spec["decorrelation_weight"], weight, transformed)
    if spec["decorrelation_weight"] == "abs":
        log.warning(
            "decorrelation terms use |w| (flagged fallback: the weight transformation is not used)"
        )
    data = {
        "x": arrays["features/nominal"][mc],
        **{
            f"x_{v}": arrays[f"features/{v}"][mc]
            for v in jesmod.jes_variations(export_jes_sources(arrays, attrs))
        },
        "label": label,
        "loss_weight": training_weights(spec["weight_strategy"], weight, transformed),
        "decorr_weight": np.where(nonres, positive, 0.0),
        "decorr_weight_all": positive,
        "m_jj": arrays["m_jj"][mc].astype(np.float64),
        "pt_jj": arrays["pt_jj"][mc].astype(np.float64),
        "fold": arrays["fold"][mc],
        "validation": arrays["validation"][mc].astype(bool),
    }
    return data, attrs


def load_domain_data(
    cr_paths: Sequence[str | Path], scale_factors: Mapping[str, float], fold: int
) -> dict[str, np.ndarray]:
    """Control-region MC (|w| x scale factor) and the domain-training half of the data.

    Events of the model's own fold are left out (they are scored by this model later)."""
    from vhbb.data.export import read_h5

    xs, is_data, ws = [], [], []
    for path in cr_paths:
        arrays, attrs = read_h5(path)
        names = list(attrs["process_names"])
        keep = arrays["fold"] != fold
        data = (arrays["domain"] == 1) & (arrays["cr_split"] == 0) & keep
        mc = (arrays["domain"] == 0) & keep
        sf = np.array([scale_factors.get(p, 1.0) for p in names])[arrays["process"]]
        w = np.where(mc, np.abs(arrays["weight"]) * sf, 1.0)
        sel = data | mc
        xs.append(arrays["features/nominal"][sel])
        is_data.append(data[sel])
        ws.append(w[sel])
    return {
        "x": np.concatenate(xs),
        "is_data": np.concatenate(is_data),
        "weight": np.concatenate(ws),
    }


def plot_history(history: Mapping[str, Any], path: str | Path, title: str) -> None:
    """Loss curves of every term and the validation metrics per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vhbb.core.io import atomic_path

    epochs = history["epochs"]
    keys = sorted(
        {k for e in epochs for k in e if isinstance(e.get(k), float) and k not in ("seconds",)}
    )
    losses = [k for k in keys if not k.startswith("val/")]
    vals = [k for k in keys if k.startswith("val/")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, group in zip(axes, (losses, vals), strict=True):
        for k in group:
            xs = [e["epoch"] for e in epochs if k in e]
            ax.plot(xs, [e[k] for e in epochs if k in e], marker=".", label=k)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    axes[0].set_title(f"{title}: losses")
    axes[1].set_title("validation")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def domain_inputs(
    spec: Mapping[str, Any],
    cr_paths: Sequence[str | Path],
    scale_factors_path: str | Path | None,
    fold: int,
) -> dict[str, np.ndarray] | None:
    """The control-region data of a method that needs them (else ``None``).

    The MC is weighted by the central values of the control-region scale factors
    (:func:`vhbb.core.results.read_scale_factors`: a file that is not a scale-factor result is
    an :class:`~vhbb.core.errors.InputError`).
    """
    from vhbb.core.results import read_scale_factors

    if not methods.get(spec["method"]).needs_domain:
        return None
    if scale_factors_path is None:
        raise ConfigError(f"{spec['method']} needs the control-region scale factors")
    return load_domain_data(cr_paths, read_scale_factors(scale_factors_path).values, fold)


def prepare_checkpoint_dir(checkpoint_dir: str | Path, tag: str) -> Path:
    """The checkpoint folder of a training tagged ``tag``; one of another tag is discarded."""
    import shutil

    ckpt_dir = Path(checkpoint_dir)
    tag_file = ckpt_dir / "tag"
    if ckpt_dir.exists() and (not tag_file.exists() or tag_file.read_text() != tag):
        log.info("discarding a checkpoint of a different configuration in %s", ckpt_dir)
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tag_file.write_text(tag)
    return ckpt_dir


def copy_model(
    inputs: Mapping[str, str], outputs: Mapping[str, str], *, model: str, same_as: str
) -> None:
    """The outputs of model ``same_as`` as those of ``model`` (its training is the same:
    :func:`vhbb.config.params.model_aliases`): files copied, ``model`` in history.json and
    config.json set to this name and ``same_as`` recorded."""
    from vhbb.core.io import copy_file, write_json

    for key, src in inputs.items():
        if key in ("history", "config"):
            doc = json.loads(Path(src).read_text())
            doc["model"], doc["same_as"] = model, same_as
            write_json(outputs[key], doc)
        else:
            copy_file(src, outputs[key])
    log.info("%s: the training of %s (same spec, seed and inputs): outputs copied", model, same_as)


def write_outputs(
    outputs: Mapping[str, str],
    clf: Any,
    history: Mapping[str, Any],
    *,
    spec: Mapping[str, Any],
    model: str,
    fold: int,
    seed: int,
    feature_names: Sequence[str],
) -> None:
    """Checkpoint, ONNX graph, history, resolved config and the history plot of one fold."""
    from vhbb.core.io import write_json

    save_model(clf, outputs["checkpoint"], spec, feature_names)
    export_onnx(clf, outputs["onnx"], feature_names)
    write_json(outputs["history"], history)
    write_json(
        outputs["config"],
        {"model": model, "fold": fold, "seed": seed, "spec": spec, "feature_names": feature_names},
    )
    plot_history(history, outputs["plot"], f"{model} fold {fold}")


def run_train(
    *,
    export_path: str,
    outputs: Mapping[str, str],
    spec: Mapping[str, Any],
    model: str,
    fold: int,
    roles: Mapping[str, str],
    device: str,
    seed: int,
    checkpoint_dir: str,
    weights_path: str | None = None,
    cr_paths: Sequence[str] = (),
    scale_factors_path: str | None = None,
) -> dict[str, Any]:
    """Train one model's fold and write checkpoint, ONNX, history, resolved config and plot."""
    import shutil

    from vhbb.core.provenance import provenance, section_hash

    data, attrs = load_training_data(export_path, roles=roles, spec=spec, weights_path=weights_path)
    domain = domain_inputs(spec, cr_paths, scale_factors_path, fold)
    feature_names = list(attrs["feature_names"])
    tag = section_hash(
        {"spec": spec, "fold": fold, "seed": seed, "export": attrs["provenance"]["config_hash"]}
    )
    ckpt_dir = prepare_checkpoint_dir(checkpoint_dir, tag)
    clf, history = build_and_train(
        spec,
        data,
        feature_names=feature_names,
        mean=list(attrs["standardisation_mean"]),
        std=list(attrs["standardisation_std"]),
        fold=fold,
        device=device,
        seed=seed,
        domain=domain,
        checkpoint_dir=ckpt_dir,
    )
    history["model"] = model
    history["provenance"] = provenance({"spec": spec, "fold": fold, "seed": seed})
    write_outputs(
        outputs, clf, history, spec=spec, model=model, fold=fold, seed=seed,
        feature_names=feature_names,
    )  # fmt: skip
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    if history["collapsed"]:
        log.warning("%s fold %d: the score collapsed (near-constant on validation)", model, fold)
    return history
