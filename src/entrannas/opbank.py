"""Op banks: how a search cell runs its candidate ops in few, large calls.

`cells.py` says *what* an Engine-cell and a Transit-cell compute (one call per op); this module
computes the same thing batched. Every candidate op is per-channel in its grouping (depthwise
convolutions, 1x1 convolutions per op instance, affine-free BatchNorm), so the instances of one
op type applied to sources that are ready at the same point of a cell run as one call on the
channel-concatenated sources:

* depthwise convolutions as one depthwise call over all rows' channels;
* the per-instance 1x1 (and kxk) convolutions as one grouped convolution, a group per instance;
* affine-free BatchNorm as one call, since per-channel statistics do not change when channels
  are concatenated.

Each op type's weights are stored stacked, one row per op instance ("unit": a source node with
feature sharing, an edge without), in the order sources become ready, so the rows one call
needs are usually a contiguous range (a view); a Transit-cell's selection gathers its rows
otherwise. Gradients land on the rows that were used; the other rows get zeros (see
docs/design.md: SGD's momentum and weight decay then act on them, as in the DARTS-family code).

A cell has four ready points: sources 0 and 1 (the cell inputs), then nodes 2, 3 and 4 as they
complete. At each point the Engine-cell mixes every computed block (op output of one row) into
all later nodes with one matrix product of the coefficients (eqs. 1 and 6); a Transit-cell adds
the selected blocks unweighted. What runs at each point is a `Plan` (opplan.py), built once
per derived architecture and cached.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import cpuconv
from . import distributed as ddp
from .arch import EDGES, NUM_NODES, Selection, edge_index
from .layers import channel_shuffle, offset_pair
from .cells import init_search_cell
from .ops import FactorizedReduce
from .opplan import POINT_SOURCES, Plan, Point, Rows, bank_rows, get_plan, point_of, segments

__all__ = ["BankedCell"]


# -- BatchNorm on stacked statistics ------------------------------------------------------------
def bank_batch_norm(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, rows: Rows, width: int,
                    training: bool, momentum: float = 0.1, eps: float = 1e-5,
                    keep_output: bool = False) -> torch.Tensor:
    """Affine-free BatchNorm of the rows' channels with the rows' running statistics (updated in
    place for a range, written back for a gather). Under torchrun the statistics cover the
    global batch, as SyncBatchNorm2d's do. `keep_output`: the backward reads the output, which
    the caller keeps anyway (cpuconv.batch_norm)."""
    rm, rv = rows.take(mean, width), rows.take(var, width)
    # On a CPU, BatchNorm of a channels_last map with few channels is several times slower
    # than of the same map in NCHW (its kernel vectorises over channels); two copies cost less.
    narrow = x.device.type == "cpu" and x.shape[1] < 16 and _is_channels_last(x)
    if narrow:
        x = x.contiguous()
    if training and ddp.active():
        y = ddp.sync_batch_norm(x, rm, rv, None, None, eps, momentum)
    else:
        y = cpuconv.batch_norm(x, rm, rv, training, momentum, eps, keep_output)
    if narrow:
        y = y.contiguous(memory_format=torch.channels_last)
    if training and not rows.contiguous:
        with torch.no_grad():
            mean.index_copy_(0, rows.index(width), rm)
            var.index_copy_(0, rows.index(width), rv)
    return y


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and x.shape[1] > 1 and not x.is_contiguous() and \
        x.is_contiguous(memory_format=torch.channels_last)


def _like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """`t` in `ref`'s memory format (a channels_last run keeps every map channels_last)."""
    return t.contiguous(memory_format=torch.channels_last) if _is_channels_last(ref) else t


def _init_uniform(t: torch.Tensor, fan_in: int) -> torch.Tensor:
    # nn.Conv2d's default (kaiming_uniform with a=sqrt(5)) is U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        return t.uniform_(-bound, bound)


