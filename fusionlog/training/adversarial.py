"""ZeroLog's domain-adversarial part: a gradient-reversal layer and a small domain discriminator.

The discriminator learns to tell source features from target-pool features; the reversed gradient
pushes the session model to make them indistinguishable, i.e. system-agnostic. Only the pooled GRU
feature is aligned; the target pool enters without labels.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, lam: float) -> torch.Tensor:  # noqa: D401
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.lam * grad, None


def grad_reverse(x: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """Identity forward; multiplies the gradient by -lam backward."""
    return _GradReverse.apply(x, lam)


class GradientReversal(nn.Module):
    def __init__(self, lam: float = 1.0) -> None:
        super().__init__()
        self.lam = lam

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grad_reverse(x, self.lam)


class DomainDiscriminator(nn.Module):
    """Pooled feature → logit of "comes from the target system"."""

    def __init__(self, feature_dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(feature_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor, lam: float) -> torch.Tensor:
        return self.net(grad_reverse(features, lam)).squeeze(-1)


def dann_schedule(progress: float) -> float:
    """DANN's ramp 2/(1+exp(-10p)) - 1: the discriminator's pull starts at 0 while features are noise."""
    return 2.0 / (1.0 + math.exp(-10.0 * min(max(progress, 0.0), 1.0))) - 1.0


def domain_loss(
    discriminator: DomainDiscriminator, source: torch.Tensor, target: torch.Tensor, lam: float
) -> tuple[torch.Tensor, float]:
    """Class-balanced BCE of source (0) vs target (1) features; also the discriminator's accuracy."""
    logits = discriminator(torch.cat([source, target]), lam)
    labels = torch.cat([source.new_zeros(len(source)), source.new_ones(len(target))])
    weights = torch.cat(
        [source.new_full((len(source),), 0.5 / len(source)), source.new_full((len(target),), 0.5 / len(target))]
    )
    loss = (nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none") * weights).sum()
    acc = float(((logits > 0).float() == labels).float().mean())
    return loss, acc
