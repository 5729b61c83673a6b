"""Pictures of cells (paper appendix B) with matplotlib only: no graphviz binary needed.

Left to right: the cell inputs c_{k-2} (top) and c_{k-1} (bottom), the intermediate nodes
0..3 (nodes 2..5 of the genotype) in index order, then the output c_{k}. Every (op, input)
pair is its own arrow labelled with the op; several ops on one edge (EnTranNAS-DST) are arcs
of different curvature, and labels slide along their arrows to avoid each other. Figures are
built on a bare ``Figure`` (Agg canvas), never through pyplot, so plotting needs no display
and leaves the pyplot state of a user's session alone.
"""
from __future__ import annotations

import math
import os

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch

from .fsutil import atomic_path
from .genotype import CellGenotype, Genotype, GenotypeError

__all__ = ["plot_cell", "plot_genotype", "genotype_figure", "save_figure", "OP_COLORS"]

# One colour per op, shared by all pictures so cells can be compared at a glance.
OP_COLORS = {
    "skip_connect": "#7f7f7f",
    "max_pool_3x3": "#2ca02c",
    "avg_pool_3x3": "#8cbf3f",
    "sep_conv_3x3": "#1f77b4",
    "sep_conv_5x5": "#17456e",
    "dil_conv_3x3": "#d62728",
    "dil_conv_5x5": "#8c1a1b",
    "conv_1x1": "#9467bd",
    "conv_3x3": "#6a3d9a",
    "conv_1x3_3x1": "#ff7f0e",
    "conv_1x5_5x1": "#d9730d",
    "conv_1x7_7x1": "#a65d1a",
}
_FALLBACK = "#444444"
_FORMATS = {".png", ".pdf", ".svg"}
_R = 0.30                       # radius of an intermediate node, in data units
_BOX = (0.95, 0.5, 0.02)        # an input or output node: width, height, pad (data units)
_COL, _H = 2.1, 2.1             # spacing of node columns; height of the two cell inputs
_FAN = 0.36                     # curvature step between ops sharing one edge
_FONT = 7.5


def _layout(cell: CellGenotype) -> dict[int, tuple[float, float]]:
    """Positions of nodes 0..5 and of the output (key -1).

    Intermediate nodes sit on one horizontal line in index order (a topological order), the
    inputs above and below its left end: an input edge then never passes through another
    node, edges between intermediate nodes become arcs above the line and concat edges arcs
    below it, so the three kinds of edge stay apart however dense the cell is.
    """
    pos = {0: (0.0, _H), 1: (0.0, -_H)}
    for m in range(len(cell.nodes)):
        pos[m + 2] = ((m + 1) * _COL, 0.0)
    pos[-1] = ((len(cell.nodes) + 1) * _COL, 0.0)
    return pos


def _blocked(a, b, pos, skip) -> bool:
    """True if the segment a-b passes through a node other than its ends."""
    (x1, y1), (x2, y2) = a, b
    dx, dy = x2 - x1, y2 - y1
    length2 = dx * dx + dy * dy
    for key, (px, py) in pos.items():
        if key in skip:
            continue
        t = ((px - x1) * dx + (py - y1) * dy) / length2
        if 0.0 < t < 1.0 and math.hypot(x1 + t * dx - px, y1 + t * dy - py) < _R + 0.25:
            return True
    return False


def _bezier(a, b, rad: float, t: float):
    """Point and tangent angle (degrees, kept upright) at t of arc3's quadratic Bezier.

    arc3 works in display space; the axes keep an equal aspect, so data units match."""
    (x1, y1), (x2, y2) = a, b
    dx, dy = x2 - x1, y2 - y1
    cx, cy = (x1 + x2) / 2 + rad * dy, (y1 + y2) / 2 - rad * dx
    u = 1 - t
    x = u * u * x1 + 2 * u * t * cx + t * t * x2
    y = u * u * y1 + 2 * u * t * cy + t * t * y2
    tx, ty = u * (cx - x1) + t * (x2 - cx), u * (cy - y1) + t * (y2 - cy)
    angle = math.degrees(math.atan2(ty, tx))
    if angle > 90:
        angle -= 180
    elif angle <= -90:
        angle += 180
    return x, y, angle


def _node(ax: Axes, xy, text: str, kind: str):
    x, y = xy
    if kind == "mid":
        patch = Circle(xy, _R, facecolor="#cfe2f3", edgecolor="#2f5597", lw=1.4, zorder=3)
    else:
        w, h, pad = _BOX
        face, edge = ("#d9ead3", "#38761d") if kind == "in" else ("#fff2cc", "#b8860b")
        patch = FancyBboxPatch((x - w / 2, y - h / 2), w, h,
                               boxstyle=f"round,pad={pad},rounding_size=0.12",
                               facecolor=face, edgecolor=edge, lw=1.4, zorder=3)
    ax.add_patch(patch)
    ax.text(x, y, text, ha="center", va="center", fontsize=11, zorder=4)


