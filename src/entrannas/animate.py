"""The derived cells of a search at every epoch, as an animated GIF (the paper's supplementary
video of an EnTranNAS-DST search), and the number of active connections per epoch.

    entrannas animate RUN_DIR -o cells.gif

A search writes RUN/genotypes/epoch_NNN.json at each epoch end; these are the frames.
"""
from __future__ import annotations

import io
from pathlib import Path

from .fsutil import atomic_write_bytes
from .genotype import Genotype, GenotypeError
from .measure import cell_stats

__all__ = ["epoch_genotypes", "animate_search", "connections", "connection_series",
           "plot_connections"]


def epoch_genotypes(run_dir: str | Path) -> list[tuple[int, Genotype]]:
    """(epoch number from 1, genotype) for every epoch a search has finished."""
    files = sorted(Path(run_dir).glob("genotypes/epoch_*.json"))
    if not files:
        raise GenotypeError(f"{run_dir} has no genotypes/epoch_*.json: give the folder of a "
                            f"search that has finished at least one epoch")
    return [(int(f.stem.split("_")[1]) + 1, Genotype.from_json(f.read_text("utf-8"))) for f in files]


def connections(genotype: Genotype) -> tuple[int, int]:
    """Active connections of the normal and the reduction cell, counted as the paper's
    pictures and Table 4 count edges: one per (op, input) arrow (a DARTS cell has 8)."""
    return cell_stats(genotype.normal)["ops"], cell_stats(genotype.reduce)["ops"]


def animate_search(run_dir: str | Path, path: str | Path, seconds_per_frame: float = 0.8,
                   title: str | None = None, dpi: int = 80) -> str:
    """Write an animated GIF with one frame per epoch of the search in `run_dir`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    from .plot import genotype_figure
    frames = []
    for epoch, g in epoch_genotypes(run_dir):
        n, r = connections(g)
        head = f"{title}: " if title else ""
        fig = genotype_figure(g, f"{head}epoch {epoch}: {n} normal / {r} reduction edges")
        png = io.BytesIO()
        FigureCanvasAgg(fig)
        fig.savefig(png, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
        frames.append(Image.open(png).convert("RGB"))
    # A tight bounding box differs per frame: pad all to one canvas, centred, on white.
    w, h = max(f.width for f in frames), max(f.height for f in frames)
    frames = [_pad(f, w, h) for f in frames]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:],
                   duration=int(seconds_per_frame * 1000), loop=0)
    atomic_write_bytes(path, buf.getvalue())
    return str(path)


def connection_series(run_dir: str | Path) -> list[tuple[int, int, int]]:
    """(epoch, normal connections, reduction connections) for every finished epoch."""
    return [(e, *connections(g)) for e, g in epoch_genotypes(run_dir)]


def _pad(img, w: int, h: int):
    from PIL import Image
    if img.size == (w, h):
        return img
    canvas = Image.new("RGB", (w, h), "white")
    canvas.paste(img, ((w - img.width) // 2, (h - img.height) // 2))
    return canvas


def plot_connections(series: dict[str, list[tuple[int, int, int]]], path: str | Path,
                     title: str = "Active connections per epoch") -> str:
    """series: label -> [(epoch, normal connections, reduction connections)]."""
    from matplotlib.figure import Figure

    from .plot import save_figure
    fig = Figure(figsize=(9, 3.6))
    axes = fig.subplots(1, 2, sharey=True)
    for label, pts in series.items():
        ep = [p[0] for p in pts]
        axes[0].plot(ep, [p[1] for p in pts], marker="o", label=label)
        axes[1].plot(ep, [p[2] for p in pts], marker="o", label=label)
    for ax, cell in zip(axes, ("normal", "reduction")):
        ax.set_title(f"{cell} cell")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("edges ((op, input) arrows)")
    axes[1].legend(loc="best")
    fig.suptitle(title)
    return save_figure(fig, path)
