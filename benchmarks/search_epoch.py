"""One search epoch of the paper's CIFAR-10 setting on synthetic data of that shape: 25,000
weight + 25,000 architecture images of 3x32x32, C=16, 8 cells; EnTranNAS at batch 512 (the
paper's), DARTS mode at batch 64 (the paper's DARTS baseline), both in one run.

It uses the real search path: uint8 images held on the device and augmented there in
batches (crop + flip), the configured precision/channels_last (auto: bf16 + channels_last
on a GPU, float32 on a CPU), an architecture step and a weight step per batch. Each method
runs in its own process so its peak memory is its own (GPU: torch.cuda.max_memory_allocated;
CPU: peak resident memory above the bare interpreter with torch).

    python benchmarks/search_epoch.py                      # a full epoch each on a GPU
    python benchmarks/search_epoch.py --steps 3            # CPU: 3 timed steps, extrapolated
    python benchmarks/search_epoch.py --json out.json --methods entrannas

Figures: seconds per step (median after --warmup steps), seconds per epoch (measured when
--steps covers the epoch, else median step x steps per epoch), images/s (weight and
architecture images together), peak memory, and 50 epochs extrapolated (search steps only;
the per-epoch validation is not counted).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

METHODS = {"darts": 64, "entrannas": 512, "dst": 512}  # the paper's batch per method
IMAGES = 25_000  # per half: the CIFAR-10 training set split 50/50


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_method(method: str, batch: int, steps: int | None, warmup: int, device: str,
               precision: str, channels_last: str, threads: int | None) -> dict:
    import torch

    from entrannas import accel
    from entrannas.config import load_config
    from entrannas.loop import build_loaders, resolve_device
    from entrannas.search import build_supernet, search_step
    if threads:
        torch.set_num_threads(threads)
    base = _rss_bytes()
    preset = {"darts": "cifar10-darts", "entrannas": "cifar10-entrannas", "dst": "cifar10-dst"}[method]
    cfg = load_config(preset, ["data.dataset=synthetic", f"data.synthetic_size={2 * IMAGES}",
                               "data.synthetic_shape=[3, 32, 32]", f"optim.batch_size={batch}",
                               f"run.device={device}", f"run.precision={precision}",
                               f"run.channels_last={channels_last}"])
    dev = resolve_device(cfg.run.device)
    data = build_loaders(cfg, dev, search=True)
    net = accel.prepare(build_supernet(cfg, data.info).to(dev), cfg.run, dev)
    o = cfg.optim
    w_opt = torch.optim.SGD(net.weight_parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    a_opt = torch.optim.Adam(net.arch_parameters(), lr=o.arch_lr, betas=tuple(o.arch_betas),
                             weight_decay=o.arch_weight_decay)
    per_epoch = len(data.train)
    total = min(per_epoch, warmup + steps) if steps else per_epoch
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    net.train()
    times = []
    sync()
    t_epoch = time.perf_counter()
    t0 = t_epoch
    for n, (train_batch, val_batch) in enumerate(zip(data.train, data.arch)):
        if n == total:
            break
        with accel.autocast(cfg.run, dev):
            search_step(net, w_opt, a_opt, train_batch, val_batch, o.grad_clip)
        sync()
        t1 = time.perf_counter()
        times.append(t1 - t0)
        t0 = t1
    measured = times[warmup:] or times
    step_s = statistics.median(measured)
    full = total == per_epoch
    epoch_s = (time.perf_counter() - t_epoch) if full else step_s * per_epoch
    mem = (torch.cuda.max_memory_allocated(dev) if dev.type == "cuda"
           else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base)
    return {"method": method, "batch": batch, "device": torch.cuda.get_device_name(dev) if dev.type == "cuda"
            else f"cpu ({torch.get_num_threads()} threads)", "precision": "bf16" if accel.use_bf16(cfg.run, dev) else "fp32",
            "channels_last": accel.use_channels_last(cfg.run, dev), "steps_timed": len(measured),
            "steps_per_epoch": per_epoch, "s_per_step": step_s, "epoch_s": epoch_s,
            "epoch_measured": full, "images_per_s": 2 * batch / step_s, "peak_mem_gib": mem / 2**30,
            "fifty_epochs_min": 50 * epoch_s / 60, "torch": torch.__version__}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=["darts", "entrannas"], choices=list(METHODS))
    ap.add_argument("--batch", type=int, help="one batch for every method (default: the paper's per method)")
    ap.add_argument("--steps", type=int, help="timed steps per method (default: the whole epoch)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed first steps (cuDNN autotuning, allocator)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--channels-last", default="auto", choices=["auto", "true", "false"])
    ap.add_argument("--threads", type=int)
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)
    rows = []
    for m in args.methods:
        batch = args.batch or METHODS[m]
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            r = pool.submit(run_method, m, batch, args.steps, args.warmup, args.device, args.precision,
                            args.channels_last, args.threads).result()
        rows.append(r)
        print(f"{m:10s} batch {batch:4d}: {r['s_per_step']:.4f} s/step, {r['epoch_s']:.1f} s/epoch"
              f"{'' if r['epoch_measured'] else ' (extrapolated)'}, {r['images_per_s']:.0f} images/s, "
              f"{r['peak_mem_gib']:.2f} GiB, 50 epochs {r['fifty_epochs_min']:.1f} min", flush=True)
    print(f"\ndevice: {rows[0]['device']}, precision {rows[0]['precision']}, channels_last "
          f"{rows[0]['channels_last']}, torch {rows[0]['torch']}")
    print("\n| method | batch | s/step | s/epoch | images/s | peak GiB | 50 epochs (min) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['batch']} | {r['s_per_step']:.4f} | {r['epoch_s']:.1f}"
              f"{'' if r['epoch_measured'] else '*'} | {r['images_per_s']:.0f} | {r['peak_mem_gib']:.2f} | "
              f"{r['fifty_epochs_min']:.1f} |")
    if any(not r["epoch_measured"] for r in rows):
        print("\n* extrapolated from the timed steps")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
