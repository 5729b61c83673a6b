"""Pieces shared by the search and the training loop: device, seeding, data loaders, evaluation,
progress, the run folder's creation, and stopping cleanly on Ctrl-C."""
from __future__ import annotations

import contextlib
import math
import random
import resource
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .data import (Augment, BatchLoader, DataError, FolderImageSet, derive_seed, imagenet_loader,
                   imagenet_search_subset, load_dataset, split_indices)
from .data.augment import normalize
from .data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from . import accel
from . import distributed as ddp
from .fsutil import WriteError
from .rundir import NullRunFolder, RunError, RunFolder, Timer, format_eta

__all__ = ["Interrupted", "StopFlag", "StepAccounting", "Loaders", "build_loaders", "load_datasets", "evaluate",
           "new_run_dir", "make_run_folder", "open_run_folder", "peak_memory_gib", "progress",
           "resolve_device", "rng_state", "seed_everything", "set_rng_state"]


class Interrupted(Exception):
    """The user asked the run to stop; a checkpoint was saved."""

    def __init__(self, run_dir):
        super().__init__(f"stopped; a checkpoint was saved. Continue with --resume {run_dir}")
        self.run_dir = run_dir


class StopFlag:
    """First Ctrl-C (or SIGTERM): finish the current step, checkpoint, stop. Second: abort."""

    notice = True  # False where another process tells the user (an experiment's workers)
    # Set by the first signal for the whole process: an experiment's worker that was told to
    # stop must not start the sub-runs already queued to it (experiments/common.py).
    signalled = False

    def __init__(self):
        self.requested = False
        self._old = {}

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        StopFlag.signalled = True
        if self.notice and ddp.is_main():  # under torchrun every rank gets it: one notice is enough
            print("\nstopping after this step and saving a checkpoint (Ctrl-C again to abort)",
                  file=sys.stderr, flush=True)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        from .config import ConfigError
        raise ConfigError(f"run.device={name} but no CUDA GPU is available: use run.device=cpu")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> dict:
    """The global generators' state, for a checkpoint: drop path and dropout draw from them
    (the loaders have their own), so a resumed run must continue from the same state."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def progress(total: int, initial: int, desc: str):
    from tqdm import tqdm
    # disable=None: a bar on a terminal, nothing in CI logs (the log lines carry the ETA).
    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                disable=None if ddp.is_main() else True, leave=False)


class FolderLoader:
    """BatchLoader's interface over an image-folder dataset decoded in DataLoader workers
    (ImageNet, or a folder too large for memory): order and augmentation depend only on
    (seed, epoch, batch). `augment` (uint8 in) runs on the device, as in BatchLoader."""

    def __init__(self, dataset, indices, batch_size, shuffle, device, seed, workers, drop_last,
                 rank=0, world_size=1, augment=None, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.dataset, self.indices = dataset, list(indices)
        # Like BatchLoader: each rank takes every world_size-th image of the epoch's order.
        self.rank, self.world_size = rank, world_size
        self.batch_size, self.shuffle, self.device = batch_size, shuffle, device
        self.seed, self.workers, self.drop_last = seed, workers, drop_last
        self.augment, self.mean, self.std = augment, mean, std
        self.epoch = self.batch = 0

    def __len__(self):
        n = len(self.indices) // self.world_size
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch, batch=0):
        self.epoch, self.batch = int(epoch), int(batch)

    def state_dict(self):
        return {"seed": self.seed, "epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state):
        self.set_epoch(state["epoch"], state.get("batch", 0))

    def __iter__(self):
        idx = self.indices
        if self.shuffle:
            g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
            idx = [idx[i] for i in torch.randperm(len(idx), generator=g).tolist()]
        if self.world_size > 1:
            idx = idx[self.rank::self.world_size][: len(self.indices) // self.world_size]
        idx = idx[self.batch * self.batch_size: len(self) * self.batch_size]
        loader = imagenet_loader(self.dataset, idx, self.batch_size, shuffle=False,
                                 num_workers=self.workers, seed=self.seed, epoch=self.epoch)
        for x, y in loader:
            x = x.to(self.device, non_blocking=True)
            if self.augment is not None:
                g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, self.batch, self.rank))
                x = self.augment(x, g)
            if x.dtype == torch.uint8:
                x = normalize(x, self.mean, self.std)
            self.batch += 1
            yield x, y.to(self.device, non_blocking=True)
        self.epoch, self.batch = self.epoch + 1, 0


@dataclass
class Loaders:
    info: object
    train: object  # weight half (search) or the training set (train)
    arch: object | None  # architecture half (search only)
    val: object  # search: part of the architecture half; train: the test set
    split: dict
    notes: list = field(default_factory=list)  # lines for the run's log (folder: cache, skips)
    meta: dict | None = None  # folder: classes and the held-out split, for RUN/dataset.json


# The in-memory data sets that data.image_size resizes when they are loaded (imagenet and
# folder resize each image as they decode it).
RESIZED_ON_LOAD = ("fashion-mnist", "cifar10", "cifar100", "synthetic")


def load_datasets(cfg, device: torch.device | None = None):
    """``(train, test)`` of the config's dataset, as `load_dataset` gives them."""
    d, kwargs = cfg.data, {}
    if d.dataset == "synthetic":
        kwargs = dict(shape=tuple(d.synthetic_shape), train_size=d.synthetic_size,
                      test_size=max(d.synthetic_size // 4, 1), seed=cfg.run.seed)
    elif d.dataset == "imagenet":
        kwargs = dict(size=d.image_size or 224)
    elif d.dataset == "folder":
        kwargs = dict(image_size=d.image_size, channels=d.channels, strict=d.strict,
                      test_fraction=d.test_fraction, in_memory=d.in_memory, cache_dir=d.cache_dir,
                      workers=d.workers, device=device)
    train, test = load_dataset(d.dataset, d.data_dir, download=d.download, **kwargs)
    if d.image_size and d.dataset in RESIZED_ON_LOAD:
        # Once, before any split or batch: every epoch then reads the smaller images.
        train, test = train.resized(d.image_size), test.resized(d.image_size)
    return train, test


def build_loaders(cfg, device: torch.device, search: bool) -> Loaders:
    d = cfg.data
    train, test = load_datasets(cfg, device)
    if d.dataset == "imagenet":
        return _imagenet_loaders(cfg, train, test, device, search)
    aug = Augment(padding=d.crop_pad, flip=d.flip, cutout=d.cutout, mean=train.info.mean, std=train.info.std,
                  color_jitter=d.color_jitter)
    make = _streaming_loaders if isinstance(train, FolderImageSet) else _memory_loaders
    loaders = make(cfg, train, test, device, search, aug)
    loaders.notes, loaders.meta = getattr(train, "notes", []), getattr(train, "meta", None)
    return loaders


def _memory_loaders(cfg, train, test, device, search, aug) -> Loaders:
    d, o, seed, info = cfg.data, cfg.optim, cfg.run.seed, train.info
    # optim.batch_size is the global batch: each of the W ranks takes 1/W of every batch (the
    # images a single process would put in it), so the run matches a single process's. The
    # evaluation sets are split among the ranks without truncation (sums are all-reduced).
    bs, rank, world = ddp.per_rank_batch(o.batch_size), ddp.rank(), ddp.world_size()
    shard = dict(rank=rank, world_size=world)
    fmt = torch.channels_last if accel.use_channels_last(cfg.run, device) else torch.contiguous_format
    common = dict(mean=info.mean, std=info.std, device=device, memory_format=fmt)
    if search:
        w_idx, a_idx = split_indices(len(train), d.split, seed, d.limit)
        n = min(len(w_idx), len(a_idx))  # equal halves: one weight step per architecture step
        w_idx, a_idx = w_idx[:n], a_idx[:n]
        if n < o.batch_size:
            raise DataError(f"only {n} images per half for batch size {o.batch_size}: "
                            f"lower optim.batch_size or raise data.limit")
        train_l = BatchLoader(train.images, train.labels, w_idx, bs, True, aug,
                              drop_last=True, seed=derive_seed(seed, 1), **common, **shard)
        arch_l = BatchLoader(train.images, train.labels, a_idx, bs, True, aug,
                             drop_last=True, seed=derive_seed(seed, 2), **common, **shard)
        val_idx = a_idx[: d.eval_limit] if d.eval_limit else a_idx
        val_l = BatchLoader(train.images, train.labels, val_idx[rank::world], max(o.batch_size, 256),
                            False, None, seed=seed, **common)
        split = {"seed": seed, "fraction": d.split, "limit": d.limit, "weight": len(w_idx),
                 "arch": len(a_idx), "val": len(val_idx),
                 "weight_idx_head": w_idx[:8].tolist(), "arch_idx_head": a_idx[:8].tolist()}
        return Loaders(info, train_l, arch_l, val_l, split)
    idx = torch.arange(len(train))[: d.limit] if d.limit else None
    train_l = BatchLoader(train.images, train.labels, idx, bs, True, aug,
                          drop_last=False, seed=derive_seed(seed, 1), **common, **shard)
    test_idx = torch.arange(len(test))[: d.eval_limit] if d.eval_limit else torch.arange(len(test))
    test_l = BatchLoader(test.images, test.labels, test_idx[rank::world], max(o.batch_size, 256), False,
                         None, seed=seed, **common)
    return Loaders(info, train_l, None, test_l, {"train": len(train_l.indices), "test": len(test_idx)})


def _streaming_loaders(cfg, train, test, device, search, aug) -> Loaders:
    """A folder too large for memory: the in-memory loaders' split and augmentation, with the
    images decoded per epoch in workers."""
    d, o, seed = cfg.data, cfg.optim, cfg.run.seed
    bs, rank, world = ddp.per_rank_batch(o.batch_size), ddp.rank(), ddp.world_size()
    stats = dict(mean=train.info.mean, std=train.info.std)
    mk = lambda ds, idx, shuffle, s, drop=True: (
        FolderLoader(ds, idx, bs, True, device, s, d.workers, drop, rank, world, augment=aug, **stats)
        if shuffle else FolderLoader(ds, list(idx)[rank::world], max(o.batch_size, 256), False, device,
                                     s, d.workers, False, **stats))
    if search:
        w_idx, a_idx = split_indices(len(train), d.split, seed, d.limit)
        n = min(len(w_idx), len(a_idx))
        if n < o.batch_size:
            raise DataError(f"only {n} images per half for batch size {o.batch_size}: "
                            f"lower optim.batch_size or raise data.limit")
        w_idx, a_idx = w_idx[:n].tolist(), a_idx[:n].tolist()
        val_idx = a_idx[: d.eval_limit] if d.eval_limit else a_idx
        return Loaders(train.info, mk(train, w_idx, True, derive_seed(seed, 1)),
                       mk(train, a_idx, True, derive_seed(seed, 2)), mk(train, val_idx, False, seed),
                       {"seed": seed, "fraction": d.split, "limit": d.limit, "weight": n, "arch": n,
                        "val": len(val_idx)})
    idx = list(range(len(train)))[: d.limit] if d.limit else range(len(train))
    test_idx = list(range(len(test)))[: d.eval_limit] if d.eval_limit else range(len(test))
    return Loaders(train.info, mk(train, idx, True, derive_seed(seed, 1), drop=False), None,
                   mk(test, test_idx, False, seed), {"train": len(idx), "test": len(test_idx)})


def _imagenet_loaders(cfg, train, val, device, search):
    from .data.base import DatasetInfo
    d, o, seed = cfg.data, cfg.optim, cfg.run.seed
    size = d.image_size or 224
    info = DatasetInfo("imagenet", len(train.classes), 3, (size, size),
                       tuple(IMAGENET_MEAN), tuple(IMAGENET_STD))
    bs, rank, world = ddp.per_rank_batch(o.batch_size), ddp.rank(), ddp.world_size()
    # Crops and flips happen as the workers decode (ImageFolderDataset); colour jitter on the device.
    jitter = Augment(padding=0, flip=False, color_jitter=d.color_jitter) if d.color_jitter else None
    # Training halves: every world-th image of each epoch's order; evaluation: a fixed shard.
    mk = lambda ds, idx, shuffle, s: (
        FolderLoader(ds, idx, bs, True, device, s, d.workers, drop_last=True, rank=rank, world_size=world,
                     augment=jitter)
        if shuffle else FolderLoader(ds, list(idx)[rank::world], bs, False, device, s, d.workers, False))
    if search:
        w_idx, a_idx = imagenet_search_subset(train, d.split, seed)
        n = min(len(w_idx), len(a_idx))
        val_idx = a_idx[: d.eval_limit] if d.eval_limit else a_idx
        train.train = True
        return Loaders(info, mk(train, w_idx[:n], True, derive_seed(seed, 1)),
                       mk(train, a_idx[:n], True, derive_seed(seed, 2)), mk(val, val_idx, False, seed),
                       {"seed": seed, "fraction": d.split, "weight": n, "arch": n, "val": len(val_idx)})
    idx = list(range(len(train)))[: d.limit] if d.limit else range(len(train))
    val_idx = list(range(len(val)))[: d.eval_limit] if d.eval_limit else range(len(val))
    return Loaders(info, mk(train, idx, True, derive_seed(seed, 1)), None, mk(val, val_idx, False, seed),
                   {"train": len(idx), "test": len(val_idx)})


@torch.no_grad()
def evaluate(net: torch.nn.Module, loader, reduce: bool = False, **forward_kwargs) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy (%) in eval mode. `reduce`: the loader holds this
    rank's shard; the sums are all-reduced so every rank returns the figures of the whole set."""
    was_training = net.training
    net.eval()
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct, count = 0, 0
    loader.set_epoch(0)
    for x, y in loader:
        out = net(x, **forward_kwargs)
        logits = out[0] if isinstance(out, tuple) else out
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double().cpu()
        correct += int((logits.argmax(1) == y).sum())
        count += y.numel()
    net.train(was_training)
    if reduce:
        loss_sum, correct, count = ddp.allreduce_sum([loss_sum, correct, count], _device_of(net))
    return float(loss_sum) / max(count, 1), 100.0 * correct / max(count, 1)


def _device_of(net):
    p = next(net.parameters(), None)
    return p.device if p is not None else None


def open_run_folder(run_dir, tensorboard: bool, quiet: bool):
    """The run folder on rank 0; on the other ranks a stand-in that writes nothing."""
    with ddp.together():  # rank 0 alone can fail here (a folder it cannot write)
        run = RunFolder(run_dir, tensorboard=tensorboard, quiet=quiet) if ddp.is_main() else NullRunFolder(run_dir)
    return run


def new_run_dir(cfg, run_dir, default_name: str) -> Path:
    """Where a new run goes (default: run.out/<name>-s<seed>-<time>, by rank 0's clock). Nothing
    is created yet; a folder that holds a run is refused at once (finished work is never lost)."""
    if run_dir is None:
        name = cfg.run.name or f"{default_name}-s{cfg.run.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = Path(cfg.run.out) / name
    run_dir = Path(ddp.broadcast_object(str(run_dir)))
    _refuse_a_run(run_dir)  # every rank checks (and raises) alike
    return run_dir


def _refuse_a_run(run_dir: Path) -> None:
    if (run_dir / "checkpoint.pt").exists():
        raise RunError(f"{run_dir} already holds a run: continue it with --resume {run_dir}, or "
                       f"choose another folder with --out")


def make_run_folder(cfg, run_dir: Path, quiet: bool) -> RunFolder:
    """Open a new run's folder, which `runlock.hold_run` holds, and write the resolved config."""
    with ddp.together():
        _refuse_a_run(run_dir)  # again, now that this process holds the folder
        run = RunFolder(run_dir, cfg.run.tensorboard, quiet) if ddp.is_main() else NullRunFolder(run_dir)
        try:
            # What a run killed before its first checkpoint left: this run starts over, so must
            # its metrics (appending would list epoch 0 twice), and its half-written files go.
            if run.file("metrics.jsonl").exists():
                run.keep_metrics_before(0)
            run.remove_stale_temp_files()
            run.write_config(cfg)
        except BaseException:
            run.close()
            raise
    return run


class StepAccounting:
    """What the search and the training loop do after every step: add the (global) loss,
    correct predictions and images to the epoch's running sums, log a line with the ETA, and
    honour a stop request or a mid-epoch checkpoint. Subclasses hold `cfg`, `run`, `net`,
    `timer`, `elapsed`, `step`, `partial` and a `checkpoint()` method that calls `saving()`.

    It also keeps the promise that a fault loses nothing that was saved: a checkpoint is
    only written from finite weights (`ensure_finite`), and a non-finite loss or a failed
    write stops the run with one line saying which checkpoint still holds the last good
    state and how to go on."""

    saved: tuple[int, int] | None = None  # (epoch, step) of the last checkpoint written

    def start(self, run) -> None:
        """Attach the run folder. It is touched only now, once the data, the network and (on
        resume) the checkpoint have all loaded; then every rank takes rank 0's weights."""
        self.run = run
        with ddp.together():
            if self.saved is not None:  # resumed
                run.log.info(f"resuming from epoch {self.epoch + 1} step {self.step}")
                run.remove_stale_temp_files()
                run.keep_metrics_before(self.epoch)
            else:
                self.first_files(run)
        ddp.broadcast_params(self.net)

    def first_files(self, run) -> None:
        """What a new run writes before its first step."""

    def _position(self, epoch: int, step: int) -> str:
        return f"the end of epoch {epoch}" if step == 0 else f"epoch {epoch + 1}, step {step}"

    def _kept(self) -> str:
        if self.saved is None:
            return "no checkpoint had been written yet"
        return (f"{self.run.file('checkpoint.pt')} still holds the last good state "
                f"({self._position(*self.saved)})")

    def diverged(self, what: str) -> FloatingPointError:
        """The error for a loss or weights that stopped being finite (`what` says where)."""
        where = f"{what}: stopped; {self._kept()}"
        if self.saved is None:
            return FloatingPointError(f"{where}; lower optim.lr or optim.grad_clip and start again")
        return FloatingPointError(f"{where}; lower optim.lr or optim.grad_clip for a new run, or "
                                  f"continue with --resume {self.run.path} if the cause has passed")

    def run_to_end(self) -> None:
        """Run the remaining epochs; Ctrl-C/SIGTERM checkpoint and stop, a full disk ends in
        one line saying what was kept and how to go on."""
        with StopFlag() as stop:
            try:
                self.run_epochs(stop)
            except WriteError as e:
                raise self.write_failed(e) from None

    def extend(self, old_epochs: int, schedules: str) -> None:
        """A resumed run given more epochs (`--resume RUN --set optim.epochs=N`): say so, and
        save the config and a checkpoint with the new length at once, so a plain --resume after
        a kill goes on with it. The epochs already done keep what they computed; the rest
        follow the schedules of a run planned with the new length from the start."""
        new = self.cfg.optim.epochs
        self.run.log.info(f"extending the run from {old_epochs} to {new} epochs: epochs {self.epoch + 1}-{new} "
                          f"follow {schedules} of a {new}-epoch run")
        self.run.write_config(self.cfg)
        self.timer = Timer(self.elapsed)
        self.checkpoint()

    def write_failed(self, err: WriteError) -> RunError:
        """The error for a run file that could not be written (a full disk): the checkpoint
        write is atomic, so the previous checkpoint is intact whichever write failed."""
        if self.saved is None:
            return RunError(f"{err}: stopped; {self._kept()}. Free some space (or make the "
                            f"folder writable) and start again")
        return RunError(f"{err}: stopped; {self._kept()}. Free some space (or make the folder "
                        f"writable) and continue with --resume {self.run.path}")

    def ensure_finite(self) -> None:
        """Raise (on every rank alike: the weights are identical) if a weight or a buffer is
        not finite. A diverging update can leave inf/NaN weights after a step whose loss was
        still finite; such a state must never replace the last good checkpoint."""
        tensors = [(k, t) for k, t in self.net.state_dict().items() if t.is_floating_point()]
        if not tensors or bool(torch.stack([torch.isfinite(t).all() for _, t in tensors]).all()):
            return
        bad = next(k for k, t in tensors if not bool(torch.isfinite(t).all()))
        raise self.diverged(f"the weights became non-finite ({bad}) at "
                            f"{self._position(self.epoch, self.step)}")

    @contextlib.contextmanager
    def saving(self):
        """Wrap a checkpoint write: refuse non-finite weights, then remember the position. Only
        rank 0 writes; if that fails (a full disk), every rank stops, none waits for it."""
        self.ensure_finite()
        with ddp.together():
            yield
        self.saved = (self.epoch, self.step)

    def hits(self, logits, y) -> tuple[float, int]:
        """Correct predictions in a batch and how many were made (the segmentation loop
        counts pixels and leaves out the ignored ones)."""
        return float((logits.argmax(1) == y).sum()), y.numel()

    def account_step(self, loss, logits, y, stop: StopFlag, epoch: int, steps: int, total: int,
                     done0: int, bar, extra: str) -> None:
        # Global sums: every rank gets the same, so a non-finite loss or a stop request on
        # any rank stops all of them at the same step.
        correct, count = self.hits(logits, y)
        loss_sum, correct, count, stopping = ddp.allreduce_sum(
            [float(loss) * count, correct, count, float(stop.requested)])
        if not math.isfinite(loss_sum):
            bar.close()
            raise self.diverged(f"the training loss became {loss_sum / count} at epoch {epoch + 1}, "
                                f"step {self.step + 1}")
        self.partial[0] += loss_sum
        self.partial[1] += correct
        self.partial[2] += int(count)
        self.step += 1
        b, cfg = self.step, self.cfg
        bar.update(1)
        done = epoch * steps + b
        if b % cfg.run.log_every == 0 or b == steps:
            rate = (done - done0) / max(self.timer.elapsed - self.elapsed, 1e-9)
            self.run.log.info(f"epoch {epoch + 1}/{cfg.optim.epochs} step {b}/{steps} "
                              f"loss {self.partial[0] / self.partial[2]:.4f} "
                              f"acc {100 * self.partial[1] / self.partial[2]:.2f}% {extra} "
                              f"eta {format_eta((total - done) / max(rate, 1e-9))}")
        if stopping:
            self.checkpoint()
            bar.close()
            raise Interrupted(self.run.path)
        if cfg.run.checkpoint_every and b % cfg.run.checkpoint_every == 0 and b < steps:
            self.checkpoint()
