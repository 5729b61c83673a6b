"""A tiny search then a tiny training run, for tests/test_distributed.py: run under torchrun
(each rank saves what it holds to OUT/rank<r>.pt) or in one process (the reference).

    python -m torch.distributed.run --nproc_per_node=2 tests/ddp_worker.py OUT
"""
import sys
from pathlib import Path

import torch

from entrannas import distributed as ddp
from entrannas import search as S
from entrannas import train as T
from entrannas.config import load_config

# No augmentation: BatchLoader draws it per (batch, rank), so with it on, two ranks would see
# other (equally valid) crops and flips than one process does. Drop path off for the same reason
# (its masks come from each rank's generator). C=8 keeps the derived cell clear of near-ties: at
# C=4, bottleneck 2 and 28x28 images, two Adam steps leave two ops of one reduction edge 1e-6
# apart in alpha, the rounding of two processes against one (3e-6) picks the other op, and
# the Transit-cells then run different paths (docs/design.md, "Several processes").
# Everything else is the shipped presets.
NO_AUG = ["data.crop_pad=0", "data.flip=false", "data.cutout=0", "run.tensorboard=false",
          "run.plots=false", "run.log_every=1"]
SEARCH = NO_AUG + ["data.limit=32", "data.eval_limit=40", "model.C=8", "model.layers=5", "optim.lr=0.01",
                   "optim.arch_lr=0.001", "optim.batch_size=16", "optim.epochs=1", "optim.warmup_epochs=0"]
TRAIN = NO_AUG + ["data.limit=32", "data.eval_limit=40", "model.C=4", "model.layers=3",
                  "model.drop_path=0", "optim.lr=0.01", "optim.batch_size=16", "optim.epochs=1"]


def run(out: Path, train_genotype=None) -> dict:
    """Search, then train `train_genotype` (default: the searched one)."""
    held = {}

    def capture(cls, key):
        original = cls.run_epochs

        def run_epochs(self, stop):
            held[key] = self
            return original(self, stop)
        cls.run_epochs = run_epochs
        return original

    s_orig, t_orig = capture(S._Search, "search"), capture(T._Training, "train")
    try:
        searched = S.run_search(load_config("fmnist-quick", SEARCH), out / "search", quiet=True)
        trained = T.run_training(load_config("fmnist-eval", TRAIN), train_genotype or searched.genotype, out / "train",
                                 quiet=True)
    finally:
        S._Search.run_epochs, T._Training.run_epochs = s_orig, t_orig
    s, t = held["search"], held["train"]
    return {"world_size": ddp.world_size(), "rank": ddp.rank(),
            "arch": [p.detach().clone() for p in s.net.arch_parameters()],
            "genotype": searched.genotype.to_dict(),
            "genotypes": [r["genotype"] for r in searched.metrics],
            "search_metrics": [{k: r[k] for k in ("train_loss", "train_acc", "val_loss", "val_acc")}
                               for r in searched.metrics],
            "search_net": {k: v.clone() for k, v in s.net.state_dict().items()},
            "train_net": {k: v.clone() for k, v in t.net.state_dict().items()},
            "test_acc": trained.test_acc, "test_loss": trained.summary["test_loss"]}


if __name__ == "__main__":
    out = Path(sys.argv[1])
    result = run(out / "runs")
    torch.save(result, out / f"rank{result['rank']}.pt")
