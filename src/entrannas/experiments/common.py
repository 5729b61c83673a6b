"""What every experiment shares: its settings per scale, sub-runs that resume, tables out.

An experiment is a set of sub-runs (searches, trainings) under OUT/runs/<name>/ and a summary
(OUT/table.md, OUT/results.json, OUT/*.png). Sub-runs are ordinary run folders: running the
experiment again skips the finished ones and resumes an interrupted one from its checkpoint,
so a crash or Ctrl-C never costs finished work. `jobs > 1` runs independent sub-runs in
separate processes (each with its share of the CPU threads, or on the same GPU). `run_jobs`
also runs `entrannas search --seeds ... --jobs N` (search.run_search_seeds), with `Workers`
in place of an experiment's Context.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from importlib import resources
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable

import yaml

from ..config import ConfigError, from_dict, load_config, read_yaml_text, to_dict
from ..fsutil import atomic_write_text
from ..rundir import RunError, format_eta, read_metrics
from ..runlock import LOCK_NAME, hold_run

SCALES = ("cpu", "paper")


def settings(name: str, scale: str) -> dict:
    """The experiment's settings at one scale, from configs/experiments/<name>.yaml."""
    if scale not in SCALES:
        raise ConfigError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    text = resources.files("entrannas.configs").joinpath("experiments", f"{name}.yaml").read_text("utf-8")
    return read_yaml_text(text)[scale]


def machine() -> dict:
    """What the numbers were measured on."""
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "os": platform.platform(terse=True)}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


@dataclass
class Job:
    """One sub-run: a search (optionally followed by its child-net evaluation), a training or a
    segmentation training."""
    kind: str  # "search", "train" or "segment"
    label: str
    config: dict
    run_dir: Path
    genotype: dict | None = None  # train, segment: what to train
    child: bool = False  # search: also measure super-net versus child-net accuracy
    extra: dict = field(default_factory=dict)  # carried into the result for the table


@dataclass
class Context:
    name: str
    scale: str
    out: Path
    jobs: int = 1
    quiet: bool = False
    overrides: list[str] = field(default_factory=list)  # applied to every sub-run's config
    options: dict = field(default_factory=dict)  # experiment-specific command-line values
    started: float = field(default_factory=time.time)

    @property
    def settings(self) -> dict:
        return settings(self.name, self.scale)

    def config(self, spec: dict, extra: list[str] = (), kind: str = "search"):
        """A sub-run config: a preset, the spec's `set` list, then `extra`, then the user's
        overrides (data paths, device, ...), which always win."""
        cfg = load_config(spec["preset"], [*spec.get("set", []), *extra, *self.overrides], kind=kind)
        cfg.run.tensorboard = False  # the experiment's summary is what users read
        return cfg

    def log(self, msg: str) -> None:
        if not self.quiet:
            print(f"[{self.name}] {msg}", flush=True)


@dataclass
class Workers:
    """What run_jobs needs of its caller, for callers that are not an experiment: how many
    processes, whether sub-runs log to the console, and where progress lines go."""
    jobs: int = 1
    quiet: bool = False
    log: Callable[[str], None] = print


def _threads_per_job(jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(jobs, 1))


def _run_job(job: Job, threads: int | None, quiet: bool) -> dict:
    """Run or resume one sub-run and return what the tables need. Top-level so that worker
    processes can import it. The sub-run's folder is held (runlock) from the first look; under
    torchrun (search --seeds, one job at a time) by rank 0, as every run is."""
    run_dir = Path(job.run_dir)
    from ..loop import Interrupted, StopFlag
    if _WORKER and StopFlag.signalled:  # queued to this worker before the stop: for the next call
        raise Interrupted(run_dir)
    _BUSY.set()
    try:
        with hold_run(run_dir):  # an existing folder only: a new one is made and held by the run
            return _run_held_job(job, run_dir, threads, quiet)
    finally:
        _BUSY.clear()


