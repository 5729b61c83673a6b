"""Whether a compiler meets the 1,500-op step on a CPU: the EnTranNAS search step with every
cell's forward (Engine and Transit) wrapped in torch.compile (inductor), against the eager
step with the CPU forms (the default) and with oneDNN's plain calls. One process, the three
steps one after another on the same network and batches. The architecture step runs with
lr 0, so the derived cells stay the same and each compiled cell compiles once for the
architecture step (weights frozen) and once for the weight step (alpha frozen); `--moving`
gives Adam the search's lr, and a selection that changes compiles its Transit-cells again.

    python benchmarks/compile_step.py                 # batch 64, 3 timed steps each
    python benchmarks/compile_step.py --batch 16 --steps 2
    python benchmarks/compile_step.py --forms          # the CPU forms inside the compiled cells

Prints s/step (median), top-level aten ops per step (search_step.py's counter: the
compiled kernels are not aten ops, the convolutions they call are) and the compile time of
the first compiled step (cold: the inductor cache is pointed at a fresh folder).
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

from search_step import CONFIGS, count_top_level_ops
from entrannas import SuperNet, accel, cpuconv
from entrannas.optim import optimizer_options
from entrannas.search import search_step


def compile_cells(net: SuperNet) -> None:
    """Each cell's two forwards through torch.compile; SuperNet.forward calls them as before."""
    for cell in net.cells:
        cell.forward_engine = torch.compile(cell.forward_engine, dynamic=False)
        cell.forward_transit = torch.compile(cell.forward_transit, dynamic=False)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="bottleneck", choices=list(CONFIGS))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--forms", action="store_true",
                    help="keep the CPU forms (cpuconv) inside the compiled cells; they step aside "
                         "while a graph is compiled otherwise")
    ap.add_argument("--moving", action="store_true",
                    help="the search's arch lr (3e-4): the selection may change between steps")
    args = ap.parse_args(argv)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="inductor-"))
    accel.retain_freed_memory()  # as the search does
    torch._dynamo.config.cache_size_limit = 64
    torch.manual_seed(0)
    net = SuperNet(C=16, layers=8, num_classes=10, **CONFIGS[args.config])
    opts = optimizer_options(torch.device("cpu"))
    w_opt = torch.optim.SGD(net.weight_parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4, **opts)
    # lr 0: the architecture step runs in full but alpha, and so the derived cells, stay put;
    # every new selection would compile the Transit-cells again (see --moving)
    a_opt = torch.optim.Adam(net.arch_parameters(), lr=3e-4 if args.moving else 0.0, betas=(0.5, 0.999),
                             weight_decay=1e-3, **opts)
    g = torch.Generator().manual_seed(1)
    train, val = [(torch.randn(args.batch, 3, 32, 32, generator=g), torch.randint(0, 10, (args.batch,), generator=g))
                  for _ in range(2)]

    def step():
        search_step(net, w_opt, a_opt, train, val)

    step()
    rows = []
    compiled_label = "compiled cells" + (", CPU forms" if args.forms else "")
    for label in ("eager, CPU forms", "eager, plain calls", compiled_label):
        cpuconv.ENABLED = label.endswith("CPU forms")
        first = None
        if label == compiled_label:
            cpuconv.IN_COMPILED = args.forms
            compile_cells(net)
            t = time.perf_counter()
            step()
            first = time.perf_counter() - t
        else:
            step()
        times = []
        for _ in range(args.steps):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
        rows.append((label, statistics.median(times), count_top_level_ops(step), first))
        print(rows[-1], flush=True)
    print(f"\n{args.config}, C=16, 8 cells, batch {args.batch}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n")
    print("| step | s/step (median) | top-level ops per step | first step (compiles) |\n|---|---|---|---|")
    for label, s, ops, first in rows:
        print(f"| {label} | {s:.3f} | {ops:,} | {'' if first is None else f'{first:.0f} s'} |")


if __name__ == "__main__":
    main()
