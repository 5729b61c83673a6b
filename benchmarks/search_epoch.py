"""Search epochs of the paper's CIFAR-10 setting on synthetic data of that shape: 25,000
weight + 25,000 architecture images of 3x32x32, C=16, 8 cells; EnTranNAS at batch 512 (the
paper's), DARTS mode at batch 64 (the paper's DARTS baseline), both in one run.

It uses the real search path: the search loop's own loaders, network and optimisers
(uint8 images held on the device and augmented there in batches; the configured
precision/channels_last, auto = bf16 + channels_last on a GPU, float32 on a CPU), an
architecture step and a weight step per batch, then the epoch's validation on the
architecture half and the genotype derivation. Not timed: the checkpoint and metrics writes.
Each method runs in its own process so its peak memory is its own (GPU:
torch.cuda.max_memory_allocated; CPU: peak resident memory above the bare interpreter).

    python benchmarks/search_epoch.py                         # 2 whole epochs each, on a GPU
    python benchmarks/search_epoch.py --steps 3               # CPU: 3 steps an epoch, extrapolated
    python benchmarks/search_epoch.py --json out.json --methods entrannas --epochs 3
    python benchmarks/search_epoch.py --cuda-graphs --epochs 3   # GPU: steps replayed as CUDA graphs
    python benchmarks/search_epoch.py --cuda-graphs --narrow-bn var_mean   # the narrow BatchNorm form

At least two epochs are timed: the first pays for cuDNN autotuning, the allocator's growth
and first-call costs, so the 50-epoch time is the timed epochs plus the last (steady) one for
every epoch left, validation included. `--steps N` times N steps and N validation batches of
each epoch and extrapolates each to its whole count. Also printed: seconds per step and
images/s of the steady epoch's search steps (weight and architecture images together), and
what one step dispatches, from torch.profiler after the timing: CUDA kernels on a GPU (and
host-to-device copies, which a step should not need), top-level aten ops on a CPU.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

METHODS = {"darts": 64, "entrannas": 512, "dst": 512}  # the paper's batch per method
PRESETS = {"darts": "cifar10-darts", "entrannas": "cifar10-entrannas", "dst": "cifar10-dst"}
IMAGES = 25_000  # per half: the CIFAR-10 training set split 50/50
EPOCHS = 50  # the paper's search


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _First:
    """The first `n` batches of a loader, for evaluate() (which calls set_epoch, then iterates)."""

    def __init__(self, loader, n: int):
        self.loader, self.n = loader, n

    def set_epoch(self, *args):
        self.loader.set_epoch(*args)

    def __iter__(self):
        return itertools.islice(iter(self.loader), self.n)


def profile_step(step, device) -> dict:
    """What one call of `step` dispatches: top-level aten ops, and on CUDA its kernels and
    host-to-device copies (memcpy/memset are not counted as kernels)."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from search_step import top_level_aten_ops  # the same count as search_step.py --ops
    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        step()
        if cuda:
            torch.cuda.synchronize(device)
    events = prof.events()
    out = {"aten_ops_per_step": top_level_aten_ops(events)}
    if cuda:
        gpu = [e for e in events if e.device_type == DeviceType.CUDA]
        out["cuda_kernels_per_step"] = sum(1 for e in gpu if not e.name.startswith(("Memcpy", "Memset")))
        out["h2d_copies_per_step"] = sum(1 for e in gpu if "HtoD" in e.name)
    return out