def _run_held_job(job: Job, run_dir: Path, threads: int | None, quiet: bool) -> dict:
    import torch
    if threads:
        torch.set_num_threads(threads)
    t0 = time.time()
    fresh = not (run_dir / "checkpoint.pt").exists()
    kept = _finished_without_checkpoint(job, run_dir) if fresh and run_dir.exists() else None
    if kept is not None:  # committed results (checkpoints are not committed): reuse, never redo
        kept.update(label=job.label, run_dir=str(run_dir), resumed=True, reused=True,
                    seconds_this_call=time.time() - t0, **job.extra)
        return kept
    if fresh and run_dir.exists():
        from .. import distributed as ddp
        with ddp.together():  # rank 0 clears the (shared) folder; every rank learns how it went
            if ddp.is_main():
                # A folder without a checkpoint holds less than one epoch: nothing finished is lost.
                for p in run_dir.iterdir():
                    if p.name != LOCK_NAME:
                        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    if not fresh:
        _check_same_config(job, run_dir)
    if job.kind == "search":
        from ..search import resume_search, run_search
        cfg = from_dict(job.config, "search")
        r = run_search(cfg, run_dir, quiet=quiet) if fresh else resume_search(run_dir, quiet=quiet)
        out = {"val_acc": r.val_acc, "genotype": r.genotype.to_dict(),
               "search_wall_time": r.metrics[-1]["wall_time"] if r.metrics else 0.0,
               "epochs": [{k: m[k] for k in ("epoch", "val_acc", "tau", "cells") if k in m}
                          for m in r.metrics]}
        if job.child:
            from ..child import child_accuracy
            c = child_accuracy(run_dir)
            out.update(supernet_acc=c["supernet_acc"], child_acc=c["child_acc"], gap=c["gap"],
                       child_acc_inherited_bn=c["child_acc_inherited_bn"])
    elif job.kind == "segment":
        from ..genotype import Genotype
        from ..segment import resume_segmentation, run_segmentation
        cfg = from_dict(job.config, "segment")
        r = (run_segmentation(cfg, Genotype.from_dict(job.genotype), run_dir, quiet=quiet) if fresh
             else resume_segmentation(run_dir, quiet=quiet))
        out = {k: r.summary[k] for k in ("miou", "best_miou", "pixel_acc", "mean_acc", "iou", "params_M",
                                         "macs_M", "wall_time")}
    else:
        from ..train import resume_training, run_training
        from ..genotype import Genotype
        cfg = from_dict(job.config, "train")
        r = (run_training(cfg, Genotype.from_dict(job.genotype), run_dir, quiet=quiet) if fresh
             else resume_training(run_dir, quiet=quiet))
        out = {k: r.summary[k] for k in ("test_acc", "best_test_acc", "params_M", "macs_M", "wall_time")}
    out.update(label=job.label, run_dir=str(run_dir), resumed=not fresh,
               seconds_this_call=time.time() - t0, **job.extra)
    return out


def _finished_without_checkpoint(job: Job, run_dir: Path) -> dict | None:
    """What a finished sub-run measured, read from its files, when its checkpoint is gone (a
    results folder in git keeps everything but checkpoints). None if the folder does not hold
    a finished run of this job; one of another config is refused, never cleared."""
    if not (run_dir / "config.yaml").exists():
        return None
    if job.kind == "search":
        rows = read_metrics(run_dir)
        epochs = job.config["optim"]["epochs"]
        if len(rows) < epochs or not (run_dir / "genotype.json").exists() or \
                (job.child and not (run_dir / "child.json").exists()):
            return None
        _check_same_config(job, run_dir)
        out = {"val_acc": rows[-1]["val_acc"],
               "genotype": json.loads((run_dir / "genotype.json").read_text("utf-8")),
               "search_wall_time": rows[-1].get("wall_time", 0.0),
               "epochs": [{k: m[k] for k in ("epoch", "val_acc", "tau", "cells") if k in m} for m in rows]}
        if job.child:
            c = json.loads((run_dir / "child.json").read_text("utf-8"))
            out.update(supernet_acc=c["supernet_acc"], child_acc=c["child_acc"], gap=c["gap"],
                       child_acc_inherited_bn=c.get("child_acc_inherited_bn", float("nan")))
        return out
    if not (run_dir / "summary.json").exists():  # train and segment write it when they finish
        return None
    _check_same_config(job, run_dir)
    summary = json.loads((run_dir / "summary.json").read_text("utf-8"))
    keys = (("miou", "best_miou", "pixel_acc", "mean_acc", "iou", "params_M", "macs_M", "wall_time")
            if job.kind == "segment" else ("test_acc", "best_test_acc", "params_M", "macs_M", "wall_time"))
    return {k: summary[k] for k in keys}


