"""Faster CPU forms of the narrow convolutions, pools and BatchNorms of NAS cells, with the same
results.

A search cell's ops run on maps of 4 to 64 channels (C=16 with the bottleneck of 4 gives 4),
where oneDNN's NCHW kernels on a CPU are slow:

* a 1x1 convolution (every op's pointwise half, the cells' preprocessing, FactorizedReduce)
  costs up to 30x what the same arithmetic costs as a batched matrix product: [64, 4, 32, 32]
  with a [4, 4] kernel took 5.6 ms forward and backward against 0.18 ms as products;
* a stride-1 depthwise convolution's NCHW backward is slow (its kernels' gradient most): on
  [64, 4, 32, 32] with 5x5 kernels it took 5.57 ms, 1.70 ms on channels_last copies, and
  1.62 ms as this module's form, of which 0.47 ms for the input gradient, computed as the
  forward convolution of the output's gradient with flipped kernels. Its forward is fastest
  with the batch folded into the channels (one sample of B x C channels): 0.26 against
  0.57 ms. At stride 2 the plain call stays;
* a 3x3 max or average pool (stride 1 or 2) is 2 to 3.5x faster, forward and backward, on a
  channels_last copy with 16 or more channels than on the NCHW map: ATen's channels_last
  kernels vectorise over channels (its NCHW ones do not), so a narrow map is viewed with
  several samples side by side as channels first. [64, 4, 32, 32], stride 1: max 3.51 against
  1.24 ms, average 2.17 against 1.02 ms, copies included (benchmarks/RESULTS.md);
* BatchNorm's backward is 3 to 4.5x slower when its gradient is a channel block of a wider one
  (a concatenation's), which sends ATen into a serial per-channel loop; its training-mode
  forward gathers the statistics in serial per-channel loops with a float64 accumulator:
  1.0-1.3 ms for [64, 16, 32, 32] against 0.26-0.35 ms as vectorised sums.

So on a CPU, for a float NCHW map, `conv2d` runs stride-1 1x1 convolutions as `bmm` and stride-1
depthwise convolutions batch-folded, `pool_3x3` pools a channels_last copy, and `batch_norm`
(and `BatchNorm2d`) takes its statistics as vectorised sums and hands its backward a contiguous
gradient; outputs come back NCHW. Only the order of sums
changes: in float64 a whole super-net's
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

from . import narrowbn

__all__ = ["conv2d", "pool_3x3", "batch_norm", "Conv2d", "BatchNorm2d", "MaxPool2d", "AvgPool2d", "ENABLED"]

ENABLED = True
# Whether the forms also run inside graphs that torch.compile traces. Off, so exports keep
# plain convolutions; benchmarks/compile_step.py --forms turns it on to time compiled cells
# with them.
IN_COMPILED = False


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _nchw_cpu(x: torch.Tensor) -> bool:
    """A float map on the CPU that is not channels_last (a strided view counts: the forms
    below copy it, as oneDNN does). Not while a graph is traced or compiled, so exported
    models (export.py) keep their convolutions and pools, and not under CPU autocast (bf16),
    whose casts the plain calls make."""
    return ENABLED and x.device.type == "cpu" and x.dim() == 4 and x.is_floating_point() and \
        (x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last)) and \
        not torch.jit.is_tracing() and (IN_COMPILED or not torch.compiler.is_compiling()) and \
        not torch.is_autocast_enabled("cpu")


def _cl(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


# The forms are autograd Functions rather than compositions of the same calls, for two reasons:
# a composed `x.contiguous(channels_last)` hands its channels_last gradient on to the op before
# it (a ReLU), whose backward then mixes layouts (elementwise backwards slow down when a
# gradient and the saved tensor differ in layout); and the composed forms saved their copies
# for the backward, raising the EnTranNAS step's peak memory at batch 64 from 1.02 to 1.22 GiB
# (benchmarks/RESULTS.md, 2026-12-03). Each Function below saves what the plain call saves (or
# less) and hands back NCHW gradients.


class _Pointwise(torch.autograd.Function):
    """A stride-1, unpadded 1x1 convolution as one product per sample and group: `matmul` of
    the [G, Co, Ci] weights with the [B, G, Ci, HW] map, which runs as one bmm over B x G
    (the weights broadcast over the batch)."""

    @staticmethod
    def forward(ctx, x, w, groups):
        B, _, H, W = x.shape
        G, Co, Ci = groups, w.shape[0] // groups, w.shape[1]
        # The input only serves the weight's gradient (none in the architecture step).
        ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, w)
        ctx.groups, ctx.shape = groups, x.shape
        y = torch.matmul(w.reshape(G, Co, Ci), x.reshape(B, G, Ci, H * W))
        return y.view(B, G * Co, H, W)

    @staticmethod
    def backward(ctx, gy):
        x, w = ctx.saved_tensors
        B, _, H, W = ctx.shape
        G, Co, Ci = ctx.groups, w.shape[0] // ctx.groups, w.shape[1]
        gy = gy.reshape(B, G, Co, H * W)
        gx = gw = None
        if ctx.needs_input_grad[0]:
            gx = torch.matmul(w.reshape(G, Co, Ci).mT, gy).view(ctx.shape)
        if ctx.needs_input_grad[1]:
            gw = torch.matmul(gy, x.reshape(B, G, Ci, H * W).mT).sum(0).view(w.shape)
        return gx, gw, None


class _Depthwise(torch.autograd.Function):
    """A stride-1 depthwise convolution with the batch folded into the channels: the map is
    viewed as one sample of B x C channels and the kernels repeated B times (a few KB), the
    shape oneDNN's NCHW depthwise kernels are fast on.

    The input's gradient of a 'same'-padded stride-1 convolution is the same convolution of
    the output's gradient with the kernels flipped, so it runs as that forward (3-4x faster
    than oneDNN's backward on these maps). The kernels' gradient is oneDNN's backward, on the
    folded NCHW map for 3x3 kernels and on channels_last copies for the others, where that
    kernel is several times faster (benchmarks/RESULTS.md). Saves the input only for the
    kernels' gradient (which the op before it, a ReLU, keeps anyway)."""

    @staticmethod
    def forward(ctx, x, w, padding, dilation):
        B, C, H, W = x.shape
        ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, w)
        ctx.conf = padding, dilation, x.shape
        y = F.conv2d(x.reshape(1, B * C, H, W), _repeat(w, B), None, 1, padding, dilation, B * C)
        return y.view(B, C, *y.shape[-2:])

    @staticmethod
    def backward(ctx, gy):
        x, w = ctx.saved_tensors
        padding, dilation, shape = ctx.conf
        B, C, H, W = shape
        k = w.shape[-2:]
        gx = gw = None
        if ctx.needs_input_grad[0]:
            if all(2 * p == d * (n - 1) for p, d, n in zip(padding, dilation, k)):  # 'same'
                gx = F.conv2d(gy.reshape(1, B * C, H, W), _repeat(w.flip(-2, -1), B), None, 1, padding,
                              dilation, B * C).view(shape)
            else:
                gx = torch.ops.aten.convolution_backward(_cl(gy), _cl(x if x is not None else gy.new_zeros(shape)),
                                                         w, None, (1, 1), padding, dilation, False, (0, 0), C,
                                                         (True, False, False))[0].contiguous()
        if ctx.needs_input_grad[1]:
            if k == (3, 3) and dilation == (1, 1):
                gw = torch.ops.aten.convolution_backward(
                    gy.reshape(1, B * C, *gy.shape[-2:]), x.reshape(1, B * C, H, W), _repeat(w, B), None, (1, 1),
                    padding, dilation, False, (0, 0), B * C, (False, True, False))[1]
                gw = gw.view(B, C, 1, *k).sum(0)
            else:
                gw = torch.ops.aten.convolution_backward(_cl(gy), _cl(x), w, None, (1, 1), padding, dilation,
                                                         False, (0, 0), C, (False, True, False))[1]
        return gx, gw, None, None


