"""BatchNorm recalibration: running statistics measured on the network as it is now.

    recalibrate_batchnorm(net, data.train, batches=8)            # before validating a super-net
    recalibrate_batchnorm(net, data.train, batches=8, child=True)  # before validating its child-net

A Transit-cell normalises each op of the derived cell by running statistics that were only
updated on the steps that selected it, and while alpha still moves that can be long ago: a
super-net validated with such statistics can sit at chance although its weights are good.
Recalibration runs a few training batches forward (no gradients, the architecture fixed) and
sets every statistic the forward uses to their average over those batches, as one-shot NAS
does for each sampled sub-network. Statistics the forward does not use (ops outside the
derived cell) keep their values. Only evaluation reads running statistics, so training is
unchanged; docs/design.md ("BatchNorm recalibration") has the reasons.
"""
from __future__ import annotations

import itertools

import torch
from torch import nn

__all__ = ["recalibrate_batchnorm", "batchnorm_statistics"]


def batchnorm_statistics(net: nn.Module) -> list[tuple[nn.Module, torch.Tensor]]:
    """(owner, buffer) for every running mean and variance: nn.BatchNorm layers' and the op
    banks' stacked ones (opbank.py)."""
    found = []
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.track_running_stats and m.running_mean is not None:
                found += [(m, m.running_mean), (m, m.running_var)]
        elif hasattr(m, "bn_momentum"):  # an op bank: buffers <name>_mean<s>, <name>_var<s>
            found += [(m, b) for name, b in m.named_buffers(recurse=False)
                      if "_mean" in name or "_var" in name]
    return found


@torch.no_grad()
def recalibrate_batchnorm(net: nn.Module, loader, batches: int, epoch: int = 0,
                          **forward_kwargs) -> int:
    """Set the running statistics to their mean over `batches` batches of `loader` (its
    `epoch`) run forward in training mode. Returns the number of batches used (0: nothing
    changed). Each batch starts from the original statistics with momentum 1, so a statistic
    becomes exactly that batch's; the average over batches is the cumulative average that
    BatchNorm's momentum=None keeps."""
    if batches <= 0:
        return 0
    stats = batchnorm_statistics(net)
    if not stats:
        return 0
    owners = {id(m): m for m, _ in stats}
    saved_momentum = {}
    for key, m in owners.items():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            saved_momentum[key] = m.momentum
            m.momentum = 1.0
        else:
            saved_momentum[key] = m.bn_momentum
            m.bn_momentum = 1.0
    original = [b.clone() for _, b in stats]
    total = [torch.zeros_like(b) for _, b in stats]
    was_training = net.training
    net.train()
    used = 0
    try:
        loader.set_epoch(epoch)
        for x, _ in itertools.islice(loader, batches):
            for (_, b), o in zip(stats, original):
                b.copy_(o)
            net(x, **forward_kwargs)
            for (_, b), t in zip(stats, total):
                t.add_(b)
            used += 1
    finally:
        for (_, b), t, o in zip(stats, total, original):
            b.copy_(t / used if used else o)
        for key, m in owners.items():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = saved_momentum[key]
            else:
                m.bn_momentum = saved_momentum[key]
        net.train(was_training)
    return used