def _check_same_config(job: Job, run_dir: Path) -> None:
    """Reuse a sub-run only if it was started with this very config: a changed setting or
    --set must not be answered with a stale result."""
    try:
        # Through from_dict: a key added to the config since (with its default) is no change.
        before = to_dict(from_dict(read_yaml_text((run_dir / "config.yaml").read_text("utf-8")), job.kind))
    except (OSError, yaml.YAMLError, ConfigError, TypeError, AttributeError):
        before = None
    if before != to_dict(from_dict(job.config, job.kind)):
        diff = sorted(f"{sec}.{k}" for sec in job.config if isinstance(job.config[sec], dict)
                      for k in job.config[sec]
                      if not isinstance(before, dict) or (before.get(sec) or {}).get(k) != job.config[sec][k])
        raise ConfigError(f"{run_dir} holds a run with another config (differs in "
                          f"{', '.join(diff[:4]) or 'its layout'}): choose another --out, or "
                          f"delete that folder to redo it")


_BUSY = threading.Event()  # set while this (worker) process runs a sub-run
_WORKER = False  # True in run_jobs' worker processes


def _stop_with_parent(parent: int) -> None:
    """Worker start-up: when the experiment's process dies (even by SIGKILL) the worker stops
    too, so no orphan runs a sub-run on, or holds its lock, unseen. SIGTERM first: a sub-run's
    loop then checkpoints and stops, as on Ctrl-C; an idle worker just ends."""
    global _WORKER
    from ..loop import StopFlag
    _WORKER = True
    StopFlag.notice = False  # the experiment's process says it once for all its workers

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.time() + 120  # a checkpoint write, not a whole epoch
        while _BUSY.is_set() and time.time() < deadline:
            time.sleep(0.2)
        os._exit(1)
    threading.Thread(target=watch, name="entrannas-parent-watch", daemon=True).start()


@contextlib.contextmanager
def _forward_stop_to(pool: ProcessPoolExecutor):
    """Ctrl-C or SIGTERM on the experiment reaches every worker: each checkpoints its sub-run
    and stops (the search/training loops handle both), instead of running on orphaned."""
    told = []

    def forward(signum, frame):
        if not told:
            told.append(signum)
            print("\nstopping every sub-run after its current step; each saves a checkpoint "
                  "(Ctrl-C again to abort)", file=sys.stderr, flush=True)
        for p in list(getattr(pool, "_processes", {}).values()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def remaining_seconds(mean_seconds: float, left: int, workers: int) -> float:
    """The time `left` sub-runs take at `mean_seconds` each (the mean of those that ran this
    call; reused ones take none), `workers` at a time."""
    return mean_seconds * math.ceil(left / max(1, workers))


def run_jobs(ctx: Context | Workers, jobs: list[Job]) -> list[dict]:
    """Run the sub-runs (in parallel processes when ctx.jobs > 1); results in job order."""
    if not jobs:
        return []
    results: list[dict | None] = [None] * len(jobs)
    done, ran, ran_seconds = 0, 0, 0.0

    def report(i: int, r: dict) -> None:
        nonlocal done, ran, ran_seconds
        done += 1
        acc = next((f"{k} {r[k]:.2f}%" for k in ("child_acc", "val_acc", "test_acc", "miou") if k in r), "")
        # The child-net accuracy alone would hide the super-net's: show both for searches.
        if "child_acc" in r:
            acc = f"super-net {r['supernet_acc']:.2f}% child-net {r['child_acc']:.2f}%"
        if r.get("reused"):  # read from a finished sub-run's files: says nothing of the others' time
            ctx.log(f"{done}/{len(jobs)} {jobs[i].label}: {acc} (finished earlier, reused)")
            return
        ran, ran_seconds = ran + 1, ran_seconds + r["seconds_this_call"]
        eta = remaining_seconds(ran_seconds / ran, len(jobs) - done, ctx.jobs)
        ctx.log(f"{done}/{len(jobs)} {jobs[i].label}: {acc} ({format_eta(r['seconds_this_call'])}); "
                f"eta {format_eta(eta)}")

    if ctx.jobs <= 1:
        for i, job in enumerate(jobs):
            ctx.log(f"{job.label} -> {job.run_dir}")
            results[i] = _run_job(job, None, ctx.quiet)
            report(i, results[i])
    else:
        threads = _threads_per_job(ctx.jobs)
        # After a worker is killed, multiprocessing's resource tracker (started with the pool,
        # with this process's -W flags) warns about the queue semaphores the dead worker left,
        # then frees them: stdlib noise under the experiment's own one line.
        quiet = "ignore::UserWarning:multiprocessing.resource_tracker"
        if quiet not in sys.warnoptions:
            sys.warnoptions.append(quiet)
        # spawn: a fresh interpreter per worker (fork after torch has started threads can hang).
        with ProcessPoolExecutor(max_workers=ctx.jobs, mp_context=get_context("spawn"),
                                 initializer=_stop_with_parent, initargs=(os.getpid(),)) as pool, \
                _forward_stop_to(pool):
            futures = {pool.submit(_run_job, job, threads, True): i for i, job in enumerate(jobs)}
            ctx.log(f"{len(jobs)} sub-runs in {ctx.jobs} processes x {threads} thread(s); logs in "
                    f"each run folder's log.txt")
            for f in as_completed(futures):
                i = futures[f]
                try:
                    results[i] = f.result()
                except BrokenProcessPool:
                    # A worker was killed (SIGKILL, out of memory); the others were stopped,
                    # each after a checkpoint. Every finished epoch is on disk.
                    raise RunError("a sub-run's process died (killed, or out of memory); the "
                                   "sub-runs keep their last checkpoints: run the same command "
                                   "again to continue") from None
                except BaseException:
                    for other in futures:  # nothing new starts; running sub-runs checkpoint
                        other.cancel()
                    raise
                report(i, results[i])
    return results  # type: ignore[return-value]


def search_job(ctx: Context, label: str, spec: dict, run_name: str, extra_set: list[str] = (),
               child: bool = False, **extra) -> Job:
    cfg = ctx.config(spec, extra_set, "search")
    return Job("search", label, to_dict(cfg), ctx.out / "runs" / run_name, child=child, extra=extra)


def train_job(ctx: Context, label: str, spec: dict, run_name: str, genotype: dict,
              extra_set: list[str] = (), **extra) -> Job:
    cfg = ctx.config(spec, extra_set, "train")
    return Job("train", label, to_dict(cfg), ctx.out / "runs" / run_name, genotype=genotype, extra=extra)


def segment_job(ctx: Context, label: str, spec: dict, run_name: str, genotype: dict,
                extra_set: list[str] = (), **extra) -> Job:
    cfg = ctx.config(spec, extra_set, "segment")
    return Job("segment", label, to_dict(cfg), ctx.out / "runs" / run_name, genotype=genotype, extra=extra)


def fmt(v: Any, digits: int = 2) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def markdown_table(columns: list[tuple], rows: list[dict], digits: int = 2) -> str:
    """columns: (key, header) pairs, or (key, header, digits) for a column of its own precision."""
    head = "| " + " | ".join(c[1] for c in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(c[0], ""), c[2] if len(c) > 2 else digits) for c in columns)
            + " |" for r in rows]
    return "\n".join([head, rule, *body])


