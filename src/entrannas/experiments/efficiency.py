"""Table 3 (efficiency): DARTS mode, then Engine/Transit cells, feature sharing and the
bottleneck added one after the other. For each: peak memory at batch 64, the largest batch
that fits a memory budget, and the search cost at that batch.

Search steps (architecture step, then weight step) run on random tensors of the setting's
shape, each measurement in a fresh process so its peak memory is its own. Memory: on a GPU
`torch.cuda.max_memory_allocated`; on a CPU the peak resident memory above the process's
size once the network is built, plus the weights: both count weights, gradients, optimiser
state and activations. The
largest batch comes from a straight-line fit of memory against batch size (two measured
batches), checked by a measured step at that batch.
"""
from __future__ import annotations

import math
import os
import resource
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

from ..rundir import format_eta
from .common import Context, markdown_table, write_summary

# Table 3's cumulative rows (the SuperNet switches of each).
CONFIGS = {
    "darts": ("DARTS (1st order)", dict(method="darts")),
    "engine_transit": ("+Engine&Transit-cell", dict(method="entrannas", feature_sharing=False, bottleneck=1)),
    "feature_sharing": ("+feature sharing", dict(method="entrannas", bottleneck=1)),
    "bottleneck": ("+bottleneck (EnTranNAS)", dict(method="entrannas")),
}
# The paper's Table 3 (CIFAR-10, GTX 1080 Ti): memory GiB at 64, batch multiple, GPU-days.
PAPER = {"darts": (9.0, 1, 0.73), "engine_transit": (4.5, 2, 0.22),
         "feature_sharing": (2.6, 4, 0.09), "bottleneck": (1.5, 8, 0.06)}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_step(name: str, batch: int, steps: int, C: int, layers: int, input_shape: list[int],
                 num_classes: int = 10, device: str = "auto", threads: int | None = None,
                 warmup: int = 1) -> dict:
    """Median seconds per search step and peak memory (GiB) of one configuration at one batch.
    Call it in a fresh process (see `measure`) for a clean memory peak."""
    import torch

    from ..loop import resolve_device
    from ..search import search_step
    from ..supernet import SuperNet
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    torch.manual_seed(0)
    net = SuperNet(C=C, layers=layers, num_classes=num_classes, in_channels=input_shape[0],
                   **CONFIGS[name][1]).to(dev)
    # CPU: memory above the built network, plus the weights themselves; RSS also holds the
    # libraries' own buffers, which are not the method's and would blur the ratios.
    base = _rss_bytes() - sum(p.numel() * p.element_size() for p in net.parameters())
    w_opt = torch.optim.SGD(net.weight_parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam(net.arch_parameters(), lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(batch, *input_shape, generator=g).to(dev),
                torch.randint(0, num_classes, (batch,), generator=g).to(dev)) for _ in range(2)]
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        search_step(net, w_opt, a_opt, batches[0], batches[1])
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    if dev.type == "cuda":
        mem = torch.cuda.max_memory_allocated(dev)
    else:
        mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"config": name, "batch": batch, "s_per_step": statistics.median(times),
            "mem_gib": mem / 2**30, "device": str(dev)}


def measure(name: str, batch: int, s: dict, device: str, threads: int | None) -> dict:
    """`measure_step` in a fresh process."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(measure_step, name, batch, int(s["steps"]), int(s["C"]), int(s["layers"]),
                           list(s["input"]), 10, device, threads).result()


def largest_batch(m_small: dict, m_big: dict, budget_gib: float) -> int:
    """Largest batch whose memory, on the straight line through two measurements, fits."""
    slope = (m_big["mem_gib"] - m_small["mem_gib"]) / (m_big["batch"] - m_small["batch"])
    fixed = m_small["mem_gib"] - slope * m_small["batch"]
    if slope <= 0:
        return m_big["batch"]
    return max(1, int((budget_gib - fixed) / slope))


def run(ctx: Context) -> dict:
    s = dict(ctx.settings)
    budget = float(ctx.options.get("budget_gib") or s["budget_gib"])
    device = ctx.options.get("device") or "auto"
    threads = ctx.options.get("threads")
    names = [n for n in CONFIGS if n in (ctx.options.get("configs") or CONFIGS)]
    rows = []
    for name in names:
        label = CONFIGS[name][0]
        t0 = time.time()
        small = measure(name, int(s["probe_batch"]), s, device, threads)
        at64 = measure(name, int(s["batch"]), s, device, threads)
        b_max = largest_batch(small, at64, budget)
        check = measure(name, b_max, s, device, threads)
        if check["mem_gib"] > budget:  # the line under-estimated: scale down once, re-measure
            b_max = max(1, int(b_max * budget / check["mem_gib"] * 0.97))
            check = measure(name, b_max, s, device, threads)
        steps_per_epoch = math.ceil(int(s["images"]) / b_max)
        cost_s = check["s_per_step"] * steps_per_epoch * int(s["epochs"])
        row = {"config": name, "label": label, "device": at64["device"],
               f"mem_gib_{s['batch']}": at64["mem_gib"], "mem_gib": at64["mem_gib"],
               "s_per_step_64": at64["s_per_step"],
               "epoch_s_at_64": at64["s_per_step"] * math.ceil(int(s["images"]) / int(s["batch"])),
               "largest_batch": b_max, "mem_gib_at_largest": check["mem_gib"],
               "s_per_step_at_largest": check["s_per_step"], "epoch_s": cost_s / int(s["epochs"]),
               "cost_hours": cost_s / 3600, "cost_days": cost_s / 86400,
               "measurements": [small, at64, check]}
        paper = PAPER.get(name)
        if paper:
            row.update(paper_mem_gib=paper[0], paper_batch_multiple=paper[1], paper_cost_days=paper[2])
        rows.append(row)
        ctx.log(f"{label}: {row['mem_gib']:.2f} GiB at batch {s['batch']}, largest batch {b_max}, "
                f"{s['epochs']}-epoch cost {format_eta(cost_s)} (measured in {format_eta(time.time() - t0)})")
    base = next((r for r in rows if r["config"] == "darts"), rows[0])
    for r in rows:
        r["mem_ratio"] = r["mem_gib"] / base["mem_gib"]
        r["batch_multiple"] = r["largest_batch"] / base["largest_batch"]
        r["cost_ratio"] = r["cost_hours"] / base["cost_hours"]
    table = markdown_table(
        [("label", "configuration"), ("mem_gib", f"memory GiB (batch {s['batch']})"),
         ("largest_batch", f"largest batch in {budget:g} GiB"), ("batch_multiple", "x DARTS batch"),
         ("epoch_s", "s / epoch at that batch"), ("cost_hours", f"{s['epochs']}-epoch cost (h)"),
         ("cost_ratio", "cost / DARTS"), ("paper_mem_gib", "paper memory GiB"),
         ("paper_batch_multiple", "paper batch x"), ("paper_cost_days", "paper GPU-days")], rows)
    note = (f"Setting: C={s['C']}, {s['layers']} cells, input {s['input']}, {s['images']} weight "
            f"images per epoch, {s['epochs']} epochs; device {rows[0]['device']}. Costs are "
            f"extrapolated from the median of {s['steps']} measured search steps (after one "
            f"warm-up step) at the largest batch; they count search steps only, not the "
            f"per-epoch validation. Memory on a CPU is peak resident memory above the built "
            f"network plus its weights, on a GPU torch.cuda.max_memory_allocated.")
    write_summary(ctx, "Table 3: search efficiency per component", [table], {"rows": rows, "setting": s}, note)
    return {"rows": rows}