def _reach(kind: str, dx: float, dy: float) -> float:
    """Distance from a node's centre to its edge in the direction (dx, dy), in data units."""
    if kind == "mid":
        return _R
    w, h, pad = _BOX
    c, s = abs(dx), abs(dy)
    n = math.hypot(c, s) or 1.0
    return min((w / 2 + pad) * n / c if c else math.inf, (h / 2 + pad) * n / s if s else math.inf)


def _arrow(ax, a, b, kinds, rad, color, per_pt, **kw):
    """An arc3 arrow from node a to node b that starts and ends at their edges.

    The ends are cut by matplotlib's cheap circle test (shrinkA/B, in points) with the
    distance from each centre to its node's edge along the arc's end tangent, instead of
    clipping the path against the node patches (patchA/B): that clipping bisects the Bezier
    with a transformed point-in-patch test and took over half of a picture's time (a dense
    DST cell: 2.8 s a picture). Circles come out exact, boxes within their rounded corners."""
    (x1, y1), (x2, y2) = a, b
    cx, cy = (x1 + x2) / 2 + rad * (y2 - y1), (y1 + y2) / 2 - rad * (x2 - x1)  # arc3's control point
    edge = 1.0 + 0.7  # points: the one-point gap kept before, plus half a node's edge line
    shrink_a = _reach(kinds[0], cx - x1, cy - y1) / per_pt + edge
    shrink_b = _reach(kinds[1], cx - x2, cy - y2) / per_pt + edge
    ax.add_patch(FancyArrowPatch(a, b, connectionstyle=f"arc3,rad={rad:.3f}", color=color,
                                 shrinkA=shrink_a, shrinkB=shrink_b, **kw))


class _Labels:
    """Greedy label placement: each op label slides along its arrow to the first spot that
    overlaps no node and no label placed before it (dense DST cells need this). Overlaps are
    counted with array arithmetic: a dense DST cell has ~100 labels of ~10 discs each, tried
    at up to 7 spots against every disc placed before (millions of distances in Python)."""

    def __init__(self, ax: Axes, pos, fontsize: float):
        ax.apply_aspect()                          # transData is final only after this
        (x0, _), (x1, _) = ax.transData.transform([(0, 0), (1, 0)])
        self.per_pt = per_pt = ax.figure.dpi / 72 / max(x1 - x0, 1e-9)   # data units per point
        self.char_w, self.h = 0.58 * fontsize * per_pt, 1.25 * fontsize * per_pt
        self.nodes = np.array(list(pos.values()), dtype=float)
        self.placed = np.empty((0, 2))             # the discs of every label placed so far

    def _discs(self, x, y, angle, text) -> np.ndarray:
        # A label as a row of discs of diameter h along its baseline: cheap rotated overlap.
        half = max(len(text) * self.char_w - self.h, 0.0) / 2
        n = max(int(2 * half / (self.h / 2)) + 1, 2)
        c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        d = np.linspace(-half, half, n)
        return np.stack([x + c * d, y + s * d], axis=1)

    @staticmethod
    def _close(discs: np.ndarray, points: np.ndarray, limit: float) -> int:
        """Pairs (disc, point) nearer than `limit`."""
        if not len(points):
            return 0
        gap = discs[:, None, :] - points[None, :, :]
        return int((np.hypot(gap[..., 0], gap[..., 1]) < limit).sum())

    def _hits(self, discs: np.ndarray) -> int:
        return self._close(discs, self.nodes, _R + self.h / 2) + self._close(discs, self.placed, self.h)

    def place(self, a, b, rad, text, t0):
        best = None
        for dt in (0.0, -0.08, 0.08, -0.16, 0.16, -0.24, 0.24):
            x, y, angle = _bezier(a, b, rad, t0 + dt)
            discs = self._discs(x, y, angle, text)
            hits = self._hits(discs)
            if best is None or hits < best[0]:
                best = (hits, x, y, angle, discs)
            if hits == 0:
                break
        self.placed = np.concatenate([self.placed, best[4]])
        return best[1:4]


