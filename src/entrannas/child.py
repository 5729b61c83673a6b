"""Super-net versus child-net accuracy of a search (paper section 4.1, Table 1).

    r = child_accuracy("runs/fmnist-quick-s0-...")
    r["supernet_acc"], r["child_acc"]

The child-net is the super-net with the same weights, run with every cell as a Transit-cell
on the derived architecture (only the derived paths, unweighted). A small gap means the
super-net's accuracy speaks for the architecture it derives: the consistency the paper
claims for Engine/Transit cells.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from .bnstats import recalibrate_batchnorm
from .checkpoint import load_run_checkpoint, mismatch
from .config import _merge, from_dict
from .fsutil import atomic_write_text
from .loop import build_loaders, evaluate, resolve_device, seed_everything
from .runlock import hold_run
from .search import build_supernet

__all__ = ["child_accuracy"]


def _macs_per_image(net, x: torch.Tensor, **forward_kwargs) -> float:
    """Multiply-adds (M) of one image's forward: how much of the super-net a mode runs."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net(x[:1], **forward_kwargs)
    return counter.get_total_flops() / 2 / 1e6


def child_accuracy(run_dir: str | Path, limit: int | None = None, device: str | None = None,
                   macs: bool = False, write: bool = True, data_dir: str | None = None) -> dict:
    """Validation accuracy (%) of a search's super-net and of its child-net, from the run's
    latest checkpoint, on the search's own validation images (`limit`: at most that many;
    default: as many as the search validated on). `macs=True` adds the multiply-adds per image
    of each (slow: the counter dispatches every op in Python). `data_dir`: where the search's
    data set is now, if not where the search read it. Writes RUN/child.json unless
    `write=False`; then it holds the run folder (runlock) and is refused while a search runs
    in it."""
    run_dir = Path(run_dir)
    with hold_run(run_dir) if write else contextlib.nullcontext():
        return _child_accuracy(run_dir, limit, device, macs, write, data_dir)


def _child_accuracy(run_dir: Path, limit, device, macs: bool, write: bool, data_dir) -> dict:
    state = load_run_checkpoint(run_dir, "search")
    cfg = from_dict(state["config"], "search")
    if limit is not None:
        _merge(cfg, {"data": {"eval_limit": int(limit)}}, "")
    if device is not None:
        _merge(cfg, {"run": {"device": device}}, "")
    if data_dir is not None:
        _merge(cfg, {"data": {"data_dir": str(data_dir)}}, "")
    dev = resolve_device(cfg.run.device)
    seed_everything(cfg.run.seed)
    data = build_loaders(cfg, dev, search=True)
    net = build_supernet(cfg, data.info).to(dev)
    try:
        net.load_state_dict(state["net"])
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise mismatch(run_dir / "checkpoint.pt", e) from None
    # The temperature is not a weight: set the one the checkpoint's last epoch evaluated and
    # derived with (an epoch-end checkpoint has already moved on to the next epoch).
    epoch = state["epoch"] - 1 if state["step"] == 0 and state["epoch"] > 0 else state["epoch"]
    net.set_epoch(epoch)
    genotype = net.genotype()
    # As the search validates: each net's BatchNorm statistics measured on it (bnstats.py),
    # the child-net's after the super-net's. Before that, the statistics the run left.
    n = cfg.optim.bn_recalibration
    child_loss0, child_acc0 = evaluate(net, data.val, child=True)  # the checkpoint's statistics
    recalibrate_batchnorm(net, data.train, n, epoch)  # 0 batches: leaves them as they are
    super_loss, super_acc = evaluate(net, data.val)
    child_loss, child_acc = child_loss0, child_acc0
    if n:
        recalibrate_batchnorm(net, data.train, n, epoch, child=True)
        child_loss, child_acc = evaluate(net, data.val, child=True)
    result = {"run_dir": str(run_dir), "method": cfg.model.method,
              "engine_cells": list(net.engine_cells), "epoch": epoch, "step": state["step"],
              "tau": net.tau, "images": len(data.val.indices),
              "supernet_acc": super_acc, "supernet_loss": super_loss,
              "child_acc": child_acc, "child_loss": child_loss, "gap": super_acc - child_acc,
              "bn_recalibration": n, "child_acc_inherited_bn": child_acc0,
              "child_loss_inherited_bn": child_loss0,
              "genotype": genotype.to_dict()}
    if macs:
        net.eval()
        x, _ = next(iter(data.val))
        result["supernet_macs_M"] = _macs_per_image(net, x)
        result["child_macs_M"] = _macs_per_image(net, x, child=True)
    if write:
        atomic_write_text(run_dir / "child.json", json.dumps(result, indent=1) + "\n")
    return result
