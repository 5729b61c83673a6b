"""The first-order bi-level search (paper sections 2.1 and 4; docs/design.md) and its run folder.

    result = run_search(load_config("fmnist-quick"))           # a new run
    result = resume_search("runs/fmnist-quick-0")              # continue a stopped one

Per step: an architecture step on a validation batch (Adam on alpha/beta, plus the DST
regulariser), then a weight step on a training batch (SGD, clipped). The weight learning rate
follows a cosine per epoch and the temperature anneals per epoch (eq. 5).
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
from .config import SearchConfig, from_dict, resume_config, to_dict
from .optim import clip_grad_norm_, optimizer_options
from .loop import (StepAccounting, StopFlag, build_loaders, evaluate, make_run_folder, new_run_dir,
                   open_run_folder, peak_memory_gib, progress, resolve_device, seed_everything)
from .rundir import RunFolder, Timer, format_eta, read_metrics
from .runlock import hold_run
from .arch import Temperature
from .bnstats import recalibrate_batchnorm
from .genotype import Genotype
from .supernet import CELL_TYPES, METHOD_DEFAULTS, SuperNet, frozen

__all__ = ["search_step", "run_search", "resume_search", "run_search_seeds", "SearchResult",
           "build_supernet", "cell_summary", "tau_decay", "warmup_epochs"]


# Below about this temperature the DST cells fill up again (docs/design.md, "DST at a small
# temperature"; a CPU probe turned from pruning to filling between tau 0.13 and 0.045).
DST_DENSE_BELOW_TAU = 0.05


def search_step(net: SuperNet, w_opt: torch.optim.Optimizer, a_opt: torch.optim.Optimizer | None,
                train_batch, val_batch, grad_clip: float = 5.0):
    """One first-order step: an architecture step on a validation batch (Adam on alpha/beta),
    then a weight step on a training batch (SGD, gradient norm clipped). `a_opt=None` skips
    the architecture step (warm-up epochs).

    Each backward asks only for the gradients its optimiser uses (`inputs=`), so the
    architecture step skips every weight-gradient kernel and the weight step skips the
    coefficient gradients: exact, and cheaper than a full backward.
    Returns the training loss and logits of the weight step (detached). Raises
    FloatingPointError, before updating alpha/beta, if their gradients are not finite.

    Under torchrun each rank passes its share of the global batch; the gradients are averaged
    over the ranks before each optimiser step (see distributed.py), so alpha/beta stay
    bit-identical on every rank and the step is the single-process step on the global batch.
    """
    if a_opt is not None:
        xv, yv = val_batch
        a_opt.zero_grad(set_to_none=True)
        # With the weights frozen the forward saves nothing for weight gradients and the
        # backward computes none (custom autograd Functions cannot tell from `inputs=`).
        with frozen(net.weight_parameters()):
            arch_loss = F.cross_entropy(net(xv), yv) + net.dst_regulariser()
        arch_loss.backward(inputs=net.arch_parameters())
        ddp.allreduce_grads(net.arch_parameters())
        # Checked before the update (as training checks its loss): a non-finite alpha/beta
        # would leave DST nodes without inputs. The gradients are all-reduced, so every rank
        # decides alike.
        grads = [p.grad for p in net.arch_parameters() if p.grad is not None]
        if grads and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
            value = float(arch_loss.detach())
            raise FloatingPointError(f"the architecture loss became {value}" if not math.isfinite(value)
                                     else "the architecture gradients became non-finite")
        a_opt.step()
        # The backward ran only the part of the graph that leads to alpha/beta; the rest (the
        # stem, the first cell's ops) keeps its saved tensors while the graph lives. Drop it
        # before the weight step (with the frozen weights above, the EnTranNAS step's peak at
        # batch 64 fell from 1.19 to 0.90 GiB; benchmarks/RESULTS.md).
        del arch_loss

    xt, yt = train_batch
    weights = net.weight_parameters()
    with frozen(net.arch_parameters()):  # nothing kept for alpha/beta's gradients, which this step drops
        logits = net(xt)
    loss = F.cross_entropy(logits, yt)
    # autograd.grad, not backward: the gradients are handed over as they are, where backward
    # would add each into the weight's .grad (an add_ or a detach per weight: 230-460 of the
    # EnTranNAS step's ops).
    grads = torch.autograd.grad(loss, weights, allow_unused=True)
    for p, g in zip(weights, _writable(grads)):
        p.grad = g
    # Every weight the derived cell did not use gets a zero gradient: it is still stepped
    # (momentum, weight decay) like one whose bank row was unused, as in the DARTS-family code,
    # whichever candidates a run happened to use before (a resumed run starts without
    # gradients); docs/design.md. Before the all-reduce, so every rank has the same set.
    _zero_unused_grads(weights)
    ddp.allreduce_grads(weights)
    clip_grad_norm_(weights, grad_clip)
    w_opt.step()
    return loss.detach(), logits.detach()


def _writable(grads):
    """The gradients, each safe to change in place (the all-reduce, the clip and the optimiser
    write into .grad). autograd.grad hands a gradient over as the backward made it: one
    broadcast over a weight (stride 0), or one tensor passed to two weights (`p1 + p2`), which
    backward's accumulation would have copied. Those are cloned; views of disjoint parts of one
    buffer (a cat's backward) are kept. Python on sizes and strides only: no op is dispatched."""
    spans: dict[int, list[tuple[int, int]]] = {}
    out = []
    for g in grads:
        if g is not None and g.numel() > 0:
            if any(st == 0 and n > 1 for st, n in zip(g.stride(), g.shape)):
                g = g.clone()
            else:
                lo = g.storage_offset()
                hi = lo + 1 + sum((n - 1) * st for st, n in zip(g.stride(), g.shape))
                taken = spans.setdefault(g.untyped_storage().data_ptr(), [])
                if any(lo < b and a < hi for a, b in taken):
                    g = g.clone()
                else:
                    taken.append((lo, hi))
        out.append(g)
    return out


def _zero_unused_grads(weights) -> None:
    """A zero gradient for each weight the backward left without one. Each such weight keeps a
    spare tensor for it (allocated the first time), and all of them are zeroed in one call."""
    unused = [p for p in weights if p.grad is None]
    if not unused:
        return
    for p in unused:
        spare = getattr(p, "_entrannas_zero_grad", None)
        if spare is None or spare.shape != p.shape or spare.device != p.device or spare.dtype != p.dtype:
            spare = torch.empty_like(p)
            p._entrannas_zero_grad = spare
        p.grad = spare
    torch._foreach_zero_([p.grad for p in unused])


def tau_decay(cfg: SearchConfig) -> float | None:
    """The per-epoch temperature decay: model.tau_decay, or the one that brings tau0 to
    model.tau_final at the last epoch (null: the method's default)."""
    m = cfg.model
    if m.tau_final is None:
        return m.tau_decay
    tau0 = m.tau0 if m.tau0 is not None else METHOD_DEFAULTS[m.method]["tau0"]
    return Temperature.decay_reaching(tau0, m.tau_final, cfg.optim.epochs)


def warmup_epochs(cfg: SearchConfig) -> int:
    """Epochs that train only the weights: optim.warmup_epochs, or optim.warmup_fraction of
    the epochs rounded half up, keeping at least one epoch of architecture steps."""
    o = cfg.optim
    if o.warmup_fraction is None:
        return o.warmup_epochs
    n = math.floor(o.warmup_fraction * o.epochs + 0.5 + 1e-9)  # 1e-9: 0.7 * 45 is 31.4999...
    return max(0, min(n, o.epochs - 1))


def build_supernet(cfg: SearchConfig, info) -> SuperNet:
    m = cfg.model
    return SuperNet(method=m.method, C=m.C, layers=m.layers, num_classes=info.num_classes,
                    space=m.space, in_channels=info.channels, stem=m.stem,
                    engine_cells=m.engine_cells, feature_sharing=m.feature_sharing,
                    bottleneck=m.bottleneck, tau0=m.tau0, tau_decay=tau_decay(cfg),
                    derivation=m.derivation, dst_lambda=m.dst_lambda,
                    partial_channels=m.partial_channels, edge_normalization=m.edge_normalization)


def cosine_lr(base: float, minimum: float, epoch: int, epochs: int) -> float:
    return minimum + 0.5 * (base - minimum) * (1 + math.cos(math.pi * epoch / epochs))


def ramp_lr(lr: float, epoch: int, warmup: int) -> float:
    """`lr` ramped up over the first `warmup` epochs: (epoch + 1) / warmup of it before then
    (optim.lr_warmup_epochs, PC-DARTS' ImageNet recipe)."""
    return lr * (epoch + 1) / warmup if epoch < warmup else lr


def cell_summary(genotype) -> dict:
    """Edges (distinct input connections) and ops per derived cell: Table 4's columns."""
    out = {}
    for t in CELL_TYPES:
        cell = getattr(genotype, t)
        out[t] = {"edges": len({(m, i) for m, node in enumerate(cell.nodes) for _, i in node}),
                  "ops": sum(len(node) for node in cell.nodes)}
    return out


@dataclass
class SearchResult:
    run_dir: Path
    genotype: object
    metrics: list[dict]
    config: SearchConfig | None = None  # the search's resolved config

    @property
    def val_acc(self) -> float:
        return self.metrics[-1]["val_acc"] if self.metrics else float("nan")


class _Search(StepAccounting):
    """State of one search run; `run_epochs()` drives epochs until done, or until a stop
    request. Built (data, network, checkpoint state) before the run folder is touched, so a
    search that cannot start leaves nothing behind; `start(run)` attaches the folder."""

    def __init__(self, cfg: SearchConfig, state: dict | None = None, checkpoint: Path | None = None,
                 graph_backend=None):
        self.cfg = cfg
        self.device = resolve_device(cfg.run.device)
        accel.check(cfg.run, self.device, search=True)
        # graph_backend: the tests' CPU stand-in for CUDA graphs (graphstep.Eager).
        graphs = cfg.run.cuda_graphs or graph_backend is not None
        if graphs and ddp.active():
            from .config import ConfigError
            raise ConfigError("run.cuda_graphs=true does not work under torchrun (the gradient "
                              "all-reduces are not in the graphs): drop it, or run one process")
        accel.retain_freed_memory()  # a CPU step reuses its activations' memory
        seed_everything(cfg.run.seed)
        self.data = build_loaders(cfg, self.device, search=True)
        self.net = accel.prepare(build_supernet(cfg, self.data.info).to(self.device), cfg.run, self.device)
        if ddp.active():
            ddp.convert_sync_batchnorm(self.net)  # statistics over the global batch
        o = cfg.optim
        self.w_opt = torch.optim.SGD(self.net.weight_parameters(), lr=o.lr, momentum=o.momentum,
                                     weight_decay=o.weight_decay, **optimizer_options(self.device))
        self.a_opt = torch.optim.Adam(self.net.arch_parameters(), lr=o.arch_lr,
                                      betas=tuple(o.arch_betas), weight_decay=o.arch_weight_decay,
                                      **optimizer_options(self.device),
                                      **({"capturable": True} if graphs and self.device.type == "cuda" else {}))
        self.graphs = None
        if graphs:
            from .graphstep import GraphedSearchStep
            self.graphs = GraphedSearchStep(self.net, self.w_opt, self.a_opt, o.grad_clip,
                                            cfg.run.graph_cache, graph_backend, self._graph_log)
        # Position: `step` batches of epoch `epoch` are done; `partial` sums their loss,
        # correct predictions and images so a resumed epoch reports the same metrics.
        self.epoch, self.step, self.partial, self.elapsed = 0, 0, [0.0, 0.0, 0], 0.0
        # Steps of this epoch whose weight step ran Transit-cells on another derived cell than
        # the step before (a selection that flips keeps re-training other paths).
        self.changes, self.last_selection = 0, None
        self.drawn = None  # the genotype RUN/cells.png shows, once this process drew it
        if state is not None:
            try:
                self.net.load_state_dict(state["net"])
                self.w_opt.load_state_dict(state["w_opt"])
                self.a_opt.load_state_dict(state["a_opt"])
            except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
                raise mismatch(checkpoint, e) from None
            self.epoch, self.step = state["epoch"], state["step"]
            self.partial, self.elapsed = list(state["partial"]), state["elapsed"]
            self.saved = (self.epoch, self.step)
            # The temperature is not in the state dict: set the one of the epoch the weights
            # are in (an epoch-end checkpoint has moved on to the next epoch), so a resumed
            # finished search derives the genotype it saved.
            self.net.set_epoch(self.epoch - 1 if self.step == 0 and self.epoch > 0 else self.epoch)
            self.changes = state.get("selection_changes", 0)
            if self.net.has_transit() and (self.epoch, self.step) != (0, 0):
                # The last step's Transit-cells ran on the cell that alpha/beta derive now.
                with torch.no_grad():
                    self.last_selection = self.net.arch_state().selection
        # `--resume RUN --set optim.epochs=N`: the length the checkpoint's run was planned for.
        self.extended_from = (state["config"]["optim"]["epochs"]
                              if state is not None and state["config"]["optim"]["epochs"] != cfg.optim.epochs
                              else None)

    def _graph_log(self, line: str) -> None:
        if getattr(self, "run", None) is not None:
            self.run.log.info(line)

    def search_step(self, train_batch, val_batch, arch: bool):
        """One search step: eager, or replayed from CUDA graphs (run.cuda_graphs)."""
        if self.graphs is not None:
            return self.graphs.step(train_batch, val_batch, arch)
        return search_step(self.net, self.w_opt, self.a_opt if arch else None, train_batch,
                           val_batch, self.cfg.optim.grad_clip)

    def first_files(self, run) -> None:
        run.write_json("split.json", self.data.split)
        if self.data.meta:  # an image folder: its classes and held-out test images
            run.write_json("dataset.json", self.data.meta)

    def start(self, run) -> None:
        super().start(run)
        if self.extended_from is not None:
            self.extend(self.extended_from, "the learning rate (cosine) and the temperature "
                        "(tau0 * decay^epoch, with decay from model.tau_final if that is set)")

    def checkpoint(self) -> None:
        with self.saving():  # refuses non-finite weights, on every rank
            if ddp.is_main():
                save_checkpoint(self.run.file("checkpoint.pt"), {
                    "kind": "search", "config": to_dict(self.cfg), "epoch": self.epoch,
                    "step": self.step, "partial": self.partial, "elapsed": self.timer.elapsed,
                    "selection_changes": self.changes,
                    "net": self.net.state_dict(), "w_opt": self.w_opt.state_dict(),
                    "a_opt": self.a_opt.state_dict(), "genotype": self.net.genotype().to_dict()})

    def run_epochs(self, stop: StopFlag) -> None:
        cfg, net = self.cfg, self.net
        self.timer = Timer(self.elapsed)
        steps = len(self.data.train)
        total = cfg.optim.epochs * steps
        done0 = self.epoch * steps + self.step
        bar = progress(total, done0, "search")
        while self.epoch < cfg.optim.epochs:
            e = self.epoch
            lr = ramp_lr(cosine_lr(cfg.optim.lr, cfg.optim.lr_min, e, cfg.optim.epochs), e,
                         cfg.optim.lr_warmup_epochs)
            for group in self.w_opt.param_groups:
                group["lr"] = lr
            net.set_epoch(e)
            if self.graphs is not None:  # the learning rate and tau are constants in a graph
                self.graphs.new_epoch()
            # Batches depend only on (seed, epoch, batch): resuming mid-epoch replays nothing.
            self.data.train.set_epoch(e, self.step)
            self.data.arch.set_epoch(e, self.step)
            arch = e >= warmup_epochs(cfg)
            net.train()
            for (xt, yt), val_batch in zip(self.data.train, self.data.arch):
                try:
                    with accel.autocast(cfg.run, self.device, cache=self.graphs is None):
                        loss, logits = self.search_step((xt, yt), val_batch, arch)
                except FloatingPointError as err:  # raised before the update: alpha/beta still good
                    bar.close()
                    raise self.diverged(f"{err} at epoch {e + 1}, step {self.step + 1}") from None
                if net.last_selection is not None:
                    if self.last_selection is not None and net.last_selection != self.last_selection:
                        self.changes += 1
                    self.last_selection = net.last_selection
                self.account_step(loss, logits, yt, stop, e, steps, total, done0, bar,
                                  f"tau {net.tau:.3f}")
            self.end_epoch(e, lr)
        bar.close()

    def draw_cells(self, genotype, e: int) -> None:
        """RUN/cells.png: the derived cells, titled with the epoch since which they are derived.
        Drawn only when they changed (a picture costs 0.2-1.1 s, in every epoch of a search
        that may take 3 minutes), and once more after a resume. The epoch comes from the saved
        genotypes/epoch_*.json, so a resumed run draws what an uninterrupted one shows."""
        path = self.run.file("cells.png")
        if self.drawn is not None and _same_cells(self.drawn, genotype) and path.exists():
            return
        since = e
        while since > 0:
            previous = self.run.file(f"genotypes/epoch_{since - 1:03d}.json")
            try:
                if not _same_cells(Genotype.from_json(previous.read_bytes()), genotype):
                    break
            except (OSError, ValueError):  # a missing or unreadable file ends the walk
                break
            since -= 1
        from .plot import plot_genotype
        plot_genotype(genotype, path, title=f"derived since epoch {since + 1}")
        self.drawn = genotype

    def end_epoch(self, e: int, lr: float) -> None:
        net, run = self.net, self.run
        self.ensure_finite()  # before any of the epoch's files is written
        with accel.autocast(self.cfg.run, self.device):
            # Statistics of the architecture being validated (bnstats.py): a Transit-cell's
            # are otherwise those of whichever steps last selected each op.
            recalibrate_batchnorm(net, self.data.train, self.cfg.optim.bn_recalibration, e)
            val_loss, val_acc = evaluate(net, self.data.val, reduce=ddp.active())
        genotype = net.genotype()
        loss_sum, correct, count = self.partial
        row = {"epoch": e, "lr": lr, "tau": net.tau, "warmup": e < warmup_epochs(self.cfg),
               "train_loss": loss_sum / max(count, 1), "train_acc": 100 * correct / max(count, 1),
               "val_loss": val_loss, "val_acc": val_acc, "cells": cell_summary(genotype),
               "genotype": genotype.to_dict(), "wall_time": self.timer.elapsed,
               "peak_mem_gib": peak_memory_gib(self.device)}
        if net.has_transit():
            row["selection_changes"] = self.changes
        if self.graphs is not None:  # this process's steps of the epoch (not kept across a resume)
            row["cuda_graphs"] = self.graphs.cache.take_counts()
        if net.derivation == "dst":
            row["thresholds"] = {t: net.thresholds(t).tolist() for t in CELL_TYPES}
        if net.edge_normalization:
            row["edge_weights"] = {t: net.edge_weights(t).tolist() for t in CELL_TYPES}
        with ddp.together():  # rank 0 writes; a full disk stops every rank
            run.append_metrics(row)
            if ddp.is_main():
                genotype.save(run.file(f"genotypes/epoch_{e:03d}.json"))
                genotype.save(run.file("genotype.json"))
            if self.cfg.run.plots and ddp.is_main():
                self.draw_cells(genotype, e)
        run.log.info(f"epoch {e + 1} done: train acc {row['train_acc']:.2f}% val acc {val_acc:.2f}% "
                     f"edges N/R {row['cells']['normal']['edges']}/{row['cells']['reduce']['edges']} "
                     + (f"derived cell changed at {self.changes} of {len(self.data.train)} steps "
                        if net.has_transit() else "") +
                     (f"CUDA graph hit rate {100 * row['cuda_graphs']['hit_rate']:.0f}% of step phases "
                      if self.graphs is not None else "") +
                     f"wall {format_eta(row['wall_time'])}")
        self.epoch, self.step, self.partial, self.changes = e + 1, 0, [0.0, 0.0, 0], 0
        self.checkpoint()


def _same_cells(a, b) -> bool:
    return a.normal == b.normal and a.reduce == b.reduce


def run_search(cfg: SearchConfig, run_dir: str | Path | None = None, quiet: bool = False,
               preset: str | None = None) -> SearchResult:
    """Run a search from scratch into `run_dir` (default: a new folder under cfg.run.out).
    Under torchrun, joins the process group; only rank 0 writes the run folder."""
    ddp.init_from_env()
    run_dir = new_run_dir(cfg, run_dir, preset or "search")
    with ddp.together():
        search = _Search(cfg)  # data and network first: a bad data set fails before any file exists
    with hold_run(run_dir, create=True):
        return _drive(search, make_run_folder(cfg, run_dir, quiet))


def resume_search(run_dir: str | Path, quiet: bool = False, overrides=()) -> SearchResult:
    """Continue a stopped search from its last checkpoint; the run's own config is used.
    `overrides` may only set optim.epochs, to continue a (finished) search for longer.
    Under torchrun every rank loads the same checkpoint (the run folder must be shared)."""
    ddp.init_from_env()
    with hold_run(run_dir):  # before the checkpoint is read: no other process may be writing it
        with ddp.together():
            state = load_run_checkpoint(run_dir, "search")
            cfg = resume_config(from_dict(state["config"], "search"), overrides, state["epoch"])
            search = _Search(cfg, state, Path(run_dir) / "checkpoint.pt")
        return _drive(search, open_run_folder(run_dir, cfg.run.tensorboard, quiet))


def _drive(search: _Search, run: RunFolder) -> SearchResult:
    cfg = search.cfg
    try:
        search.start(run)
        for line in search.data.notes:
            run.log.info(line)
        run.log.info(f"{cfg.model.method} search on {cfg.data.dataset}: {len(search.data.train)} steps "
                     f"per epoch x {cfg.optim.epochs} epochs, batch {cfg.optim.batch_size}, "
                     f"device {search.device}, {ddp.world_size()} process(es), run folder {run.path}")
        t = search.net.temperature
        run.log.info(f"schedule: tau {t(0):.4g} x{t.decay:.6g} per epoch -> {t(cfg.optim.epochs - 1):.4g} "
                     f"at the last epoch; {warmup_epochs(cfg)} warm-up epoch(s) train weights only")
        if search.net.derivation == "dst" and t(cfg.optim.epochs - 1) < DST_DENSE_BELOW_TAU:
            run.log.info(f"note: EnTranNAS-DST prunes less, not more, below tau ~{DST_DENSE_BELOW_TAU} (every "
                         f"edge's strongest op nears p_hat = 1), so near {t(cfg.optim.epochs - 1):.2g} the "
                         f"derived cell fills up again; --set model.tau_decay=null --set model.tau_final=0.1 "
                         f"ends the annealing at 0.1 (docs/design.md, DST at a small temperature)")
        if search.net.derivation == "dst" and cfg.model.bottleneck == 1 and search.net.has_transit():
            run.log.info("note: EnTranNAS-DST without a bottleneck (model.bottleneck=1) sums a Transit-cell "
                         "node's active connections (up to 35 at the start, when all are active) with "
                         "nothing to normalise the sum, which the bottleneck's expansion BatchNorm does: "
                         "the first loss comes out above 100 (2.3 with a bottleneck) and the first epochs "
                         "learn slowly; "
                         "keep model.bottleneck at 2 or more (docs/design.md, DST without a bottleneck)")
        search.run_to_end()
        if ddp.active():  # every rank must have derived the same architecture
            ddp.assert_same_on_all_ranks(search.net.arch_parameters(), "alpha/beta")
        genotype = search.net.genotype()
        run.log.info(f"final genotype: {run.file('genotype.json')}")
        metrics = run.read_metrics()
    finally:
        run.close()  # on an error too: no log file or TensorBoard writer is left open
    return SearchResult(run.path, genotype, metrics, cfg)


def run_search_seeds(cfg: SearchConfig, seeds: list[int], run_dir: str | Path | None = None,
                     quiet: bool = False, preset: str | None = None, jobs: int = 1) -> SearchResult:
    """The paper keeps the best of several searches by validation accuracy: run one search
    per seed into RUN/seed-<s>/ (resuming any that are unfinished) and copy the winner's
    genotype to RUN/genotype.json, with the table in RUN/seeds.json.

    `jobs > 1` runs that many searches at once, each in a process of its own (the experiment
    runner's pool: CPU threads split between them, or all on the one GPU). A seed's folder
    and results are those of `jobs=1`; a seed folder started with another config is refused."""
    import copy

    from .config import ConfigError
    from .experiments.common import Job, Workers, run_jobs
    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}")
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:  # one folder per seed: a second search of it would only wait on the first's lock
        raise ConfigError(f"--seeds lists seed {twice[0]} more than once; give each seed once")
    ddp.init_from_env()
    if jobs > 1 and ddp.active():
        raise ConfigError(f"--jobs {jobs} starts a process per search, which torchrun's processes "
                          f"cannot share: under torchrun use --jobs 1")
    run_dir = new_run_dir(cfg, run_dir, preset or "search")
    with hold_run(run_dir, create=True):
        parent = open_run_folder(run_dir, cfg.run.tensorboard, quiet)
        try:
            subs = []
            for s in seeds:
                c = copy.deepcopy(cfg)
                c.run.seed = s
                subs.append(Job("search", f"seed {s}", to_dict(c), parent.path / f"seed-{s}"))
            # More processes than searches would only thin each one's threads.
            rows = run_jobs(Workers(min(jobs, len(seeds)), quiet, parent.log.info), subs)
            i = max(range(len(seeds)), key=lambda k: rows[k]["val_acc"])  # the first of a tie
            table = [{"seed": s, "val_acc": r["val_acc"], "run_dir": r["run_dir"]} for s, r in zip(seeds, rows)]
            best = Genotype.from_dict(rows[i]["genotype"])
            g = Genotype.from_dict({**best.to_dict(), "selected_from": table})
            with ddp.together():
                parent.write_json("seeds.json", {"best_seed": seeds[i], "runs": table})
                if ddp.is_main():
                    g.save(parent.file("genotype.json"))
            parent.log.info(f"best of {len(seeds)} seeds: seed {seeds[i]} "
                            f"val acc {rows[i]['val_acc']:.2f}% -> {parent.file('genotype.json')}")
        finally:
            parent.close()
    return SearchResult(parent.path, best, read_metrics(subs[i].run_dir), cfg)
