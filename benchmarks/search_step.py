"""Time one first-order search step (architecture step on a validation batch, then weight step
on a training batch with gradient clipping) for the Table 3 configurations.

Each configuration runs in its own process so peak memory is its own. Memory = peak RSS above
the RSS right after the network and optimisers are built (with `--device cuda`: the peak
allocated device memory above what they hold; steps in fp32, timed to a synchronize). `--ops` also counts the top-level
aten ops of one step (torch.profiler: ops with no aten op above them, forward, backward and
both optimisers) and lists the most frequent ones (all of them by name in `--json`).

    python benchmarks/search_step.py                  # all configs, batch 16 and 64
    python benchmarks/search_step.py --batch 64 --steps 5 --configs darts bottleneck
    python benchmarks/search_step.py --batch 64 --peers /path/to/peers
    python benchmarks/search_step.py --batch 64 --configs bottleneck --default-malloc  # glibc as is
    python benchmarks/search_step.py --batch 64 --configs bottleneck --plain-convs     # no cpuconv forms
    python benchmarks/search_step.py --batch 64 --peers DIR --rounds 3   # interleaved, median of 3
    python benchmarks/search_step.py --batch 64 --peers DIR --device cuda --configs darts bottleneck

entrannas' steps run as the search runs them, with the heap keeping freed memory
(`accel.retain_freed_memory`); `--default-malloc` leaves glibc's defaults, as the peers run.
They run with the CPU forms of `entrannas.cpuconv`; `--plain-convs` turns those off (oneDNN's
NCHW calls, as the peers run). This machine's speed drifts by 20-30% over minutes, so
`--rounds N` runs every configuration's process N times, interleaved (all configurations, then
all again), and reports each one's median over the rounds (time and memory alike).

`--peers DIR` also times the official DARTS and PC-DARTS search networks, side by side, from
DIR/darts/ and DIR/pcdarts/ (each holding the official model_search.py, operations.py and
genotypes.py; their code is not part of entrannas). Their step is the official first-order
train_search.py step: Adam on the alphas from a full backward of the validation loss, then SGD
with gradient clipping 5.
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


PEERS = {"official-darts": "DARTS (official)", "official-pcdarts": "PC-DARTS (official)"}


def top_level_aten_ops(events, by_name: bool = False):
    """aten ops among torch.profiler events that have no aten op above them: the ops the
    Python code dispatched (search_epoch.py counts its steps with it too). `by_name`: a
    Counter of them by op name instead of their number."""
    from collections import Counter

    def top(e):
        p = e.cpu_parent
        while p is not None:
            if p.name.startswith("aten::"):
                return False
            p = p.cpu_parent
        return True
    names = Counter(e.name for e in events if e.name.startswith("aten::") and top(e))
    return names if by_name else sum(names.values())


def count_top_level_ops(step, by_name: bool = False):
    """Top-level aten ops of one call of `step` (a Counter by name with `by_name`)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return top_level_aten_ops(prof.events(), by_name)


def _entrannas_step(name: str, default_malloc: bool = False, device: str = "cpu"):
    import torch

    from entrannas import SuperNet, accel
    if not default_malloc and device == "cpu":
        accel.retain_freed_memory()  # as _Search does
    from entrannas.optim import optimizer_options
    from entrannas.search import search_step
    net = SuperNet(C=16, layers=8, num_classes=10, **CONFIGS[name]).to(device)
    opts = optimizer_options(torch.device(device))  # as the search loop builds them (fused on CUDA)
    w_opt = torch.optim.SGD(net.weight_parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4, **opts)
    a_opt = torch.optim.Adam(net.arch_parameters(), lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3, **opts)
    return lambda train, val: search_step(net, w_opt, a_opt, train, val)


def _peer_step(name: str, peers: str, device: str = "cpu"):
    """The official first-order step of train_search.py (architect.step with unrolled=False,
    then the weight step)."""
    import torch
    if device == "cpu":
        torch.Tensor.cuda = lambda self, *a, **k: self  # the official code moves tensors with .cuda()
    which = name.split("-", 1)[1]
    sys.path.insert(0, os.path.join(peers, which))
    from model_search import Network
    crit = torch.nn.CrossEntropyLoss().to(device)
    model = Network(16, 10, 8, crit).to(device)
    lr, arch_lr = (0.025, 3e-4) if which == "darts" else (0.1, 6e-4)
    w_opt = torch.optim.SGD(model.parameters(), lr, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam(model.arch_parameters(), lr=arch_lr, betas=(0.5, 0.999), weight_decay=1e-3)

    def step(train, val):
        a_opt.zero_grad()
        model._loss(*val).backward()
        a_opt.step()
        w_opt.zero_grad()
        crit(model(train[0]), train[1]).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5)
        w_opt.step()
    return step


