"""Seconds to draw a genotype's picture (`plot_genotype` to a PNG), as the search does after
every epoch: a DARTS-size cell (DARTS_V2, 8 ops a cell) and the densest cell EnTranNAS-DST
can derive (every edge with all 7 ops of the DARTS space, 98 ops a cell).

    python benchmarks/plot_cells.py                   # median of 5 drawings each
    PYTHONPATH=/tmp/before/src python benchmarks/plot_cells.py --json-line   # another tree

Run two trees one after the other, a few times each, to compare them on this noisy machine.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

from entrannas.genotype import BUILTINS, CellGenotype, Genotype
from entrannas.plot import plot_genotype

OPS = ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
       "dil_conv_3x3", "dil_conv_5x5")
DENSE = CellGenotype(tuple(tuple((op, i) for i in range(j) for op in OPS) for j in range(2, 6)))
GENOTYPES = {"DARTS_V2 (8 ops a cell)": BUILTINS["DARTS_V2"],
             "dense DST (98 ops a cell)": Genotype(DENSE, DENSE).validate()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json-line", action="store_true", help="print one JSON row of medians")
    args = ap.parse_args(argv)
    row = {}
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "cells.png")
        for name, g in GENOTYPES.items():
            plot_genotype(g, path, title="epoch 1")  # fonts and caches warmed
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                plot_genotype(g, path, title="epoch 1")
                times.append(time.perf_counter() - t0)
            row[name] = statistics.median(times)
    if args.json_line:
        print(json.dumps(row))
        return
    print("| genotype | s a picture (median) |\n|---|---|")
    for name, s in row.items():
        print(f"| {name} | {s:.3f} |")


if __name__ == "__main__":
    main()
