"""The search network (super-net) and its four switches (paper sections 2.2-2.5, Table 3):
engine-cell placement, feature sharing, bottleneck, temperature; plus the derivation rule.

`method` picks the defaults: "darts" turns every switch off, "entrannas" and "dst" are the
paper's settings, "pcdarts" is DARTS mode with PC-DARTS' partial-channel connections and
edge normalisation (the baseline of Table 2; docs/design.md). Each switch can also be set by
keyword.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .arch import (EDGES, NUM_NODES, Selection, Temperature, derive_dst, derive_top2,
                   dst_coefficients, dst_regulariser, edge_index, edge_normalization, softmax_t,
                   top2_scores)
from .cells import EngineCell, TransitCell
from .cpuconv import BatchNorm2d
from .opbank import BankedCell
from .ops import op_names

__all__ = ["SuperNet", "METHOD_DEFAULTS", "resolve_engine_cells", "ArchState", "frozen"]

_PLAIN = dict(partial_channels=1, edge_normalization=False)
METHOD_DEFAULTS: dict[str, dict] = {
    "darts": dict(engine_cells="all", feature_sharing=False, bottleneck=1, tau0=1.0,
                  tau_decay=1.0, derivation="top2", **_PLAIN),
    "entrannas": dict(engine_cells="first", feature_sharing=True, bottleneck=4, tau0=5.0,
                      tau_decay=0.923, derivation="top2", **_PLAIN),
    "dst": dict(engine_cells="first", feature_sharing=True, bottleneck=4, tau0=5.0,
                tau_decay=0.923, derivation="dst", **_PLAIN),
    # PC-DARTS: 1/4 of the channels through the mixed op, edge betas normalised per node.
    "pcdarts": dict(engine_cells="all", feature_sharing=False, bottleneck=1, tau0=1.0,
                    tau_decay=1.0, derivation="top2", partial_channels=4, edge_normalization=True),
}
CELL_TYPES = ("normal", "reduce")


def reduction_layers(layers: int) -> tuple[int, int]:
    return layers // 3, 2 * layers // 3


def resolve_engine_cells(spec, layers: int) -> tuple[int, ...]:
    """Which cells are Engine-cells. `first`/`last`: the first/last normal and reduction cell;
    `half`: the first half (rounded up) of the normal cells and of the reduction cells;
    `all`: every cell (DARTS); or explicit indices. Each cell type needs one Engine-cell,
    since only Engine-cells give its architecture parameters a gradient."""
    red = set(reduction_layers(layers))
    normal = [c for c in range(layers) if c not in red]
    reduce = sorted(red)
    if isinstance(spec, str):
        if spec == "all":
            chosen = list(range(layers))
        elif spec == "first":
            chosen = [normal[0], reduce[0]]
        elif spec == "last":
            chosen = [normal[-1], reduce[-1]]
        elif spec == "half":
            chosen = normal[: (len(normal) + 1) // 2] + reduce[: (len(reduce) + 1) // 2]
        else:
            raise ValueError(f"engine_cells must be all, first, last, half or a list of cell "
                             f"indices, got {spec!r}")
    else:
        chosen = [int(c) for c in spec]
        bad = [c for c in chosen if not 0 <= c < layers]
        if bad:
            raise ValueError(f"engine cell indices {bad} are out of range 0..{layers - 1}")
    chosen = sorted(set(chosen))
    if not any(c in red for c in chosen) or all(c in red for c in chosen):
        raise ValueError(f"engine cells {chosen} must include at least one normal cell and one "
                         f"reduction cell (reduction cells are {reduce})")
    return tuple(chosen)


@dataclass
class ArchState:
    """The architecture of one iteration, derived once and shared by all cells of a type."""

    coeff: dict[str, torch.Tensor] = field(default_factory=dict)  # p or q_hat, [14, K]
    active: dict[str, list[list[int]]] = field(default_factory=dict)  # per edge, ops to compute
    selection: dict[str, Selection] = field(default_factory=dict)  # the derived cell
    edge_weight: dict[str, torch.Tensor] = field(default_factory=dict)  # PC-DARTS, [14]


@contextlib.contextmanager
def frozen(params):
    """Forwards inside record nothing for these parameters' gradients. The search's two steps
    each ask for one set only: with the weights frozen the architecture step's convolutions
    keep no input for a weight gradient (and compute none); with alpha/beta frozen the weight
    step's Engine-cell mixing keeps no copy of its op outputs for the coefficients' gradient.
    The values are the same; BatchNorm statistics update as usual."""
    params = [p for p in params if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class SuperNet(nn.Module):
    def __init__(self, method: str = "entrannas", C: int = 16, layers: int = 8,
                 num_classes: int = 10, space: str = "standard", in_channels: int = 3,
                 stem: str = "cifar", engine_cells=None, feature_sharing: bool | None = None,
                 bottleneck: int | None = None, tau0: float | None = None,
                 tau_decay: float | None = None, derivation: str | None = None,
                 dst_lambda: float = 0.1, stem_multiplier: int = 3,
                 partial_channels: int | None = None, edge_normalization: bool | None = None,
                 batched: bool = True):
        super().__init__()
        if method not in METHOD_DEFAULTS:
            raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHOD_DEFAULTS)}")
        given = dict(engine_cells=engine_cells, feature_sharing=feature_sharing,
                     bottleneck=bottleneck, tau0=tau0, tau_decay=tau_decay, derivation=derivation,
                     partial_channels=partial_channels, edge_normalization=edge_normalization)
        cfg = {k: (METHOD_DEFAULTS[method][k] if v is None else v) for k, v in given.items()}
        if cfg["derivation"] not in ("top2", "dst"):
            raise ValueError(f"derivation must be top2 or dst, got {cfg['derivation']!r}")
        if int(cfg["bottleneck"]) < 1:
            raise ValueError(f"bottleneck ratio must be >= 1, got {cfg['bottleneck']}")
        if int(cfg["partial_channels"]) < 1:
            raise ValueError(f"partial_channels must be >= 1, got {cfg['partial_channels']}")
        if cfg["edge_normalization"] and cfg["derivation"] == "dst":
            raise ValueError("edge normalisation weights edges for the top-2 rule; DST derives "
                             "its topology from thresholds: use derivation top2 with it")
        if float(cfg["tau0"]) <= 0 or float(cfg["tau_decay"]) <= 0:
            raise ValueError("tau0 and tau_decay must be positive")
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem must be cifar or imagenet, got {stem!r}")
        if layers < 3:
            raise ValueError(f"a super-net needs at least 3 cells (two are reduction cells), got {layers}")
        self.method = method
        self.C, self.layers, self.num_classes = C, layers, num_classes
        self.space, self.in_channels, self.stem_type = space, in_channels, stem
        self.derivation = cfg["derivation"]
        self.feature_sharing = bool(cfg["feature_sharing"])
        self.bottleneck = int(cfg["bottleneck"])
        self.partial_channels = int(cfg["partial_channels"])
        self.edge_normalization = bool(cfg["edge_normalization"])
        self.temperature = Temperature(float(cfg["tau0"]), float(cfg["tau_decay"]))
        self.tau = self.temperature(0)
        self.last_selection = None  # the derived cell of the last training forward (Transit-cells)
        self._given_selection = None  # set by given_selection(): the derived cell to run
        self.dst_lambda = float(dst_lambda)
        # DST learns topology explicitly, so it searches without `none` (paper appendix A.2).
        self.op_names = op_names(space, include_none=self.derivation != "dst")
        self.none_index = self.op_names.index("none") if "none" in self.op_names else None
        self.engine_cells = resolve_engine_cells(cfg["engine_cells"], layers)
        self.batched = batched

        self._build_stem(in_channels, C, stem_multiplier)
        red = reduction_layers(layers)
        C_pp, C_p, C_curr = self._stem_out, self._stem_out, C
        reduction_prev = stem == "imagenet"
        if stem == "imagenet":
            C_pp = C_p = C
        self.cells = nn.ModuleList()
        for c in range(layers):
            reduction = c in red
            if reduction:
                C_curr *= 2
            # Op banks (opbank.py) by default; `batched=False` builds the one-call-per-op cells
            # of cells.py, the reference the banks are tested against.
            cls = BankedCell if batched else (EngineCell if c in self.engine_cells else TransitCell)
            self.cells.append(cls(self.op_names, C_pp, C_p, C_curr, reduction, reduction_prev,
                                  self.feature_sharing, self.bottleneck, self.partial_channels))
            reduction_prev = reduction
            C_pp, C_p = C_p, NUM_NODES * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_p, num_classes)

        K = len(self.op_names)
        self.alpha_normal = nn.Parameter(1e-3 * torch.randn(len(EDGES), K))
        self.alpha_reduce = nn.Parameter(1e-3 * torch.randn(len(EDGES), K))
        if self.derivation == "dst":
            # beta = 0 -> t = 0.5: every connection starts active (docs/design.md, Derivation).
            self.beta_normal = nn.Parameter(torch.zeros(NUM_NODES))
            self.beta_reduce = nn.Parameter(torch.zeros(NUM_NODES))
        if self.edge_normalization:
            # PC-DARTS' edge betas, one per edge (not DST's per-node threshold betas).
            self.edge_beta_normal = nn.Parameter(1e-3 * torch.randn(len(EDGES)))
            self.edge_beta_reduce = nn.Parameter(1e-3 * torch.randn(len(EDGES)))

    def _build_stem(self, in_channels, C, multiplier):
        if self.stem_type == "cifar":
            self._stem_out = multiplier * C
            self.stem = nn.Sequential(nn.Conv2d(in_channels, self._stem_out, 3, padding=1, bias=False),
                                      BatchNorm2d(self._stem_out))
            return
        # ImageNet: three stride-2 3x3 convs, 224 -> 28 (paper section 4.3).
        self._stem_out = C
        self.stem0 = nn.Sequential(
            nn.Conv2d(in_channels, C // 2, 3, stride=2, padding=1, bias=False), BatchNorm2d(C // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False), BatchNorm2d(C))
        self.stem1 = nn.Sequential(nn.ReLU(inplace=False),
                                   nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False), BatchNorm2d(C))

    # -- parameters ------------------------------------------------------------------------
    def _arch_names(self) -> tuple[str, ...]:
        names = ("alpha_normal", "alpha_reduce")
        if self.derivation == "dst":
            names += ("beta_normal", "beta_reduce")
        if self.edge_normalization:
            names += ("edge_beta_normal", "edge_beta_reduce")
        return names

    def arch_parameters(self) -> list[nn.Parameter]:
        return [getattr(self, n) for n in self._arch_names()]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = set(self._arch_names())
        return [p for n, p in self.named_parameters() if n not in arch]

    def alpha(self, cell_type: str) -> nn.Parameter:
        return getattr(self, f"alpha_{cell_type}")

    def beta(self, cell_type: str) -> nn.Parameter:
        return getattr(self, f"beta_{cell_type}")

    def edge_weights(self, cell_type: str) -> torch.Tensor:
        """PC-DARTS' normalised edge weights [14]: softmax of the edge betas over each node's
        incoming edges."""
        return edge_normalization(getattr(self, f"edge_beta_{cell_type}"))

    # -- temperature and derivation ------------------------------------------------------
    def set_epoch(self, epoch: float) -> float:
        """Anneal the temperature (eq. 5) for the given (fractional) epoch; returns tau."""
        self.tau = self.temperature(epoch)
        return self.tau

    def thresholds(self, cell_type: str) -> torch.Tensor:
        """DST thresholds t_j = sigmoid(beta_j)."""
        return torch.sigmoid(self.beta(cell_type))

    def dst_regulariser(self) -> torch.Tensor:
        """lambda * mean_j -log(t_j) (eq. 11), summed over the two cell types; 0 without DST."""
        if self.derivation != "dst":
            return self.alpha_normal.new_zeros(())
        return self.dst_lambda * sum(dst_regulariser(self.beta(t)) for t in CELL_TYPES)

    def coefficients(self, cell_type: str) -> torch.Tensor:
        """The Engine-cell coefficients of a cell type: p (eq. 5) or q_hat (eqs. 7-9)."""
        if self.derivation == "dst":
            return dst_coefficients(self.alpha(cell_type), self.beta(cell_type), self.tau)
        return softmax_t(self.alpha(cell_type), self.tau)

    @contextlib.contextmanager
    def given_selection(self, selection: dict[str, Selection] | None):
        """Forwards inside run `selection` (what arch_state() derived from the current alpha/beta)
        instead of deriving it again: deriving copies alpha to the host, which a CUDA graph
        capture cannot contain (graphstep.py). None: derive as usual."""
        before, self._given_selection = self._given_selection, selection
        try:
            yield self
        finally:
            self._given_selection = before

    def arch_state(self, need_selection: bool = True) -> ArchState:
        state = ArchState()
        all_ops = [k for k in range(len(self.op_names)) if k != self.none_index]
        given = self._given_selection
        for t in CELL_TYPES:
            coeff = self.coefficients(t)
            state.coeff[t] = coeff
            if self.derivation == "dst":
                sel = given[t] if given is not None else derive_dst(coeff)
                # For finite alpha/beta every node keeps its strongest input (arch.py); only
                # NaN can empty one, and the cells cannot run a node without inputs.
                if not all(sel):
                    raise FloatingPointError(f"the {t} cell's alpha/beta are not finite, so DST "
                                             f"derivation left a node without inputs")
                state.selection[t] = sel
                active = [[] for _ in EDGES]
                for m, pairs in enumerate(sel):
                    for i, k in pairs:
                        active[edge_index(i, m + 2)].append(k)
                state.active[t] = active
            else:
                state.active[t] = [all_ops] * len(EDGES)
                if self.edge_normalization:
                    # PC-DARTS weights each edge in search and ranks edges by p times it.
                    state.edge_weight[t] = self.edge_weights(t)
                if need_selection and given is not None:
                    state.selection[t] = given[t]
                elif need_selection:
                    # Ranked on float64 log p, not on `coeff`, whose float32 p ties at 1.0 on
                    # edges with large margins late in an annealed search (arch.top2_scores).
                    edge_beta = getattr(self, f"edge_beta_{t}") if self.edge_normalization else None
                    state.selection[t] = derive_top2(top2_scores(self.alpha(t), self.tau, edge_beta),
                                                     self.none_index)
        return state

    def selection_to_genotype(self, selection: dict[str, Selection]):
        from .genotype import CellGenotype, Genotype
        cells = {t: CellGenotype(nodes=tuple(tuple((self.op_names[k], i) for i, k in pairs)
                                             for pairs in selection[t]))
                 for t in CELL_TYPES}
        return Genotype(normal=cells["normal"], reduce=cells["reduce"], space=self.space)

    def genotype(self):
        """The architecture derived at this moment (the final genotype at the end of search)."""
        with torch.no_grad():
            return self.selection_to_genotype(self.arch_state().selection)

    # -- forward ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, child: bool = False) -> torch.Tensor:
        """Logits. `child=True` runs every cell as a Transit-cell on the derived architecture:
        the child-net of paper Table 1 (same weights, derived paths only)."""
        has_transit = child or self.has_transit()
        state = self.arch_state(need_selection=has_transit)
        if self.training and not child and has_transit:
            self.last_selection = state.selection  # the search counts how often it changes
        if self.stem_type == "cifar":
            s0 = s1 = self.stem(x)
        else:
            s0 = self.stem0(x)
            s1 = self.stem1(s0)
        # Every cell's preprocessing starts with a ReLU of its inputs, and each cell output is
        # the input of the next two cells: the banked cells take it ReLU'd once, which saves a
        # ReLU, its backward and its saved output per cell (docs/design.md).
        shared = self.batched
        if shared:
            s0, s1 = (torch.relu(s0),) * 2 if s0 is s1 else (torch.relu(s0), torch.relu(s1))
        for c, cell in enumerate(self.cells):
            t = "reduce" if cell.reduction else "normal"
            extra = {"activated": True} if shared else {}
            if child or c not in self.engine_cells:
                out = cell.forward_transit(s0, s1, state.selection[t], **extra)
            else:
                out = cell.forward_engine(s0, s1, state.coeff[t], state.active[t],
                                          state.edge_weight.get(t), **extra)
            s0, s1 = s1, (torch.relu(out) if shared and c + 1 < len(self.cells) else out)
        return self.classifier(self.global_pooling(s1).flatten(1))

    def has_transit(self) -> bool:
        """Whether some cell is a Transit-cell (it runs the derived cell, not the mixture)."""
        return len(self.engine_cells) < self.layers

    def is_engine(self, c: int) -> bool:
        """Whether cell c is an Engine-cell (the others are Transit-cells)."""
        return c in self.engine_cells

    @torch.no_grad()
    def load_from_plain(self, plain: "SuperNet") -> "SuperNet":
        """Copy a `batched=False` super-net's weights into this batched one (same switches):
        both then compute the same function, which the tests check."""
        own = self.state_dict()
        for k, v in plain.state_dict().items():
            if k in own and not k.startswith("cells."):
                own[k].copy_(v)
        for mine, theirs in zip(self.cells, plain.cells):
            mine.load_from_plain(theirs)
        return self

    def extra_repr(self) -> str:
        return (f"method={self.method}, space={self.space}, engine_cells={list(self.engine_cells)}, "
                f"feature_sharing={self.feature_sharing}, bottleneck={self.bottleneck}, "
                f"partial_channels={self.partial_channels}, "
                f"edge_normalization={self.edge_normalization}, "
                f"derivation={self.derivation}, tau={self.tau:.4g}")

