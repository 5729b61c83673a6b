"""Plans: which op instances a search cell runs at each of its ready points, and how their
outputs reach the nodes. `opbank.py` runs a plan; this module builds it, once per derived
architecture, and caches it.

A cell has four ready points: sources 0 and 1 (the cell inputs), then nodes 2, 3 and 4 as they
complete. Each op type's weights are stored stacked, one row per op instance ("unit": a source
node with feature sharing, an edge without), in the order sources become ready, so the rows
one call needs are usually a contiguous range (`Rows`: a view), else a gather. At each point
an Engine-cell mixes every computed block into all later nodes with one product of its
coefficients (`Mix`); a Transit-cell adds the selected blocks unweighted (or, on a dense
point, sums them with one 0/1 product).
"""
from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .arch import EDGES, NUM_NODES, edge_index

__all__ = ["POINT_SOURCES", "bank_rows", "segments", "point_of", "Rows", "Group", "Mix", "Point", "Plan",
           "get_plan", "plans_in_use", "plan_cache_info", "clear_plan_cache"]

POINT_SOURCES = ((0, 1), (2,), (3,), (4,))  # sources whose ops run at each ready point


def bank_rows(feature_sharing: bool) -> list[tuple[int, int | None]]:
    """The units of a cell in bank-row order: (source, target) per row; target is None with
    feature sharing (a unit is a source node, eq. 6), else the edge's node (eq. 1). Rows are
    ordered by the point their source becomes ready, so each point's rows are contiguous."""
    if feature_sharing:
        return [(i, None) for i in range(1 + NUM_NODES)]
    return sorted(EDGES, key=lambda e: (max(e[0], 1), e[1], e[0]))


# -- rows of a stacked tensor ------------------------------------------------------------------
# A bank stores each weight once per ready point ("segment"), already in the layout of the
# grouped convolution that point runs: [rows * C_out, C_in / groups, kh, kw]. An Engine-cell
# uses a segment whole (no view, no copy); a Transit-cell takes the rows it selected.
def segments(feature_sharing: bool) -> list[int]:
    """Rows per ready point of an op bank."""
    sizes = [0] * len(POINT_SOURCES)
    for i, _ in bank_rows(feature_sharing):
        sizes[point_of(i)] += 1
    return sizes


def point_of(source: int) -> int:
    return max(source - 1, 0)


class Rows:
    """Which rows of one segment a call uses: all of them, a range (a view) or a gather."""

    def __init__(self, segment: int, rows: tuple[int, ...], size: int, device: torch.device):
        self.segment, self.rows, self.count, self.device = segment, rows, len(rows), device
        self.start = rows[0]
        self.full = rows == tuple(range(size))
        self.contiguous = rows == tuple(range(rows[0], rows[0] + len(rows)))
        self._index: dict[int, torch.Tensor] = {}

    def take(self, t: torch.Tensor, width: int) -> torch.Tensor:
        """The rows of a segment tensor whose dim 0 holds `width` entries per row."""
        if self.full:
            return t
        if self.contiguous:
            return t.narrow(0, self.start * width, self.count * width)
        return t.index_select(0, self.index(width))

    def index(self, width: int) -> torch.Tensor:
        if width not in self._index:  # built once per plan, never per step
            self._index[width] = torch.tensor([r * width + c for r in self.rows for c in range(width)],
                                              device=self.device)
        return self._index[width]


# -- plans: what runs at each ready point ------------------------------------------------------
@dataclass
class Group:
    op: int  # index into the cell's op names
    rows: Rows  # bank rows
    inputs: tuple[int, ...]  # for each row, the position of its source among the point's inputs


@dataclass
class Mix:
    """Mixing of a point's blocks into its target nodes as one product, P = W @ Z: the
    Engine-cell's weighted sum (eqs. 1, 6), or a dense Transit point's unweighted sum."""
    targets: tuple[int, ...]
    coeff_index: torch.Tensor | None  # Engine: [len(targets), blocks] into the padded flat coefficients
    ones: torch.Tensor | None = None  # Transit: [len(targets), blocks], 1 where a block feeds a node


@dataclass
class Point:
    sources: tuple[int, ...]  # nodes feeding this point's ops, in input order
    squeeze: Rows  # their rows in the bottleneck's squeeze bank
    groups: list[Group]
    mixes: list[Mix]  # Engine; a dense Transit point (see _transit_sum)
    adds: dict[int, list[tuple[int, int]]]  # Transit: node -> [(group, block within group)]
    # Partial channels (PC-DARTS): the bypassed channels of each edge's source join its node.
    rest_targets: tuple[int, ...] = ()  # Engine: nodes receiving sum_s w(s, j) * rest(s)
    rest_index: torch.Tensor | None = None  # [targets, sources] into the padded edge weights
    rest_adds: dict[int, list[int]] | None = None  # Transit: node -> source positions, once each


@dataclass
class Plan:
    points: list[Point | None]


_PLANS: OrderedDict = OrderedDict()
_PLAN_LIMIT = 1024  # plans are tiny; the bound keeps an ever-changing selection from growing it
_stats = {"hits": 0, "misses": 0}
_holders: list[list] = []  # open plans_in_use() lists


@contextmanager
def plans_in_use():
    """A list of the plans fetched inside the block. A CUDA graph captured in it must hold
    them: its kernels read the plans' index tensors by address, and a plan evicted from the
    cache (or the cache cleared) would free them for other tensors while replays still read
    them (graphstep.GraphCache keeps this list with the graph)."""
    held: list = []
    _holders.append(held)
    try:
        yield held
    finally:
        _holders.remove(held)


def plan_cache_info() -> dict:
    return {**_stats, "size": len(_PLANS)}


