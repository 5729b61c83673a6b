"""Train a searched cell as a segmentation backbone (the paper's Table 5) and score it by mIoU.

    result = run_segmentation(load_config("fmnist-scenes", kind="segment"), "DARTS_V2")
    result = resume_segmentation("runs/fmnist-scenes-s0-...")   # continue a stopped one
    result.summary                        # miou, IoU per class, pixel accuracy, params, MACs

Per step: SGD with momentum on the pixel-wise cross-entropy (label 255 ignored), no auxiliary
loss, the learning rate on DeepLab's poly schedule, set every step. Every epoch ends with one
confusion matrix over the whole validation set (single-scale, whole images), from which come
the mIoU, the IoU of every class and the pixel accuracy (confusion.py). The run folder,
resume, checkpoints and bad-input rules are train's: loop.StepAccounting, rundir.RunFolder,
checkpoint.py; the data and the backbone are checked before the run folder is created.
"""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from . import accel
from .checkpoint import load_run_checkpoint, mismatch, save_checkpoint
from .config import ConfigError, SegmentConfig, from_dict, to_dict
from .confusion import confusion_matrix, segmentation_scores
from .data import DataError, derive_seed
from .data.scenes import load_fmnist_scenes
from .data.segloader import SegAugment, SegLoader
from .data.voc import IGNORE, VOCSegmentation
from .genotype import Genotype, load_genotype
from .runlock import hold_run
from .loop import (StepAccounting, StopFlag, make_run_folder, new_run_dir, open_run_folder, peak_memory_gib, progress,
                   resolve_device, rng_state, seed_everything, set_rng_state)
from .rundir import RunFolder, Timer, format_eta
from .segnet import build_segnet, load_backbone, segnet_cost

__all__ = ["run_segmentation", "resume_segmentation", "poly_lr", "load_segmentation_data",
           "evaluate_segmentation", "SegmentResult"]


def poly_lr(cfg: SegmentConfig, step: int, total: int) -> float:
    """DeepLab's poly schedule: lr * (1 - step / total) ** power."""
    return cfg.optim.lr * (1 - step / total) ** cfg.optim.power


@dataclass
class SegData:
    info: object
    train: SegLoader
    val: SegLoader
    split: dict


def load_segmentation_data(cfg: SegmentConfig, device: torch.device | str = "cpu") -> SegData:
    """The training loader (augmented, order and crops seeded by run.seed) and the validation
    loader (whole images) of a segment config. Raises DataError for missing or bad data."""
    d, o, seed = cfg.data, cfg.optim, cfg.run.seed
    if d.dataset == "fmnist-scenes":
        train, val = load_fmnist_scenes(d.data_dir, d.download, d.scenes_train, d.scenes_val, d.scene_seed,
                                        d.scene_canvas, d.scene_items[0], d.scene_items[1], d.scene_threshold)
        eval_size = None  # in memory, all one size
    else:
        train, val = VOCSegmentation(d.data_dir, d.train_split), VOCSegmentation(d.data_dir, d.val_split)
        eval_size = d.crop_size
    info = train.info
    idx = torch.arange(len(train))[: d.limit]
    val_idx = torch.arange(len(val))[: d.eval_limit]
    # at least 2 images a batch: BatchNorm after ASPP's image pooling sees one value per image
    if o.batch_size < 2 or idx.numel() < o.batch_size:
        raise DataError(f"{idx.numel()} training images for batch size {o.batch_size}: segmentation needs "
                        f"optim.batch_size >= 2 and at least that many images (data.limit)")
    aug = SegAugment(d.crop_size, d.scale, d.flip, info.mean, info.std)
    common = dict(device=device, workers=d.workers if eval_size else 0)
    train_l = SegLoader(train, idx, o.batch_size, True, aug, seed=derive_seed(seed, 1), drop_last=True, **common)
    val_l = SegLoader(val, val_idx, o.batch_size, False, None, seed=seed, eval_size=eval_size, **common)
    return SegData(info, train_l, val_l, {"train": idx.numel(), "val": val_idx.numel()})


