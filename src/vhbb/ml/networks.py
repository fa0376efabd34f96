"""Torch networks: the one dense-network builder, the classifier (standardisation inside),
adversary heads, gradient reversal, and the one batched prediction of every network."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn


class Dropout(nn.Dropout):
    """``nn.Dropout`` with a cheaper mask on CPU; on other devices torch's own.

    On CPU torch draws every mask element with its Mersenne-Twister generator
    (``bernoulli_``: ~40 % of a training step of the 3x128 classifier, one thread).  Here one
    64-bit seed is drawn from torch's default generator (so ``torch.manual_seed`` and the RNG
    state a checkpoint keeps still fix every mask) and numpy's PCG64 fills 16 random bits per
    element; an element is kept when they reach ``round(p 65536)``, and kept elements are scaled
    by ``1 / keep`` (the mask, kept for the backward pass, holds 0 or ``1 / keep``).  That is
    dropout with ``p`` rounded to a multiple of 2^-16 (0.05 becomes 0.050003).

    The bits are the bytes of ``default_rng(seed).bytes(2 n)`` (:func:`mask_bits`), taken from
    the generator's raw 64-bit output without the copies ``bytes`` makes; the mask is built in
    torch.  Forward and backward of a 4096 x 128 layer: 0.95 ms against 2.8 ms of ``nn.Dropout``
    and 1.6 ms with ``bytes`` and ``np.where`` (two threads; identical masks and gradients).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu" or self.inplace:
            return super().forward(x)
        threshold = round(self.p * 65536)
        keep = 1.0 - threshold / 65536
        if keep <= 0.0:
            return x * 0.0
        seed = int(torch.randint(0, 2**62, (1,)).item())
        kept = torch.from_numpy(mask_bits(seed, x.numel()) >= threshold)
        # 0 or the float32 (or x's dtype) rounding of 1 / keep, as a multiplication of x
        mask = kept.to(x.dtype).mul_(torch.tensor(1.0 / keep, dtype=x.dtype))
        return x * mask.view(x.shape)