def run_method(method: str, batch: int, epochs: int, steps: int | None, device: str,
               precision: str, channels_last: str, threads: int | None, cuda_graphs: bool = False,
               narrow_bn: str = "native") -> dict:
    import torch

    from entrannas import accel
    from entrannas.config import load_config
    from entrannas.loop import evaluate
    from entrannas.search import _Search
    if threads:
        torch.set_num_threads(threads)
    base = _rss_bytes()
    cfg = load_config(PRESETS[method], ["data.dataset=synthetic", f"data.synthetic_size={2 * IMAGES}",
                                        "data.synthetic_shape=[3, 32, 32]", f"optim.batch_size={batch}",
                                        f"run.device={device}", f"run.precision={precision}",
                                        f"run.channels_last={channels_last}",
                                        f"run.cuda_graphs={str(cuda_graphs).lower()}",
                                        f"run.narrow_bn={narrow_bn}"])
    # The search loop's own set-up (device checks, loaders, prepared network, optimisers with
    # their device options), so what is timed is what `entrannas search` runs.
    search = _Search(cfg)
    dev, net, data = search.device, search.net, search.data
    per_epoch, val_batches = len(data.train), len(data.val)
    n_train = min(per_epoch, steps) if steps else per_epoch
    n_val = min(val_batches, steps) if steps else val_batches
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    timed = []
    for e in range(epochs):
        net.set_epoch(e)
        if search.graphs is not None:  # as the search loop: tau and the lr are graph constants
            search.graphs.new_epoch()
        data.train.set_epoch(e, 0)
        data.arch.set_epoch(e, 0)
        net.train()
        sync()
        t0 = time.perf_counter()
        for train_batch, val_batch in itertools.islice(zip(data.train, data.arch), n_train):
            with accel.autocast(cfg.run, dev, cache=not cuda_graphs):
                search.search_step(train_batch, val_batch, True)
        sync()
        t1 = time.perf_counter()
        with accel.autocast(cfg.run, dev):
            evaluate(net, _First(data.val, n_val))  # as end_epoch: the loss sum syncs each batch
        net.genotype()
        sync()
        t2 = time.perf_counter()
        train_s, val_s = (t1 - t0) * per_epoch / n_train, (t2 - t1) * val_batches / n_val
        timed.append({"epoch": e, "train_s": train_s, "val_s": val_s, "epoch_s": train_s + val_s})
        if search.graphs is not None:
            timed[-1]["cuda_graphs"] = search.graphs.cache.take_counts()
    mem = (torch.cuda.max_memory_allocated(dev) if dev.type == "cuda"
           else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base)
    steady = timed[-1]
    fifty = sum(t["epoch_s"] for t in timed[:EPOCHS]) + max(0, EPOCHS - epochs) * steady["epoch_s"]
    step_s = steady["train_s"] / per_epoch
    train_batch, val_batch = next(zip(data.train, data.arch))

    def one_step():
        with accel.autocast(cfg.run, dev, cache=not cuda_graphs):
            search.search_step(train_batch, val_batch, True)
    counts = profile_step(one_step, dev)  # after timing and memory: the profiler costs neither
    return {"method": method, "batch": batch,
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
            "precision": "bf16" if accel.use_bf16(cfg.run, dev) else "fp32",
            "channels_last": accel.use_channels_last(cfg.run, dev), "narrow_bn": narrow_bn,
            "cuda_graphs": cuda_graphs, "steps_per_epoch": per_epoch,
            "val_batches": val_batches, "steps_timed": n_train, "val_batches_timed": n_val,
            "epoch_measured": n_train == per_epoch and n_val == val_batches, "epochs": timed,
            "s_per_step": step_s, "epoch_s": steady["epoch_s"], "val_s": steady["val_s"],
            "first_epoch_s": timed[0]["epoch_s"], "images_per_s": 2 * batch / step_s,
            **counts, "kernels_per_step": counts.get("cuda_kernels_per_step", counts["aten_ops_per_step"]),
            "kernels_are": "CUDA kernels" if dev.type == "cuda" else "top-level aten ops",
            "peak_mem_gib": mem / 2**30, "fifty_epochs_min": fifty / 60, "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d")}


