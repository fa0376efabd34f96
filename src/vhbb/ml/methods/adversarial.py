"""``adversarial``: an adversary sees the score (optionally pT_jj) and models m_jj of the
non-resonant background (Gaussian-mixture posterior by default, or MSE regression).

Alternating min-max: the adversary minimises its loss, the classifier minimises
``L_clf - lambda * L_adv`` w.r.t. its own parameters; phases ``classifier`` (classifier only),
``adversary`` (adversary only), ``joint`` (both).  Loss terms: ``adv/adv``; ``clf/bce``,
``clf/adv``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from vhbb.ml import engine
from vhbb.ml.methods import register
from vhbb.ml.methods.base import (
    Context,
    Plan,
    classifier_loss,
    classifier_phase,
    decorrelated_objective,
    min_max_phases,
)
from vhbb.ml.networks import GaussianMixtureHead, RegressionHead


def adversary_phases(ctx: Context, plan: Plan, joint_epochs: int) -> list[engine.Phase]:
    """Add the m_jj adversary (``adv``) to ``plan``; return its ``adversary`` and ``joint``
    phases (the joint phase runs ``joint_epochs``)."""
    cfg = ctx.spec["adversary"]
    use_pt = bool(cfg.get("use_pt", False))
    n_in = 2 if use_pt else 1
    head = (
        GaussianMixtureHead(n_in, cfg["layers"], cfg["components"])
        if cfg["head"] == "gmm"
        else RegressionHead(n_in, cfg["layers"])
    ).to(ctx.device)
    plan.add("adv", head, ctx.optimizer(list(head.parameters()), cfg["lr"]))
    lam = cfg["lambda"]

    def adv_inputs(b: Mapping[str, Any], score: Any) -> Any:
        cols = [score.unsqueeze(-1)]
        if use_pt:
            cols.append(b["pt"].unsqueeze(-1))
        return torch.cat(cols, dim=-1)

    def obj_adv(nets: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
        with torch.no_grad():
            score = torch.sigmoid(nets["clf"](b["x"]))
        loss = nets["adv"].loss(adv_inputs(b, score), b["m"], b["dw"])
        return {"total": loss, "adv": loss}

    def obj_joint(nets: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
        logit = nets["clf"](b["x"])
        l_clf = classifier_loss(b, logit)
        l_adv = nets["adv"].loss(adv_inputs(b, torch.sigmoid(logit)), b["m"], b["dw"])
        return {"total": l_clf - lam * l_adv, "bce": l_clf, "adv": l_adv}

    clf_lr = ctx.lr * cfg.get("joint_lr_factor", 1.0)
    return min_max_phases("adv", obj_adv, obj_joint, cfg, joint_epochs=joint_epochs, clf_lr=clf_lr)


@register("adversarial")
def build(ctx: Context) -> Plan:
    plan = Plan.classifier(ctx)
    pretrain = classifier_phase(ctx, ctx.spec["adversary"]["pretrain_clf_epochs"])
    plan.phases = [pretrain, *adversary_phases(ctx, plan, joint_epochs=ctx.spec["epochs"])]
    stop_on_decorrelated_loss(ctx, plan)
    return plan


def stop_on_decorrelated_loss(ctx: Context, plan: Plan) -> None:
    """Early stopping on ``val/bce + w * val/dcor_mjj`` in the ``joint`` phase only (the
    adversary's own loss is not monitored: a winning adversary must not look like progress);
    ``w`` is ``early_stopping.decorrelation_weight``."""
    weight = (ctx.spec.get("early_stopping") or {}).get("decorrelation_weight", 0.0)
    plan.objective = decorrelated_objective(weight)
    plan.monitored_phases = ("joint",)
