"""``disco``: cross-entropy + lambda * dCor^2(score, m_jj) over the batch's non-resonant
background (positive weights normalised to mean 1 per batch), optional pT_jj term.

Loss terms (prefix ``clf/``): ``bce``, ``disco`` and ``skipped_batches`` (batches with fewer
than two non-resonant background events, whose DisCo term is 0).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from vhbb.ml import engine
from vhbb.ml.methods import register
from vhbb.ml.methods.base import Context, Plan, classifier_loss, decorrelated_objective
from vhbb.stats.disco import distance_corr_sq


def disco_term(settings: Mapping[str, Any], b: Mapping[str, Any], score: Any) -> tuple[Any, Any]:
    """lambda * dCor^2 over the batch's non-resonant background (weights > 0 only).

    On CPU the members are gathered first (the O(n^2) term then costs only the members); on
    CUDA the whole batch is used with zero weights outside (exact: zero-weight rows drop out of
    the weighted V-statistic) so shapes stay static and nothing syncs the host.  The tiled form
    is used at every size (``threshold=1``: the N x N reference form, autograd through six
    matrices, is about three times slower at a thousand members on CPU, one thread).  A
    batch with fewer than two members contributes 0 and is counted in ``skipped_batches``.
    Returns ``(term, skipped)``; ``settings``: the spec's ``disco`` section.
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
    terms = settings["lambda"] * distance_corr_sq(m, s, w, threshold=1)
    if settings.get("pt_lambda", 0.0) > 0:
        terms = terms + settings["pt_lambda"] * distance_corr_sq(pt, s, w, threshold=1)
    return terms * ok, (~ok).float()


def objective(settings: Mapping[str, Any]) -> engine.Objective:
    """The DisCo-regularised classifier objective (``settings``: the spec's ``disco``)."""

    def obj_disco(nets: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
        logit = nets["clf"](b["x"])
        l_clf = classifier_loss(b, logit)
        l_dc, skipped = disco_term(settings, b, torch.sigmoid(logit))
        return {"total": l_clf + l_dc, "bce": l_clf, "disco": l_dc, "skipped_batches": skipped}

    return obj_disco


def phase(ctx: Context, epochs: int) -> engine.Phase:
    """``epochs`` of the DisCo-regularised classifier (phase ``disco``)."""
    step = engine.Step("clf", objective(ctx.spec["disco"]))
    return engine.Phase("disco", epochs, [step], {"clf": ctx.lr})


@register("disco")
def build(ctx: Context) -> Plan:
    plan = Plan.classifier(ctx)
    plan.phases.append(phase(ctx, ctx.spec["epochs"]))
    # validation objective: the training loss (cross-entropy + lambda dCor^2) on held-out events
    plan.objective = decorrelated_objective(ctx.spec["disco"]["lambda"])
    return plan
