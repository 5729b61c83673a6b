"""Several processes (GPUs, machines) launched by `torchrun`: one process per device, each with
1/world_size of the global batch.

    torchrun --nproc_per_node=8 -m entrannas search --config imagenet-entrannas

Gradients are averaged by hand rather than by wrapping the nets in DistributedDataParallel:

* A transit-cell (EnTranNAS) and a pruned edge (DST) use a different subset of the weights at
  every step. DDP would need `find_unused_parameters=True`, which walks the autograd graph
  every step.
* Every rank holds bit-identical alpha/beta (their gradients are all-reduced too, and Adam is
  deterministic), so every rank derives the same genotype and the same set of weights has a
  gradient on every rank. `allreduce_grads` therefore averages exactly the parameters whose grad
  is not None, in one flattened all_reduce: the result is the single-process step on the global
  batch. (The search keeps weight gradients as zero tensors between steps, as the DARTS-family
  code does, so after their first use all of them take part; docs/design.md.)

BatchNorm statistics are taken over the global batch (`SyncBatchNorm2d`), so a run on W
processes with per-process batch B/W computes what one process computes with batch B.

No rank is left waiting in a collective for one that has failed: what only some ranks do
(rank 0's writes, each rank's reading of a checkpoint or a data set) runs in `together()`,
which makes every rank raise if any did; the stop request and the loss are all-reduced every
step; a collective whose peer died or timed out (ENTRANNAS_DIST_TIMEOUT seconds, default 600)
raises `PeerError`, one line for the user (docs/design.md, "Several processes").
"""
from __future__ import annotations

import contextlib
import datetime
import os
import re
import sys

import torch
import torch.distributed as dist
import torch.nn as nn

from .cpuconv import BatchNorm2d

__all__ = ["PeerError", "together", "init_from_env", "shutdown", "active", "world_size", "rank", "local_rank", "is_main", "allreduce_grads",
           "allreduce_sum", "broadcast_params", "broadcast_object", "assert_same_on_all_ranks",
           "SyncBatchNorm2d", "sync_batch_norm", "convert_sync_batchnorm", "per_rank_batch",
           "exit_after_group"]


def init_from_env() -> bool:
    """Join the process group described by torchrun's RANK/WORLD_SIZE/LOCAL_RANK (and
    MASTER_ADDR/MASTER_PORT). NCCL when CUDA is available, gloo otherwise. A no-op (False) when
    WORLD_SIZE is unset or 1, or when the group already exists."""
    if dist.is_available() and dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank())  # torch.device("cuda") now means this rank's GPU
    dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=_timeout())
    return True


def shutdown() -> None:
    """Leave the process group, if this process joined one. Must run before the interpreter
    exits: a gloo group left to the interpreter's finalisation can abort the process (SIGABRT,
    "terminate called without an active exception") from its worker threads, turning a clean
    exit code into -6. Local only (no collective), so it is safe after a peer has died."""
    global _joined
    if dist.is_available() and dist.is_initialized():
        _joined = True
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


_joined = False  # this process was in a process group (set when it leaves it)


def exit_after_group(code: int) -> None:
    """End a process that was in a process group with `code`, skipping the interpreter's
    finalisation: even after `shutdown`, the C++ objects of torch.distributed (the gloo
    context, the store's threads) are destroyed there, and now and then one is still running
    a thread, so std::terminate aborts the process (SIGABRT, exit code -6) after its work is
    done and its files are closed. Streams and log handlers are flushed first; everything a
    run writes is written atomically and closed before the command returns. Returns (does
    nothing) in a process that never joined a group."""
    if not _joined:
        return
    import logging
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    logging.shutdown()
    os._exit(code)


def _timeout() -> datetime.timedelta:
    """How long a collective waits for a rank that does not come: the backstop for a fault
    `together()` and the per-step all-reduce do not see (a rank stuck outside the loop).
    Long by default: ranks legitimately drift apart by a data set scan on cold storage."""
    text = os.environ.get("ENTRANNAS_DIST_TIMEOUT", "600")
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        from .config import ConfigError
        raise ConfigError(f"ENTRANNAS_DIST_TIMEOUT={text!r}: expected a positive number of seconds")
    return datetime.timedelta(seconds=seconds)


class PeerError(RuntimeError):
    """Another process of this multi-process run failed, so this one stops too; one line."""


def _one_line(err: BaseException) -> str:
    text = " ".join(part.strip() for part in str(err).splitlines() if part.strip())
    return text or type(err).__name__


def _collective(op, *args, **kwargs):
    """Run a torch.distributed call; a peer that died or a timeout becomes a PeerError."""
    try:
        return op(*args, **kwargs)
    except RuntimeError as e:  # DistBackendError and friends
        why = re.sub(r"^\[[^\]]*\]\s*", "", _one_line(e)).split(". ")[0][:200]
        raise PeerError(f"lost contact with the other processes of this run ({why}); one of them "
                        f"stopped or was killed: see its output") from None


