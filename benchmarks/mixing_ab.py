"""The Engine-cell mixing as `bmm` (opbank.BankedCell._mix) against the `matmul(Wm, Z)` it
replaced, in whole search steps of one process, alternating step by step so that the machine's
drift falls on both forms alike. The old form is patched in for its steps only; both run on the
same weights, which keep training. Prints the median step time of each and their ratio.

    python benchmarks/mixing_ab.py --config entrannas --pairs 20
    python benchmarks/mixing_ab.py --config dst --pairs 10 --new-first
"""
from __future__ import annotations

import argparse
import statistics
import time
import types

import torch


class _OldMixing(types.ModuleType):
    """torch, except that bmm(Wm expanded over the batch, Z) runs as matmul(Wm, Z)."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def bmm(a, b):
        return torch.matmul(a[0], b)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="entrannas", choices=["darts", "entrannas", "dst"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--pairs", type=int, default=10)
    ap.add_argument("--new-first", action="store_true", help="run the new form first in each pair")
    args = ap.parse_args(argv)
    from entrannas import SuperNet, accel, opbank
    from entrannas.optim import optimizer_options
    from entrannas.search import search_step
    accel.retain_freed_memory()  # as the search runs
    torch.manual_seed(0)
    net = SuperNet(method=args.config, C=16, layers=8, num_classes=10, in_channels=3)
    cpu = optimizer_options(torch.device("cpu"))
    w = torch.optim.SGD(net.weight_parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4, **cpu)
    a = torch.optim.Adam(net.arch_parameters(), lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3, **cpu)
    g = torch.Generator().manual_seed(1)
    batch = (torch.randn(args.batch, 3, 32, 32, generator=g), torch.randint(0, 10, (args.batch,), generator=g))
    old = _OldMixing("torch")

    def step(use_old: bool) -> float:
        opbank.torch = old if use_old else torch
        try:
            t = time.perf_counter()
            search_step(net, w, a, batch, batch)
            return time.perf_counter() - t
        finally:
            opbank.torch = torch
    with torch.no_grad():
        net.eval()
        opbank.torch = old
        y_old = net(batch[0])
        opbank.torch = torch
        y_new = net(batch[0])
        net.train()
    for use_old in (True, False):  # one warm-up step each
        step(use_old)
    times = {True: [], False: []}
    order = (False, True) if args.new_first else (True, False)
    for _ in range(args.pairs):
        for use_old in order:
            times[use_old].append(step(use_old))
    t_old, t_new = statistics.median(times[True]), statistics.median(times[False])
    print(f"{args.config} batch {args.batch}, {args.pairs} pairs ({'new' if args.new_first else 'old'} first): "
          f"matmul {t_old:.3f} s/step, bmm {t_new:.3f} s/step, ratio {t_old / t_new:.3f}; "
          f"forward max difference {float((y_old - y_new).abs().max()):.1e}")


if __name__ == "__main__":
    main()