def _draw(ax: Axes, cell: CellGenotype, title: str | None, reduction: bool) -> None:
    cell.validate(space=None, name="reduction cell" if reduction else "normal cell")
    pos = _layout(cell)
    w, h = _extent(cell)
    x0 = pos[0][0] - 0.8
    ax.set_xlim(x0, x0 + w)
    ax.set_ylim(-h / 2, h / 2)
    ax.set_aspect("equal")
    ax.axis("off")
    kinds = {0: "in", 1: "in", -1: "out", **{j: "mid" for j in range(2, 2 + len(cell.nodes))}}
    names = {0: r"$c_{k-2}$", 1: r"$c_{k-1}$", -1: r"$c_{k}$"}
    for key, kind in kinds.items():
        _node(ax, pos[key], names.get(key, str(key - 2)), kind)

    # Group the ops of each edge: they share endpoints and must be fanned out.
    edges: dict[tuple[int, int], list[str]] = {}
    for inp, j, op in cell.edges():
        edges.setdefault((inp, j), []).append(op)
    labels = _Labels(ax, pos, _FONT)
    # Node-to-node arcs first: they have the least room to move their labels.
    for (inp, j), ops in sorted(edges.items(), key=lambda e: e[0][0] < 2):
        a, b = pos[inp], pos[j]
        base = 0.0
        if inp >= 2 and _blocked(a, b, pos, {inp, j}):
            # Negative rad bulges upwards; growing with the span, arcs leaving one node
            # part at different angles instead of running on top of each other.
            base = -(0.12 + 0.09 * (j - inp))
        n = len(ops)
        for k, op in enumerate(ops):
            # An arc must keep clear of the nodes it jumps over, so its fan opens outwards
            # only; a straight edge fans out to both sides.
            rad = base - k * _FAN * 0.6 if base else (k - (n - 1) / 2) * _FAN
            color = OP_COLORS.get(op, _FALLBACK)
            _arrow(ax, a, b, (kinds[inp], "mid"), rad, color, labels.per_pt, lw=1.5, zorder=2,
                   arrowstyle="-|>,head_length=6,head_width=3")
            x, y, angle = labels.place(a, b, rad, op, 0.5 if inp >= 2 else 0.6)
            ax.text(x, y, op, ha="center", va="center", fontsize=_FONT, color=color, zorder=5,
                    rotation=angle, rotation_mode="anchor",
                    bbox=dict(boxstyle="round,pad=0.12", facecolor="white", edgecolor="none",
                              alpha=0.85))

    for j in cell.concat:
        a, b = pos[j], pos[-1]
        rad = 0.3 if _blocked(a, b, pos, {j, -1}) else 0.0      # below the line of nodes
        _arrow(ax, a, b, ("mid", "out"), rad, "#b8860b", labels.per_pt, lw=1.0, ls="--", zorder=1,
               arrowstyle="-|>,head_length=5,head_width=2.5")
    if title is None:
        kind = "reduction cell" if reduction else "normal cell"
        title = f"{kind}: {cell.num_edges} edges, {cell.num_ops} ops"
    ax.set_title(title, fontsize=11)


def _extent(cell: CellGenotype) -> tuple[float, float]:
    """Width and height (data units) of the drawing, arcs above and below included."""
    return (len(cell.nodes) + 1) * _COL + 1.6, 2 * _H + 1.6


def save_figure(fig: Figure, path) -> str:
    """Render to a temp file with the same extension (it picks the format), then rename."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in _FORMATS:
        raise ValueError(f"cannot tell the picture format of {path!r}: use a .png, .pdf or .svg name")
    with atomic_path(path, suffix=ext) as tmp:
        FigureCanvasAgg(fig)
        fig.savefig(tmp, dpi=150, bbox_inches="tight", facecolor="white")
    return path


_SCALE = 0.75                   # inches per data unit: keeps fonts in proportion to the graph


def plot_cell(cell: CellGenotype, path_or_ax, title: str | None = None, reduction: bool = False):
    """Draw one cell into an existing Axes (returned) or into a new file (path returned)."""
    if isinstance(path_or_ax, Axes):
        _draw(path_or_ax, cell, title, reduction)
        return path_or_ax
    w, h = _extent(cell)
    fig = Figure(figsize=(w * _SCALE, h * _SCALE))
    _draw(fig.add_subplot(1, 1, 1), cell, title, reduction)
    return save_figure(fig, path_or_ax)


def genotype_figure(genotype: Genotype, title: str | None = None) -> Figure:
    """Normal and reduction cells side by side in one (unsaved) figure."""
    if not isinstance(genotype, Genotype):
        raise GenotypeError(f"plot_genotype needs a Genotype, got {type(genotype).__name__}")
    (wn, hn), (wr, hr) = _extent(genotype.normal), _extent(genotype.reduce)
    h = max(hn, hr)
    fig = Figure(figsize=((wn + wr) * _SCALE, h * _SCALE + (0.4 if title else 0.0)))
    axes = fig.subplots(1, 2, gridspec_kw={"width_ratios": [wn, wr]})
    _draw(axes[0], genotype.normal, None, False)
    _draw(axes[1], genotype.reduce, None, True)
    if title:
        fig.suptitle(title, fontsize=13)
    return fig


def plot_genotype(genotype: Genotype, path, title: str | None = None) -> str:
    """Normal and reduction cells side by side in one picture (format from the extension)."""
    return save_figure(genotype_figure(genotype, title), path)