@contextlib.contextmanager
def together():
    """Run the block on every rank, then agree on how it went: if it raised on any rank, it
    raises on every rank (the rank's own error, or a PeerError that quotes the first failed
    rank's), so no rank goes on into a collective that a failed one will never join. For work
    that only some ranks do or that can fail on one alone: rank 0's writes, reading a
    checkpoint or a data set. The block must not run collectives itself. One process: no-op."""
    if not active():
        yield
        return
    err = None
    try:
        yield
    except BaseException as e:
        err = e
    outcomes = [None] * dist.get_world_size()
    _collective(dist.all_gather_object, outcomes, None if err is None else _one_line(err))
    if err is not None:
        raise err
    failed = next(((r, m) for r, m in enumerate(outcomes) if m is not None), None)
    if failed is not None:
        raise PeerError(f"stopped because process {failed[0]} of {len(outcomes)} failed: {failed[1]}")


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Only rank 0 writes files (run folder, checkpoints, metrics, plots, TensorBoard, log)."""
    return rank() == 0


def per_rank_batch(batch_size: int) -> int:
    w = world_size()
    if batch_size % w:
        from .config import ConfigError
        raise ConfigError(f"optim.batch_size={batch_size} is the global batch and must be divisible by "
                         f"the {w} processes")
    return batch_size // w


def allreduce_grads(params) -> None:
    """Average the gradients of the parameters that have one, in one flattened all_reduce.
    Correct only when every rank has gradients for the same parameters (see the module doc)."""
    if not active():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    _collective(dist.all_reduce, flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset: offset + n].view_as(g))
        offset += n


def allreduce_sum(values, device=None) -> list[float]:
    """Sums of a few numbers over all ranks (float64), as floats."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if active():
        if dist.get_backend() == "nccl":  # NCCL reduces GPU tensors only
            t = t.cuda()
        _collective(dist.all_reduce, t)
    return t.cpu().tolist()


@torch.no_grad()
def broadcast_params(module: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (the seeds make them equal already; this
    makes it certain)."""
    if not active():
        return
    for t in list(module.parameters()) + list(module.buffers()):
        _collective(dist.broadcast, t.data, 0)


def broadcast_object(obj):
    """Rank 0's value of a picklable object on every rank."""
    if not active():
        return obj
    box = [obj]
    _collective(dist.broadcast_object_list, box, 0)
    return box[0]


def assert_same_on_all_ranks(tensors, what: str = "tensors") -> None:
    """Raise if any tensor differs (bit for bit) from rank 0's: the architecture parameters must,
    or the ranks would derive different genotypes."""
    if not active():
        return
    for i, t in enumerate(tensors):
        ref = t.detach().clone()
        _collective(dist.broadcast, ref, 0)
        if not torch.equal(ref, t.detach()):
            raise RuntimeError(f"{what}[{i}] differs between rank 0 and rank {rank()}")


class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over ranks: y = sum_r x_r on every rank, so dL/dx_r = sum_r' dL_r'/dy
    (an all-reduce of the incoming gradients)."""

    @staticmethod
    def forward(ctx, x):
        y = x.clone()
        _collective(dist.all_reduce, y)
        return y

    @staticmethod
    def backward(ctx, grad):
        g = grad.clone()
        _collective(dist.all_reduce, g)
        return g


def sync_batch_norm(x: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                    weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
                    momentum: float) -> torch.Tensor:
    """Training-mode BatchNorm over the global batch of all ranks (running statistics updated
    in place, as F.batch_norm does). Per-channel sums and sums of squares are all-reduced with
    the differentiable all_reduce, so gradients flow through the global statistics as they do
    through a single process's."""
    C = x.shape[1]
    # Two passes (mean, then the mean squared deviation), each one all-reduce: the one-pass
    # E[x^2] - mean^2 cancels catastrophically on near-constant channels and the error,
    # amplified by rsqrt(var + eps), would make the run drift away from a single process's.
    stats = _AllReduceSum.apply(torch.cat([x.sum((0, 2, 3)), x.new_full((1,), float(x.numel() // C))]))
    n = stats[-1]
    mean = stats[:C] / n
    centred = x - mean.view(1, C, 1, 1)
    var = _AllReduceSum.apply((centred * centred).sum((0, 2, 3))) / n  # biased: normalises
    y = centred * torch.rsqrt(var.view(1, C, 1, 1) + eps)
    if weight is not None:
        y = y * weight.view(1, C, 1, 1) + bias.view(1, C, 1, 1)
    if running_mean is not None:
        with torch.no_grad():
            count = float(n)
            unbiased = var * (count / max(count - 1.0, 1.0))
            running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
            running_var.mul_(1 - momentum).add_(unbiased.detach(), alpha=momentum)
    return y


class SyncBatchNorm2d(BatchNorm2d):
    """BatchNorm2d whose training-mode statistics cover the global batch of all ranks
    (`sync_batch_norm`); works on CPU (gloo) and GPU. Same parameters, buffers and state_dict
    keys as nn.BatchNorm2d, so checkpoints move freely between single- and multi-process runs.
    Eval mode, or a single process, is cpuconv.BatchNorm2d (nn.BatchNorm2d's, faster on a CPU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and active()):
            return super().forward(x)
        m = self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if m is None:
                m = 1.0 / float(self.num_batches_tracked)
        track = self.track_running_stats
        return sync_batch_norm(x, self.running_mean if track else None, self.running_var if track else None,
                               self.weight, self.bias, self.eps, m)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d in `module` by a SyncBatchNorm2d holding the same parameters and
    buffers (in place; returns the module)."""
    for name, child in module.named_children():
        if type(child) in (nn.BatchNorm2d, BatchNorm2d):
            new = SyncBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                  child.track_running_stats, device=child.running_mean.device
                                  if child.running_mean is not None else None)
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            setattr(module, name, new)
        else:
            convert_sync_batchnorm(child)
    return module
