"""The CPU convolution and pool forms of `entrannas.cpuconv` against oneDNN's plain NCHW calls,
in whole search steps of one process, alternating step by step so that the machine's drift
falls on both alike (`cpuconv.ENABLED` switches them). Both run on the same weights, which
keep training. Prints the median step time of each and their ratio.

    python benchmarks/cpuconv_ab.py --method entrannas --pairs 10          # Table 3's shape
    python benchmarks/cpuconv_ab.py --method dst --pairs 6
    python benchmarks/cpuconv_ab.py --preset fmnist-quick --pairs 20       # the main job's shape
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def _network(args):
    """The network and its input size: a preset's super-net (10 classes; fmnist-quick's
    1-channel 14x14 images), or a Table 3 one of the given method and size."""
    from types import SimpleNamespace

    from entrannas import SuperNet
    if args.preset:
        from entrannas.config import load_config
        from entrannas.search import build_supernet
        cfg = load_config(args.preset, kind="search")
        channels = 1 if cfg.data.dataset == "fashion-mnist" else 3
        size = cfg.data.image_size or (28 if channels == 1 else 32)
        return build_supernet(cfg, SimpleNamespace(num_classes=10, channels=channels)), size, channels
    return SuperNet(method=args.method, C=args.C, layers=args.layers, num_classes=10), args.size, 3


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="entrannas", choices=["darts", "entrannas", "dst", "pcdarts"])
    ap.add_argument("--preset", help="a search preset's network instead (fmnist-quick: 14x14, 1 channel)")
    ap.add_argument("--C", type=int, default=16)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--pairs", type=int, default=10)
    args = ap.parse_args(argv)
    from entrannas import accel, cpuconv
    from entrannas.optim import optimizer_options
    from entrannas.search import search_step
    accel.retain_freed_memory()  # as the search runs
    torch.manual_seed(0)
    net, size, in_ch = _network(args)
    cpu = optimizer_options(torch.device("cpu"))
    w = torch.optim.SGD(net.weight_parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4, **cpu)
    a = torch.optim.Adam(net.arch_parameters(), lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3, **cpu)
    g = torch.Generator().manual_seed(1)
    batch = (torch.randn(args.batch, in_ch, size, size, generator=g), torch.randint(0, 10, (args.batch,), generator=g))

    def step(on: bool) -> float:
        cpuconv.ENABLED = on
        try:
            t = time.perf_counter()
            search_step(net, w, a, batch, batch)
            return time.perf_counter() - t
        finally:
            cpuconv.ENABLED = True
    for on in (False, True):  # one warm-up step each
        step(on)
    times = {False: [], True: []}
    for i in range(args.pairs):
        for on in ((False, True) if i % 2 == 0 else (True, False)):  # each form first in half the pairs
            times[on].append(step(on))
    t_off, t_on = statistics.median(times[False]), statistics.median(times[True])
    name = args.preset or f"{args.method} C={args.C} {args.layers} cells {size}x{size}"
    print(f"{name}, batch {args.batch}, {args.pairs} pairs: oneDNN NCHW {t_off:.3f} s/step, "
          f"cpuconv {t_on:.3f} s/step, ratio {t_off / t_on:.3f}")


if __name__ == "__main__":
    main()
