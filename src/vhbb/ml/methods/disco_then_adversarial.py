"""``disco_then_adversarial``: :mod:`~vhbb.ml.methods.disco` for ``disco_fraction`` of the
epochs (at least one), then the :mod:`~vhbb.ml.methods.adversarial` adversary and min-max for
the rest (at least one joint epoch)."""

from __future__ import annotations

from vhbb.ml.methods import adversarial, disco, register
from vhbb.ml.methods.base import Context, Plan


@register("disco_then_adversarial")
def build(ctx: Context) -> Plan:
    epochs = ctx.spec["epochs"]
    n_disco = max(1, round(epochs * ctx.spec["disco_fraction"]))
    plan = Plan.classifier(ctx)
    adversary = adversarial.adversary_phases(ctx, plan, joint_epochs=max(1, epochs - n_disco))
    plan.phases = [disco.phase(ctx, n_disco), *adversary]
    adversarial.stop_on_decorrelated_loss(ctx, plan)
    return plan
