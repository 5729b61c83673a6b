"""Time one training step of a target network (`entrannas train`'s step: forward with the
auxiliary head, loss, backward, gradient clipping, SGD) as a preset builds it, on random data
of the preset's image shape.

    python benchmarks/train_step.py                                   # fmnist-eval, DARTS_V2
    python benchmarks/train_step.py --preset cifar10-eval --batch 32 --genotype PDARTS
    python benchmarks/trees_ab.py OLD NEW --script train_step --config fmnist-eval   # two trees

The network, optimiser and drop path (the preset's final value) are those of
entrannas.train; the step runs with the heap keeping freed memory, as a training run does.
Memory = peak RSS above the RSS right after the network and optimiser are built.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from types import SimpleNamespace

import torch

from entrannas import accel
from entrannas.config import load_config
from entrannas.evalnet import dataset_settings
from entrannas.genotype import load_genotype
from entrannas.train import build_net, train_step
from search_step import _rss_bytes  # a sibling script: this directory is on sys.path


def run_one(preset: str, genotype: str, batch: int | None, steps: int, warmup: int) -> dict:
    cfg = load_config(preset, kind="train")
    accel.retain_freed_memory()
    torch.manual_seed(0)
    info = dataset_settings(cfg.data.dataset)
    info = SimpleNamespace(num_classes=info["num_classes"], channels=info["input_shape"][0],
                           image_size=tuple(info["input_shape"][1:]))
    net = build_net(cfg, load_genotype(genotype), info)
    net.train()
    net.drop_path_prob = cfg.model.drop_path
    o = cfg.optim
    opt = torch.optim.SGD(net.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    batch = batch or o.batch_size
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, info.channels, *info.image_size, generator=g)
    y = torch.randint(0, info.num_classes, (batch,), generator=g)
    rss0 = _rss_bytes()
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        train_step(net, opt, x, y, cfg)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0) / 2**30
    return dict(config=preset, genotype=genotype, batch=batch, steps=steps, median_s=statistics.median(times),
                times=times, peak_mem_gib=peak, threads=torch.get_num_threads(), torch=torch.__version__)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", "--config", dest="preset", default="fmnist-eval", help="a train preset or YAML file")
    ap.add_argument("--genotype", default="DARTS_V2", help="a built-in genotype or a genotype file")
    ap.add_argument("--batch", type=int, default=None, help="default: the preset's")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json-line", action="store_true", help="print one JSON row (what trees_ab.py reads)")
    args = ap.parse_args(argv)
    row = run_one(args.preset, args.genotype, args.batch, args.steps, args.warmup)
    if args.json_line:
        print(json.dumps(row))
        return
    print(f"{row['config']} ({row['genotype']}), batch {row['batch']}: {row['median_s']:.3f} s/step "
          f"(median of {row['steps']}), {row['peak_mem_gib']:.2f} GiB peak above the built net; "
          f"{platform.machine()}, {row['threads']} threads, torch {row['torch']}")


if __name__ == "__main__":
    main()
