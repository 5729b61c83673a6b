"""BatchNorm of narrow maps as reductions over N*H*W (`run.narrow_bn=var_mean`).

The super-net's affine-free BatchNorms behind EnTranNAS' bottleneck normalise maps of 4 to 8
channels. On one H200 (batch 512, 32x32, bf16, channels_last) the native BatchNorm backward
took 232 us a call on the 4-channel maps, 32% of the search step's GPU time: a per-channel
kernel gives each channel's reduction over N*H*W too little of the GPU. This form computes the
statistics with one `torch.var_mean` over (N, H, W), in float32, and the normalisation as
elementwise ops; autograd derives the backward as reductions and elementwise ops over the
whole map, each of which spreads over the whole device.

It computes what F.batch_norm computes in training (the biased variance to normalise, the
unbiased one in the running variance, momentum updates in place), to float rounding
(tests/test_narrowbn.py). Whether it is faster on a GPU has not been measured yet, so the
default is `native`; `benchmarks/narrow_bn.py` times the two per call and
`benchmarks/search_epoch.py --narrow-bn var_mean` a whole search epoch. A run asks for it on
a GPU only (accel.check refuses it on a CPU, where cpuconv.py's form is faster than either);
the tests call it on a CPU directly. Under torchrun the statistics are synchronised by
SyncBatchNorm's kernels, as before.
"""
from __future__ import annotations

import torch

__all__ = ["FORMS", "set_form", "wanted", "var_mean_batch_norm"]

FORMS = ("native", "var_mean")
NARROW = 16  # maps with fewer channels than this count as narrow
_form = "native"


def set_form(form: str) -> None:
    """Process-wide, like cudnn.benchmark: accel.prepare sets it from `run.narrow_bn`."""
    global _form
    if form not in FORMS:
        raise ValueError(f"unknown narrow BatchNorm form {form!r}; choose one of {', '.join(FORMS)}")
    _form = form


def wanted(x: torch.Tensor, training: bool) -> bool:
    """Whether a training-mode BatchNorm of `x` takes this form."""
    return _form == "var_mean" and training and x.dim() == 4 and x.shape[1] < NARROW


def var_mean_batch_norm(x: torch.Tensor, running_mean: torch.Tensor | None,
                        running_var: torch.Tensor | None, momentum: float = 0.1,
                        eps: float = 1e-5) -> torch.Tensor:
    """Training-mode, affine-free BatchNorm of `x` (any memory format; bf16 maps are
    normalised in float32 and handed back in bf16, as autocast's BatchNorm does)."""
    if x.numel() == x.shape[1]:  # F.batch_norm's refusal, rather than a division by zero
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {list(x.shape)}")
    xf = x.float() if x.dtype in (torch.bfloat16, torch.float16) else x  # float64 stays
    var, mean = torch.var_mean(xf, dim=(0, 2, 3), correction=0, keepdim=True)
    if running_mean is not None:
        n = x.numel() // x.shape[1]
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_(mean.flatten(), alpha=momentum)
            running_var.mul_(1 - momentum).add_(var.flatten() * (n / (n - 1)), alpha=momentum)
    return ((xf - mean) * torch.rsqrt(var + eps)).to(x.dtype)
