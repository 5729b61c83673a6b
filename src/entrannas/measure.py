"""Model size and cost as DARTS-family papers report them: params (M) and multiply-adds (M).

Conventions (so numbers compare with published tables):
- Parameters exclude the auxiliary head, which only exists during training (DARTS'
  ``count_parameters_in_MB`` drops every name containing "auxiliary").
- Multiply-adds are for one image (batch 1) in eval mode, counted by
  ``torch.utils.flop_counter.FlopCounterMode``, which counts convolutions and matrix
  products only; MACs = FLOPs / 2. Pooling, BatchNorm, ReLU and the additions that sum a
  node's inputs are not counted, which is how DARTS-family papers report "multi-adds"
  (DARTS_V2 on ImageNet: 574M). Eval mode skips the auxiliary head, so it is excluded.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from .evalnet import _as_genotype, build_target_net, dataset_settings

__all__ = ["count_params", "count_params_m", "count_macs", "cell_stats", "profile_genotype"]


def count_params(model: nn.Module, exclude_auxiliary: bool = True) -> int:
    """Number of parameters; by default without any module whose name contains "auxiliary"."""
    return sum(p.numel() for name, p in model.named_parameters()
               if not (exclude_auxiliary and "auxiliary" in name))


def count_params_m(model: nn.Module, exclude_auxiliary: bool = True) -> float:
    """Parameters in millions (10^6, as the papers' "M")."""
    return count_params(model, exclude_auxiliary) / 1e6


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-adds of one forward of a single image in eval mode.

    ``input_shape`` is (C, H, W), or (N, C, H, W) in which case the count is divided by N.
    The model's train/eval mode is restored afterwards.
    """
    shape = tuple(int(n) for n in input_shape)
    if len(shape) == 3:
        shape = (1,) + shape
    if len(shape) != 4:
        raise ValueError(f"input_shape must be (C, H, W) or (N, C, H, W), got {input_shape}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(torch.zeros(shape, device=device, dtype=dtype))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2 // shape[0]


def cell_stats(cell_genotype: Any) -> dict[str, int]:
    """Size of one cell genotype: op instances and distinct (input, node) edges (Table 4)."""
    ops = sum(len(node) for node in cell_genotype.nodes)
    edges = sum(len({inp for _, inp in node}) for node in cell_genotype.nodes)
    return {"ops": ops, "edges": edges}


def profile_genotype(genotype: Any, dataset: str = "cifar10", *, C: int | None = None,
                     layers: int | None = None, num_classes: int | None = None) -> dict[str, Any]:
    """Params and multiply-adds of ``genotype``'s target network in a dataset's setting.

    Settings: cifar10/cifar100 C=36, 20 cells, 32x32x3; imagenet C=48, 14 cells,
    224x224x3; fashion-mnist C=36, 20 cells, 28x28x1. ``C``, ``layers`` and
    ``num_classes`` override the defaults. ``genotype`` may be a Genotype, a path, a
    builtin name or a genotype string.
    """
    genotype = _as_genotype(genotype)
    s = dataset_settings(dataset)
    overrides = {k: v for k, v in dict(C=C, layers=layers, num_classes=num_classes).items()
                 if v is not None}
    s.update(overrides)
    # On the meta device nothing is allocated or computed, only shapes: profiling the
    # full-size networks is then instant and needs no memory, and counts are unchanged.
    with torch.device("meta"):
        model = build_target_net(genotype, s["dataset"], auxiliary=False, **overrides)
    params = count_params(model)
    macs = count_macs(model, s["input_shape"])
    normal, reduce = cell_stats(genotype.normal), cell_stats(genotype.reduce)
    return {
        "dataset": s["dataset"],
        "C": s["C"],
        "layers": s["layers"],
        "num_classes": s["num_classes"],
        "input_shape": tuple(s["input_shape"]),
        "params": params,
        "params_M": params / 1e6,
        "macs": macs,
        "macs_M": macs / 1e6,
        "ops_normal": normal["ops"],
        "ops_reduce": reduce["ops"],
        "edges_normal": normal["edges"],
        "edges_reduce": reduce["edges"],
    }
