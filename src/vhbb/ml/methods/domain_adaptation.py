"""``domain_adaptation``: gradient reversal.

A domain head on the classifier's last hidden layer separates control-region MC (weighted by
the control-region scale factors) from pseudo-data (the domain-training half of the data only);
the reversed gradient makes the classifier's features indistinguishable.  Phases:
``classifier`` (pre-training, domain head untouched), then ``domain``: every iteration a
classifier step, every ``every``-th iteration a domain step (body + head) on the ``domain``
dataset.  Loss terms: ``clf/bce``, ``domain/domain``; extra validation metric
``val/data_mc_ks`` (KS distance of the data and MC scores of the domain dataset).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from vhbb.core.errors import VhbbError
from vhbb.ml import engine
from vhbb.ml.methods import register
from vhbb.ml.methods.base import Context, Plan, classifier_phase, objective_bce
from vhbb.ml.networks import BinaryHead, grad_reverse
from vhbb.stats.metrics import ks_distance


def domain_dataset(domain: Mapping[str, np.ndarray], device: Any) -> dict[str, Any]:
    """Device tensors ``x``, ``d`` (1 = data), ``w`` (data and MC scaled to equal totals)."""
    dw = np.asarray(domain["weight"], dtype=np.float64)
    is_data = np.asarray(domain["is_data"], dtype=bool)
    for sel in (is_data, ~is_data):  # equal totals for data and MC
        dw[sel] *= 0.5 * len(dw) / dw[sel].sum()
    return {
        "x": torch.as_tensor(domain["x"], dtype=torch.float32, device=device),
        "d": torch.as_tensor(is_data, dtype=torch.float32, device=device),
        "w": torch.as_tensor(dw, dtype=torch.float32, device=device),
    }


def data_mc_ks(clf: Any, dataset: Mapping[str, Any]) -> dict[str, Any]:
    """``val/data_mc_ks``: KS distance between the weighted data and MC scores."""
    s = torch.sigmoid(clf(dataset["x"])).cpu().numpy()
    d = dataset["d"].cpu().numpy().astype(bool)
    w = dataset["w"].cpu().numpy()
    return {"val/data_mc_ks": ks_distance(s[d], w[d], s[~d], w[~d])}


@register("domain_adaptation", needs_domain=True)
def build(ctx: Context) -> Plan:
    if ctx.domain is None:
        raise VhbbError("domain_adaptation needs control-region data (domain dataset)")
    spec, clf = ctx.spec, ctx.clf
    da = spec["domain"]
    lam = da["lambda"]
    lr_domain = ctx.lr * da["lr_multiplier"]
    plan = Plan.classifier(ctx)
    head = BinaryHead(spec["layers"][-1], da["layers"]).to(ctx.device)
    params = list(clf.body.parameters()) + list(head.parameters())
    plan.add("domain", head, ctx.optimizer(params, lr_domain, da.get("optimizer")))
    dataset = domain_dataset(ctx.domain, ctx.device)
    plan.datasets["domain"] = dataset
    plan.batch_size["domain"] = da.get("batch_size", spec["batch_size"])

    def obj_domain(nets: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
        feats = grad_reverse(nets["clf"].features(b["x"]), 1.0)
        loss = lam * nets["domain"].loss(feats, b["d"], b["w"])
        return {"total": loss, "domain": loss}

    steps = [
        engine.Step("clf", objective_bce),
        engine.Step("domain", obj_domain, dataset="domain", every=da["every"]),
    ]
    plan.phases = [
        classifier_phase(ctx, da["pretrain_epochs"]),
        engine.Phase("domain", spec["epochs"], steps, {"clf": ctx.lr, "domain": lr_domain}),
    ]
    plan.metrics.append(lambda: data_mc_ks(clf, dataset))
    plan.monitored_phases = ("domain",)  # validation cross-entropy, after the pre-training
    return plan
