"""What every training method shares: its input (:class:`Context`), its output (:class:`Plan`),
the weighted cross-entropy and the phase shapes (plain classifier, adversarial min-max).

Batches are dicts of device tensors (see :func:`vhbb.ml.train.batch_tensors`): ``x``, ``y``
(label), ``w`` (class-balanced loss weight), ``dw`` (decorrelation weight, zero outside the
non-resonant background, mean 1), ``m`` and ``pt`` (standardised m_jj and pT_jj) and, where
:attr:`vhbb.ml.methods.Method.train_variations` asks for them, ``x_var`` (JES-varied inputs) and
``pw`` (positive weight, mean 1).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from vhbb.ml import engine
from vhbb.ml.networks import Classifier

Metrics = Callable[[], dict[str, Any]]


@dataclass
class Context:
    """What a method's build function gets: the model spec, the (initialised) classifier, the
    device and, for methods that need them, the control-region data (``x``, ``is_data``,
    ``weight``)."""

    spec: Mapping[str, Any]
    clf: Classifier
    device: Any
    domain: Mapping[str, np.ndarray] | None = None

    @property
    def lr(self) -> float:
        return self.spec["lr"]

    def optimizer(self, params: list[Any], lr: float, kind: str | None = None) -> Any:
        """An optimiser of the spec's kind (or ``kind``) over ``params``."""
        return engine.make_optimizer(params, kind or self.spec["optimizer"], lr)


@dataclass
class Plan:
    """A method's training: networks and optimisers by name (the classifier is ``clf``), the
    phases, the datasets beside ``train`` with their batch sizes, and extra validation metrics
    (called after every epoch, networks in eval mode, merged into the history)."""

    networks: dict[str, Any]
    optimizers: dict[str, Any]
    phases: list[engine.Phase] = field(default_factory=list)
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)
    batch_size: dict[str, int] = field(default_factory=dict)
    metrics: list[Metrics] = field(default_factory=list)
    #: the validation objective early stopping monitors (lower is better), from an epoch's
    #: history entry; default: the classifier's validation cross-entropy
    objective: Callable[[Mapping[str, Any]], float] = field(default=lambda e: e["val/bce"])
    #: the phases in which early stopping acts (None: all; pre-training phases never stop)
    monitored_phases: tuple[str, ...] | None = None

    @classmethod
    def classifier(cls, ctx: Context) -> Plan:
        """The classifier and its optimiser, no phase yet."""
        clf = ctx.clf
        return cls({"clf": clf}, {"clf": ctx.optimizer(list(clf.parameters()), ctx.lr)})

    def add(self, key: str, network: Any, optimizer: Any) -> None:
        self.networks[key] = network
        self.optimizers[key] = optimizer


def decorrelated_objective(weight: float) -> Callable[[Mapping[str, Any]], float]:
    """``val/bce + weight * val/dcor_mjj``: the classifier loss plus its decorrelation term on
    the validation events.  dCor^2 does not depend on an adversary, so a winning adversary (a
    large adversary loss) is never rewarded."""

    def objective(entry: Mapping[str, Any]) -> float:
        return float(entry["val/bce"]) + weight * float(entry.get("val/dcor_mjj", 0.0))

    return objective


def classifier_loss(b: Mapping[str, Any], logit: Any) -> Any:
    """Weighted binary cross-entropy of the classifier (mean over the batch)."""
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    return (b["w"] * bce(logit, b["y"], reduction="none")).mean()


def objective_bce(nets: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Loss terms of the plain classifier: ``bce`` (= ``total``)."""
    loss = classifier_loss(b, nets["clf"](b["x"]))
    return {"total": loss, "bce": loss}


def classifier_phase(ctx: Context, epochs: int, name: str = "classifier") -> engine.Phase:
    """``epochs`` of the plain weighted cross-entropy."""
    return engine.Phase(name, epochs, [engine.Step("clf", objective_bce)], {"clf": ctx.lr})


def min_max_phases(
    key: str,
    adversary: engine.Objective,
    joint: engine.Objective,
    settings: Mapping[str, Any],
    *,
    joint_epochs: int,
    clf_lr: float,
) -> list[engine.Phase]:
    """An adversary ``key`` pre-trained alone (phase ``adversary``), then the alternating
    min-max (phase ``joint``): ``steps`` adversary updates on ``adversary``, one classifier
    update on ``joint`` (which subtracts lambda times the adversary's loss).

    ``settings``: the adversary's spec section (``steps``, ``lr``, ``pretrain_adv_epochs``).
    """
    lr = settings["lr"]
    adv_steps = [engine.Step(key, adversary, repeats=settings["steps"], name=key)]
    return [
        engine.Phase("adversary", settings["pretrain_adv_epochs"], adv_steps, {key: lr}),
        engine.Phase(
            "joint",
            joint_epochs,
            [*adv_steps, engine.Step("clf", joint, name="clf")],
            {"clf": clf_lr, key: lr},
        ),
    ]
