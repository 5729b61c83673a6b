"""Several searches on one device: the wall time of one seed against N seeds run at once
(`entrannas search --seeds 0 .. N-1 --jobs N`), on synthetic data of CIFAR-10's shape through
the real command. Issue 11's GPU target: five seeds within twice the time of one.

    python benchmarks/seeds_at_once.py                         # cifar10-entrannas, 2 epochs, 5 seeds
    python benchmarks/seeds_at_once.py --seeds 2 --set data.limit=96 --set data.eval_limit=64 \\
        --set model.C=4 --set model.layers=3 --set optim.batch_size=16   # a CPU dry run

Each search's run folder goes under --out (default: a temporary folder, removed afterwards).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def search(preset: str, seeds: list[int], jobs: int, sets: list[str], out: str) -> float:
    cmd = [sys.executable, "-m", "entrannas", "search", "--config", preset, "--out", out, "--quiet",
           "--seeds", *map(str, seeds)]
    if jobs > 1:
        cmd += ["--jobs", str(jobs)]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="cifar10-entrannas")
    ap.add_argument("--seeds", type=int, default=5, help="how many searches run at once")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more overrides")
    ap.add_argument("--out", help="where the run folders go (default: a temporary folder)")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args(argv)
    sets = ["data.dataset=synthetic", "data.synthetic_size=50000", "data.synthetic_shape=[3, 32, 32]",
            f"optim.epochs={args.epochs}", "run.tensorboard=false", "run.plots=false", *args.set]
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or tmp
        one = search(args.config, [0], 1, sets, os.path.join(out, "one"))
        many = search(args.config, list(range(args.seeds)), args.seeds, sets, os.path.join(out, "many"))
    import torch
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    row = dict(config=args.config, epochs=args.epochs, seeds=args.seeds, one_s=round(one, 1),
               at_once_s=round(many, 1), ratio=round(many / one, 2), device=device, torch=torch.__version__)
    print(f"{args.config}, {args.epochs} epochs on {device} (torch {torch.__version__}): one seed {one:.1f} s, "
          f"{args.seeds} seeds at once {many:.1f} s: {many / one:.2f}x the time of one (target: at most 2x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(row, f, indent=1)
    return row


if __name__ == "__main__":
    main()
