import os

import pytest
from matplotlib.figure import Figure

from entrannas.genotype import BUILTINS, CellGenotype, Genotype, GenotypeError
from entrannas.plot import plot_cell, plot_genotype

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Node 4 has three inputs; edge 0 -> 3 carries two ops; node 5 takes every possible input.
DST_CELL = CellGenotype((
    (("sep_conv_3x3", 0), ("skip_connect", 1)),
    (("sep_conv_3x3", 0), ("dil_conv_3x3", 0), ("max_pool_3x3", 2)),
    (("avg_pool_3x3", 1), ("skip_connect", 2), ("sep_conv_5x5", 3)),
    (("sep_conv_5x5", 0), ("dil_conv_5x5", 1), ("skip_connect", 2), ("sep_conv_3x3", 3),
     ("max_pool_3x3", 4), ("avg_pool_3x3", 4)),
))


def only_file(folder, name):
    assert os.listdir(folder) == [name], "a temp file was left behind"
    return (folder / name).read_bytes()


@pytest.mark.parametrize("name", ["DARTS_V2", "PC_DARTS", "PDARTS"])
def test_plot_builtins_png(tmp_path, name):
    out = plot_genotype(BUILTINS[name], tmp_path / "cells.png", title=name)
    assert out == str(tmp_path / "cells.png")
    data = only_file(tmp_path, "cells.png")
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_plot_dst_cell_and_genotype(tmp_path):
    plot_cell(DST_CELL, tmp_path / "normal.png")
    assert only_file(tmp_path, "normal.png").startswith(PNG_MAGIC)
    g = Genotype(DST_CELL, BUILTINS["DARTS_V2"].reduce).validate()
    plot_genotype(g, tmp_path / "g.svg")
    assert b"<svg" in (tmp_path / "g.svg").read_bytes()
    plot_genotype(g, tmp_path / "g.pdf")
    assert (tmp_path / "g.pdf").read_bytes().startswith(b"%PDF")
    assert sorted(os.listdir(tmp_path)) == ["g.pdf", "g.svg", "normal.png"]


def test_plot_dense_extended_cell(tmp_path):
    # Every possible edge with two ops: the worst case a DST search can produce.
    ops = ["conv_1x7_7x1", "sep_conv_5x5"]
    cell = CellGenotype(tuple(tuple((op, i) for i in range(j) for op in ops) for j in range(2, 6)))
    Genotype(cell, cell, "extended").validate()
    plot_cell(cell, tmp_path / "dense.png", title="dense", reduction=True)
    assert only_file(tmp_path, "dense.png").startswith(PNG_MAGIC)


def test_plot_cell_into_axes():
    fig = Figure()
    ax = fig.add_subplot(1, 1, 1)
    assert plot_cell(BUILTINS["DARTS_V2"].normal, ax, title="given axes") is ax
    assert ax.get_title() == "given axes" and len(ax.patches) > 8


def test_plot_errors(tmp_path):
    with pytest.raises(ValueError, match=r"\.png"):
        plot_genotype(BUILTINS["DARTS_V2"], tmp_path / "cells.bmpx")
    bad = CellGenotype(((("sep_conv_3x3", 0),), (("sep_conv_3x3", 7),),
                        (("sep_conv_3x3", 0),), (("sep_conv_3x3", 0),)))
    with pytest.raises(GenotypeError, match="out of range"):
        plot_cell(bad, tmp_path / "bad.png")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("cell", [BUILTINS["DARTS_V2"].normal, DST_CELL], ids=["darts_v2", "dst"])
def test_every_arrow_starts_and_ends_at_the_edge_of_its_nodes(cell):
    """Arrows are cut at the nodes by computed shrinks (not by clipping against the node
    patches): each must stop just outside its two nodes, neither inside them nor short."""
    import math

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.patches import FancyArrowPatch
    from matplotlib.path import Path

    from entrannas.plot import _BOX, _R, _layout

    fig = Figure(figsize=(8, 4))
    ax = fig.add_subplot(1, 1, 1)
    FigureCanvasAgg(fig)
    plot_cell(cell, ax)
    fig.canvas.draw()
    (x0, _), (x1, _) = ax.transData.transform([(0, 0), (1, 0)])
    pt = fig.dpi / 72 / (x1 - x0)  # data units per point
    pos = _layout(cell)
    w, h, pad = _BOX

    def gap(key, p):  # distance from the node's edge, negative inside it
        dx, dy = p[0] - pos[key][0], p[1] - pos[key][1]
        if key >= 2:
            return math.hypot(dx, dy) - _R
        ox, oy = abs(dx) - (w / 2 + pad), abs(dy) - (h / 2 + pad)
        return math.hypot(max(ox, 0), max(oy, 0)) if max(ox, oy) > 0 else max(ox, oy)

    arrows = [p for p in ax.patches if isinstance(p, FancyArrowPatch)]
    assert len(arrows) == cell.num_ops + len(cell.concat)
    for arrow in arrows:
        path = arrow.get_path()
        moves = [i for i, c in enumerate(path.codes) if c == Path.MOVETO]
        shaft = path.vertices[:moves[1]]  # then the head, drawn from the tip
        # The tip stops a line width further out than the tail: matplotlib pulls a "-|>" head
        # back so its stroked point ends where the path would.
        for end, slack in ((shaft[0], 0), (shaft[-1], arrow.get_linewidth())):
            key = min(pos, key=lambda k: math.dist(pos[k], end))
            assert 0.5 * pt < gap(key, end) < (3 + slack) * pt, (key, gap(key, end) / pt)
