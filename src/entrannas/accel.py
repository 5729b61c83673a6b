"""The GPU fast path, in one place: bf16 autocast, channels_last, cudnn.benchmark and
torch.compile of the target network (the search's CUDA graphs are in graphstep.py).

Every switch is `auto` by default, which means on for a CUDA device and off on a CPU: the CPU
path (and its bit-exact results and resumes) is the plain float32 one. `run.precision=bf16`
or `run.channels_last=true` force a switch on any device, except the two together on a CPU
(`check`): that pair gave NaN losses there, and a CPU gains nothing from either.
"""
from __future__ import annotations

import contextlib
import ctypes
import sys

import torch

__all__ = ["check", "retain_freed_memory", "use_bf16", "use_channels_last", "autocast", "prepare", "as_input", "compiled"]


def _on(setting, device: torch.device) -> bool:
    return device.type == "cuda" if setting in ("auto", None) else bool(setting)


def use_bf16(run_cfg, device: torch.device) -> bool:
    p = run_cfg.precision
    return device.type == "cuda" if p == "auto" else p == "bf16"


def use_channels_last(run_cfg, device: torch.device) -> bool:
    return _on(run_cfg.channels_last, device)


def check(run_cfg, device: torch.device, search: bool = False) -> None:
    """Refuse switch settings known to give wrong numbers on `device`, before any work: bf16
    autocast over channels_last maps on a CPU gave NaN losses at batch 4 and 16 while each
    switch alone stays finite, so a run asking for both would train on garbage. Also refused:
    CUDA graphs (graphstep.py) and a narrow BatchNorm form other than native (narrowbn.py)
    anywhere but in a search on a GPU."""
    from .config import ConfigError
    if getattr(run_cfg, "cuda_graphs", False):
        if not search:
            raise ConfigError("run.cuda_graphs=true replays search steps; training a target "
                              "network does not use it: drop the setting")
        if device.type != "cuda":
            raise ConfigError(f"run.cuda_graphs=true needs a CUDA device, and this run is on "
                              f"{device}: drop it, or set run.device=cuda on a machine with a GPU")
    if getattr(run_cfg, "narrow_bn", "native") != "native":
        if not search:
            raise ConfigError(f"run.narrow_bn={run_cfg.narrow_bn} sets the super-net's BatchNorm form; "
                              f"training a target network does not use it: drop the setting")
        if device.type == "cpu":
            raise ConfigError(f"run.narrow_bn={run_cfg.narrow_bn} is a GPU form, and this run is on the CPU, "
                              f"whose own BatchNorm form is faster: drop it (or set run.narrow_bn=native)")
    if device.type == "cpu" and use_bf16(run_cfg, device) and use_channels_last(run_cfg, device):
        raise ConfigError("run.precision=bf16 with run.channels_last=true is not supported on a CPU "
                          "(the loss becomes NaN): set run.channels_last=false (or auto) to keep bf16, "
                          "or run.precision=fp32 (or auto) to keep channels_last")


_RETAINED = False


def retain_freed_memory() -> bool:
    """Keep the memory of freed activations in the process heap (glibc), to be reused by the
    next step, instead of returning it to the system. By default glibc gives back blocks above a
    moving mmap/trim threshold, so a CPU step page-faults its large activations and gradients in
    afresh each time: zero-filling one [64, 32, 28, 28] gradient took 18 ms. With the memory
    kept, the CIFAR-shape EnTranNAS step at batch 64 took 1.2-1.4 s instead of 1.7-2.0 s on 2
    cores, at the same peak (benchmarks/RESULTS.md); the heap does not shrink after the peak.
    Process-wide, once; False where it is not glibc."""
    global _RETAINED
    if _RETAINED or not sys.platform.startswith("linux"):
        return _RETAINED
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
        # mmap only above 32 MiB (glibc's ceiling for this setting), give the heap back only when
        # over 1 GiB of it is free at the top, and grow it 64 MiB at a time.
        ok = (libc.mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1
              and libc.mallopt(M_TOP_PAD, 64 << 20) == 1)
    except (OSError, AttributeError):
        ok = False
    _RETAINED = ok
    return ok


def autocast(run_cfg, device: torch.device, cache: bool = True):
    """Forward passes in bfloat16 where it is safe (autocast keeps softmax, losses and
    reductions in float32); weights, gradients and optimiser state stay float32. `cache=False`
    for CUDA graphs: a graph must cast the weights itself, not reuse casts made outside it."""
    if not use_bf16(run_cfg, device):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=cache)


def prepare(net: torch.nn.Module, run_cfg, device: torch.device) -> torch.nn.Module:
    """Device-wide switches and the network's memory layout; returns the net."""
    from . import narrowbn
    narrowbn.set_form(getattr(run_cfg, "narrow_bn", "native"))
    if device.type == "cuda":
        # Fixed shapes every step: let cuDNN pick its fastest convolution algorithms once.
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if use_channels_last(run_cfg, device):
        net = net.to(memory_format=torch.channels_last)
    return net


def as_input(x: torch.Tensor, run_cfg, device: torch.device) -> torch.Tensor:
    """A batch in the layout the network was prepared for."""
    if x.dim() == 4 and use_channels_last(run_cfg, device):
        return x.contiguous(memory_format=torch.channels_last)
    return x


def compiled(net: torch.nn.Module, run_cfg, device: torch.device):
    """torch.compile'd forward of a fixed network (the target net; the super-net changes its
    Transit paths every step, so it is never compiled). Off by default: compiling takes a
    minute and pays back only over long trainings on a GPU."""
    if not run_cfg.compile:
        return net
    return torch.compile(net)