@torch.no_grad()
def evaluate_segmentation(net, loader: SegLoader, num_classes: int, run_cfg=None) -> dict:
    """Loss, mIoU, IoU per class and pixel accuracy over every image of ``loader``, in eval mode."""
    was_training = net.training
    net.eval()
    device = loader.device
    cm = torch.zeros((num_classes, num_classes), dtype=torch.long, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    loader.set_epoch(0)
    for x, y in loader:
        if run_cfg is not None:
            x = accel.as_input(x, run_cfg, device)
        with accel.autocast(run_cfg, device) if run_cfg is not None else contextlib.nullcontext():
            logits = net(x)
        loss_sum += F.cross_entropy(logits.float(), y, ignore_index=IGNORE, reduction="sum").double()
        cm += confusion_matrix(logits.max(1).indices, y, num_classes)
    net.train(was_training)
    scores = segmentation_scores(cm)
    pixels = int(cm.sum())
    return {"loss": float(loss_sum) / max(pixels, 1), **scores, "confusion": cm.cpu().tolist()}


def _step(forward, opt, x, y, cfg: SegmentConfig):
    """One SGD step; raises FloatingPointError before the update if the loss is not finite."""
    opt.zero_grad(set_to_none=True)
    logits = forward(x)
    # the mean over labelled pixels (a batch that is all ignore gives 0, not NaN)
    valid = (y != IGNORE).sum().clamp(min=1)
    loss = F.cross_entropy(logits.float(), y, ignore_index=IGNORE, reduction="sum") / valid
    value = float(loss.detach())
    if not math.isfinite(value):
        raise FloatingPointError(f"the training loss became {value}")
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], cfg.optim.grad_clip)
    opt.step()
    return loss.detach(), logits.detach()


@dataclass
class SegmentResult:
    run_dir: Path
    metrics: list[dict]
    summary: dict

    @property
    def miou(self) -> float:
        return self.summary.get("miou", float("nan"))