def clear_plan_cache() -> None:
    _PLANS.clear()
    _stats.update(hits=0, misses=0)


def get_plan(sharing: bool, n_ops: int, engine: bool, pairs: tuple, device: torch.device,
             edges: tuple | None = None) -> Plan:
    """The cached plan for computing `pairs` ((node j, source i, op k) triples) in a cell of
    this layout. `edges`: with partial channels, the (i, j) edges whose bypass joins node j."""
    key = (sharing, n_ops, engine, pairs, edges, str(device))
    plan = _PLANS.get(key)
    if torch.compiler.is_compiling():
        # While a cell is traced for torch.compile, neither the counters nor the cache change:
        # dynamo would guard on them and trace again on the next call (the plan is baked in).
        return plan if plan is not None else _build_plan(sharing, n_ops, engine, pairs, device, edges)
    if plan is not None:
        _stats["hits"] += 1
        _PLANS.move_to_end(key)
    else:
        _stats["misses"] += 1
        plan = _build_plan(sharing, n_ops, engine, pairs, device, edges)
        _PLANS[key] = plan
        if len(_PLANS) > _PLAN_LIMIT:
            _PLANS.popitem(last=False)
    for held in _holders:
        held.append(plan)
    return plan


def _build_plan(sharing, n_ops, engine, pairs, device, edges=None) -> Plan:
    units = bank_rows(sharing)
    sizes = segments(sharing)
    # A unit's (ready point, row within that point's segment).
    where, seen = {}, [0] * len(sizes)
    for i, j in units:
        p = point_of(i)
        where[(i, j)] = (p, seen[p])
        seen[p] += 1
    place = (lambda i, j: where[(i, None)]) if sharing else (lambda i, j: where[(i, j)])
    pad = len(EDGES) * n_ops  # index of the zero appended to the flat coefficients
    points: list[Point | None] = []
    for p, sources in enumerate(POINT_SOURCES):
        mine = [(j, i, k) for (j, i, k) in pairs if i in sources]
        if not mine:
            points.append(None)
            continue
        used = tuple(s for s in sources if any(i == s for _, i, _ in mine))
        joins = sorted({(i, j) for i, j in edges if i in used}) if edges is not None else []
        # (op, row) -> (source, [target nodes]); every block is computed once.
        blocks: dict[tuple[int, int], tuple[int, list[int]]] = {}
        for j, i, k in mine:
            blocks.setdefault((k, place(i, j)[1]), (i, []))[1].append(j)
        by_op: dict[int, list[int]] = {}
        for (k, r) in sorted(blocks):
            by_op.setdefault(k, []).append(r)
        groups = [Group(k, Rows(p, tuple(rows), sizes[p], device),
                        tuple(used.index(blocks[(k, r)][0]) for r in rows))
                  for k, rows in sorted(by_op.items())]
        squeeze = Rows(p, tuple(s - POINT_SOURCES[p][0] for s in used), len(sources), device)
        point = Point(used, squeeze, groups, [], {})
        if engine:
            _engine_mixes(point, blocks, n_ops, pad, device)
        else:
            for gi, g in enumerate(groups):
                for b, r in enumerate(g.rows.rows):
                    for j in blocks[(g.op, r)][1]:
                        point.adds.setdefault(j, []).append((gi, b))
            _transit_sum(point, blocks, device)
        if joins and engine:
            point.rest_targets = tuple(sorted({j for _, j in joins}))
            point.rest_index = torch.tensor([[edge_index(s, j) if (s, j) in joins else len(EDGES)
                                              for s in used] for j in point.rest_targets], device=device)
        elif joins:
            point.rest_adds = {}
            for i, j in joins:
                point.rest_adds.setdefault(j, []).append(used.index(i))
        points.append(point)
    return Plan(points)


def _engine_mixes(point: Point, blocks, n_ops, pad, device) -> None:
    """One product for the whole point: W[j, block] is the block's coefficient on the edge into
    node j, or the padded zero where the block does not feed j (without feature sharing each
    block feeds one node; the zeros cost less than splitting the product per node, whose slices
    would each need a full-size zero gradient)."""
    order = [(g.op, r) for g in point.groups for r in g.rows.rows]  # the groups' outputs, in order
    targets_of = {b: set(blocks[b][1]) for b in order}
    targets = sorted(set().union(*targets_of.values()))
    index = torch.tensor([[edge_index(blocks[b][0], j) * n_ops + b[0] if j in targets_of[b] else pad
                           for b in order] for j in targets], device=device)
    point.mixes.append(Mix(tuple(targets), index))


def _transit_sum(point: Point, blocks, device) -> None:
    """A Transit point whose blocks feed many nodes sums them as one product, as the Engine-cell
    mixes them, with a 0/1 matrix for coefficients. Adding blocks one at a time reads and
    writes a full map per add (3 per add), and in the backward autograd sums the gradients of a
    block that feeds several nodes the same way; the product reads each block once and writes
    each node once, forward (after one concatenation) and backward. In map traffic the adds
    cost about 3 * (2 * adds - targets - blocks), the product 4 * blocks + 2 * targets: the
    product wins on the dense cells of EnTranNAS-DST (a point with 14 blocks into 4 nodes: 56
    adds), the adds on a top-2 cell's sparse points."""
    n_adds = sum(len(v) for v in point.adds.values())
    n_blocks = len(blocks)
    targets = sorted(point.adds)
    if 7 * n_blocks + 5 * len(targets) >= 6 * n_adds:
        return
    order = [(g.op, r) for g in point.groups for r in g.rows.rows]  # the groups' outputs, in order
    ones = torch.tensor([[1.0 if j in blocks[b][1] else 0.0 for b in order] for j in targets], device=device)
    point.mixes.append(Mix(tuple(targets), None, ones))
    point.adds = {}
