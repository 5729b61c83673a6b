"""Small reusable blocks: drop path (stochastic depth per op) for the target networks, the
channel shuffle of PC-DARTS' partial-channel connections for the search cells, and the two
offset samplings of DARTS' FactorizedReduce.

DARTS regularises the retrained network by dropping whole op outputs per sample; the
training loop raises the probability linearly from 0 to its final value over the epochs.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["drop_path", "DropPath", "channel_shuffle", "offset_pair"]


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


def offset_pair(x: torch.Tensor, stride: int = 2, groups: int = 1) -> torch.Tensor:
    """FactorizedReduce's two samplings of ``x``: pixels (0, 0), (0, s), ... and the pixels one
    down and right, (1, 1), (1, 1 + s), ..., the latter zero-padded to the former's size where
    the map is odd. For each of ``groups`` channel blocks of ``x`` (one per op instance in a
    bank) the result holds the block's first sampling, then its second: [B, 2 * C, h, w].

    In training its backward writes both gradients into one zero map, where the two slicings'
    backward made a zero map per slice (four, at full or half size) and added them."""
    if x.requires_grad and torch.is_grad_enabled() and not torch.jit.is_tracing() \
            and not torch.compiler.is_compiling():
        return _OffsetPair.apply(x, stride, groups)
    return _offset_pair(x, stride, groups)


def _offset_pair(x: torch.Tensor, stride: int, groups: int) -> torch.Tensor:
    B, GC, H, W = x.shape
    even, odd = x[:, :, ::stride, ::stride], x[:, :, 1::stride, 1::stride]
    h, w = even.shape[-2:]
    if odd.shape[-2:] != (h, w):
        odd = F.pad(odd, (0, w - odd.shape[-1], 0, h - odd.shape[-2]))
    C = GC // groups
    return torch.stack([even.reshape(B, groups, C, h, w), odd.reshape(B, groups, C, h, w)], 2).view(B, 2 * GC, h, w)


class _OffsetPair(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, stride, groups):
        B, GC, H, W = x.shape
        C = GC // groups
        xs = x.unflatten(1, (groups, C))
        even, odd = xs[..., ::stride, ::stride], xs[..., 1::stride, 1::stride]
        h, w = even.shape[-2:]
        ho, wo = odd.shape[-2:]
        y = x.new_empty(B, groups, 2, C, h, w)
        y[:, :, 0].copy_(even)
        if (ho, wo) != (h, w):
            y[:, :, 1].zero_()
        y[:, :, 1, :, :ho, :wo].copy_(odd)
        ctx.conf = x.shape, stride, groups, (ho, wo)
        return y.view(B, 2 * GC, h, w)

    @staticmethod
    def backward(ctx, gy):
        shape, stride, groups, (ho, wo) = ctx.conf
        B, GC, H, W = shape
        C = GC // groups
        g = gy.reshape(B, groups, 2, C, *gy.shape[-2:])
        gx = gy.new_zeros(shape)
        gxs = gx.view(B, groups, C, H, W)
        gxs[..., ::stride, ::stride].copy_(g[:, :, 0])
        odd = gxs[..., 1::stride, 1::stride]
        if stride > 1:  # the samplings read disjoint pixels
            odd.copy_(g[:, :, 1, :, :ho, :wo])
        else:
            odd.add_(g[:, :, 1, :, :ho, :wo])
        return gx, None, None