def _repeat(w: torch.Tensor, B: int) -> torch.Tensor:
    """Depthwise kernels [C, 1, k, k] for a batch folded into channels: [B x C, 1, k, k]."""
    return w.repeat(B, 1, 1, 1)


class _Pool(torch.autograd.Function):
    """A 3x3 pool (padding 1, stride 1 or 2) over a channels_last copy of the map with `fold`
    samples side by side as channels ([B, C] -> [B / fold, fold * C], the same NCHW memory):
    ATen's channels_last pools vectorise over channels, which a 4-channel map leaves mostly
    idle. Its backward needs only the input's shape (and the max's indices, which are per
    plane and so the same in either view), so the copy is not kept."""

    @staticmethod
    def forward(ctx, x, kind, stride, fold):
        B, C, H, W = x.shape
        xf = _folded_cl(x, fold)
        ctx.kind, ctx.stride, ctx.shape, ctx.folded = kind, stride, x.shape, xf.shape
        if kind == "max":
            y, idx = F.max_pool2d(xf, 3, stride, 1, return_indices=True)
            ctx.save_for_backward(idx)
        else:
            y = F.avg_pool2d(xf, 3, stride, 1, count_include_pad=False)
        return y.contiguous().view(B, C, *y.shape[-2:])

    @staticmethod
    def backward(ctx, gy):
        gyf = _folded_cl(gy, ctx.shape[0] // ctx.folded[0])
        like = torch.empty(ctx.folded, dtype=gy.dtype, memory_format=torch.channels_last)  # shape only
        s = (ctx.stride, ctx.stride)
        if ctx.kind == "max":
            (idx,) = ctx.saved_tensors
            gx = torch.ops.aten.max_pool2d_with_indices_backward(gyf, like, (3, 3), s, (1, 1), (1, 1), False, idx)
        else:
            gx = torch.ops.aten.avg_pool2d_backward(gyf, like, (3, 3), s, (1, 1), False, False, None)
        return gx.contiguous().view(ctx.shape), None, None, None


def _folded_cl(x: torch.Tensor, fold: int) -> torch.Tensor:
    """[B, C, H, W] (any strides) as a channels_last [B / fold, fold * C, H, W] map whose
    channel fold * i + c is sample i's channel c: one copy."""
    B, C, H, W = x.shape
    t = x.unflatten(0, (B // fold, fold)).permute(0, 3, 4, 1, 2).contiguous()
    return t.view(B // fold, H, W, fold * C).permute(0, 3, 1, 2)


def _fold(B: int, C: int, width: int = 16) -> int:
    """The fewest samples (a divisor of B) whose channels side by side number `width` or more."""
    for f in range(1, B + 1):
        if B % f == 0 and f * C >= width:
            return f
    return B


class _BatchNorm(torch.autograd.Function):
    """Training-mode BatchNorm with the statistics of `_normalise`, whose backward gets a
    contiguous gradient, and which can keep its output instead of its input for the backward.

    ATen's CPU BatchNorm backward takes a serial per-channel loop when the gradient is not
    contiguous, which it often is here (a channel block of a concatenation's gradient): 3.3 to
    4.4x slower than with a contiguous one at the cells' sizes, about 2x slower than copying
    the gradient first (benchmarks/RESULTS.md). And
    without an affine transform the normalised output y is x_hat itself, so the backward can
    read y where the next layer keeps y anyway (a node feeding a 1x1 convolution): the input
    is then freed. dx = invstd * (dy - mean(dy) - y * mean(dy * y)) is ATen's own backward with
    y as the input, zero mean, unit invstd and invstd as the weight."""

    @staticmethod
    def forward(ctx, x, running_mean, running_var, momentum, eps, keep_output, weight, bias):
        y, mean, invstd = _normalise(x, weight, bias, running_mean, running_var, momentum, eps)
        ctx.eps, ctx.keep_output = eps, keep_output and weight is None and bias is None
        if ctx.keep_output:
            ctx.save_for_backward(y, invstd)
        else:
            ctx.save_for_backward(x, mean, invstd, weight)
        return y

    @staticmethod
    def backward(ctx, gy):
        if not gy.is_contiguous():
            gy = gy.contiguous()
        if ctx.keep_output:
            y, invstd = ctx.saved_tensors
            zero, one = _constants(invstd)
            gx = torch.ops.aten.native_batch_norm_backward(gy, y, invstd, None, None, zero, one, True,
                                                           ctx.eps, [True, False, False])[0]
            return gx, None, None, None, None, None, None, None
        x, mean, invstd, weight = ctx.saved_tensors
        wants = ctx.needs_input_grad
        gx, gw, gb = torch.ops.aten.native_batch_norm_backward(
            gy, x, weight, None, None, mean, invstd, True, ctx.eps, [wants[0], wants[6], wants[7]])
        return gx, None, None, None, None, None, gw, gb


# Below this many elements, or under 16 pixels a channel, ATen's one call is cheaper than
# `_normalise`'s few vectorised ones: timed alone, the two are about even at 2**16 elements,
# and the main job's search step (14x14 maps of 4 to 32 channels) was 1.16x slower with the
# form down to 2**14 (benchmarks/RESULTS.md).
_VECTOR_STATS_MIN = 1 << 16


def _vectorised_statistics(x: torch.Tensor) -> bool:
    return x.numel() >= _VECTOR_STATS_MIN and x.shape[2] * x.shape[3] >= 16


def _normalise(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
               running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
               momentum: float, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training-mode BatchNorm of an NCHW map: (y, mean, invstd), the running statistics
    updated in place, as aten.native_batch_norm returns and updates them.

    ATen's CPU kernel gathers each channel's mean and variance in scalar loops with a float64
    accumulator (a serial chain of dependent adds), about 1 GB/s: 1.0-1.3 ms for [64, 16, 32, 32].
    The same two passes as vectorised reductions, mean = sum(x)/n, then
    var = sum((x - mean)^2)/n, with the normalisation (and the affine transform) done in place
    on x - mean, take about a quarter of that (benchmarks/RESULTS.md); the sums are float32
    cascade sums, so y agrees with ATen's to about 1e-6 on maps of unit scale
    (tests/test_cpuconv.py)."""
    C = x.shape[1]
    n = x.numel() // C
    if not _vectorised_statistics(x) or n < 2:  # n < 2: ATen's own error
        return torch.ops.aten.native_batch_norm(x, weight, bias, running_mean, running_var, True, momentum, eps)
    with torch.no_grad():  # _BatchNorm's backward is ATen's; outside it no gradient is wanted
        dims = (0, 2, 3)
        mean = x.sum(dims).div_(n)
        d = x - mean.view(1, C, 1, 1)
        var = (d * d).sum(dims).div_(n)
        if running_mean is not None:  # the running variance is the unbiased one, as ATen keeps it
            running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
            running_var.mul_(1 - momentum).add_(var, alpha=momentum * n / (n - 1))
        invstd = var.add_(eps).rsqrt_()
        d.mul_((invstd if weight is None else invstd * weight).view(1, C, 1, 1))
        if bias is not None:
            d.add_(bias.view(1, C, 1, 1))
    return d, mean, invstd


_CONSTANTS: dict = {}


def _constants(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zeros and ones of like's size, made once per size (never per step)."""
    key = (like.shape, like.dtype, like.device)
    if key not in _CONSTANTS:
        _CONSTANTS[key] = (torch.zeros_like(like), torch.ones_like(like))
    return _CONSTANTS[key]


def batch_norm(x: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
               training: bool, momentum: float = 0.1, eps: float = 1e-5, keep_output: bool = False,
               weight: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.batch_norm; on a CPU NCHW map in training, with `_normalise`'s statistics, through
    `_BatchNorm` where a gradient is wanted (a contiguous gradient for the backward;
    `keep_output`: keep y rather than x for it, affine-free only)."""
    if training and _nchw_cpu(x):
        wants_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
        if not wants_grad:
            return _normalise(x, weight, bias, running_mean, running_var, momentum, eps)[0]
        if x.is_contiguous():
            return _BatchNorm.apply(x, running_mean, running_var, momentum, eps, keep_output, weight, bias)
    if narrowbn.wanted(x, training):  # run.narrow_bn=var_mean: the GPU's candidate form
        if weight is None and bias is None:
            return narrowbn.var_mean_batch_norm(x, running_mean, running_var, momentum, eps)
    return F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)


def _pool_form(x: torch.Tensor, stride, kind: str, plain):
    """`_Pool` for a 3x3 pool (stride 1 or 2) of an NCHW map, else `plain(x)`."""
    stride = _pair(stride)[0] if _pair(stride)[0] == _pair(stride)[1] else None
    if _nchw_cpu(x) and stride in (1, 2):
        return _Pool.apply(x, kind, stride, _fold(x.shape[0], x.shape[1]))
    return plain(x)


def conv2d(x: torch.Tensor, w: torch.Tensor, stride=1, padding=0, dilation=1, groups: int = 1) -> torch.Tensor:
    """F.conv2d without a bias, in the fastest equivalent form for the map (module docstring)."""
    if _nchw_cpu(x):
        stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
        C = x.shape[1]
        if w.shape[-2:] == (1, 1) and stride == (1, 1) and padding == (0, 0):
            return _Pointwise.apply(x, w, groups)
        if groups == C == w.shape[0] and w.shape[1] == 1 and stride == (1, 1) and C > 1:
            return _Depthwise.apply(x, w, padding, dilation)
    return F.conv2d(x, w, None, stride, padding, dilation, groups)


def pool_3x3(kind: str, x: torch.Tensor, stride: int) -> torch.Tensor:
    """DARTS' max_pool_3x3 / avg_pool_3x3 (padding 1, the average not counting the padding)."""
    if kind == "max":
        return _pool_form(x, stride, kind, lambda t: F.max_pool2d(t, 3, stride, 1))
    return _pool_form(x, stride, kind, lambda t: F.avg_pool2d(t, 3, stride, 1, count_include_pad=False))


class Conv2d(nn.Conv2d):
    """nn.Conv2d (same weights and state dict) whose bias-free forward uses `conv2d`."""

    def _conv_forward(self, x, weight, bias):
        if bias is not None or self.padding_mode != "zeros" or isinstance(self.padding, str):
            return super()._conv_forward(x, weight, bias)
        return conv2d(x, weight, self.stride, self.padding, self.dilation, self.groups)


class BatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d (same parameters, buffers and state dict) whose training-mode forward on
    an NCHW CPU map takes `batch_norm`'s vectorised statistics; otherwise nn.BatchNorm2d's."""

    def forward(self, x):
        if not (self.training and _nchw_cpu(x)):
            return super().forward(x)
        self._check_input_dim(x)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:  # nn.BatchNorm2d's bookkeeping, momentum=None included
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked)
        return batch_norm(x, self.running_mean, self.running_var, True, momentum, self.eps,
                          weight=self.weight, bias=self.bias)


def _darts_pool(pool) -> bool:
    """A 3x3 pool with padding 1, stride 1 or 2 (the ones the forms cover), DARTS' settings."""
    return _pair(pool.kernel_size) == (3, 3) and _pair(pool.padding) == (1, 1) and not pool.ceil_mode and \
        _pair(pool.stride) in ((1, 1), (2, 2))


class MaxPool2d(nn.MaxPool2d):
    """nn.MaxPool2d, pooling a channels_last copy of a wide enough NCHW map on a CPU."""

    def forward(self, x):
        if _darts_pool(self) and _pair(self.dilation) == (1, 1) and not self.return_indices:
            return _pool_form(x, self.stride, "max", super().forward)
        return super().forward(x)


class AvgPool2d(nn.AvgPool2d):
    """nn.AvgPool2d, pooling a channels_last copy of a wide enough NCHW map on a CPU."""

    def forward(self, x):
        if _darts_pool(self) and not self.count_include_pad and self.divisor_override is None:
            return _pool_form(x, self.stride, "avg", super().forward)
        return super().forward(x)
