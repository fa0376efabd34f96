"""Decorrelated classifier training: every method is a configuration of :mod:`vhbb.engine`.

Methods (``models.list.<name>.method``):

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
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, VhbbError
from .weights import training_weights

log = logging.getLogger(__name__)

METHODS = (
    "none",
    "disco",
    "adversarial",
    "disco_then_adversarial",
    "domain_adaptation",
    "systematic_adversary",
)


# ----------------------------------------------------------------------------- configuration
def deep_merge(base: Mapping, over: Mapping) -> dict:
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        out[k] = (
            deep_merge(out[k], v)
            if isinstance(v, Mapping) and isinstance(out.get(k), Mapping)
            else copy.deepcopy(v)
        )
    return out


def resolve_model(
    models_cfg: Mapping[str, Any], name: str, *, scans: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A model's full hyperparameters: its preset (recursively) deep-updated by its own keys.

    With ``scans`` (the config's ``scans`` section) a scan-point name (:mod:`vhbb.scans`)
    resolves to its base model with the point's overrides applied.
    """
    defs = models_cfg["list"]
    if name not in defs and scans:
        from .scans import apply_overrides, find_point

        point = find_point(scans, models_cfg, name)
        if point is not None:
            return apply_overrides(resolve_model(models_cfg, point.base), point.overrides)
    if name not in defs:
        raise ConfigError(f"unknown model '{name}'; defined: {', '.join(sorted(defs))}")
    spec = dict(defs[name])
    preset = spec.pop("preset", None)
    seen = set()
    base: dict[str, Any] = {}
    while preset is not None:
        if preset in seen or preset not in models_cfg["presets"]:
            raise ConfigError(f"model '{name}': unknown or circular preset '{preset}'")
        seen.add(preset)
        p = dict(models_cfg["presets"][preset])
        preset = p.pop("preset", None)
        base = deep_merge(p, base)
    spec = deep_merge(base, spec)
    if spec.get("method") not in METHODS:
        raise ConfigError(
            f"model '{name}': unknown method '{spec.get('method')}'; "
            f"use one of {', '.join(METHODS)}"
        )
    return spec


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


