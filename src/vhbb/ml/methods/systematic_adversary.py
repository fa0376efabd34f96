"""``systematic_adversary``: an adversary separates the scores of nominal and JES-varied
events (each event once, up or down at random); the classifier is trained to make them
indistinguishable (``L_clf - lambda * L_sys``).

Phases ``classifier``, ``adversary``, ``joint`` as :mod:`~vhbb.ml.methods.adversarial`; the
training batches carry the JES-varied inputs.  Loss terms: ``sys/sys``; ``clf/bce``,
``clf/sys``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from vhbb.ml.methods import register
from vhbb.ml.methods.base import Context, Plan, classifier_loss, classifier_phase, min_max_phases
from vhbb.ml.networks import BinaryHead


def sys_loss(nets: Mapping[str, Any], b: Mapping[str, Any], s_nom: Any, s_var: Any) -> Any:
    """The adversary's weighted BCE: nominal scores labelled 0, varied scores 1."""
    inputs = torch.cat([s_nom, s_var]).unsqueeze(-1)
    target = torch.cat([torch.zeros_like(s_nom), torch.ones_like(s_var)])
    weight = torch.cat([b["pw"], b["pw"]])
    return nets["sys"].loss(inputs, target, weight)


@register("systematic_adversary", train_variations=True)
def build(ctx: Context) -> Plan:
    sa = ctx.spec["systematic"]
    plan = Plan.classifier(ctx)
    head = BinaryHead(1, sa["layers"]).to(ctx.device)
    plan.add("sys", head, ctx.optimizer(list(head.parameters()), sa["lr"]))
    lam = sa["lambda"]

    def obj_sys(nets: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
        with torch.no_grad():
            s_nom = torch.sigmoid(nets["clf"](b["x"]))
            s_var = torch.sigmoid(nets["clf"](b["x_var"]))
        loss = sys_loss(nets, b, s_nom, s_var)
        return {"total": loss, "sys": loss}

    def obj_sys_joint(nets: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
        logit = nets["clf"](b["x"])
        l_clf = classifier_loss(b, logit)
        l_sys = sys_loss(nets, b, torch.sigmoid(logit), torch.sigmoid(nets["clf"](b["x_var"])))
        return {"total": l_clf - lam * l_sys, "bce": l_clf, "sys": l_sys}

    joint_epochs = ctx.spec["epochs"]
    plan.phases = [
        classifier_phase(ctx, sa["pretrain_clf_epochs"]),
        *min_max_phases(
            "sys", obj_sys, obj_sys_joint, sa, joint_epochs=joint_epochs, clf_lr=ctx.lr
        ),
    ]
    plan.monitored_phases = ("joint",)  # validation cross-entropy of the min-max phase
    return plan
