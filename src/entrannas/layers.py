"""Small reusable blocks: drop path (stochastic depth per op) for the target networks, and
the channel shuffle of PC-DARTS' partial-channel connections for the search cells.

DARTS regularises the retrained network by dropping whole op outputs per sample; the
training loop raises the probability linearly from 0 to its final value over the epochs.
"""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["drop_path", "DropPath", "channel_shuffle"]


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


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave ``groups`` equal channel groups (ShuffleNet): channel c of group g moves to
    position c * groups + g. PC-DARTS shuffles after each partial-channel edge so that the
    next edge's mixed op sees other channels than this one's."""
    B, C, H, W = x.shape
    if C % groups:
        raise ValueError(f"channel shuffle: {C} channels do not split into {groups} groups")
    return x.reshape(B, groups, C // groups, H, W).transpose(1, 2).reshape(B, C, H, W)