def write_summary(ctx: Context, title: str, sections: list[str], data: dict, note: str = "",
                  proxy: str | None = None) -> Path:
    """OUT/table.md (the tables, the command, the machine, the wall time) and OUT/results.json.
    ``proxy``: what the CPU scale stands in for, if not the default Fashion-MNIST line."""
    wall = time.time() - ctx.started
    command = "entrannas " + " ".join(sys.argv[1:]) if Path(sys.argv[0]).name in ("entrannas", "__main__.py") \
        else f"entrannas experiment {ctx.name} --scale {ctx.scale}"
    info = machine()
    proxy = proxy or ("CPU-scale proxy on Fashion-MNIST: not the paper's CIFAR-10/ImageNet setting; "
                      "compare directions, not values." if ctx.scale == "cpu" else "Paper-scale settings.")
    md = [f"# {title}", "", f"Scale: `{ctx.scale}`. {proxy}", "", *sections, ""]
    if note:
        md += [note, ""]
    md += [f"Command: `{command}`  ", f"Machine: {info['cpu']} ({info['cpu_cores']} cores)"
           + (f", {info['gpu']}" if "gpu" in info else "") + f", torch {info['torch']}  ",
           f"Wall time of this invocation: {format_eta(wall)} (sub-runs finished earlier are "
           f"reused, see results.json)", ""]
    atomic_write_text(ctx.out / "table.md", "\n".join(md))
    payload = {"experiment": ctx.name, "scale": ctx.scale, "command": command, "machine": info,
               "wall_time_s": wall, "overrides": ctx.overrides, "options": ctx.options, **data}
    atomic_write_text(ctx.out / "results.json", json.dumps(payload, indent=1, default=str) + "\n")
    ctx.log(f"table: {ctx.out / 'table.md'}")
    return ctx.out / "table.md"