class _Segmented(nn.Module):
    """Weights and BatchNorm statistics stacked per segment (ready point)."""

    # nn.BatchNorm2d's default; bnstats.recalibrate_batchnorm sets it to 1 while it measures.
    bn_momentum = 0.1

    def __init__(self, sizes: list[int], C: int):
        super().__init__()
        self.sizes, self.C = list(sizes), C

    def _weight(self, name: str, C_out: int, C_in: int, kh: int, kw: int, sizes=None) -> None:
        for s, n in enumerate(sizes or self.sizes):
            if n:
                p = nn.Parameter(torch.empty(n * C_out, C_in, kh, kw))
                self.register_parameter(f"{name}{s}", _init_uniform(p, C_in * kh * kw))

    def _stats(self, name: str, sizes=None) -> None:
        for s, n in enumerate(sizes or self.sizes):
            if n:
                self.register_buffer(f"{name}_mean{s}", torch.zeros(n * self.C))
                self.register_buffer(f"{name}_var{s}", torch.ones(n * self.C))

    def _w(self, name: str, rows: Rows, width: int | None = None) -> torch.Tensor:
        return rows.take(getattr(self, f"{name}{rows.segment}"), width or self.C)

    def _conv(self, name: str, x, rows: Rows, stride=1, padding=0, dilation=1, depthwise=False):
        """One (grouped) convolution over the rows' channel blocks: a group per row, or per
        channel for a depthwise convolution."""
        w = self._w(name, rows)
        groups = w.shape[0] if depthwise else rows.count
        return cpuconv.conv2d(x, w, stride, padding, dilation, groups)

    def _bn(self, name: str, x: torch.Tensor, rows: Rows, keep_output: bool = False) -> torch.Tensor:
        s = rows.segment
        return bank_batch_norm(x, getattr(self, f"{name}_mean{s}"), getattr(self, f"{name}_var{s}"),
                               rows, self.C, self.training, self.bn_momentum, keep_output=keep_output)



class _Bank(_Segmented):
    """One op type's instances over all units of a cell."""

    def needs_relu(self, stride: int) -> bool:
        """Whether the op starts with a ReLU of its input (shared by the ops of one point)."""
        return True


class SepBank(_Bank):
    """sep_conv_kxk: (ReLU, depthwise k, 1x1, BN) twice; the stride is on the first."""

    def __init__(self, sizes, C: int, k: int):
        super().__init__(sizes, C)
        self.pad = k // 2
        for s in ("1", "2"):
            self._weight(f"dw{s}_", C, 1, k, k)
            self._weight(f"pw{s}_", C, C, 1, 1)
            self._stats(f"bn{s}")

    def forward(self, xr, rows: Rows, stride: int, engine: bool):
        h = self._conv("dw1_", xr, rows, stride, self.pad, depthwise=True)
        h = self._bn("bn1", self._conv("pw1_", h, rows), rows)
        h = self._conv("dw2_", torch.relu(h), rows, 1, self.pad, depthwise=True)
        return self._bn("bn2", self._conv("pw2_", h, rows), rows)


class DilBank(_Bank):
    """dil_conv_kxk: ReLU, dilated depthwise k (dilation 2), 1x1, BN."""

    def __init__(self, sizes, C: int, k: int):
        super().__init__(sizes, C)
        self.pad = k - 1
        self._weight("dw", C, 1, k, k)
        self._weight("pw", C, C, 1, 1)
        self._stats("bn")

    def forward(self, xr, rows: Rows, stride: int, engine: bool):
        h = self._conv("dw", xr, rows, stride, self.pad, dilation=2, depthwise=True)
        return self._bn("bn", self._conv("pw", h, rows), rows)


class ConvBank(_Bank):
    """conv_kxk of the extended space: ReLU, kxk convolution, BN."""

    def __init__(self, sizes, C: int, k: int):
        super().__init__(sizes, C)
        self.pad = k // 2
        self._weight("w", C, C, k, k)
        self._stats("bn")

    def forward(self, xr, rows: Rows, stride: int, engine: bool):
        return self._bn("bn", self._conv("w", xr, rows, stride, self.pad), rows)