class _Segmenting(StepAccounting):
    """State of one segmentation run; `run_epochs()` trains until done or a stop request."""

    def __init__(self, cfg: SegmentConfig, genotype: Genotype, data: SegData, net, device):
        self.cfg, self.genotype, self.data, self.net, self.device = cfg, genotype, data, net, device
        o = cfg.optim
        self.opt = torch.optim.SGD(net.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
        # Position: `step` batches of epoch `epoch` done; `partial` sums their loss, correct
        # pixels and labelled pixels, so a resumed epoch reports the same metrics.
        self.epoch, self.step, self.partial, self.elapsed = 0, 0, [0.0, 0.0, 0], 0.0
        self.forward = accel.compiled(net, cfg.run, device)
        self.run: RunFolder | None = None

    def restore(self, state: dict, path: Path) -> None:
        try:
            self.net.load_state_dict(state["net"])
            self.opt.load_state_dict(state["opt"])
            set_rng_state(state["rng"], self.device)
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
            raise mismatch(path, e) from None
        self.epoch, self.step = state["epoch"], state["step"]
        self.partial, self.elapsed = list(state["partial"]), state["elapsed"]
        self.saved = (self.epoch, self.step)

    def hits(self, logits, y):
        valid = y != IGNORE
        return float(((logits.max(1).indices == y) & valid).sum()), int(valid.sum())

    def checkpoint(self) -> None:
        with self.saving():  # refuses non-finite weights
            save_checkpoint(self.run.file("checkpoint.pt"), {
                "kind": "segment", "config": to_dict(self.cfg), "genotype": self.genotype.to_dict(),
                "epoch": self.epoch, "step": self.step, "partial": self.partial,
                "elapsed": self.timer.elapsed, "rng": rng_state(self.device),
                "net": self.net.state_dict(), "opt": self.opt.state_dict()})

    def run_epochs(self, stop: StopFlag) -> None:
        cfg, o = self.cfg, self.cfg.optim
        self.timer = Timer(self.elapsed)
        steps = len(self.data.train)
        total = o.epochs * steps
        done0 = self.epoch * steps + self.step
        bar = progress(total, done0, "segment")
        while self.epoch < o.epochs:
            e = self.epoch
            self.data.train.set_epoch(e, self.step)  # batches depend on (seed, epoch, batch) only
            self.net.train()
            for x, y in self.data.train:
                lr = poly_lr(cfg, e * steps + self.step, total)
                for group in self.opt.param_groups:
                    group["lr"] = lr
                try:
                    with accel.autocast(cfg.run, self.device):
                        loss, logits = _step(self.forward, self.opt, accel.as_input(x, cfg.run, self.device), y, cfg)
                except FloatingPointError as err:  # raised before the update: weights still good
                    bar.close()
                    raise self.diverged(f"{err} at epoch {e + 1}, step {self.step + 1}") from None
                self.account_step(loss, logits, y, stop, e, steps, total, done0, bar, f"lr {lr:.4g}")
            self.end_epoch(e, poly_lr(cfg, (e + 1) * steps - 1, total))
        bar.close()

    def end_epoch(self, e: int, lr: float) -> None:
        self.ensure_finite()  # before any of the epoch's files is written
        # Eval mode: no dropout, so evaluation draws no random numbers.
        v = evaluate_segmentation(self.forward, self.data.val, self.data.info.num_classes, self.cfg.run)
        loss_sum, correct, count = self.partial
        row = {"epoch": e, "lr": lr, "train_loss": loss_sum / max(count, 1),
               "train_pixel_acc": 100 * correct / max(count, 1), "val_loss": v["loss"],
               "val_miou": v["miou"], "val_pixel_acc": v["pixel_acc"], "val_mean_acc": v["mean_acc"],
               "val_iou": v["iou"], "val_confusion": v["confusion"], "wall_time": self.timer.elapsed,
               "peak_mem_gib": peak_memory_gib(self.device)}
        self.run.append_metrics(row)
        self.run.log.info(f"epoch {e + 1} done: train pixel acc {row['train_pixel_acc']:.2f}% val mIoU "
                          f"{v['miou']:.2f}% pixel acc {v['pixel_acc']:.2f}% wall {format_eta(row['wall_time'])}")
        self.epoch, self.step, self.partial = e + 1, 0, [0.0, 0.0, 0]
        self.checkpoint()


def _single_process() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("segment runs in one process: start it without torchrun")


def _build(cfg: SegmentConfig, genotype: Genotype):
    """Data, then the network (seeded), on the config's device: everything that can fail on
    bad input, before any file is written."""
    device = resolve_device(cfg.run.device)
    accel.check(cfg.run, device)
    accel.retain_freed_memory()  # a CPU step reuses its activations' memory
    data = load_segmentation_data(cfg, device)
    seed_everything(cfg.run.seed)
    net = build_segnet(cfg, genotype, data.info.num_classes, data.info.channels).to(device)
    return data, accel.prepare(net, cfg.run, device), device


def run_segmentation(cfg: SegmentConfig, genotype=None, run_dir: str | Path | None = None,
                     quiet: bool = False, preset: str | None = None) -> SegmentResult:
    """Train ``genotype`` (a Genotype, JSON file, builtin name or run folder; default: the
    genotype of ``cfg.model.backbone``) as a DeepLabV3 backbone into ``run_dir``."""
    if getattr(cfg, "kind", None) != "segment":
        raise ConfigError(f"run_segmentation needs a segment config (kind: segment), got {getattr(cfg, 'kind', cfg)!r}")
    _single_process()
    backbone = cfg.model.backbone
    if genotype is None:
        if backbone is None:
            raise ConfigError("give a genotype (--genotype), or a backbone run (--backbone RUN) to take it from")
        genotype = backbone
    run_dir = new_run_dir(cfg, run_dir, preset or "segment")
    genotype = load_genotype(genotype)
    data, net, device = _build(cfg, genotype)
    loaded = load_backbone(net, backbone, genotype, cfg.model.C, cfg.model.layers) if backbone else None
    seg = _Segmenting(cfg, genotype, data, net, device)
    with hold_run(run_dir, create=True):  # bad input failed above, before any file existed
        run = make_run_folder(cfg, run_dir, quiet)
        try:
            genotype.save(run.file("genotype.json"))
            if cfg.run.plots:
                from .plot import plot_genotype
                source = genotype.meta.get("source")
                plot_genotype(genotype, run.file("cells.png"), title=source if isinstance(source, str) else None)
            if loaded:
                run.log.info(f"backbone weights from {loaded['run']} ({loaded['tensors']} tensors, "
                             f"{loaded['epochs']} epochs of ImageNet training)")
        except BaseException:
            run.close()
            raise
        return _drive(cfg, genotype, run, seg)


def resume_segmentation(run_dir: str | Path, quiet: bool = False) -> SegmentResult:
    """Continue a stopped segmentation run from its last checkpoint, with its own config."""
    _single_process()
    with hold_run(run_dir):  # before the checkpoint is read: no other process may be writing it
        state = load_run_checkpoint(run_dir, "segment")
        cfg = from_dict(state["config"], "segment")
        genotype = Genotype.from_dict(state["genotype"])
        data, net, device = _build(cfg, genotype)
        seg = _Segmenting(cfg, genotype, data, net, device)
        seg.restore(state, Path(run_dir) / "checkpoint.pt")
        return _drive(cfg, genotype, open_run_folder(run_dir, cfg.run.tensorboard, quiet), seg)


def _drive(cfg: SegmentConfig, genotype: Genotype, run: RunFolder, seg: _Segmenting) -> SegmentResult:
    try:
        seg.start(run)  # the run folder is touched only now (resume: log, stale files, metrics)
        info = seg.data.info
        cost = segnet_cost(cfg, genotype, info.num_classes, (info.channels, cfg.data.crop_size, cfg.data.crop_size))
        run.log.info(f"segmenting {cfg.data.dataset}: C={cfg.model.C}, {cfg.model.layers} cells, output stride "
                     f"{cfg.model.output_stride}, {cost['params_M']:.3f}M params, {cost['macs_M']:.1f}M "
                     f"multiply-adds at {cfg.data.crop_size}x{cfg.data.crop_size}; {len(seg.data.train)} steps "
                     f"per epoch x {cfg.optim.epochs} epochs, batch {cfg.optim.batch_size}, device {seg.device}, "
                     f"run folder {run.path}")
        seg.run_to_end()
        metrics = run.read_metrics()
        last = metrics[-1] if metrics else {}
        best = max(metrics, key=lambda r: r["val_miou"]) if metrics else {}
        classes = info.classes or tuple(str(c) for c in range(info.num_classes))
        summary = {"dataset": cfg.data.dataset, "train_images": seg.data.split["train"],
                   "val_images": seg.data.split["val"], "epochs": cfg.optim.epochs,
                   "miou": last.get("val_miou", math.nan), "pixel_acc": last.get("val_pixel_acc", math.nan),
                   "mean_acc": last.get("val_mean_acc", math.nan), "val_loss": last.get("val_loss", math.nan),
                   "iou": dict(zip(classes, last.get("val_iou", []))),
                   "best_miou": best.get("val_miou", math.nan), "best_epoch": best.get("epoch"),
                   **cost, "C": cfg.model.C, "layers": cfg.model.layers, "output_stride": cfg.model.output_stride,
                   "backbone": cfg.model.backbone, "wall_time": last.get("wall_time", 0.0),
                   "peak_mem_gib": max((r["peak_mem_gib"] for r in metrics), default=0.0),
                   "confusion": last.get("val_confusion"), "genotype": genotype.to_dict()}
        run.write_json("summary.json", summary)
        run.log.info(f"final val mIoU {summary['miou']:.2f}% (best {summary['best_miou']:.2f}% at epoch "
                     f"{(summary['best_epoch'] or 0) + 1}), pixel acc {summary['pixel_acc']:.2f}%; "
                     f"summary: {run.file('summary.json')}")
    finally:
        run.close()  # on an error too: no log file or TensorBoard writer is left open
    return SegmentResult(run.path, metrics, summary)