def run_one(name: str, batch: int, steps: int, warmup: int, threads: int | None, peers: str | None,
            ops: bool, default_malloc: bool = False, plain_convs: bool = False, device: str = "cpu") -> dict:
    import torch
    cuda = device.startswith("cuda")

    if plain_convs:
        from entrannas import cpuconv
        cpuconv.ENABLED = False
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    step = _peer_step(name, peers, device) if name in PEERS else _entrannas_step(name, default_malloc, device)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(batch, 3, 32, 32, generator=g).to(device),
                torch.randint(0, 10, (batch,), generator=g).to(device)) for _ in range(2)]
    rss0 = _rss_bytes()
    if cuda:  # device memory: the peak allocated above what the network and optimisers hold
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        step(batches[0], batches[1])
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    if cuda:
        peak_gib = (torch.cuda.max_memory_allocated() - base) / 2**30
    else:
        peak_gib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0) / 2**30
    row = dict(config=name, batch=batch, steps=steps, median_s=statistics.median(times),
               times=times, peak_mem_gib=peak_gib, threads=torch.get_num_threads(),
               device=torch.cuda.get_device_name() if cuda else "cpu", torch=torch.__version__)
    if ops:  # after timing and memory, so the profiler costs neither
        names = count_top_level_ops(lambda: step(batches[0], batches[1]), by_name=True)
        row["top_level_ops"] = sum(names.values())
        row["ops_by_name"] = dict(names.most_common())
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--batch", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--peers", help="folder with the official darts/ and pcdarts/ code, timed too")
    ap.add_argument("--ops", action="store_true", help="also count top-level aten ops per step")
    ap.add_argument("--default-malloc", action="store_true",
                    help="entrannas with glibc's default malloc thresholds (the search keeps freed memory)")
    ap.add_argument("--plain-convs", action="store_true",
                    help="entrannas without the CPU forms of entrannas.cpuconv (oneDNN's NCHW calls)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run every configuration N times, interleaved; report the medians")
    ap.add_argument("--device", default="cpu",
                    help="cpu, or cuda: steps in fp32 on the GPU, memory as its peak allocation")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--_one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._one:
        print(json.dumps(run_one(args._one, args.batch[0], args.steps, args.warmup, args.threads,
                                 args.peers, args.ops, args.default_malloc, args.plain_convs, args.device)))
        return
    labels = {**LABELS, **PEERS}
    names = (list(PEERS) if args.peers else []) + args.configs
    runs: dict[tuple[int, str], list[dict]] = {}
    for rnd in range(args.rounds):
        for batch in args.batch:
            for name in names:
                cmd = [sys.executable, __file__, "--_one", name, "--batch", str(batch),
                       "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device]
                if args.threads:
                    cmd += ["--threads", str(args.threads)]
                if args.peers:
                    cmd += ["--peers", os.path.abspath(args.peers)]
                for flag in ("ops", "default_malloc", "plain_convs"):
                    if getattr(args, flag):
                        cmd += ["--" + flag.replace("_", "-")]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                row = json.loads(out.strip().splitlines()[-1])
                runs.setdefault((batch, name), []).append(row)
                extra = f"  {row['top_level_ops']:6d} ops" if "top_level_ops" in row else ""
                tag = f"round {rnd + 1}  " if args.rounds > 1 else ""
                print(f"{tag}batch {batch:4d}  {labels[name]:26s} {row['median_s']:8.3f} s/step  "
                      f"{row['peak_mem_gib']:6.2f} GiB{extra}", flush=True)
    rows = []
    for (batch, name), rs in runs.items():
        row = dict(rs[-1])
        if len(rs) > 1:
            row.update(median_s=statistics.median(r["median_s"] for r in rs),
                       peak_mem_gib=statistics.median(r["peak_mem_gib"] for r in rs),
                       rounds=[{k: r[k] for k in ("median_s", "peak_mem_gib")} for r in rs])
        rows.append(row)
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, torch threads {rows[0]['threads']}, "
          f"device {rows[0]['device']}, torch {rows[0]['torch']}")
    base_name = "official-darts" if args.peers else "darts"
    print(f"\n(ratios against {labels[base_name]} at the same batch)")
    print("\n| batch | configuration | s/step (median) | peak memory (GiB) | time vs DARTS | memory vs DARTS |"
          + (" top-level ops |" if args.ops else ""))
    print("|---|---|---|---|---|---|" + ("---|" if args.ops else ""))
    for r in rows:
        base = next((b for b in rows if b["batch"] == r["batch"] and b["config"] == base_name), None)
        rt = f"1/{base['median_s'] / r['median_s']:.1f}" if base else "-"
        rm = f"1/{base['peak_mem_gib'] / max(r['peak_mem_gib'], 1e-9):.1f}" if base else "-"
        ops = f" {r['top_level_ops']} |" if "top_level_ops" in r else ""
        print(f"| {r['batch']} | {labels[r['config']]} | {r['median_s']:.3f} | {r['peak_mem_gib']:.2f} | {rt} | {rm} |{ops}")
    if args.ops:
        print("\nmost frequent top-level ops per step:")
        for r in rows:
            print(f"  {labels[r['config']]} (batch {r['batch']}): "
                  + ", ".join(f"{k.removeprefix('aten::')} {v}" for k, v in list(r["ops_by_name"].items())[:12]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
