"""Time one first-order search step (architecture step on a validation batch, then weight step
on a training batch with gradient clipping) for the Table 3 configurations.

Each configuration runs in its own process so peak memory is its own. Memory = peak RSS above
the RSS right after the network and optimisers are built.

    python benchmarks/search_step.py                  # all configs, batch 16 and 64
    python benchmarks/search_step.py --batch 64 --steps 5 --configs darts bottleneck
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

from entrannas.experiments.efficiency import CONFIGS as _TABLE3  # Table 3 rows, one definition

# Table 3's cumulative rows, plus EnTranNAS-DST.
CONFIGS = {**{k: kw for k, (_, kw) in _TABLE3.items()}, "dst": dict(method="dst")}
LABELS = {**{k: label for k, (label, _) in _TABLE3.items()}, "dst": "EnTranNAS-DST"}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_one(name: str, batch: int, steps: int, warmup: int, threads: int | None) -> dict:
    import torch

    from entrannas import SuperNet
    from entrannas.search import search_step

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = SuperNet(C=16, layers=8, num_classes=10, **CONFIGS[name])
    w_opt = torch.optim.SGD(net.weight_parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam(net.arch_parameters(), lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(batch, 3, 32, 32, generator=g), torch.randint(0, 10, (batch,), generator=g))
               for _ in range(2)]
    rss0 = _rss_bytes()
    times = []
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        search_step(net, w_opt, a_opt, batches[0], batches[1])
        if step >= warmup:
            times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return dict(config=name, batch=batch, steps=steps, median_s=statistics.median(times),
                times=times, peak_mem_gib=(peak - rss0) / 2**30, threads=torch.get_num_threads())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--batch", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--_one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._one:
        print(json.dumps(run_one(args._one, args.batch[0], args.steps, args.warmup, args.threads)))
        return
    rows = []
    for batch in args.batch:
        for name in args.configs:
            cmd = [sys.executable, __file__, "--_one", name, "--batch", str(batch),
                   "--steps", str(args.steps), "--warmup", str(args.warmup)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            rows.append(row)
            print(f"batch {batch:4d}  {LABELS[name]:26s} {row['median_s']:8.3f} s/step  "
                  f"{row['peak_mem_gib']:6.2f} GiB", flush=True)
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, torch threads {rows[0]['threads']}")
    print("\n| batch | configuration | s/step (median) | peak memory (GiB) | time vs DARTS | memory vs DARTS |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        base = next((b for b in rows if b["batch"] == r["batch"] and b["config"] == "darts"), None)
        rt = f"1/{base['median_s'] / r['median_s']:.1f}" if base else "-"
        rm = f"1/{base['peak_mem_gib'] / max(r['peak_mem_gib'], 1e-9):.1f}" if base else "-"
        print(f"| {r['batch']} | {LABELS[r['config']]} | {r['median_s']:.3f} | {r['peak_mem_gib']:.2f} | {rt} | {rm} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