def mask_bits(seed: int, n: int) -> np.ndarray:
    """``n`` uint16 of ``np.random.default_rng(seed).bytes(2 n)`` (the same bits: ``bytes`` is
    the generator's 32-bit draws, little-endian, which are the halves of its 64-bit outputs)."""
    raw = np.random.default_rng(seed).bit_generator.random_raw((2 * n + 7) // 8)
    return raw.astype("<u8", copy=False).view("<u2")[:n]


def mlp(n_in: int, layers: Sequence[int], dropout: float = 0.0) -> tuple[nn.Sequential, int]:
    """Dense ReLU layers; returns the body and its output width.

    The only builder of dense layers in :mod:`vhbb.ml` (classifier, heads, weight network): the
    layers are created in order, so a seeded torch RNG gives the same initial weights.
    """
    mods: list[nn.Module] = []
    width = n_in
    for n in layers:
        mods += [nn.Linear(width, int(n)), nn.ReLU()]
        if dropout > 0:
            mods.append(Dropout(dropout))
        width = int(n)
    return nn.Sequential(*mods), width


def dense(n_in: int, layers: Sequence[int], n_out: int = 1) -> nn.Sequential:
    """``n_in -> layers... -> n_out``: :func:`mlp` followed by a linear output layer, flat."""
    body, width = mlp(n_in, layers)
    return nn.Sequential(*body, nn.Linear(width, n_out))


#: Rows per forward pass of :func:`predict` by device type.
PREDICT_BATCH = {"cpu": 4096, "other": 65536}


def predict_rows(device: Any = None) -> int:
    """:data:`PREDICT_BATCH` of ``device`` (None: CPU)."""
    cpu = device is None or torch.device(device).type == "cpu"
    return PREDICT_BATCH["cpu" if cpu else "other"]


def predict(
    net: nn.Module,
    x: Any,
    *,
    batch_size: int | None = None,
    sigmoid: bool = False,
    device: Any = None,
) -> np.ndarray:
    """Outputs of ``net`` on the rows of ``x`` (array or tensor), one float64 value a row.

    In batches of ``batch_size`` rows, eval mode, no gradients; ``sigmoid``: the probability
    of a logit network (computed in float32, as the network).  ``device``: where a batch of an
    array goes (default CPU; a tensor stays where it is).  The default batch size is
    :data:`PREDICT_BATCH` of the device: on CPU a batch whose activations stay in the cache
    (4096 rows of the 3x128 classifier: 2.1x the rows per second of 65536 on one thread, 2.5x
    on two; every row's output is its own, whatever the batch).
    """
    net.eval()
    parts = []
    if batch_size is None:
        batch_size = predict_rows(device if device is not None else getattr(x, "device", None))
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            xb = torch.as_tensor(x[start : start + batch_size], dtype=torch.float32, device=device)
            out = net(xb).reshape(-1)
            if sigmoid:
                out = torch.sigmoid(out)
            parts.append(out.double().cpu().numpy())
    return np.concatenate(parts) if parts else np.zeros(0)


class Classifier(nn.Module):
    """Takes raw features in export order; selects the model's inputs and standardises them
    inside the network (so the ONNX graph needs no external preprocessing); returns a logit."""

    def __init__(
        self,
        n_export_features: int,
        used: Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        layers: Sequence[int],
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.register_buffer("used", torch.as_tensor(list(used), dtype=torch.long))
        self.register_buffer("mean", torch.as_tensor([mean[i] for i in used], dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor([std[i] for i in used], dtype=torch.float32))
        self.n_export_features = n_export_features
        self.body, width = mlp(len(used), layers, dropout)
        self.head = nn.Linear(width, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.index_select(1, self.used) - self.mean) / self.std
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or torch.is_grad_enabled():
            return self.head(self.features(x)).squeeze(-1)
        return self._inference(x)

    def _inference(self, x: torch.Tensor) -> torch.Tensor:
        """The eval-mode forward without autograd (scoring, validation): each ``Linear`` as the
        ``addmm`` that ``F.linear`` runs for a 2-D input, each ReLU in place, dropout skipped
        (the identity in eval mode): the module path's values bit for bit, ~11 % faster on
        one thread (no new activation per ReLU)."""
        h = (x.index_select(1, self.used) - self.mean) / self.std
        for mod in (*self.body, self.head):
            if isinstance(mod, nn.Linear):
                w = mod.weight.t()
                h = h @ w if mod.bias is None else torch.addmm(mod.bias, h, w)
            elif isinstance(mod, nn.ReLU):
                h = h.relu_()
            elif not isinstance(mod, nn.Dropout):
                h = mod(h)
        return h.squeeze(-1)


class Probability(nn.Module):
    """Classifier + sigmoid: the exported scoring function."""

    def __init__(self, classifier: Classifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.classifier(x))


class _Head(nn.Module):
    """A dense body and a linear output layer (``body``, ``out``): the base of the heads."""

    def __init__(self, n_in: int, layers: Sequence[int], n_out: int) -> None:
        super().__init__()
        self.body, width = mlp(n_in, layers)
        self.out = nn.Linear(width, n_out)

    def raw(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(inputs))


class GaussianMixtureHead(_Head):
    """Adversary: p(m | score[, pT]) as a mixture of K Gaussians; loss = weighted NLL."""

    def __init__(self, n_in: int, layers: Sequence[int], components: int) -> None:
        super().__init__(n_in, layers, 3 * components)
        self.k = components

    def loss(
        self, inputs: torch.Tensor, target: torch.Tensor, weight: torch.Tensor
    ) -> torch.Tensor:
        h = self.raw(inputs)
        logit, mu, log_sigma = h.split(self.k, dim=-1)
        log_sigma = log_sigma.clamp(-5.0, 3.0)
        z = (target.unsqueeze(-1) - mu) * torch.exp(-log_sigma)
        log_n = -0.5 * z * z - log_sigma - 0.5 * math.log(2 * math.pi)
        log_p = torch.logsumexp(torch.log_softmax(logit, dim=-1) + log_n, dim=-1)
        return -(weight * log_p).sum() / weight.sum().clamp_min(1e-12)


class RegressionHead(_Head):
    """Adversary: mean-squared-error regression of m (earlier CMS VH(bb) studies)."""

    def __init__(self, n_in: int, layers: Sequence[int]) -> None:
        super().__init__(n_in, layers, 1)

    def loss(
        self, inputs: torch.Tensor, target: torch.Tensor, weight: torch.Tensor
    ) -> torch.Tensor:
        pred = self.raw(inputs).squeeze(-1)
        return (weight * (pred - target) ** 2).sum() / weight.sum().clamp_min(1e-12)


class BinaryHead(_Head):
    """A discriminator (domain head, systematic adversary): weighted BCE on a logit."""

    def __init__(self, n_in: int, layers: Sequence[int]) -> None:
        super().__init__(n_in, layers, 1)

    def logit(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.raw(inputs).squeeze(-1)

    def loss(
        self, inputs: torch.Tensor, target: torch.Tensor, weight: torch.Tensor
    ) -> torch.Tensor:
        bce = nn.functional.binary_cross_entropy_with_logits(
            self.logit(inputs), target, reduction="none"
        )
        return (weight * bce).sum() / weight.sum().clamp_min(1e-12)


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):  # type: ignore[no-untyped-def]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        return -ctx.scale * grad, None


def grad_reverse(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Identity forward, gradient multiplied by ``-scale`` backward (Ganin & Lempitsky)."""
    return _GradReverse.apply(x, scale)