def ks_distance(a: np.ndarray, wa: np.ndarray, b: np.ndarray, wb: np.ndarray) -> float:
    """Kolmogorov-Smirnov distance between two weighted samples (unbinned, positive weights)."""
    grid = np.sort(np.concatenate([a, b]))

    def cdf(x: np.ndarray, w: np.ndarray) -> np.ndarray:
        order = np.argsort(x)
        cum = np.concatenate([[0.0], np.cumsum(w[order])]) / max(w.sum(), 1e-300)
        return cum[np.searchsorted(x[order], grid, side="right")]

    return float(np.max(np.abs(cdf(a, wa) - cdf(b, wb)))) if len(a) and len(b) else float("nan")


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
    optionally ``x_jesUp``/``x_jesDown``.  ``domain`` (domain adaptation): ``x``, ``is_data``,
    ``weight``.  Returns the classifier (on CPU, eval mode) and the history dict.
    """
    import torch

    from . import engine
    from .disco import distance_corr_sq
    from .metrics import roc_auc
    from .networks import BinaryHead, Classifier, GaussianMixtureHead, RegressionHead, grad_reverse

    method = spec["method"]
    dev = engine.resolve_device(device)
    torch.manual_seed(seed)
    exclude = set(spec.get("exclude_features", []))
    unknown = exclude - set(feature_names)
    if unknown:
        raise ConfigError(f"exclude_features: unknown feature(s) {sorted(unknown)}")
    used = [i for i, f in enumerate(feature_names) if f not in exclude]
    clf = Classifier(len(feature_names), used, mean, std, spec["layers"], spec["dropout"]).to(dev)
    train_mask, val_mask = fold_masks(data["fold"], data["validation"], fold)
    if not train_mask.any():
        raise VhbbError(f"fold {fold}: no training events")
    m_mean, m_std = float(np.mean(data["m_jj"])), float(np.std(data["m_jj"]) or 1.0)
    pt_mean, pt_std = float(np.mean(data["pt_jj"])), float(np.std(data["pt_jj"]) or 1.0)

    def tensors(mask: np.ndarray, with_var: bool) -> dict[str, Any]:
        lw = class_balanced(data["loss_weight"][mask], data["label"][mask])
        dw = data["decorr_weight"][mask]
        out = {
            "x": torch.as_tensor(data["x"][mask], dtype=torch.float32, device=dev),
            "y": torch.as_tensor(data["label"][mask], dtype=torch.float32, device=dev),
            "w": torch.as_tensor(lw, dtype=torch.float32, device=dev),
            "dw": torch.as_tensor(
                dw / dw.mean() if dw.sum() > 0 else dw, dtype=torch.float32, device=dev
            ),
            "m": torch.as_tensor(
                (data["m_jj"][mask] - m_mean) / m_std, dtype=torch.float32, device=dev
            ),
            "pt": torch.as_tensor(
                (data["pt_jj"][mask] - pt_mean) / pt_std, dtype=torch.float32, device=dev
            ),
        }
        if with_var and "x_jesUp" in data:
            rng = np.random.default_rng(seed + 17)
            up = rng.random(mask.sum()) < 0.5
            x_var = np.where(up[:, None], data["x_jesUp"][mask], data["x_jesDown"][mask])
            out["x_var"] = torch.as_tensor(x_var, dtype=torch.float32, device=dev)
            pos = (
                np.abs(data["decorr_weight_all"][mask])
                if "decorr_weight_all" in data
                else np.abs(lw)
            )
            out["pw"] = torch.as_tensor(pos / pos.mean(), dtype=torch.float32, device=dev)
        return out

    # JES-varied inputs travel with the training batches only where an objective reads them
    log.info(
        "%s fold %d: %d training / %d validation events (%d features used of %d), device %s",
        method,
        fold,
        int(train_mask.sum()),
        int(val_mask.sum()),
        len(used),
        len(feature_names),
        dev,
    )
    datasets: dict[str, dict[str, Any]] = {
        "train": tensors(train_mask, with_var=method == "systematic_adversary")
    }
    val = tensors(val_mask if val_mask.any() else train_mask, with_var=True)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    networks: dict[str, Any] = {"clf": clf}
    optimizers: dict[str, Any] = {}
    opt_kind = spec["optimizer"]
    lr = spec["lr"]

    def clf_loss(b: Mapping[str, Any], logit: Any) -> Any:
        return (b["w"] * bce(logit, b["y"], reduction="none")).mean()

    def disco_term(b: Mapping[str, Any], score: Any) -> Any:
        """lambda * dCor^2 over the batch's non-resonant background (weights > 0 only).

        On CPU the members are gathered first (the O(n^2) term then costs only the members);
        on CUDA the whole batch is used with zero weights outside (exact: zero-weight rows drop
        out of the weighted V-statistic) so shapes stay static and nothing syncs the host.  A
        batch with fewer than two members contributes 0 and is counted in ``skipped_batches``.
        """
        dw = b["dw"]
        if dw.device.type == "cpu":
            idx = (dw > 0).nonzero().squeeze(-1)
            if idx.numel() < 2:
                zero = score.sum() * 0.0
                return zero, torch.ones((), device=dw.device)
            m, s, w = b["m"][idx], score[idx], dw[idx]
            pt = b["pt"][idx]
            ok = torch.ones((), dtype=torch.bool, device=dw.device)
        else:
            ok = (dw > 0).sum() >= 2
            m, s, pt = b["m"], score, b["pt"]
            w = torch.where(ok, dw, torch.ones_like(dw))
        w = w * w.shape[0] / w.sum().clamp_min(1e-12)
        terms = spec["disco"]["lambda"] * distance_corr_sq(m, s, w)
        if spec["disco"].get("pt_lambda", 0.0) > 0:
            terms = terms + spec["disco"]["pt_lambda"] * distance_corr_sq(pt, s, w)
        return terms * ok, (~ok).float()

    # ----- objectives
    def obj_none(nets, b):  # type: ignore[no-untyped-def]
        loss = clf_loss(b, nets["clf"](b["x"]))
        return {"total": loss, "bce": loss}

    def obj_disco(nets, b):  # type: ignore[no-untyped-def]
        logit = nets["clf"](b["x"])
        l_clf = clf_loss(b, logit)
        l_dc, skipped = disco_term(b, torch.sigmoid(logit))
        return {"total": l_clf + l_dc, "bce": l_clf, "disco": l_dc, "skipped_batches": skipped}

    phases: list[engine.Phase] = []
    optimizers["clf"] = engine.make_optimizer(list(clf.parameters()), opt_kind, lr)
    validate_extra: dict[str, Any] = {}

    if method in ("adversarial", "disco_then_adversarial"):
        adv_cfg = spec["adversary"]
        n_in = 2 if adv_cfg.get("use_pt", False) else 1
        head = (
            GaussianMixtureHead(n_in, adv_cfg["layers"], adv_cfg["components"])
            if adv_cfg["head"] == "gmm"
            else RegressionHead(n_in, adv_cfg["layers"])
        ).to(dev)
        networks["adv"] = head
        optimizers["adv"] = engine.make_optimizer(list(head.parameters()), opt_kind, adv_cfg["lr"])
        lam = adv_cfg["lambda"]

        def adv_inputs(b, score):  # type: ignore[no-untyped-def]
            cols = [score.unsqueeze(-1)]
            if n_in == 2:
                cols.append(b["pt"].unsqueeze(-1))
            return torch.cat(cols, dim=-1)

        def obj_adv(nets, b):  # type: ignore[no-untyped-def]
            with torch.no_grad():
                score = torch.sigmoid(nets["clf"](b["x"]))
            loss = nets["adv"].loss(adv_inputs(b, score), b["m"], b["dw"])
            return {"total": loss, "adv": loss}

        def obj_joint(nets, b):  # type: ignore[no-untyped-def]
            logit = nets["clf"](b["x"])
            l_clf = clf_loss(b, logit)
            l_adv = nets["adv"].loss(adv_inputs(b, torch.sigmoid(logit)), b["m"], b["dw"])
            return {"total": l_clf - lam * l_adv, "bce": l_clf, "adv": l_adv}

        steps_adv = [engine.Step("adv", obj_adv, repeats=adv_cfg["steps"], name="adv")]
        if method == "adversarial":
            phases.append(
                engine.Phase(
                    "classifier",
                    adv_cfg["pretrain_clf_epochs"],
                    [engine.Step("clf", obj_none)],
                    {"clf": lr},
                )
            )
            joint_epochs = spec["epochs"]
        else:
            n_disco = max(1, round(spec["epochs"] * spec["disco_fraction"]))
            phases.append(
                engine.Phase("disco", n_disco, [engine.Step("clf", obj_disco)], {"clf": lr})
            )
            joint_epochs = max(1, spec["epochs"] - n_disco)
        phases.append(
            engine.Phase(
                "adversary", adv_cfg["pretrain_adv_epochs"], steps_adv, {"adv": adv_cfg["lr"]}
            )
        )
        phases.append(
            engine.Phase(
                "joint",
                joint_epochs,
                [*steps_adv, engine.Step("clf", obj_joint, name="clf")],
                {"clf": lr * adv_cfg.get("joint_lr_factor", 1.0), "adv": adv_cfg["lr"]},
            )
        )
        # the main dataset of the joint phase is that of its first step ("train"): fine
    elif method == "domain_adaptation":
        if domain is None:
            raise VhbbError("domain_adaptation needs control-region data (domain dataset)")
        da = spec["domain"]
        dhead = BinaryHead(spec["layers"][-1], da["layers"]).to(dev)
        networks["domain"] = dhead
        dparams = list(clf.body.parameters()) + list(dhead.parameters())
        optimizers["domain"] = engine.make_optimizer(
            dparams, da.get("optimizer", opt_kind), lr * da["lr_multiplier"]
        )
        dw = np.asarray(domain["weight"], dtype=np.float64)
        is_data = np.asarray(domain["is_data"], dtype=bool)
        for sel in (is_data, ~is_data):  # equal totals for data and MC
            dw[sel] *= 0.5 * len(dw) / dw[sel].sum()
        datasets["domain"] = {
            "x": torch.as_tensor(domain["x"], dtype=torch.float32, device=dev),
            "d": torch.as_tensor(is_data, dtype=torch.float32, device=dev),
            "w": torch.as_tensor(dw, dtype=torch.float32, device=dev),
        }

        def obj_domain(nets, b):  # type: ignore[no-untyped-def]
            feats = grad_reverse(nets["clf"].features(b["x"]), 1.0)
            loss = da["lambda"] * nets["domain"].loss(feats, b["d"], b["w"])
            return {"total": loss, "domain": loss}

        def obj_domain_head_only(nets, b):  # type: ignore[no-untyped-def]
            with torch.no_grad():
                feats = nets["clf"].features(b["x"])
            loss = nets["domain"].loss(feats, b["d"], b["w"])
            return {"total": loss, "domain": loss}

        optimizers["domain_head"] = engine.make_optimizer(
            list(dhead.parameters()), opt_kind, lr * da["lr_multiplier"]
        )
        phases.append(
            engine.Phase(
                "classifier", da["pretrain_epochs"], [engine.Step("clf", obj_none)], {"clf": lr}
            )
        )
        phases.append(
            engine.Phase(
                "domain",
                spec["epochs"],
                [
                    engine.Step("clf", obj_none),
                    engine.Step("domain", obj_domain, dataset="domain", every=da["every"]),
                ],
                {"clf": lr, "domain": lr * da["lr_multiplier"]},
            )
        )
        del obj_domain_head_only  # head pre-training is not needed with gradient reversal
        optimizers.pop("domain_head")
        d_val = datasets["domain"]

        def domain_metrics() -> dict[str, Any]:
            s = torch.sigmoid(clf(d_val["x"])).cpu().numpy()
            d = d_val["d"].cpu().numpy().astype(bool)
            w = d_val["w"].cpu().numpy()
            return {"val/data_mc_ks": ks_distance(s[d], w[d], s[~d], w[~d])}

        validate_extra["domain"] = domain_metrics
    elif method == "systematic_adversary":
        sa = spec["systematic"]
        shead = BinaryHead(1, sa["layers"]).to(dev)
        networks["sys"] = shead
        optimizers["sys"] = engine.make_optimizer(list(shead.parameters()), opt_kind, sa["lr"])
        lam = sa["lambda"]

        def sys_loss(nets, b, s_nom, s_var):  # type: ignore[no-untyped-def]
            inputs = torch.cat([s_nom, s_var]).unsqueeze(-1)
            target = torch.cat([torch.zeros_like(s_nom), torch.ones_like(s_var)])
            weight = torch.cat([b["pw"], b["pw"]])
            return nets["sys"].loss(inputs, target, weight)

        def obj_sys(nets, b):  # type: ignore[no-untyped-def]
            with torch.no_grad():
                s_nom = torch.sigmoid(nets["clf"](b["x"]))
                s_var = torch.sigmoid(nets["clf"](b["x_var"]))
            loss = sys_loss(nets, b, s_nom, s_var)
            return {"total": loss, "sys": loss}

        def obj_sys_joint(nets, b):  # type: ignore[no-untyped-def]
            logit = nets["clf"](b["x"])
            l_clf = clf_loss(b, logit)
            l_sys = sys_loss(nets, b, torch.sigmoid(logit), torch.sigmoid(nets["clf"](b["x_var"])))
            return {"total": l_clf - lam * l_sys, "bce": l_clf, "sys": l_sys}

        phases.append(
            engine.Phase(
                "classifier", sa["pretrain_clf_epochs"], [engine.Step("clf", obj_none)], {"clf": lr}
            )
        )
        phases.append(
            engine.Phase(
                "adversary",
                sa["pretrain_adv_epochs"],
                [engine.Step("sys", obj_sys, repeats=sa["steps"], name="sys")],
                {"sys": sa["lr"]},
            )
        )
        phases.append(
            engine.Phase(
                "joint",
                spec["epochs"],
                [
                    engine.Step("sys", obj_sys, repeats=sa["steps"], name="sys"),
                    engine.Step("clf", obj_sys_joint, name="clf"),
                ],
                {"clf": lr, "sys": sa["lr"]},
            )
        )

    elif method == "disco":
        phases.append(
            engine.Phase("disco", spec["epochs"], [engine.Step("clf", obj_disco)], {"clf": lr})
        )
    else:
        phases.append(
            engine.Phase("classifier", spec["epochs"], [engine.Step("clf", obj_none)], {"clf": lr})
        )

    # ----- validation
    n_val_dcor = int(spec.get("validation_dcor_events", 4000))
    val_nonres = (val["dw"] > 0).nonzero().squeeze(-1)[:n_val_dcor]
    y_val = val["y"].cpu().numpy()
    w_val = val["w"].cpu().numpy()

    def validate() -> dict[str, Any]:
        score = torch.sigmoid(clf(val["x"]))
        s_np = score.cpu().numpy()
        out: dict[str, Any] = {
            "val/auc": roc_auc(y_val, s_np, np.abs(w_val)),
            "val/bce": float(clf_loss(val, clf(val["x"]))),
            "val/score_std": float(s_np.std()),
        }
        if len(val_nonres) >= 2:
            idx = val_nonres
            wn = val["dw"][idx]
            wn = wn * len(idx) / wn.sum()
            out["val/dcor_mjj"] = float(
                distance_corr_sq(val["m"][idx].double(), score[idx].double(), wn.double())
            )
        if "x_var" in val:
            s_var = torch.sigmoid(clf(val["x_var"]))
            out["val/sys_score_shift"] = float((val["pw"] * (score - s_var).abs()).mean())
        out["collapsed"] = bool(s_np.std() < spec["collapse_threshold"])
        for fn in validate_extra.values():
            out.update(fn())
        return out

    history = engine.train(
        networks,
        optimizers,
        datasets,
        phases,
        batch_size={
            "train": spec["batch_size"],
            "domain": spec.get("domain", {}).get("batch_size", spec["batch_size"]),
        },
        seed=seed,
        validate=validate,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=spec["checkpoint_every"],
        lr_decay=spec.get("lr_decay"),
        progress=progress,
    )
    hist = history.to_dict()
    last = hist["epochs"][-1] if hist["epochs"] else {}
    hist["collapsed"] = bool(last.get("collapsed", False))
    hist["method"] = method
    hist["fold"] = fold
    clf = clf.cpu().eval()
    return clf, hist


# ----------------------------------------------------------------------------- outputs
def export_onnx(clf: Any, path: str | Path, feature_names: Sequence[str]) -> None:
    """ONNX graph of sigmoid(classifier): input ``features`` (N, F raw, export order)."""
    import onnx
    import torch

    from .io import atomic_path
    from .networks import Probability

    model = Probability(clf).eval()
    example = torch.zeros(4, len(feature_names))
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    with atomic_path(path) as tmp:
        torch.onnx.export(
            model,
            (example,),
            str(tmp),
            input_names=["features"],
            output_names=["score"],
            dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
            dynamo=True,
            verbose=False,
        )
        proto = onnx.load(str(tmp))
        meta = {
            "feature_names": json.dumps(list(feature_names)),
            "used_features": json.dumps([feature_names[i] for i in clf.used.tolist()]),
            "producer": "vhbb",
        }
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(tmp))


def save_model(
    clf: Any, path: str | Path, spec: Mapping[str, Any], feature_names: Sequence[str]
) -> None:
    """Checkpoint loadable with ``torch.load(..., weights_only=True)`` (tensors and plain types)."""
    import torch

    from .io import atomic_path

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

    from .networks import Classifier

    payload = torch.load(path, map_location="cpu", weights_only=True)
    n = payload["n_export_features"]
    clf = Classifier(
        n, payload["used"], [0.0] * n, [1.0] * n, payload["layers"], payload["dropout"]
    )
    clf.load_state_dict(payload["state_dict"])
    clf.feature_names = payload["feature_names"]
    return clf.eval()


def predict(clf: Any, x: np.ndarray, batch_size: int = 65536) -> np.ndarray:
    """Scores (sigmoid outputs) in batches, float64."""
    import torch

    out = np.empty(len(x), dtype=np.float64)
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            xb = torch.as_tensor(x[start : start + batch_size], dtype=torch.float32)
            out[start : start + batch_size] = torch.sigmoid(clf(xb)).numpy()
    return out


def read_scale_factor_values(path: str | Path) -> dict[str, float]:
    """Central values of the control-region scale factors (``results/fits/scale_factors.json``)."""
    data = json.loads(Path(path).read_text())
    sfs = data["scale_factors"]
    return {p: float(v["value"] if isinstance(v, Mapping) else v) for p, v in sfs.items()}


def load_training_data(
    export_path: str | Path,
    *,
    roles: Mapping[str, str],
    spec: Mapping[str, Any],
    weights_path: str | Path | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays of the training region's MC for :func:`build_and_train`."""
    from .export import read_h5

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
        "x_jesUp": arrays["features/jesUp"][mc],
        "x_jesDown": arrays["features/jesDown"][mc],
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
    from .export import read_h5

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

    from .io import atomic_path

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

    from .config import section_hash
    from .io import write_json
    from .provenance import provenance

    data, attrs = load_training_data(export_path, roles=roles, spec=spec, weights_path=weights_path)
    domain = None
    if spec["method"] == "domain_adaptation":
        if scale_factors_path is None:
            raise ConfigError("domain_adaptation needs the control-region scale factors")
        domain = load_domain_data(cr_paths, read_scale_factor_values(scale_factors_path), fold)
    feature_names = list(attrs["feature_names"])
    ckpt_dir = Path(checkpoint_dir)
    tag = section_hash(
        {"spec": spec, "fold": fold, "seed": seed, "export": attrs["provenance"]["config_hash"]}
    )
    tag_file = ckpt_dir / "tag"
    if ckpt_dir.exists() and (not tag_file.exists() or tag_file.read_text() != tag):
        log.info("discarding a checkpoint of a different configuration in %s", ckpt_dir)
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tag_file.write_text(tag)
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
    save_model(clf, outputs["checkpoint"], spec, feature_names)
    export_onnx(clf, outputs["onnx"], feature_names)
    write_json(outputs["history"], history)
    write_json(
        outputs["config"],
        {"model": model, "fold": fold, "seed": seed, "spec": spec, "feature_names": feature_names},
    )
    plot_history(history, outputs["plot"], f"{model} fold {fold}")
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    if history["collapsed"]:
        log.warning("%s fold %d: the score collapsed (near-constant on validation)", model, fold)
    return history
