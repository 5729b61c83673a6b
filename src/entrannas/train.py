"""Train a searched cell from scratch as a target network (paper section 4; docs/design.md)
and measure it.

    result = run_training(load_config("cifar10-eval", kind="train"), "DARTS_V2")
    result = resume_training("runs/cifar10-eval-s0-...")     # continue a stopped one
    result.summary                                         # test acc, params (M), MACs (M)

Per step: SGD with momentum on the cross-entropy of the main head plus `aux_weight` times
that of the auxiliary head (both label-smoothed if asked), gradient norm clipped. The
learning rate follows a cosine or a linear schedule per epoch, and the drop-path
probability rises linearly from 0 as in DARTS. The run folder has the same layout as a
search's, plus genotype.json (what was trained) and summary.json (what it scored).
metrics.jsonl's train_loss is the optimised objective (main + weighted auxiliary, as DARTS
logs it); test_loss is the plain cross-entropy of the main head.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from . import accel
from . import distributed as ddp
from .checkpoint import load_run_checkpoint, mismatch, save_checkpoint
from .config import TrainConfig, from_dict, resume_config, to_dict
from .evalnet import build_target_net
from .genotype import Genotype, load_genotype
from .optim import clip_grad_norm_, optimizer_options
from .loop import (StepAccounting, StopFlag, build_loaders, evaluate, make_run_folder, new_run_dir,
                   open_run_folder, peak_memory_gib, progress, resolve_device, rng_state, seed_everything,
                   set_rng_state)
from .measure import count_macs, count_params
from .rundir import RunFolder, Timer, format_eta
from .runlock import hold_run
from .search import cosine_lr, ramp_lr

__all__ = ["run_training", "resume_training", "train_step", "build_net", "lr_at", "TrainResult"]


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """The learning rate of an epoch: cosine (CIFAR) or linear (ImageNet) from lr to lr_min,
    ramped up over the first optim.lr_warmup_epochs as (epoch + 1) / lr_warmup_epochs of it."""
    o = cfg.optim
    if o.schedule == "linear":
        lr = o.lr - (o.lr - o.lr_min) * epoch / o.epochs
    else:
        lr = cosine_lr(o.lr, o.lr_min, epoch, o.epochs)
    return ramp_lr(lr, epoch, o.lr_warmup_epochs)


def build_net(cfg: TrainConfig, genotype: Genotype, info, device: torch.device | str | None = None):
    """The target network of `genotype` for the config's dataset. Everything but ImageNet uses
    the CIFAR layout (3x3 stem, no downsampling before the cells), with the dataset's classes
    and channels."""
    m = cfg.model
    variant = "imagenet" if cfg.data.dataset == "imagenet" else "cifar10"
    with torch.device(device or "cpu"):
        return build_target_net(genotype, variant, C=m.C, layers=m.layers, auxiliary=m.auxiliary,
                                num_classes=info.num_classes, in_channels=info.channels)


def net_cost(cfg: TrainConfig, genotype: Genotype, info) -> dict:
    """Params (M, without the auxiliary head) and multiply-adds (M, one image) as papers report
    them; counted on the meta device, so nothing is allocated or computed."""
    # fork_rng: building a net initialises weights, which must not move the generator that
    # drop path uses (a resumed run restores it before this is called).
    with torch.random.fork_rng(devices=[]):
        net = build_net(cfg, genotype, info, "meta")
    return {"params_M": count_params(net) / 1e6,
            "macs_M": count_macs(net, (info.channels, *info.image_size)) / 1e6}


def train_step(net, opt: torch.optim.Optimizer, x, y, cfg: TrainConfig):
    """One SGD step on a batch; returns the loss (main + weighted auxiliary) and the main logits,
    detached. Raises FloatingPointError before the update if the loss is not finite, so the
    weights (and the last checkpoint) stay good. Under torchrun the gradients are averaged over
    the ranks before clipping, and the loss checked is the global one, so every rank raises alike."""
    m, o = cfg.model, cfg.optim
    opt.zero_grad(set_to_none=True)
    logits, logits_aux = net(x)
    loss = F.cross_entropy(logits, y, label_smoothing=o.label_smoothing)
    if logits_aux is not None and m.aux_weight > 0:
        loss = loss + m.aux_weight * F.cross_entropy(logits_aux, y, label_smoothing=o.label_smoothing)
    value = float(loss.detach())
    if ddp.active():
        value = ddp.allreduce_sum([value], None)[0] / ddp.world_size()
    if not math.isfinite(value):
        raise FloatingPointError(f"the training loss became {value}")
    loss.backward()
    ddp.allreduce_grads(net.parameters())
    clip_grad_norm_(net.parameters(), o.grad_clip)
    opt.step()
    return loss.detach(), logits.detach()


def info_dict(info) -> dict:
    """What a trained network needs to know of its data (classes, input size, normalisation):
    kept in the checkpoint, so loading the model needs no data set (export.py)."""
    return {"name": info.name, "num_classes": info.num_classes, "channels": info.channels,
            "image_size": list(info.image_size), "mean": list(info.mean), "std": list(info.std),
            "classes": list(info.classes) if info.classes else None}


@dataclass
class TrainResult:
    run_dir: Path
    metrics: list[dict]
    summary: dict

    @property
    def test_acc(self) -> float:
        return self.summary.get("test_acc", float("nan"))


class _Training(StepAccounting):
    """State of one training run; `run_epochs()` trains until done or until a stop request.
    Built (data, network, checkpoint state) before the run folder is touched; `start(run)`
    attaches it."""

    def __init__(self, cfg: TrainConfig, genotype: Genotype, state: dict | None = None,
                 checkpoint: Path | None = None):
        self.cfg, self.genotype = cfg, genotype
        self.device = resolve_device(cfg.run.device)
        accel.check(cfg.run, self.device)
        accel.retain_freed_memory()  # a CPU step reuses its activations' memory
        seed_everything(cfg.run.seed)
        self.data = build_loaders(cfg, self.device, search=False)
        self.net = accel.prepare(build_net(cfg, genotype, self.data.info).to(self.device), cfg.run, self.device)
        if ddp.active():
            ddp.convert_sync_batchnorm(self.net)  # statistics over the global batch
        o = cfg.optim
        self.opt = torch.optim.SGD(self.net.parameters(), lr=o.lr, momentum=o.momentum,
                                   weight_decay=o.weight_decay, **optimizer_options(self.device))
        # Position: `step` batches of epoch `epoch` are done; `partial` sums their loss,
        # correct predictions and images so a resumed epoch reports the same metrics.
        self.epoch, self.step, self.partial, self.elapsed = 0, 0, [0.0, 0.0, 0], 0.0
        if state is not None:
            try:
                self.net.load_state_dict(state["net"])
                self.opt.load_state_dict(state["opt"])
                set_rng_state(state["rng"], self.device)
            except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
                raise mismatch(checkpoint, e) from None
            self.epoch, self.step = state["epoch"], state["step"]
            self.partial, self.elapsed = list(state["partial"]), state["elapsed"]
            self.saved = (self.epoch, self.step)
        # What runs the batches: the net itself, or its torch.compile'd wrapper (run.compile);
        # checkpoints always hold the plain net's weights.
        self.forward = accel.compiled(self.net, cfg.run, self.device)
        # `--resume RUN --set optim.epochs=N`: the length the checkpoint's run was planned for.
        self.extended_from = (state["config"]["optim"]["epochs"]
                              if state is not None and state["config"]["optim"]["epochs"] != o.epochs
                              else None)

    def first_files(self, run) -> None:
        if self.data.meta:  # an image folder: its classes and held-out test images
            run.write_json("dataset.json", self.data.meta)

    def start(self, run) -> None:
        super().start(run)
        if self.extended_from is not None:
            o = self.cfg.optim
            self.extend(self.extended_from, f"the learning rate ({o.schedule}) and the drop path "
                        f"(rising to model.drop_path)")

    def checkpoint(self) -> None:
        with self.saving():  # refuses non-finite weights, on every rank
            if ddp.is_main():
                save_checkpoint(self.run.file("checkpoint.pt"), {
                    "kind": "train", "config": to_dict(self.cfg), "genotype": self.genotype.to_dict(),
                    "epoch": self.epoch, "step": self.step, "partial": self.partial,
                    "elapsed": self.timer.elapsed, "rng": rng_state(self.device),
                    "data_info": info_dict(self.data.info),
                    "net": self.net.state_dict(), "opt": self.opt.state_dict()})

    def run_epochs(self, stop: StopFlag) -> None:
        cfg, net, o = self.cfg, self.net, self.cfg.optim
        self.timer = Timer(self.elapsed)
        steps = len(self.data.train)
        total = o.epochs * steps
        done0 = self.epoch * steps + self.step
        bar = progress(total, done0, "train")
        while self.epoch < o.epochs:
            e = self.epoch
            lr = lr_at(cfg, e)
            for group in self.opt.param_groups:
                group["lr"] = lr
            # DARTS raises drop path linearly: no regularisation while the net is still weak.
            net.drop_path_prob = cfg.model.drop_path * e / o.epochs
            # Batches depend only on (seed, epoch, batch): resuming mid-epoch replays nothing.
            self.data.train.set_epoch(e, self.step)
            net.train()
            for x, y in self.data.train:
                try:
                    with accel.autocast(cfg.run, self.device):
                        loss, logits = train_step(self.forward, self.opt, x, y, cfg)
                except FloatingPointError as err:  # raised before the update: weights still good
                    bar.close()
                    raise self.diverged(f"{err} at epoch {e + 1}, step {self.step + 1}") from None
                self.account_step(loss, logits, y, stop, e, steps, total, done0, bar, f"lr {lr:.4g}")
            self.end_epoch(e, lr)
        bar.close()

    def end_epoch(self, e: int, lr: float) -> None:
        self.ensure_finite()  # before any of the epoch's files is written
        # Eval mode: no drop path and no auxiliary head, so evaluation draws no random numbers
        # and the generator state stays that of the training steps.
        with accel.autocast(self.cfg.run, self.device):
            test_loss, test_acc = evaluate(self.forward, self.data.val, reduce=ddp.active())
        loss_sum, correct, count = self.partial
        row = {"epoch": e, "lr": lr, "drop_path": self.net.drop_path_prob,
               "train_loss": loss_sum / max(count, 1), "train_acc": 100 * correct / max(count, 1),
               "test_loss": test_loss, "test_acc": test_acc, "wall_time": self.timer.elapsed,
               "peak_mem_gib": peak_memory_gib(self.device)}
        with ddp.together():  # rank 0 writes; a full disk stops every rank
            self.run.append_metrics(row)
        self.run.log.info(f"epoch {e + 1} done: train acc {row['train_acc']:.2f}% "
                          f"test acc {test_acc:.2f}% wall {format_eta(row['wall_time'])}")
        self.epoch, self.step, self.partial = e + 1, 0, [0.0, 0.0, 0]
        self.checkpoint()


def run_training(cfg: TrainConfig, genotype, run_dir: str | Path | None = None, quiet: bool = False,
                 preset: str | None = None) -> TrainResult:
    """Train `genotype` (a Genotype, JSON file, builtin name or search run folder) from scratch
    into `run_dir` (default: a new folder under cfg.run.out)."""
    if getattr(cfg, "kind", None) != "train":
        from .config import ConfigError
        raise ConfigError(f"run_training needs a train config (kind: train), got {getattr(cfg, 'kind', cfg)!r}")
    ddp.init_from_env()
    run_dir = new_run_dir(cfg, run_dir, preset or "train")
    with ddp.together():  # genotype, data and network first: bad input fails before any file exists
        genotype = load_genotype(genotype)
        training = _Training(cfg, genotype)
    with hold_run(run_dir, create=True):
        run = make_run_folder(cfg, run_dir, quiet)
        try:
            with ddp.together():
                if ddp.is_main():
                    genotype.save(run.file("genotype.json"))
                if cfg.run.plots and ddp.is_main():
                    from .plot import plot_genotype
                    source = genotype.meta.get("source")  # a builtin's paper; user metadata may be anything
                    plot_genotype(genotype, run.file("cells.png"), title=source if isinstance(source, str) else None)
        except BaseException:
            run.close()
            raise
        return _drive(training, run)


def resume_training(run_dir: str | Path, quiet: bool = False, overrides=()) -> TrainResult:
    """Continue a stopped training run from its last checkpoint, with its own config and genotype.
    `overrides` may only set optim.epochs, to continue a (finished) training for longer.
    Under torchrun every rank loads the same checkpoint (the run folder must be shared)."""
    ddp.init_from_env()
    with hold_run(run_dir):  # before the checkpoint is read: no other process may be writing it
        with ddp.together():
            state = load_run_checkpoint(run_dir, "train")
            cfg = resume_config(from_dict(state["config"], "train"), overrides, state["epoch"])
            training = _Training(cfg, Genotype.from_dict(state["genotype"]), state,
                                 Path(run_dir) / "checkpoint.pt")
        return _drive(training, open_run_folder(run_dir, cfg.run.tensorboard, quiet))


def _drive(training: _Training, run: RunFolder) -> TrainResult:
    cfg, genotype = training.cfg, training.genotype
    try:
        training.start(run)
        for line in training.data.notes:
            run.log.info(line)
        info = training.data.info
        cost = net_cost(cfg, genotype, info)
        run.log.info(f"training on {cfg.data.dataset}: C={cfg.model.C}, {cfg.model.layers} cells, "
                     f"{cost['params_M']:.3f}M params, {cost['macs_M']:.1f}M multiply-adds; "
                     f"{len(training.data.train)} steps per epoch x {cfg.optim.epochs} epochs, batch "
                     f"{cfg.optim.batch_size}, device {training.device}, {ddp.world_size()} process(es), "
                     f"run folder {run.path}")
        training.run_to_end()
        metrics = run.read_metrics()
        best = max(metrics, key=lambda r: r["test_acc"]) if metrics else {}
        summary = {"dataset": cfg.data.dataset, "test_images": training.data.split["test"],
                   "train_images": training.data.split["train"], "epochs": cfg.optim.epochs,
                   "test_acc": metrics[-1]["test_acc"] if metrics else float("nan"),
                   "test_loss": metrics[-1]["test_loss"] if metrics else float("nan"),
                   "best_test_acc": best.get("test_acc", float("nan")), "best_epoch": best.get("epoch"),
                   **cost, "C": cfg.model.C, "layers": cfg.model.layers,
                   "wall_time": metrics[-1]["wall_time"] if metrics else 0.0,
                   "peak_mem_gib": max((r["peak_mem_gib"] for r in metrics), default=0.0),
                   "genotype": genotype.to_dict()}
        with ddp.together():
            run.write_json("summary.json", summary)
        run.log.info(f"final test acc {summary['test_acc']:.2f}% (best {summary['best_test_acc']:.2f}% "
                     f"at epoch {(summary['best_epoch'] or 0) + 1}); summary: {run.file('summary.json')}")
    finally:
        run.close()  # on an error too: no log file or TensorBoard writer is left open
    return TrainResult(run.path, metrics, summary)
