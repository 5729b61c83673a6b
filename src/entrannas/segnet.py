"""Searched cells as segmentation backbones: an atrous target network and a DeepLabV3 head
(the paper's Table 5: DeepLabV3, output stride 16, single-scale inference).

    net = SegNet(genotype, num_classes=21)             # the paper's VOC setting
    logits = net(images)                               # [N, 21, H, W], at the input size

The backbone is the ImageNet-setting target network of evalnet.py (the three stride-2 stem
convs, the same cells and channels) made atrous as DeepLabV3 does with a ResNet: the
reductions that would take the features below 1/output_stride keep the resolution, and every
cell after such a reduction multiplies the dilation (and padding) of its convolutions with a
spatial kernel by 2, so receptive fields stay what they were. The module and parameter names
are those of NetworkImageNet (`stem0`, `stem1`, `cells`), so the weights of an ImageNet
`train` run load unchanged (`load_backbone`); see docs/design.md, "Segmentation".
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cpuconv import BatchNorm2d
from .evalnet import NetworkImageNet, _as_genotype
from .ops import FactorizedReduce

__all__ = ["AtrousBackbone", "ASPP", "DeepLabV3Head", "SegNet", "build_segnet", "load_backbone", "segnet_cost"]

_POOLS = (nn.MaxPool2d, nn.AvgPool2d)


def _keep_resolution(module: nn.Module) -> None:
    """Every stride of ``module`` set to 1: strided convs, pools and FactorizedReduce (whose
    offset branch then reads the neighbouring pixel) keep the size, with the same weights."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            m.stride = (1, 1)
        elif isinstance(m, _POOLS):
            m.stride = 1
        elif isinstance(m, FactorizedReduce):
            m.stride = 1


