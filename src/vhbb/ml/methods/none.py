"""``none``: the weighted cross-entropy alone (no decorrelation)."""

from __future__ import annotations

from vhbb.ml.methods import register
from vhbb.ml.methods.base import Context, Plan, classifier_phase


@register("none")
def build(ctx: Context) -> Plan:
    plan = Plan.classifier(ctx)
    plan.phases.append(classifier_phase(ctx, ctx.spec["epochs"]))
    return plan
