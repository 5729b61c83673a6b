"""The paper's measurements, one command each (Tables 1-5 and the appendix animation):

    entrannas experiment consistency --scale cpu     # Table 1
    entrannas experiment kendall --scale cpu         # Table 2
    entrannas experiment efficiency --scale cpu      # Table 3
    entrannas experiment flexibility --scale cpu     # Table 4
    entrannas experiment animation --scale cpu       # appendix B's video, as a GIF
    entrannas experiment segmentation --scale cpu    # Table 5

or from Python: `run_experiment("kendall", scale="cpu", out="results/kendall-cpu", jobs=2)`.
Settings per scale live in configs/experiments/<name>.yaml. `cpu` is a Fashion-MNIST proxy
sized for a 2-core machine; `paper` is the paper's setting (CIFAR-10/ImageNet/VOC and a GPU).
"""
from __future__ import annotations

import importlib
from pathlib import Path

from .common import SCALES, Context

EXPERIMENTS = {
    "consistency": "Table 1: super-net vs child-net accuracy per Engine-cell setting",
    "kendall": "Table 2: Kendall tau of super-net vs retrained accuracy over seeds",
    "efficiency": "Table 3: memory, largest batch and search cost per component",
    "flexibility": "Table 4: DST with lambda 0.2 / 0.1 / 0.05: edges, params, FLOPs",
    "animation": "Appendix B: GIF of the derived cells at every epoch of a DST search",
    "segmentation": "Table 5: DARTS and DST cells as DeepLabV3 backbones, mIoU",
}

__all__ = ["EXPERIMENTS", "SCALES", "run_experiment"]


def run_experiment(name: str, scale: str = "cpu", out: str | Path | None = None, jobs: int = 1,
                   overrides: list[str] | tuple = (), quiet: bool = False, **options) -> dict:
    """Run (or finish) one experiment; returns its rows. Output: OUT/table.md, results.json,
    plots, and the sub-runs under OUT/runs/. Default OUT: results/<name>-<scale>."""
    from ..config import ConfigError
    if name not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)}")
    if scale not in SCALES:
        raise ConfigError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    out = Path(out) if out is not None else Path("results") / f"{name}-{scale}"
    ctx = Context(name, scale, out, jobs=max(1, int(jobs)), quiet=quiet, overrides=list(overrides),
                  options={k: v for k, v in options.items() if v is not None})
    ctx.settings  # fail on a bad scale before any work
    from ..runlock import hold_run
    # One experiment per folder at a time; a failed start takes back what it made.
    with hold_run(out, create=True, what="output folder"):
        module = importlib.import_module(f".{name}", __name__)
        return module.run(ctx)