def _dilate(module: nn.Module, factor: int) -> None:
    """Multiply dilation and padding of every conv with a kernel wider than 1 along an axis by
    ``factor`` (the separable and dilated convs of the standard space; also the extended
    space's convs). 'Same' padding stays 'same': padding = dilation * (k - 1) / 2."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            m.dilation = tuple(d * factor if k > 1 else d for d, k in zip(m.dilation, m.kernel_size))
            m.padding = tuple(p * factor if k > 1 else p for p, k in zip(m.padding, m.kernel_size))


class AtrousBackbone(nn.Module):
    """NetworkImageNet's stem and cells with output stride 16 (or 8, or 32 = unchanged).

    The stem brings the input to 1/8 and each of the two reduction cells (at 1/3 and 2/3 of
    the depth) halves it again, to 1/32. For output stride 16 the last reduction cell runs
    its ops at stride 1 (its channels still double), the next cell's FactorizedReduce
    preprocessing of that cell's output keeps the resolution too, and the cells after it
    use dilation 2 (the reduction cell itself keeps its dilation, as in DeepLab's ResNet).
    """

    def __init__(self, genotype: Any, C: int = 48, layers: int = 14, in_channels: int = 3,
                 output_stride: int = 16):
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        net = NetworkImageNet(_as_genotype(genotype), C=C, layers=layers, num_classes=1,
                              auxiliary=False, in_channels=in_channels)
        self.stem0, self.stem1, self.cells = net.stem0, net.stem1, net.cells
        self.out_channels = net.classifier.in_features
        self.output_stride = output_stride
        reductions = [i for i, c in enumerate(self.cells) if c.reduction]
        kept = reductions[len(reductions) - {32: 0, 16: 1, 8: 2}[output_stride]:]
        dilation = 1
        for i, cell in enumerate(self.cells):
            if dilation > 1:
                _dilate(cell.ops, dilation)
            if i in kept:
                _keep_resolution(cell.ops)
                if i + 1 < len(self.cells):  # its preprocess0 halved this cell's output
                    _keep_resolution(self.cells[i + 1].preprocess0)
                dilation *= 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = self.stem0(x)
        s1 = self.stem1(s0)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return s1


def _conv_bn_relu(C_in: int, C_out: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (kernel - 1) // 2
    return nn.Sequential(nn.Conv2d(C_in, C_out, kernel, padding=pad, dilation=dilation, bias=False),
                         BatchNorm2d(C_out), nn.ReLU(inplace=True))


class _ImagePooling(nn.Module):
    """ASPP's image-level branch: global average, 1x1 conv, BN, ReLU, spread back over the map."""

    def __init__(self, C_in: int, C_out: int):
        super().__init__()
        self.conv = _conv_bn_relu(C_in, C_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(F.adaptive_avg_pool2d(x, 1))
        return y.expand(-1, -1, *x.shape[-2:])  # bilinear upsampling of a 1x1 map is a copy


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabV3): a 1x1 conv, one 3x3 conv per rate and
    image pooling in parallel, concatenated, projected by a 1x1 conv with BN, ReLU, dropout."""

    def __init__(self, C_in: int, C_out: int = 256, rates: Sequence[int] = (6, 12, 18),
                 dropout: float = 0.1):
        super().__init__()
        self.branches = nn.ModuleList([_conv_bn_relu(C_in, C_out)]
                                      + [_conv_bn_relu(C_in, C_out, 3, int(r)) for r in rates]
                                      + [_ImagePooling(C_in, C_out)])
        self.project = nn.Sequential(_conv_bn_relu(len(self.branches) * C_out, C_out), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([b(x) for b in self.branches], dim=1))


class DeepLabV3Head(nn.Sequential):
    """ASPP, a 3x3 conv with BN and ReLU, and a 1x1 classifier (logits at the feature size)."""

    def __init__(self, C_in: int, num_classes: int, channels: int = 256,
                 rates: Sequence[int] = (6, 12, 18), dropout: float = 0.1):
        super().__init__(ASPP(C_in, channels, rates, dropout), _conv_bn_relu(channels, channels, 3),
                         nn.Conv2d(channels, num_classes, 1))


class SegNet(nn.Module):
    """Atrous backbone + DeepLabV3 head; logits upsampled bilinearly to the input size."""

    def __init__(self, genotype: Any, num_classes: int = 21, C: int = 48, layers: int = 14,
                 in_channels: int = 3, output_stride: int = 16, head_channels: int = 256,
                 rates: Sequence[int] = (6, 12, 18), dropout: float = 0.1):
        super().__init__()
        self.backbone = AtrousBackbone(genotype, C, layers, in_channels, output_stride)
        self.head = DeepLabV3Head(self.backbone.out_channels, num_classes, head_channels, rates, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(self.backbone(x))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


def build_segnet(cfg, genotype: Any, num_classes: int, in_channels: int,
                 device: torch.device | str | None = None) -> SegNet:
    """The SegNet of a segment config's model section."""
    m = cfg.model
    with torch.device(device or "cpu"):
        return SegNet(genotype, num_classes, C=m.C, layers=m.layers, in_channels=in_channels,
                      output_stride=m.output_stride, head_channels=m.head_channels,
                      rates=tuple(m.aspp_rates), dropout=m.dropout)


def load_backbone(net: SegNet, run_dir: str | Path, genotype: Any, C: int, layers: int) -> dict:
    """Copy the weights of an ImageNet `train` run's target network into ``net.backbone``
    (everything but its classifier and auxiliary head); returns what was loaded. The run must
    have trained this genotype at this width and depth in the ImageNet layout."""
    from .checkpoint import CheckpointError, load_run_checkpoint
    from .genotype import Genotype
    state = load_run_checkpoint(run_dir, "train")
    cfg = state["config"]
    dataset = cfg.get("data", {}).get("dataset")
    if dataset != "imagenet":
        raise CheckpointError(f"backbone {run_dir} was trained on {dataset} in the CIFAR layout; a "
                              f"segmentation backbone needs an ImageNet-layout run (data.dataset: imagenet)")
    if Genotype.from_dict(state["genotype"]) != _as_genotype(genotype):
        raise CheckpointError(f"backbone {run_dir} trained another genotype: give --genotype {run_dir} "
                              f"(or leave --genotype out)")
    trained = (cfg["model"]["C"], cfg["model"]["layers"])
    if trained != (C, layers):
        raise CheckpointError(f"backbone {run_dir} has C={trained[0]}, {trained[1]} cells: add --set "
                              f"model.C={trained[0]} --set model.layers={trained[1]}")
    weights = {k: v for k, v in state["net"].items() if not k.startswith(("classifier.", "auxiliary_head."))}
    stem = weights.get("stem0.0.weight")
    if stem is not None and stem.shape[1] != net.backbone.stem0[0].in_channels:
        raise CheckpointError(f"backbone {run_dir} takes {stem.shape[1]}-channel images, the data has "
                              f"{net.backbone.stem0[0].in_channels}")
    try:
        net.backbone.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        from .checkpoint import mismatch
        raise mismatch(Path(run_dir) / "checkpoint.pt", e) from None
    return {"run": str(run_dir), "epochs": state["epoch"], "tensors": len(weights)}


def segnet_cost(cfg, genotype: Any, num_classes: int, input_shape: Sequence[int]) -> dict:
    """Params (M) and multiply-adds (M, one image of ``input_shape`` in eval mode) of a
    segment config's SegNet, built on the meta device (nothing allocated) and without moving
    the global generator (a resumed run has restored it)."""
    from .measure import count_macs, count_params
    with torch.random.fork_rng(devices=[]):
        net = build_segnet(cfg, genotype, num_classes, input_shape[0], "meta")
    return {"params_M": count_params(net) / 1e6, "macs_M": count_macs(net, input_shape) / 1e6}


# What `profile --task segmentation --dataset D` builds: the preset of D's segment config.
SEG_PRESETS = {"voc": ("voc-deeplabv3", 21, 3), "fmnist-scenes": ("fmnist-scenes", 11, 1)}


def profile_segmentation(genotype: Any, dataset: str = "voc", *, C: int | None = None,
                         layers: int | None = None) -> dict:
    """Params and multiply-adds of ``genotype``'s SegNet in a data set's segment preset
    (voc: the paper's setting, C=48, 14 cells, 513x513x3, 21 classes; fmnist-scenes: the
    CPU-scale proxy), for one image at the crop size; ``C`` and ``layers`` override."""
    from .config import ConfigError, load_config
    if dataset not in SEG_PRESETS:
        raise ConfigError(f"no segmentation setting for {dataset!r}; choose one of {', '.join(SEG_PRESETS)}")
    preset, num_classes, channels = SEG_PRESETS[dataset]
    sets = [f"model.{k}={v}" for k, v in (("C", C), ("layers", layers)) if v is not None]
    cfg = load_config(preset, sets, kind="segment")
    genotype = _as_genotype(genotype)
    shape = (channels, cfg.data.crop_size, cfg.data.crop_size)
    from .measure import count_macs, count_params
    with torch.random.fork_rng(devices=[]):
        net = build_segnet(cfg, genotype, num_classes, channels, "meta")
    m = cfg.model
    return {"task": "segmentation", "dataset": dataset, "preset": preset, "C": m.C, "layers": m.layers,
            "output_stride": m.output_stride, "aspp_rates": list(m.aspp_rates), "num_classes": num_classes,
            "input_shape": shape, "params_M": count_params(net) / 1e6, "macs_M": count_macs(net, shape) / 1e6,
            "backbone_params_M": count_params(net.backbone) / 1e6, "head_params_M": count_params(net.head) / 1e6}
