"""Probes for sizing the CPU proxy of the paper's searches: short fmnist-quick searches that
differ in one switch, two at a time (one thread each), then each super-net's validation
accuracy with its BatchNorm running statistics (what the search reports) and with the
validation batches' own statistics:

    python3 scripts/proxy_probe.py OUT [--only NAME ...]

Every probe runs 4 epochs of 2,000 + 2,000 images at batch 64 (124 steps) with the paper's
annealing compressed to them (tau 5 -> 0.09). A finished probe is reused. Prints one line per
probe: wall time, then val acc @ tau per epoch, then the final accuracy both ways and the steps
per epoch whose derived cell changed. Every figure comes from the machine it runs on.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# The fmnist-quick of 2026-12-01 (8 cells, bottleneck 4, arch lr 6e-3), which these probes sized.
COMMON = ["data.limit=2000", "data.eval_limit=1000", "optim.epochs=4", "optim.batch_size=64",
          "model.layers=8", "model.bottleneck=4", "optim.arch_lr=0.006",
          "model.tau_decay=null", "model.tau_final=0.09",
          "run.tensorboard=false", "run.plots=false", "run.log_every=50"]
DARTS = ["model.method=darts", "model.engine_cells=all", "model.feature_sharing=false", "model.bottleneck=1",
         "model.tau0=1.0", "model.tau_final=null", "model.tau_decay=1.0"]
PROBES = {
    "entrannas": [],                                    # C=8, bottleneck 4 (2 channels an op)
    "entrannas-bottleneck-1": ["model.bottleneck=1"],   # 8 channels an op
    "entrannas-C16": ["model.C=16"],                    # 4 channels an op, as the paper's C=16
    "entrannas-all-engine": ["model.engine_cells=all"],  # no Transit-cell
    "entrannas-arch-lr-0.03": ["optim.arch_lr=0.03"],     # alpha separates 5x faster
    "entrannas-bottleneck-2": ["model.bottleneck=2"],   # 4 channels an op
    "entrannas-no-recalibration": ["optim.bn_recalibration=0"],
    "darts": DARTS,
}


def search(out: Path, sets: list[str]) -> tuple[float, str]:
    if (out / "genotype.json").exists():
        return float("nan"), ""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "entrannas", "search", "-c", "fmnist-quick", "-q", "--out", str(out)]
    for s in COMMON + sets:
        cmd += ["--set", s]
    t0 = time.time()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    return time.time() - t0, (p.stderr.strip().splitlines() or [""])[-1] if p.returncode else ""


def bn_both_ways(run: Path) -> tuple[float, float]:
    """Final super-net accuracy with running statistics and with each batch's statistics."""
    import torch
    import yaml

    from entrannas.checkpoint import load_checkpoint
    from entrannas.config import from_dict
    from entrannas.loop import build_loaders
    from entrannas.search import build_supernet

    cfg = from_dict(yaml.safe_load((run / "config.yaml").read_text()), "search")
    data = build_loaders(cfg, torch.device("cpu"), search=True)
    net = build_supernet(cfg, data.info)
    state = load_checkpoint(run / "checkpoint.pt")
    net.load_state_dict(state["net"])
    net.set_epoch(state["epoch"] - 1)
    accs = []
    for batch_stats in (False, True):
        net.train(batch_stats)  # train mode: BatchNorm normalises by the batch (and we discard the update)
        correct = count = 0
        with torch.no_grad():
            for x, y in data.val:
                correct += int((net(x).argmax(1) == y).sum())
                count += len(y)
        accs.append(100 * correct / count)
    return accs[0], accs[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--only", nargs="+", choices=sorted(PROBES))
    args = ap.parse_args()
    names = args.only or list(PROBES)
    with ThreadPoolExecutor(2) as pool:
        runs = dict(zip(names, pool.map(lambda n: search(args.out / n, PROBES[n]), names)))
    for name in names:
        wall, err = runs[name]
        if err:
            print(f"{name:24s} FAILED: {err}")
            continue
        rows = [json.loads(line) for line in (args.out / name / "metrics.jsonl").read_text().splitlines()]
        curve = " ".join(f"{r['val_acc']:.1f}@{r['tau']:.2f}" for r in rows)
        running, batch = bn_both_ways(args.out / name)
        changes = "/".join(str(r["selection_changes"]) for r in rows) if "selection_changes" in rows[0] else "-"
        print(f"{name:24s} {wall:6.0f} s  {curve}  final: running stats {running:.1f}%, batch stats "
              f"{batch:.1f}%  derived cell changed at {changes} steps", flush=True)


if __name__ == "__main__":
    main()