class FactorizedBank(_Bank):
    """conv_1xk_kx1 of the extended space: ReLU, 1xk, kx1, BN."""

    def __init__(self, sizes, C: int, k: int):
        super().__init__(sizes, C)
        self.k = k
        self._weight("w1_", C, C, 1, k)
        self._weight("w2_", C, C, k, 1)
        self._stats("bn")

    def forward(self, xr, rows: Rows, stride: int, engine: bool):
        h = self._conv("w1_", xr, rows, (1, stride), (0, self.k // 2))
        return self._bn("bn", self._conv("w2_", h, rows, (stride, 1), (self.k // 2, 0)), rows)


class SkipBank(_Bank):
    """skip_connect: identity at stride 1; at stride 2 (a reduction cell's sources 0 and 1)
    DARTS' FactorizedReduce: ReLU, two offset 1x1 convs, BN."""

    def __init__(self, sizes, C: int, reduction: bool):
        super().__init__(sizes, C)
        if reduction and C % 2:
            raise ValueError(f"FactorizedReduce needs an even number of channels, got {C}")
        if reduction:
            # Per row, both branches' C/2 outputs: adjacent groups of one grouped convolution,
            # so the output keeps FactorizedReduce's channel order.
            first = [sizes[0]] + [0] * (len(sizes) - 1)
            self._weight("w", C, C, 1, 1, first)
            self._stats("bn", first)

    def needs_relu(self, stride: int) -> bool:  # only FactorizedReduce starts with a ReLU
        return stride == 2

    def forward(self, x, rows: Rows, stride: int, engine: bool):
        if stride == 1:
            return x
        G = x.shape[1] // self.C
        both = offset_pair(x, 2, G)  # per row: its two samplings, side by side
        y = cpuconv.conv2d(_like(both, x), self._w("w", rows), groups=2 * G)
        return self._bn("bn", y, rows)


class PoolBank(_Bank):
    """max/avg_pool_3x3. An Engine-cell normalises pool outputs before mixing them with BN'd
    conv outputs (DARTS); a Transit-cell runs the plain pool, like the target-net cell."""

    def __init__(self, sizes, C: int, kind: str):
        super().__init__(sizes, C)
        self.kind = kind
        self._stats("bn")

    def needs_relu(self, stride: int) -> bool:
        return False

    def forward(self, x, rows: Rows, stride: int, engine: bool):
        y = cpuconv.pool_3x3(self.kind, x, stride)
        return self._bn("bn", y, rows) if engine else y


def build_bank(name: str, sizes: list[int], C: int, reduction: bool) -> _Bank:
    if name == "skip_connect":
        return SkipBank(sizes, C, reduction)
    if name in ("max_pool_3x3", "avg_pool_3x3"):
        return PoolBank(sizes, C, name[:3])
    k = int(name.rsplit("_", 1)[1][0])
    if name.startswith("sep_conv"):
        return SepBank(sizes, C, k)
    if name.startswith("dil_conv"):
        return DilBank(sizes, C, k)
    if name in ("conv_1x1", "conv_3x3"):
        return ConvBank(sizes, C, k)
    if name.startswith("conv_1x") and name.count("x") == 2:  # conv_1xk_kx1
        return FactorizedBank(sizes, C, int(name.split("_")[1][2:]))
    raise ValueError(f"no op bank for operation {name!r}")


class ProjectionBank(_Segmented):
    """The bottleneck's 1x1 conv + affine-free BN per source (squeeze) or node (expand)."""

    def __init__(self, sizes: list[int], C_in: int, C_out: int):
        super().__init__(sizes, C_out)
        self._weight("w", C_out, C_in, 1, 1)
        self._stats("bn")

    def forward(self, x, rows: Rows, keep_output: bool = False):
        return self._bn("bn", self._conv("w", x, rows), rows, keep_output)

    def each(self, xs: list, rows: Rows, each: list[Rows]):
        """`forward` of the rows' inputs given apart (`each`: one row per input): a convolution
        per input, one BatchNorm of the joined results."""
        return self._bn("bn", torch.cat([self._conv("w", x, r) for x, r in zip(xs, each)], 1), rows)


def _preprocess(layer: nn.Module, s: torch.Tensor, activated: bool) -> torch.Tensor:
    """A cell input's preprocessing (ReLU, 1x1 conv or FactorizedReduce, BN), skipping the ReLU
    when the input is already ReLU'd."""
    if not activated:
        return layer(s)
    # The BatchNorm keeps its output for the backward: the squeeze (or the ReLU of the ops) reads
    # it, and the convolution's output is freed.
    if isinstance(layer, FactorizedReduce):
        return _module_batch_norm(layer.bn, layer.project(s), keep_output=True)
    return _module_batch_norm(layer[2], layer[1](s), keep_output=True)  # ReLUConvBN: ReLU, conv, BN


def _module_batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor, keep_output: bool = False) -> torch.Tensor:
    """An affine-free nn.BatchNorm2d through cpuconv.batch_norm (state updated as the module
    does it)."""
    if bn.affine or not bn.track_running_stats or bn.momentum is None or (bn.training and ddp.active()):
        return bn(x)
    if bn.training:
        bn.num_batches_tracked.add_(1)
    return cpuconv.batch_norm(x, bn.running_mean, bn.running_var, bn.training, bn.momentum, bn.eps,
                              keep_output)


# -- the cell --------------------------------------------------------------------------------
class BankedCell(nn.Module):
    """A search cell whose ops live in banks; computes what cells.SearchCell computes.

    Same constructor as SearchCell; `forward_engine` and `forward_transit` take the same
    arguments and give the same outputs and gradients (tests/test_opbank.py).
    """

    def __init__(self, op_names: tuple[str, ...], C_prev_prev: int, C_prev: int, C: int,
                 reduction: bool, reduction_prev: bool, feature_sharing: bool = False,
                 bottleneck: int = 1, partial_channels: int = 1):
        super().__init__()
        init_search_cell(self, op_names, C_prev_prev, C_prev, C, reduction, reduction_prev,
                         feature_sharing, bottleneck, partial_channels)
        # C_node: a node's width before the bottleneck's expansion; C_op: the ops' width (all of
        # it, or the first 1/k with partial channels).
        self.C, self.C_node = C, C // bottleneck
        self.C_op = self.C_node // partial_channels
        if bottleneck > 1:
            self.squeeze = ProjectionBank([len(s) for s in POINT_SOURCES], C, self.C_node)
            self.expand = ProjectionBank([1] * NUM_NODES, self.C_node, C)
        sizes = segments(feature_sharing)
        self.banks = nn.ModuleDict({name: build_bank(name, sizes, self.C_op, reduction)
                                    for name in self.op_names if name != "none"})
        self._bank_list = [self.banks[n] if n != "none" else None for n in self.op_names]
        self._cache: dict = {}  # small device tensors, each built once
        # The unit (cells.py numbering: source i with sharing, else edge index) of each row.
        self.units: list[list[int]] = [[] for _ in POINT_SOURCES]
        for i, j in bank_rows(feature_sharing):
            self.units[point_of(i)].append(i if feature_sharing else edge_index(i, j))

    # -- the two modes ----------------------------------------------------------------------
    def forward_engine(self, s0, s1, coeff: torch.Tensor, active: list[list[int]],
                       edge_weight: torch.Tensor | None = None, activated: bool = False):
        """Engine-cell (eqs. 1 and 6), batched; see cells.SearchCell.forward_engine. With
        PC-DARTS' edge weights an edge's ops and its bypass are both scaled by its weight.
        `activated`: s0 and s1 are already ReLU'd (the preprocessing's first step)."""
        if self.feature_sharing:
            want = [sorted({k for j in range(max(i + 1, 2), 2 + NUM_NODES) for k in active[edge_index(i, j)]})
                    for i in range(1 + NUM_NODES)]
            pairs = tuple((j, i, k) for j in range(2, 2 + NUM_NODES) for i in range(j) for k in want[i])
        else:
            pairs = tuple((j, i, k) for j in range(2, 2 + NUM_NODES) for i in range(j)
                          for k in active[edge_index(i, j)])
        edges = (tuple((i, j) for (i, j) in EDGES if active[edge_index(i, j)])
                 if self.partial_channels > 1 else None)
        plan = get_plan(self.feature_sharing, len(self.op_names), True, pairs, coeff.device, edges)
        if edge_weight is not None:
            coeff = coeff * edge_weight.unsqueeze(-1)
        flat = F.pad(coeff.reshape(-1), (0, 1))  # a trailing zero for blocks that skip a node
        flat_w = None
        if self.partial_channels > 1:
            w = edge_weight if edge_weight is not None else coeff.new_ones(len(EDGES))
            flat_w = F.pad(w, (0, 1))
        return self._run(s0, s1, plan, flat, flat_w, activated)

    def forward_transit(self, s0, s1, selection: Selection, activated: bool = False):
        """Transit-cell (eq. 6), batched: only the selected (source, op) pairs run, once each."""
        pairs = tuple((m + 2, i, k) for m, node in enumerate(selection) for i, k in node)
        edges = (tuple(sorted({(i, m + 2) for m, node in enumerate(selection) for i, _ in node}))
                 if self.partial_channels > 1 else None)
        plan = get_plan(self.feature_sharing, len(self.op_names), False, pairs, s0.device, edges)
        return self._run(s0, s1, plan, None, None, activated)

    # -- shared machinery -------------------------------------------------------------------
    def _run(self, s0, s1, plan: Plan, flat_coeff, flat_w, activated: bool = False):
        x = [_preprocess(self.preprocess0, s0, activated), _preprocess(self.preprocess1, s1, activated)]
        states = list(x)
        acc: dict[int, torch.Tensor] = {}
        rest: dict[int, torch.Tensor] = {}  # partial channels: the bypassed part of each node
        k = self.partial_channels
        for p, point in enumerate(plan.points):
            if point is not None:
                S = self._point_input(x if p == 0 else [states[p + 1]], point, p)
                stride = 2 if self.reduction and p == 0 else 1
                if k > 1:
                    S = self._bypass(S, point, stride, flat_w, rest)
                self._run_point(S, point, stride, flat_coeff, acc)
            j = p + 2  # node j has all its inputs now
            if j not in acc:
                raise ValueError(f"node {j} of the cell has no input in this architecture")
            node = acc.pop(j)
            if k > 1:  # an edge's output is its ops' and its bypass, shuffled in k groups (PC-DARTS)
                node = channel_shuffle(torch.cat([node, rest.pop(j)], 1), k)
            if self.bottleneck > 1:
                # The node feeds the next point's squeeze, whose 1x1 convolution keeps it for
                # its weight gradient: the BatchNorm's backward reads it too, not its input.
                node = self.expand(node, self._one_row(j - 2, node.device), keep_output=True)
            states.append(node)
        return torch.cat(states[2:], dim=1)

    def _one_row(self, segment: int, device) -> Rows:
        return self._row(segment, 0, 1, device)

    def _row(self, segment: int, row: int, size: int, device) -> Rows:
        return self._cached(("row", segment, row, size, str(device)), lambda: Rows(segment, (row,), size, device))

    def _cached(self, key, build):
        """self._cache[key], built once; not stored while torch.compile traces the cell (dynamo
        would guard on the cache's contents and trace it again on the next call)."""
        if key in self._cache:
            return self._cache[key]
        value = build()
        if not torch.compiler.is_compiling():
            self._cache[key] = value
        return value

    def _point_input(self, nodes, point: Point, p: int) -> torch.Tensor:
        """The point's used sources, channel-concatenated, squeezed by the bottleneck."""
        offset = POINT_SOURCES[p][0]
        feats = [nodes[s - offset] for s in point.sources]
        if self.bottleneck > 1:
            if len(feats) == 1:
                return self.squeeze(feats[0], point.squeeze)
            # Each source squeezed on its own and only the narrow results joined: no copy of
            # the wide sources is made, nor kept for the convolution's weight gradient (each
            # convolution keeps its source, which the preprocessing's BatchNorm keeps anyway).
            each = [self._row(p, r, len(POINT_SOURCES[p]), S.device) for r, S in zip(point.squeeze.rows, feats)]
            return self.squeeze.each(feats, point.squeeze, each)
        return feats[0] if len(feats) == 1 else torch.cat(feats, 1)

    def _bypass(self, S, point: Point, stride: int, flat_w, rest) -> torch.Tensor:
        """Partial channels: the ops' input (each source's first 1/k channels); the other
        channels of each source go to the nodes it feeds, downsampled on strided edges, and
        weighted by the edge weights in an Engine-cell."""
        n = len(point.sources)
        per_source = S.unflatten(1, (n, self.C_node))
        ops_in = _like(per_source[:, :, :self.C_op].flatten(1, 2), S)
        R = _like(per_source[:, :, self.C_op:].flatten(1, 2), S)
        if stride == 2:
            R = F.max_pool2d(R, 2, 2, ceil_mode=True)  # as cells.SearchCell's bypass_pool
        B, _, H, W = R.shape
        width = self.C_node - self.C_op
        if point.rest_index is not None:
            V = flat_w.take(point.rest_index)
            if V.dtype != R.dtype:
                V = V.to(R.dtype)
            P = torch.matmul(V, R.contiguous().reshape(B, n, width * H * W))
            for j, term in zip(point.rest_targets, P.unbind(1)):  # one copy back, see _mix
                term = _like(term.view(B, width, H, W), S)
                rest[j] = term if j not in rest else rest[j] + term
        else:
            for j, positions in point.rest_adds.items():
                for q in positions:
                    term = R if n == 1 else R.narrow(1, q * width, width)
                    rest[j] = term if j not in rest else rest[j] + term
        return ops_in

    def _run_point(self, S, point: Point, stride: int, flat_coeff, acc) -> None:
        engine = flat_coeff is not None
        relu = any(self._bank_list[g.op].needs_relu(stride) for g in point.groups)
        feats = {False: S, True: torch.relu(S) if relu else None}  # one ReLU, shared by the ops
        inputs: dict = {}  # (relu'd?, source positions) -> the rows' inputs, built once per point
        outs = []
        for g in point.groups:
            bank = self._bank_list[g.op]
            key = (bank.needs_relu(stride), g.inputs)
            if key not in inputs:
                inputs[key] = self._gather(feats[key[0]], g.inputs, len(point.sources), inputs, key[0])
            outs.append(bank(inputs[key], g.rows, stride, engine))
        if point.mixes:
            self._mix(outs, point, flat_coeff, acc)
            return
        C = self.C_op
        # A group's output is split into its blocks once: the backward then joins the blocks'
        # gradients in one concatenation, where a narrow per block zero-filled a full-size
        # gradient each and added them up.
        blocks_of: dict[int, tuple] = {}
        for j, blocks in point.adds.items():
            for gi, b in blocks:
                out = outs[gi]
                if out.shape[1] == C:
                    term = out
                else:
                    if gi not in blocks_of:
                        blocks_of[gi] = out.split(C, 1)
                    term = blocks_of[gi][b]
                acc[j] = term if j not in acc else acc[j] + term

    def _gather(self, x: torch.Tensor, positions: tuple[int, ...], n_sources: int, made: dict,
                relu: bool) -> torch.Tensor:
        """The channel blocks of the given source positions (repeated without feature sharing,
        where every edge of a source is a row of its own). `made` holds what the point built
        so far: a single source's block comes from one split of x per point (its backward is
        one concatenation, not a zero-filled gradient per narrow)."""
        C = self.C_op
        if positions == tuple(range(n_sources)):
            return x
        if len(positions) == 1:
            key = ("split", relu)
            if key not in made:
                made[key] = x.split(C, 1)
            return made[key][positions[0]]
        if positions == tuple(range(positions[0], positions[0] + len(positions))):
            return x.narrow(1, positions[0] * C, len(positions) * C)
        if len(positions) % n_sources == 0 and positions == tuple(range(n_sources)) * (len(positions) // n_sources):
            return _like(x.repeat(1, len(positions) // n_sources, 1, 1), x)  # backward: a sum
        index = self._cached(("gather", positions, str(x.device)), lambda: torch.tensor(
            [q * C + c for q in positions for c in range(C)], device=x.device))
        return _like(x.index_select(1, index), x)

    def _mix(self, outs, point: Point, flat_coeff, acc) -> None:
        """acc[j] += sum over blocks of coeff * block, as one product for the point."""
        B, _, H, W = outs[0].shape
        C = self.C_op
        D = C * H * W
        last = _is_channels_last(outs[0])
        if last:
            # Z: [blocks, B * D] in HWC order, so each node's term is a contiguous row of the
            # product and, permuted, a channels_last map without a copy.
            Z = torch.cat([o.permute(0, 2, 3, 1).reshape(B, H, W, -1, C).permute(3, 0, 1, 2, 4)
                           for o in outs]).reshape(-1, B * D)
        else:
            # Z: [B, blocks, C*H*W], a view of one channel concatenation of the point's outputs:
            # no reshape or transpose per block (two ops a block).
            Z = (outs[0] if len(outs) == 1 else torch.cat(outs, 1)).view(B, -1, D)
        for mix in point.mixes:
            Wm = flat_coeff.take(mix.coeff_index) if mix.ones is None else mix.ones
            if Wm.dtype != Z.dtype:  # bf16 autocast: the product would cast anyway
                Wm = Wm.to(Z.dtype)
            if last:
                P = torch.mm(Wm, Z)  # [targets, B * D]
            else:
                # bmm over the batch, not matmul(Wm, Z): matmul folds a [t, k] @ [B, k, D]
                # product into one GEMM on a transposed copy of Z (every block of the point,
                # copied again in the backward): 167 ms against 19 for DARTS mode's first point
                # at batch 64 on the CPU.
                P = torch.bmm(Wm.expand(B, -1, -1), Z).view(B, -1, C, H, W)  # [B, targets, C, H, W]
            # unbind, not P[:, t] per target: its backward stacks the targets' gradients in one
            # copy, where each select's backward zero-filled a gradient of P's full size.
            for j, term in zip(mix.targets, P.unbind(0 if last else 1)):
                if last:
                    term = term.view(B, H, W, C).permute(0, 3, 1, 2)
                acc[j] = term if j not in acc else acc[j] + term

    # -- weights from the one-call-per-op cell --------------------------------------------------
    @torch.no_grad()
    def load_from_plain(self, plain) -> "BankedCell":
        """Copy a cells.SearchCell's weights and statistics (same constructor arguments) into
        the banks, so both compute the same function (the tests compare them)."""
        self.preprocess0.load_state_dict(plain.preprocess0.state_dict())
        self.preprocess1.load_state_dict(plain.preprocess1.state_dict())
        if self.bottleneck > 1:
            for p, sources in enumerate(POINT_SOURCES):
                for r, i in enumerate(sources):
                    _copy_rows(self.squeeze, p, r, self.C_node, {"w": plain.squeeze[i][0].weight},
                               {"bn": plain.squeeze[i][1]})
            for m, mod in enumerate(plain.expand):
                _copy_rows(self.expand, m, 0, self.C, {"w": mod[0].weight}, {"bn": mod[1]})
        for p, r, u in ((p, r, u) for p, us in enumerate(self.units) for r, u in enumerate(us)):
            for k, name in enumerate(self.op_names):
                if name == "none":
                    continue
                weights, norms = _plain_parts(plain.ops[u][k], plain.mix_norm[f"{u}_{k}"]
                                              if f"{u}_{k}" in plain.mix_norm else None)
                _copy_rows(self.banks[name], p, r, self.C_op, weights, norms)
        return self


def _plain_parts(op: nn.Module, mix_norm: nn.Module | None) -> tuple[dict, dict]:
    """A cells.py op's weights and BatchNorms, by the names its bank stores them under."""
    if isinstance(op, FactorizedReduce):  # both branches' output channels, per row
        return {"w": torch.cat([op.conv_1.weight, op.conv_2.weight])}, {"bn": op.bn}
    if isinstance(op, nn.Sequential) and isinstance(op[0], nn.Sequential):  # SepConv
        return ({"dw1_": op[0][1].weight, "pw1_": op[0][2].weight, "dw2_": op[1][1].weight,
                 "pw2_": op[1][2].weight}, {"bn1": op[0][3], "bn2": op[1][3]})
    if isinstance(op, nn.Sequential) and len(op) == 4 and op[1].groups > 1:  # DilConv
        return {"dw": op[1].weight, "pw": op[2].weight}, {"bn": op[3]}
    if isinstance(op, nn.Sequential) and len(op) == 4:  # FactorizedConv
        return {"w1_": op[1].weight, "w2_": op[2].weight}, {"bn": op[3]}
    if isinstance(op, nn.Sequential):  # ReLUConvBN
        return {"w": op[1].weight}, {"bn": op[2]}
    return {}, ({"bn": mix_norm} if mix_norm is not None else {})  # pools, identity


def _copy_rows(bank: _Segmented, segment: int, r: int, width: int, weights: dict, norms: dict) -> None:
    for name, w in weights.items():
        getattr(bank, f"{name}{segment}")[r * width:(r + 1) * width].copy_(w)
    for name, bn in norms.items():
        getattr(bank, f"{name}_mean{segment}")[r * bank.C:(r + 1) * bank.C].copy_(bn.running_mean)
        getattr(bank, f"{name}_var{segment}")[r * bank.C:(r + 1) * bank.C].copy_(bn.running_var)
