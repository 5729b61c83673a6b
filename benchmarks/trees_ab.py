"""Whole search (or training) steps of two source trees, interleaved: how much faster one code
version is than another, on machines whose speed drifts by 20-30% over minutes.

Each round runs `search_step.py --_one CONFIG` (with `--script train_step`: `train_step.py
--preset CONFIG`) once per tree, each in its own process with that tree's `src` first on
PYTHONPATH, the order alternating between rounds; the result is the median step time and peak
memory of each tree and the ratio of the medians. The benchmark scripts are this tree's.

    git worktree add /tmp/before HEAD~1
    python benchmarks/trees_ab.py /tmp/before . --config bottleneck --rounds 8
    python benchmarks/trees_ab.py /tmp/before . --script train_step --config fmnist-eval

A ratio above 1 means the second tree is faster.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def run(tree: str, config: str, batch: int, steps: int, script: str = "search_step") -> dict:
    env = dict(os.environ, PYTHONPATH=os.path.join(os.path.abspath(tree), "src"))
    path = os.path.join(HERE, script + ".py")
    if script == "search_step":
        cmd = [path, "--_one", config, "--batch", str(batch), "--steps", str(steps), "--warmup", "1"]
    else:
        cmd = [path, "--preset", config, "--batch", str(batch), "--steps", str(steps), "--warmup", "1", "--json-line"]
    out = subprocess.run([sys.executable, *cmd], env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("first")
    ap.add_argument("second")
    ap.add_argument("--script", choices=["search_step", "train_step"], default="search_step")
    ap.add_argument("--config", default="bottleneck",
                    help="a search_step.py configuration, or train_step.py's preset")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args(argv)
    trees = (args.first, args.second)
    rows = ([], [])  # by position, so that a tree against itself (a noise check) keeps both columns
    for r in range(args.rounds):
        for i in (0, 1) if r % 2 == 0 else (1, 0):
            row = run(trees[i], args.config, args.batch, args.steps, args.script)
            rows[i].append(row)
            print(f"round {r + 1}  {trees[i]:30s} {row['median_s']:.3f} s/step  {row['peak_mem_gib']:.2f} GiB", flush=True)
    t = [statistics.median(x["median_s"] for x in v) for v in rows]
    m = [statistics.median(x["peak_mem_gib"] for x in v) for v in rows]
    print(f"\n{trees[0]}: {t[0]:.3f} s/step, {m[0]:.2f} GiB | {trees[1]}: {t[1]:.3f} s/step, {m[1]:.2f} GiB"
          f" | ratio {t[0] / t[1]:.3f}")


if __name__ == "__main__":
    main()
