"""Target networks: a searched genotype stacked into a network trained from scratch (paper sections 4.2, 4.3).

The layouts follow DARTS' NetworkCIFAR / NetworkImageNet so parameter counts and
multiply-adds are comparable with the published figures. Unlike DARTS' cell, a node here
is the unweighted sum of any number of (op, input) pairs, so EnTranNAS-DST genotypes
(three-input nodes, two ops on one edge) build too.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cpuconv import BatchNorm2d
from .layers import drop_path
from .ops import FactorizedReduce, ReLUConvBN, build_op

__all__ = [
    "TargetCell",
    "AuxiliaryHeadCIFAR",
    "AuxiliaryHeadImageNet",
    "NetworkCIFAR",
    "NetworkImageNet",
    "TARGET_SETTINGS",
    "dataset_settings",
    "build_target_net",
]


class TargetCell(nn.Module):
    """One cell of a target network: node j = sum of its genotype ops (no weights).

    ``ops`` holds one module per (op, input) pair, in the order the genotype lists them
    node by node, so weights can be mapped by position or via :meth:`op_index`.
    """

    def __init__(self, genotype_cell: Any, C_prev_prev: int, C_prev: int, C: int,
                 reduction: bool, reduction_prev: bool):
        super().__init__()
        self.reduction = reduction
        # s0 is twice the resolution of s1 after a reduction cell: halve it to match
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C, affine=True)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=True)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=True)

        nodes = tuple(tuple((str(op), int(inp)) for op, inp in node) for node in genotype_cell.nodes)
        self.concat = tuple(int(c) for c in genotype_cell.concat)
        if not nodes:
            raise ValueError("a cell genotype needs at least one intermediate node")
        n_states = 2 + len(nodes)
        for c in self.concat:
            if not 0 <= c < n_states:
                raise ValueError(f"concat node {c} does not exist (cell has {n_states} nodes)")
        self.multiplier = len(self.concat)

        self.ops = nn.ModuleList()
        self._index: dict[tuple[int, str, int], int] = {}
        self._node_ops: list[tuple[tuple[int, int], ...]] = []  # per node: (op index, input)
        self._skip_drop: list[bool] = []
        for m, node in enumerate(nodes):
            j = m + 2
            if not node:
                raise ValueError(f"node {j} has no inputs")
            entries = []
            for op, inp in node:
                if not 0 <= inp < j:
                    raise ValueError(f"node {j} takes input {inp}; inputs must be below {j}")
                stride = 2 if reduction and inp < 2 else 1
                module = build_op(op, C, stride, affine=True)
                k = len(self.ops)
                self.ops.append(module)
                self._index.setdefault((j, op, inp), k)
                # DARTS never drops an identity skip: it is the path that keeps signal
                self._skip_drop.append(isinstance(module, nn.Identity))
                entries.append((k, inp))
            self._node_ops.append(tuple(entries))

    def op_index(self, node: int, op: str, input: int) -> int:
        """Position in ``self.ops`` of ``op`` applied to ``input`` in node ``node`` (2..5)."""
        try:
            return self._index[(node, op, input)]
        except KeyError:
            raise KeyError(f"cell has no op {op!r} from input {input} into node {node}") from None

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float = 0.0) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        use_drop = self.training and drop_prob > 0.0
        for entries in self._node_ops:
            total = None
            for k, inp in entries:
                h = self.ops[k](states[inp])
                if use_drop and not self._skip_drop[k]:
                    h = drop_path(h, drop_prob)
                total = h if total is None else total + h
            states.append(total)
        return torch.cat([states[c] for c in self.concat], dim=1)


class _AuxiliaryHead(nn.Module):
    """DARTS' auxiliary classifier: pool to 2x2, 1x1 conv 128, 2x2 conv 768, linear.

    DARTS' fixed pooling assumes one map size (8x8 CIFAR, 7x7 ImageNet); on other sizes
    (7x7 for Fashion-MNIST at 2/3 depth) it would leave a 1x1 map that the 2x2 conv cannot
    take. Decision: keep the fixed pooling wherever it gives 2x2 (so CIFAR and ImageNet
    match DARTS exactly) and fall back to adaptive average pooling to 2x2 otherwise. The
    weights are the same either way.
    """

    def __init__(self, C: int, num_classes: int, pool_stride: int, bn_after_768: bool):
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.pool = nn.AvgPool2d(5, stride=pool_stride, padding=0, count_include_pad=False)
        layers: list[nn.Module] = [
            nn.Conv2d(C, 128, 1, bias=False), BatchNorm2d(128), nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
        ]
        if bn_after_768:
            layers.append(BatchNorm2d(768))
        layers.append(nn.ReLU(inplace=True))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(768, num_classes)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.pool.kernel_size, self.pool.stride
        if all(n >= k and (n - k) // s + 1 == 2 for n in x.shape[-2:]):
            return self.pool(x)
        return F.adaptive_avg_pool2d(x, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self._pool(self.relu(x)))
        return self.classifier(x.flatten(1))


class AuxiliaryHeadCIFAR(_AuxiliaryHead):
    """For 8x8 maps: AvgPool 5 stride 3 gives 2x2."""

    def __init__(self, C: int, num_classes: int):
        super().__init__(C, num_classes, pool_stride=3, bn_after_768=True)


class AuxiliaryHeadImageNet(_AuxiliaryHead):
    """For 7x7 maps: AvgPool 5 stride 2 gives 2x2. No BN after the 768 conv: DARTS' own
    ImageNet head omitted it in the experiments its paper reports."""

    def __init__(self, C: int, num_classes: int):
        super().__init__(C, num_classes, pool_stride=2, bn_after_768=False)


class _TargetNetwork(nn.Module):
    """Shared cell stack: reduction cells at 1/3 and 2/3 depth, aux head after the 2nd."""

    def _build_cells(self, genotype: Any, C: int, layers: int, C_stem: int, reduction_prev: bool,
                     num_classes: int, auxiliary: bool, aux_cls: type) -> None:
        if layers < 3:
            raise ValueError(f"a target network needs at least 3 cells, got {layers}")
        self.layers = layers
        self._aux_pos = 2 * layers // 3
        C_prev_prev, C_prev, C_curr = C_stem, C_stem, C
        self.cells = nn.ModuleList()
        C_aux = None
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                C_curr *= 2
            cell_geno = genotype.reduce if reduction else genotype.normal
            cell = TargetCell(cell_geno, C_prev_prev, C_prev, C_curr, reduction, reduction_prev)
            self.cells.append(cell)
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
            if i == self._aux_pos:
                C_aux = C_prev
        self.auxiliary_head = aux_cls(C_aux, num_classes) if auxiliary else None
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def _stem(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        s0, s1 = self._stem(x)
        logits_aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            # the aux head only trains; eval mode skips it (and so MAC counts exclude it)
            if i == self._aux_pos and self.auxiliary_head is not None and self.training:
                logits_aux = self.auxiliary_head(s1)
        logits = self.classifier(self.global_pooling(s1).flatten(1))
        return logits, logits_aux


class NetworkCIFAR(_TargetNetwork):
    """DARTS' CIFAR network: 3x3 conv stem to 3C channels, ``layers`` cells."""

    def __init__(self, genotype: Any, C: int = 36, layers: int = 20, num_classes: int = 10,
                 auxiliary: bool = True, in_channels: int = 3, drop_path_prob: float = 0.0):
        super().__init__()
        self.drop_path_prob = float(drop_path_prob)  # set per epoch by the training loop
        C_stem = 3 * C
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, C_stem, 3, padding=1, bias=False),
            BatchNorm2d(C_stem),
        )
        self._build_cells(genotype, C, layers, C_stem, False, num_classes, auxiliary,
                          AuxiliaryHeadCIFAR)

    def _stem(self, x):
        s = self.stem(x)
        return s, s


