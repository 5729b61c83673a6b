"""Small reusable blocks of the target networks: drop path (stochastic depth per op).

DARTS regularises the retrained network by dropping whole op outputs per sample; the
training loop raises the probability linearly from 0 to its final value over the epochs.
"""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["drop_path", "DropPath"]


def drop_path(x: torch.Tensor, drop_prob: float, training: bool = True) -> torch.Tensor:
    """Zero whole samples of ``x`` with probability ``drop_prob``, rescaling the rest.

    Rescaling by 1/keep keeps the expected value unchanged, so eval mode needs no
    correction. Not in place: op outputs may be saved for backward by later ops.
    """
    if not training or drop_prob <= 0.0:
        return x
    if drop_prob >= 1.0:
        # keep=0 would divide by zero; dropping everything is the limit of the formula
        return x * 0.0
    keep = 1.0 - drop_prob
    mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device)
    mask.bernoulli_(keep)
    return x * mask.div_(keep)


class DropPath(nn.Module):
    """Module form of :func:`drop_path` with a mutable ``drop_prob``."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"
