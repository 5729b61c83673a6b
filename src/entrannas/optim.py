"""Optimiser settings and gradient clipping that touch all tensors in a few calls.

A super-net has hundreds of weight tensors; stepping or clipping them one by one costs several
dispatched ops per tensor and step, more than the arithmetic on a small net."""
from __future__ import annotations

import torch

__all__ = ["optimizer_options", "clip_grad_norm_"]


def optimizer_options(device: torch.device) -> dict:
    """Fused kernels on CUDA; the foreach form elsewhere (on a CPU it gives exactly the numbers
    of the per-tensor loop, in a few calls instead of several per parameter)."""
    return {"fused": True} if device.type == "cuda" else {"foreach": True}


@torch.no_grad()
def clip_grad_norm_(params, max_norm: float) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ (2-norm) in a handful of calls: the same arithmetic, grad
    * min(max_norm / (total_norm + 1e-6), 1), without a per-tensor device move. Returns the total
    norm before clipping."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    torch._foreach_mul_(grads, torch.clamp(float(max_norm) / (total + 1e-6), max=1.0))
    return total