class NetworkImageNet(_TargetNetwork):
    """DARTS' ImageNet network: three stride-2 convs take 224 to 28 before the cells.

    The final pooling is adaptive: identical to DARTS' AvgPool(7) at 224x224, and still
    valid at other resolutions.
    """

    def __init__(self, genotype: Any, C: int = 48, layers: int = 14, num_classes: int = 1000,
                 auxiliary: bool = True, in_channels: int = 3, drop_path_prob: float = 0.0):
        super().__init__()
        self.drop_path_prob = float(drop_path_prob)
        self.stem0 = nn.Sequential(
            nn.Conv2d(in_channels, C // 2, 3, stride=2, padding=1, bias=False),
            BatchNorm2d(C // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False),
            BatchNorm2d(C),
        )
        self.stem1 = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
            BatchNorm2d(C),
        )
        # stem0's output is at twice stem1's resolution, hence reduction_prev for cell 0
        self._build_cells(genotype, C, layers, C, True, num_classes, auxiliary,
                          AuxiliaryHeadImageNet)

    def _stem(self, x):
        s0 = self.stem0(x)
        return s0, self.stem1(s0)


# Default target-net settings per dataset (paper sections 4.2, 4.3); input_shape is (channels, H, W).
TARGET_SETTINGS: dict[str, dict[str, Any]] = {
    "cifar10": dict(variant="cifar", C=36, layers=20, num_classes=10, input_shape=(3, 32, 32)),
    "cifar100": dict(variant="cifar", C=36, layers=20, num_classes=100, input_shape=(3, 32, 32)),
    "fashion-mnist": dict(variant="cifar", C=36, layers=20, num_classes=10, input_shape=(1, 28, 28)),
    "imagenet": dict(variant="imagenet", C=48, layers=14, num_classes=1000, input_shape=(3, 224, 224)),
}
_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "fmnist": "fashion-mnist",
            "cifar-10": "cifar10", "cifar-100": "cifar100"}


def dataset_settings(dataset: str) -> dict[str, Any]:
    """A copy of the default target-net settings for ``dataset`` (aliases accepted)."""
    key = dataset.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in TARGET_SETTINGS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(TARGET_SETTINGS)}")
    return dict(TARGET_SETTINGS[key], dataset=key)


def _as_genotype(genotype: Any) -> Any:
    # accept a path / builtin name / genotype string wherever a Genotype is expected
    if hasattr(genotype, "normal") and hasattr(genotype, "reduce"):
        return genotype
    from .genotype import load_genotype
    return load_genotype(genotype)


def build_target_net(genotype: Any, dataset: str, **overrides: Any) -> nn.Module:
    """The target network for ``dataset`` (cifar10, cifar100, fashion-mnist, imagenet).

    ``overrides`` go to the network constructor (C, layers, num_classes, auxiliary,
    in_channels, drop_path_prob) and replace the dataset defaults.
    """
    s = dataset_settings(dataset)
    kwargs: dict[str, Any] = dict(C=s["C"], layers=s["layers"], num_classes=s["num_classes"],
                                  in_channels=s["input_shape"][0])
    kwargs.update(overrides)
    cls = NetworkImageNet if s["variant"] == "imagenet" else NetworkCIFAR
    return cls(_as_genotype(genotype), **kwargs)
