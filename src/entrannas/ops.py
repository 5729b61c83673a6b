"""Candidate operations and the two operation spaces (paper appendix A, Table 8).

The shared operations use the DARTS definitions, so a DARTS-mode super-net has exactly the
weights of the official DARTS search network. Search cells build them with ``affine=False``
BatchNorm (as DARTS does); target networks with ``affine=True``.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cpuconv import AvgPool2d, BatchNorm2d, Conv2d, MaxPool2d, conv2d
from .layers import offset_pair

__all__ = [
    "OPS",
    "SPACES",
    "op_names",
    "build_op",
    "ReLUConvBN",
    "DilConv",
    "SepConv",
    "FactorizedReduce",
    "FactorizedConv",
    "Zero",
]


class ReLUConvBN(nn.Sequential):
    def __init__(self, C_in: int, C_out: int, kernel: int, stride: int, padding: int, affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            Conv2d(C_in, C_out, kernel, stride=stride, padding=padding, bias=False),
            BatchNorm2d(C_out, affine=affine),
        )


class DilConv(nn.Sequential):
    """ReLU, depthwise (dilated) conv, pointwise conv, BN."""

    def __init__(self, C_in, C_out, kernel, stride, padding, dilation, affine=True):
        super().__init__(
            nn.ReLU(inplace=False),
            Conv2d(C_in, C_in, kernel, stride=stride, padding=padding, dilation=dilation,
                      groups=C_in, bias=False),
            Conv2d(C_in, C_out, 1, bias=False),
            BatchNorm2d(C_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two stacked separable convolutions (DARTS' sep_conv): the stride is on the first."""

    def __init__(self, C_in, C_out, kernel, stride, padding, affine=True):
        super().__init__(
            DilConv(C_in, C_in, kernel, stride, padding, 1, affine),
            DilConv(C_in, C_out, kernel, 1, padding, 1, affine),
        )


class FactorizedConv(nn.Sequential):
    """ReLU, 1xk conv, kx1 conv, BN (the extended space's conv_1xk_kx1)."""

    def __init__(self, C_in, C_out, k, stride, affine=True):
        super().__init__(
            nn.ReLU(inplace=False),
            Conv2d(C_in, C_in, (1, k), stride=(1, stride), padding=(0, k // 2), bias=False),
            Conv2d(C_in, C_out, (k, 1), stride=(stride, 1), padding=(k // 2, 0), bias=False),
            BatchNorm2d(C_out, affine=affine),
        )


class FactorizedReduce(nn.Module):
    """Halves the resolution with two offset stride-2 1x1 convs (DARTS).

    Subsampling first and then running unstrided 1x1 convs computes exactly the strided conv
    (a 1x1 kernel reads one pixel) and avoids the slow strided-conv backward on CPU. The
    offset branch reads pixels (1, 1), (1, 3), ...; on odd sizes (7x7 on Fashion-MNIST) it
    is zero-padded to the other branch's size.
    """

    def __init__(self, C_in: int, C_out: int, affine: bool = True):
        super().__init__()
        if C_out % 2:
            raise ValueError(f"FactorizedReduce needs an even number of output channels, got {C_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = Conv2d(C_in, C_out // 2, 1, bias=False)
        self.conv_2 = Conv2d(C_in, C_out // 2, 1, bias=False)
        self.bn = BatchNorm2d(C_out, affine=affine)
        # 1 in an atrous backbone (segnet.py): the same weights, the offset branch reading
        # the pixel one down and right, the resolution kept
        self.stride = 2

    def forward(self, x):
        return self.reduce(self.relu(x))

    def reduce(self, x):
        """The layer on an input that is already ReLU'd (the super-net ReLUs each cell's output
        once for the two cells that read it)."""
        return self.bn(self.project(x))

    def project(self, x):
        """The two convolutions, before the BatchNorm."""
        # Both branches as one convolution with two groups over the two samplings, which
        # offset_pair lays out side by side: the output keeps the branches' channel order.
        both = offset_pair(x, self.stride)
        return conv2d(both, torch.cat([self.conv_1.weight, self.conv_2.weight]), groups=2)


class Zero(nn.Module):
    """The `none` op. Cells never call it (its output is zero, so it adds nothing to a
    node); it exists so a user can build every op of a space by name."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


def _skip(C, stride, affine):
    return nn.Identity() if stride == 1 else FactorizedReduce(C, C, affine)


OpFactory = Callable[[int, int, bool], nn.Module]

OPS: dict[str, OpFactory] = {
    "none": lambda C, stride, affine: Zero(stride),
    "max_pool_3x3": lambda C, stride, affine: MaxPool2d(3, stride=stride, padding=1),
    "avg_pool_3x3": lambda C, stride, affine: AvgPool2d(3, stride=stride, padding=1,
                                                           count_include_pad=False),
    "skip_connect": _skip,
    "sep_conv_3x3": lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine),
    "sep_conv_5x5": lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine),
    "dil_conv_3x3": lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine),
    "dil_conv_5x5": lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine),
    "conv_1x1": lambda C, stride, affine: ReLUConvBN(C, C, 1, stride, 0, affine),
    "conv_3x3": lambda C, stride, affine: ReLUConvBN(C, C, 3, stride, 1, affine),
    "conv_1x3_3x1": lambda C, stride, affine: FactorizedConv(C, C, 3, stride, affine),
    "conv_1x5_5x1": lambda C, stride, affine: FactorizedConv(C, C, 5, stride, affine),
    "conv_1x7_7x1": lambda C, stride, affine: FactorizedConv(C, C, 7, stride, affine),
}

_STANDARD = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
             "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
SPACES: dict[str, tuple[str, ...]] = {
    "standard": _STANDARD,
    "extended": _STANDARD + ("conv_1x1", "conv_3x3", "conv_1x3_3x1", "conv_1x5_5x1", "conv_1x7_7x1"),
}

POOLS = frozenset({"max_pool_3x3", "avg_pool_3x3"})


def op_names(space: str, include_none: bool = True) -> tuple[str, ...]:
    """The ordered op names of a space; EnTranNAS-DST searches without `none`."""
    if space not in SPACES:
        raise ValueError(f"unknown op space {space!r}; choose one of {sorted(SPACES)}")
    names = SPACES[space]
    return names if include_none else tuple(n for n in names if n != "none")


def build_op(name: str, C: int, stride: int, affine: bool = True) -> nn.Module:
    if name not in OPS:
        raise ValueError(f"unknown operation {name!r}; known: {sorted(OPS)}")
    return OPS[name](C, stride, affine)
