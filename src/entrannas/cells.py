"""Search cells: the Engine-cell (whole DAG, mixed ops) and the Transit-cell (only the derived
cell of the current iteration), paper section 2.2, with feature sharing (eq. 6) and the
bottleneck (section 2.5).

One cell class holds every candidate op, because the derived architecture a Transit-cell runs
changes from step to step and because the child-net (Table 1) runs Engine-cells as
Transit-cells. `EngineCell` and `TransitCell` differ only in what `forward` does.

Op instances live in "units": one unit per source node with feature sharing (weights
w_k^(i), eq. 6), one unit per edge without it (weights w_k^(i,j), eq. 1).

PC-DARTS (the Table 2 baseline) adds two things, kept apart from the above: partial-channel
connections (`partial_channels` k > 1: the ops see the first 1/k of a source's channels, the
rest bypass them, downsampled on strided edges, and the edge's output is channel-shuffled in
k groups; `_partial` and `_join`) and per-edge weights (`edge_weight`, computed by the
super-net from its edge betas, multiplying each edge's output in an Engine-cell).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .arch import EDGES, NUM_NODES, Selection, edge_index
from .layers import channel_shuffle
from .cpuconv import BatchNorm2d, Conv2d, MaxPool2d
from .ops import POOLS, FactorizedReduce, ReLUConvBN, build_op

__all__ = ["SearchCell", "EngineCell", "TransitCell", "ConvBN1x1"]


class ConvBN1x1(nn.Sequential):
    """The bottleneck's projections: 1x1 conv + BN, linear so no sign information is lost
    before the ops (every parametric op starts with its own ReLU)."""

    def __init__(self, C_in: int, C_out: int):
        super().__init__(Conv2d(C_in, C_out, 1, bias=False), BatchNorm2d(C_out, affine=False))


def init_search_cell(cell: nn.Module, op_names, C_prev_prev: int, C_prev: int, C: int,
                     reduction: bool, reduction_prev: bool, feature_sharing: bool,
                     bottleneck: int, partial_channels: int) -> None:
    """What every search cell (SearchCell, opbank.BankedCell) holds: its switches, checked,
    and the two preprocessing layers of its inputs."""
    if C % bottleneck:
            raise ValueError(f"bottleneck ratio {bottleneck} must divide the cell width {C}")
    if partial_channels < 1 or (C // bottleneck) % partial_channels:
        raise ValueError(f"partial_channels {partial_channels} must divide the ops' width "
                         f"{C // bottleneck} (raise C or lower partial_channels)")
    cell.op_names = tuple(op_names)
    cell.reduction = reduction
    cell.feature_sharing = feature_sharing
    cell.bottleneck = bottleneck
    cell.partial_channels = partial_channels
    cell.multiplier = NUM_NODES
    # Search cells use affine-free BatchNorm, as DARTS does.
    cell.preprocess0 = (FactorizedReduce(C_prev_prev, C, affine=False) if reduction_prev
                        else ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False))
    cell.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)


class SearchCell(nn.Module):
    def __init__(self, op_names: tuple[str, ...], C_prev_prev: int, C_prev: int, C: int,
                 reduction: bool, reduction_prev: bool, feature_sharing: bool = False,
                 bottleneck: int = 1, partial_channels: int = 1):
        super().__init__()
        init_search_cell(self, op_names, C_prev_prev, C_prev, C, reduction, reduction_prev,
                         feature_sharing, bottleneck, partial_channels)
        C_op = C // bottleneck
        if bottleneck > 1:
            self.squeeze = nn.ModuleList(ConvBN1x1(C, C_op) for _ in range(1 + NUM_NODES))
            self.expand = nn.ModuleList(ConvBN1x1(C_op, C) for _ in range(NUM_NODES))
        if partial_channels > 1:
            # The bypassed channels of a strided edge are downsampled as the ops' output is
            # (PC-DARTS uses a 2x2 max pool; ceil_mode matches the ops' size on odd maps too).
            self.bypass_pool = MaxPool2d(2, 2, ceil_mode=True)
            C_op //= partial_channels
        sources = range(1 + NUM_NODES) if feature_sharing else [i for i, _ in EDGES]
        self.ops = nn.ModuleList(
            nn.ModuleList(build_op(name, C_op, 2 if reduction and i < 2 else 1, affine=False)
                          for name in self.op_names)
            for i in sources)
        # DARTS normalises pooling outputs before mixing them with BN'd conv outputs. That only
        # matters for the weighted sum: a Transit-cell (like the target-net) runs plain pools.
        self.pool_ops = tuple(k for k, name in enumerate(self.op_names) if name in POOLS)
        self.mix_norm = nn.ModuleDict({
            f"{u}_{k}": BatchNorm2d(C_op, affine=False)
            for u in range(len(sources)) for k in self.pool_ops})
        self._op_index: dict[tuple, torch.Tensor] = {}  # op lists as device index tensors

    def _index(self, ks: list[int], device: torch.device) -> torch.Tensor:
        """`ks` as an index tensor on `device`, built once per op list: a step creates nothing
        on the host to copy to the device (a copy per unit and step otherwise)."""
        key = (tuple(ks), str(device))
        if key not in self._op_index:
            self._op_index[key] = torch.tensor(ks, device=device)
        return self._op_index[key]

    # -- shared plumbing -------------------------------------------------------------------
    def _unit(self, i: int, j: int) -> int:
        return i if self.feature_sharing else edge_index(i, j)

    def _inputs(self, s0, s1):
        return [self.preprocess0(s0), self.preprocess1(s1)]

    def _source(self, states, squeezed, i):
        """Node i as its ops see it: squeezed by the bottleneck once, then reused."""
        if self.bottleneck == 1:
            return states[i]
        if squeezed[i] is None:
            squeezed[i] = self.squeeze[i](states[i])
        return squeezed[i]

    def _partial(self, x):
        """The channels a source's ops see: all, or the first 1/k with partial channels."""
        k = self.partial_channels
        return x if k == 1 else x[:, : x.shape[1] // k]

    def _join(self, y, x, i):
        """An edge's output from its ops' output y on source x = node i: y itself, or with
        partial channels y followed by x's bypassed channels, shuffled in k groups."""
        k = self.partial_channels
        if k == 1:
            return y
        rest = x[:, x.shape[1] // k:]
        if self.reduction and i < 2:
            rest = self.bypass_pool(rest)
        return channel_shuffle(torch.cat([y, rest], dim=1), k)

    def _finish(self, states, squeezed, acc, j):
        states.append(self.expand[j - 2](acc) if self.bottleneck > 1 else acc)
        squeezed.append(None)

    # -- the two modes -----------------------------------------------------------------------
    def forward_engine(self, s0, s1, coeff: torch.Tensor, active: list[list[int]],
                       edge_weight: torch.Tensor | None = None):
        """Engine-cell: x_j = sum_{i<j} sum_k coeff_k^(i,j) o_k(x_i) (eqs. 1 and 6).

        coeff: [14, K] (p for EnTranNAS/DARTS, q_hat for DST); active[e]: the op indices of
        edge e with a non-zero coefficient (never `none`, whose output is zero). Ops off that
        list are not computed at all: their term is exactly zero, and so is its gradient.
        edge_weight: [14] or None; PC-DARTS' normalised edge weights, multiplying each
        edge's output (after the partial-channel join).
        """
        states, squeezed = self._inputs(s0, s1), [None, None]
        # Per unit, the op list it computes and the stacked features [n_ops, B, C, H, W].
        if self.feature_sharing:
            want = [sorted({k for j in range(max(i + 1, 2), 2 + NUM_NODES)
                            for k in active[edge_index(i, j)]}) for i in range(1 + NUM_NODES)]
        features: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for j in range(2, 2 + NUM_NODES):
            acc = None
            for i in range(j):
                e = edge_index(i, j)
                if not active[e]:
                    continue
                u = self._unit(i, j)
                if u not in features:
                    ks = want[i] if self.feature_sharing else active[e]
                    x = self._partial(self._source(states, squeezed, i))
                    stacked = torch.stack([self._mixed_op(u, k, x) for k in ks])
                    features[u] = (self._index(ks, coeff.device), stacked)
                ks, stacked = features[u]
                # One contraction over the stacked ops instead of a chain of scalar
                # multiply-adds; ops of the unit inactive on this edge get coefficient 0.
                # (Under bf16 autocast the op outputs are bfloat16; tensordot is not an
                # autocast op, so the coefficients follow the features' dtype.)
                term = torch.tensordot(coeff[e].index_select(0, ks).to(stacked.dtype), stacked, dims=1)
                term = self._join(term, self._source(states, squeezed, i), i)
                if edge_weight is not None:
                    term = edge_weight[e].to(term.dtype) * term
                acc = term if acc is None else acc + term
            self._finish(states, squeezed, acc, j)
        return torch.cat(states[2:], dim=1)

    def _mixed_op(self, u, k, x):
        y = self.ops[u][k](x)
        return self.mix_norm[f"{u}_{k}"](y) if k in self.pool_ops else y

    def forward_transit(self, s0, s1, selection: Selection):
        """Transit-cell: x_j = sum_{(i,k) in S_j} o_k(x_i), unweighted (eq. 6).

        Computes exactly the derived cell: each selected (source, op) once when features are
        shared, each selected (edge, op) once otherwise, and nothing else. With partial
        channels an edge's ops are summed first and joined with its bypass once.
        """
        states, squeezed = self._inputs(s0, s1), [None, None]
        cache: dict[tuple[int, int], torch.Tensor] = {}
        for m, pairs in enumerate(selection):
            j = m + 2
            acc = None
            edges: dict[int, torch.Tensor] = {}  # partial channels: input i -> sum of its ops
            for i, k in pairs:
                key = (self._unit(i, j), k)
                if key not in cache:
                    cache[key] = self.ops[key[0]][k](self._partial(self._source(states, squeezed, i)))
                if self.partial_channels > 1:
                    edges[i] = cache[key] if i not in edges else edges[i] + cache[key]
                else:
                    acc = cache[key] if acc is None else acc + cache[key]
            for i, y in edges.items():
                y = self._join(y, self._source(states, squeezed, i), i)
                acc = y if acc is None else acc + y
            self._finish(states, squeezed, acc, j)
        return torch.cat(states[2:], dim=1)


class EngineCell(SearchCell):
    """Carries the whole DAG with mixed ops and drives the architecture search."""

    def forward(self, s0, s1, coeff, active, edge_weight=None):
        return self.forward_engine(s0, s1, coeff, active, edge_weight)


class TransitCell(SearchCell):
    """Runs only the architecture derived from the Engine-cell of its type."""

    def forward(self, s0, s1, selection):
        return self.forward_transit(s0, s1, selection)