def _at_least(n: int):
    def parse(text: str) -> int:
        v = int(text)
        if v < n:
            raise argparse.ArgumentTypeError(f"must be at least {n}, got {v}")
        return v
    return parse


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=["darts", "entrannas"], choices=list(METHODS))
    ap.add_argument("--batch", type=_at_least(1), help="one batch for every method (default: the paper's per method)")
    ap.add_argument("--epochs", type=_at_least(2), default=2,
                    help="epochs timed (at least 2: the last one is the steady one)")
    ap.add_argument("--steps", type=_at_least(1),
                    help="steps and validation batches timed per epoch (default: all), extrapolated")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--channels-last", default="auto", choices=["auto", "true", "false"])
    ap.add_argument("--threads", type=_at_least(1))
    ap.add_argument("--cuda-graphs", action="store_true",
                    help="replay each derived cell's step as CUDA graphs (run.cuda_graphs; CUDA only)")
    ap.add_argument("--narrow-bn", default="native", choices=["native", "var_mean"],
                    help="the super-net's BatchNorm form on maps under 16 channels (run.narrow_bn)")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # search_step, in the workers too
    from entrannas.config import ConfigError
    rows = []
    for m in args.methods:
        batch = args.batch or METHODS[m]
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            try:
                r = pool.submit(run_method, m, batch, args.epochs, args.steps, args.device, args.precision,
                                args.channels_last, args.threads, args.cuda_graphs, args.narrow_bn).result()
            except ConfigError as e:  # e.g. bf16 with channels_last on a CPU
                ap.exit(2, f"{ap.prog}: error: {e}\n")
        rows.append(r)
        star = "" if r["epoch_measured"] else " (extrapolated)"
        print(f"{m:10s} batch {batch:4d}: first epoch {r['first_epoch_s']:.1f} s, steady epoch "
              f"{r['epoch_s']:.1f} s{star} ({r['val_s']:.1f} s of it validation), {r['s_per_step']:.4f} s/step, "
              f"{r['images_per_s']:.0f} images/s, {r['kernels_per_step']} {r['kernels_are']}/step, "
              f"{r['peak_mem_gib']:.2f} GiB, 50 epochs {r['fifty_epochs_min']:.1f} min", flush=True)
    r0 = rows[0]
    print(f"\ndevice: {r0['device']}, precision {r0['precision']}, channels_last {r0['channels_last']}, "
          f"CUDA graphs {r0['cuda_graphs']}, narrow BatchNorm {r0['narrow_bn']}, "
          f"torch {r0['torch']}, {r0['date']}; {len(r0['epochs'])} epochs timed")
    print(f"\n| method | batch | first epoch (s) | steady epoch (s) | of it validation (s) | s/step | images/s "
          f"| {r0['kernels_are']}/step | peak GiB | 50 epochs (min) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        star = "" if r["epoch_measured"] else "*"
        print(f"| {r['method']} | {r['batch']} | {r['first_epoch_s']:.1f}{star} | {r['epoch_s']:.1f}{star} | "
              f"{r['val_s']:.1f}{star} | {r['s_per_step']:.4f} | {r['images_per_s']:.0f} | {r['kernels_per_step']} | "
              f"{r['peak_mem_gib']:.2f} | {r['fifty_epochs_min']:.1f}{star} |")
    if any(not r["epoch_measured"] for r in rows):
        print("\n* extrapolated from the timed steps and validation batches of each epoch")
    for r in rows:
        if "cuda_graphs" in r["epochs"][-1]:
            c = r["epochs"][-1]["cuda_graphs"]
            print(f"{r['method']}: CUDA graphs in the steady epoch: {c['replayed']} replayed, "
                  f"{c['captured']} captured, {c['eager']} eager (hit rate {100 * c['hit_rate']:.0f}%)")
    if any(r.get("h2d_copies_per_step") for r in rows):
        print("host-to-device copies per step: " + ", ".join(f"{r['method']} {r['h2d_copies_per_step']}"
                                                            for r in rows))
    if args.json:
        from entrannas.fsutil import atomic_write_text
        atomic_write_text(args.json, json.dumps(rows, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
