"""Faster CPU forms of the narrow convolutions and pools of NAS cells, with the same results.

A search cell's ops run on maps of 4 to 64 channels (C=16 with the bottleneck of 4 gives 4),
where oneDNN's NCHW kernels on a CPU are slow:

* a 1x1 convolution (every op's pointwise half, the cells' preprocessing, FactorizedReduce)
  costs up to 30x what the same product costs as a batched matrix product: [64, 4, 32, 32]
  with a [4, 4] kernel took 5.6 ms forward and backward against 0.18 ms as `matmul`;
* a stride-1 depthwise convolution's backward is 3 to 5x slower on an NCHW map than on the
  same map in channels_last, even counting the two copies: [64, 4, 32, 32], 5x5: 9.4 against
  3.2 ms. At stride 2 the copies cost more than they save, so strided ones stay as they are;
* a stride-1 3x3 max or average pool of 8 or more channels is up to 6x faster on a
  channels_last map ([64, 64, 16, 16]: 16.7 against 7.5 ms with the copies); at stride 2
  the copies cost more again.

So on a CPU, for a float NCHW map, `conv2d` runs 1x1 convolutions as `matmul` and stride-1
depthwise convolutions over a channels_last copy, and `pool_3x3` pools a channels_last copy;
outputs come back NCHW. Only the order of sums changes: in float64 a whole super-net's
outputs and gradients agree with the plain calls to 1e-12, in float32 each op's to float
rounding (tests/test_cpuconv.py). On CUDA, for maps a run already keeps channels_last, and
while a model is traced or compiled (so exported graphs keep their convolutions), everything
goes to the plain functional call. `ENABLED = False` turns the forms off (benchmarks compare
both in one process).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["conv2d", "pool_3x3", "Conv2d", "MaxPool2d", "AvgPool2d", "ENABLED"]

ENABLED = True


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _nchw_cpu(x: torch.Tensor) -> bool:
    """A float map on the CPU that is not channels_last (a strided view counts: the forms
    below copy it, as oneDNN does). Not while a graph is traced or compiled, so exported
    models (export.py) keep their convolutions and pools."""
    return ENABLED and x.device.type == "cpu" and x.dim() == 4 and x.is_floating_point() and \
        (x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last)) and \
        not torch.jit.is_tracing() and not torch.compiler.is_compiling()


def _via_channels_last(fn, x: torch.Tensor, stride) -> torch.Tensor:
    """fn (a pool) on a channels_last copy of an NCHW map of 8 or more channels at stride 1,
    the result NCHW."""
    if _nchw_cpu(x) and x.shape[1] >= 8 and stride in (1, (1, 1)):
        return fn(x.contiguous(memory_format=torch.channels_last)).contiguous()
    return fn(x)


def conv2d(x: torch.Tensor, w: torch.Tensor, stride=1, padding=0, dilation=1, groups: int = 1) -> torch.Tensor:
    """F.conv2d without a bias, in the fastest equivalent form for the map (module docstring)."""
    if _nchw_cpu(x):
        stride, padding = _pair(stride), _pair(padding)
        B, C, H, W = x.shape
        if w.shape[-2:] == (1, 1) and stride == (1, 1) and padding == (0, 0):
            # One product per group: [G, Co, Ci] @ [B, G, Ci, HW], batched over B x G.
            G, Co, Ci = groups, w.shape[0] // groups, w.shape[1]
            y = torch.matmul(w.reshape(G, Co, Ci), x.reshape(B, G, Ci, H * W))
            return y.reshape(B, G * Co, H, W)
        if groups == C == w.shape[0] and w.shape[1] == 1 and stride == (1, 1) and C > 1:
            y = F.conv2d(x.contiguous(memory_format=torch.channels_last), w, None, stride,
                         padding, dilation, groups)
            return y.contiguous()
    return F.conv2d(x, w, None, stride, padding, dilation, groups)


def pool_3x3(kind: str, x: torch.Tensor, stride: int) -> torch.Tensor:
    """DARTS' max_pool_3x3 / avg_pool_3x3 (padding 1, the average not counting the padding)."""
    if kind == "max":
        return _via_channels_last(lambda t: F.max_pool2d(t, 3, stride, 1), x, stride)
    return _via_channels_last(lambda t: F.avg_pool2d(t, 3, stride, 1, count_include_pad=False), x, stride)


class Conv2d(nn.Conv2d):
    """nn.Conv2d (same weights and state dict) whose bias-free forward uses `conv2d`."""

    def _conv_forward(self, x, weight, bias):
        if bias is not None or self.padding_mode != "zeros" or isinstance(self.padding, str):
            return super()._conv_forward(x, weight, bias)
        return conv2d(x, weight, self.stride, self.padding, self.dilation, self.groups)


class MaxPool2d(nn.MaxPool2d):
    """nn.MaxPool2d, pooling a channels_last copy of a wide enough NCHW map on a CPU."""

    def forward(self, x):
        return _via_channels_last(super().forward, x, self.stride)


class AvgPool2d(nn.AvgPool2d):
    """nn.AvgPool2d, pooling a channels_last copy of a wide enough NCHW map on a CPU."""

    def forward(self, x):
        return _via_channels_last(super().forward, x, self.stride)
