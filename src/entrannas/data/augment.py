"""Batched data augmentation as tensor ops on whatever device the batch is on.

Every random number is drawn from an explicit ``torch.Generator`` (a CPU one, normally) as
a small per-image tensor and then moved to the batch's device, so a CPU run and a GPU run
with the same seed draw the same crops, flips and cutouts. There is no Python loop over
images: crop (and flip) is one ``gather`` from the once-padded batch, cutout a broadcast mask,
colour jitter per-image factors broadcast over the batch.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["random_crop", "random_flip", "cutout", "color_jitter", "normalize", "Augment", "train_augment"]


def _gen_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _draw_offsets(n: int, padding: int, generator) -> torch.Tensor:
    # [n, 2] (dy, dx) in 0..2*padding: the crop's top-left corner in the padded image
    return torch.randint(0, 2 * padding + 1, (n, 2), generator=generator, device=_gen_device(generator))


def _draw_flips(n: int, p: float, generator) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=_gen_device(generator)) < p


def _draw_centers(n: int, h: int, w: int, generator) -> torch.Tensor:
    dev = _gen_device(generator)
    cy = torch.randint(0, h, (n,), generator=generator, device=dev)
    cx = torch.randint(0, w, (n,), generator=generator, device=dev)
    return torch.stack([cy, cx], 1)


def _crop_flip(x: torch.Tensor, padding: int, offsets: torch.Tensor | None,
               flips: torch.Tensor | None) -> torch.Tensor:
    """Crop each image at its offset from the zero-padded batch and mirror the flagged ones,
    as ONE gather: output pixel (y, x) reads padded (dy + y, dx + x), or (dy + y, dx + W-1-x)
    when flipped, i.e. exactly crop-then-flip."""
    n, c, h, w = x.shape
    dev = x.device
    if offsets is None:
        offsets = torch.full((n, 2), padding, dtype=torch.long)
    offsets = offsets.to(dev)
    xp = F.pad(x, (padding, padding, padding, padding)) if padding > 0 else x
    hp, wp = h + 2 * padding, w + 2 * padding
    rows = offsets[:, :1] + torch.arange(h, device=dev)  # [n, h]
    cols = offsets[:, 1:] + torch.arange(w, device=dev)  # [n, w]
    if flips is not None:
        cols = torch.where(flips.to(dev)[:, None], cols.flip(1), cols)
    flat = (rows[:, :, None] * wp + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    return xp.reshape(n, c, hp * wp).gather(2, flat).view(n, c, h, w)


def random_crop(x: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None,
                offsets: torch.Tensor | None = None) -> torch.Tensor:
    """Zero-pad every image by ``padding`` and crop back to its size at a random offset
    (uniform over the 2*padding+1 positions per axis, like torchvision's RandomCrop).
    ``offsets`` ([N, 2] dy, dx) overrides the random draw."""
    if offsets is None:
        offsets = _draw_offsets(x.shape[0], padding, generator)
    return _crop_flip(x, padding, offsets, None)


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.5,
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mirror (left-right) each image with probability ``p``; ``mask`` ([N] bool) overrides."""
    if mask is None:
        mask = _draw_flips(x.shape[0], p, generator)
    return torch.where(mask.to(x.device).view(-1, 1, 1, 1), x.flip(3), x)


def _cutout_mask(shape, length: int, centers: torch.Tensor, device) -> torch.Tensor:
    n, _, h, w = shape
    centers = centers.to(device)
    # Square of side `length` whose top-left is center - length//2, clipped at the borders
    # (DARTS' Cutout: for even lengths identical to its [c - L/2, c + L/2) window).
    y1 = centers[:, 0] - length // 2
    x1 = centers[:, 1] - length // 2
    ys = torch.arange(h, device=device)
    xs = torch.arange(w, device=device)
    in_y = (ys >= y1[:, None]) & (ys < (y1 + length)[:, None])  # [n, h]
    in_x = (xs >= x1[:, None]) & (xs < (x1 + length)[:, None])  # [n, w]
    return (in_y[:, :, None] & in_x[:, None, :]).unsqueeze(1)  # [n, 1, h, w]


def cutout(x: torch.Tensor, length: int, generator: torch.Generator | None = None,
           centers: torch.Tensor | None = None, fill: float = 0.0) -> torch.Tensor:
    """Set one ``length`` x ``length`` square per image (centre uniform over the image,
    clipped at the borders) to ``fill``. ``centers`` ([N, 2] cy, cx) overrides the draw."""
    if length <= 0:
        return x
    if centers is None:
        centers = _draw_centers(x.shape[0], x.shape[2], x.shape[3], generator)
    return x.masked_fill(_cutout_mask(x.shape, length, centers, x.device), fill)


def _draw_jitter(n: int, jitter: Sequence[float], generator) -> torch.Tensor:
    """[n, 4] per-image factors: brightness, contrast and saturation uniform in [1 - a, 1 + a]
    (not below 0) and a hue shift uniform in [-h, h], for jitter = (a_b, a_c, a_s, h)."""
    b, c, s, h = (float(v) for v in jitter)
    lo = torch.tensor([max(0.0, 1 - b), max(0.0, 1 - c), max(0.0, 1 - s), -h])
    hi = torch.tensor([1 + b, 1 + c, 1 + s, h])
    u = torch.rand(n, 4, generator=generator, device=_gen_device(generator))
    return lo.to(u.device) + u * (hi - lo).to(u.device)


_GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as PIL's and torchvision's grayscale


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (x * x.new_tensor(_GRAY).view(1, 3, 1, 1)).sum(1, keepdim=True)


def _shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate each RGB image's hue (in [0, 1] turns) by its shift, through HSV. Back to RGB by
    the closed form c(n) = v - v s clamp(min(k, 4 - k), 0, 1), k = (n + 6 h) mod 6, n = 5, 3, 1
    for R, G, B: elementwise, with no [6, ...] stack of the six hue sectors (3.7 GB for an
    ImageNet batch of 1024)."""
    v, _ = x.max(1)
    minc, _ = x.min(1)
    delta = v - minc
    sat = torch.where(v > 0, delta / v.clamp_min(1e-12), torch.zeros_like(v))
    d = torch.where(delta > 0, delta, torch.ones_like(delta))
    r, g, b = ((v - c) / d for c in x.unbind(1))  # distances from the max, per channel
    h = torch.where(x[:, 0] == v, b - g, torch.where(x[:, 1] == v, 2 + r - b, 4 + g - r))
    h = torch.where(delta > 0, h / 6, torch.zeros_like(h))
    h6 = torch.remainder(h + shift.view(-1, 1, 1), 1.0) * 6
    vs = v * sat
    out = []
    for n in (5, 3, 1):
        k = torch.remainder(h6 + n, 6)
        out.append(v - vs * torch.minimum(k, 4 - k).clamp_(0, 1))
    return torch.stack(out, 1)


def color_jitter(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast, saturation, then hue, per image ([n, 4] ``factors`` from
    ``_draw_jitter``), as torchvision's ColorJitter defines each: scale by b; blend with the
    image's mean grey level by c; blend with its greyscale by s; rotate its hue by h turns.
    Saturation and hue leave single-channel images alone. uint8 in, uint8 out (rounded, as
    PIL's uint8 pipeline); float in [0, 1] in, float out."""
    uint8 = x.dtype == torch.uint8
    y = x.to(torch.float32) / 255 if uint8 else x.to(torch.float32, copy=True)
    f = factors.to(y.device, torch.float32)
    b, c, s = (f[:, k].view(-1, 1, 1, 1) for k in range(3))
    rgb = y.shape[1] == 3
    y = y.mul_(b).clamp_(0, 1)
    mean = (_gray(y) if rgb else y).mean(dim=(1, 2, 3), keepdim=True)
    y = (y - mean).mul_(c).add_(mean).clamp_(0, 1)
    if rgb:
        g = _gray(y)
        y = (y - g).mul_(s).add_(g).clamp_(0, 1)
        y = _shift_hue(y, f[:, 3])
    return y.mul_(255).round_().to(torch.uint8) if uint8 else y


def _affine(mean, std, channels: int, device, scale: float):
    mean = torch.as_tensor(mean if mean is not None else 0.0, dtype=torch.float32)
    std = torch.as_tensor(std if std is not None else 1.0, dtype=torch.float32)
    mean = mean.expand(channels) if mean.dim() == 0 else mean
    std = std.expand(channels) if std.dim() == 0 else std
    return (scale / std).view(1, -1, 1, 1).to(device), (mean / std).view(1, -1, 1, 1).to(device)


def normalize(x: torch.Tensor, mean: Sequence[float] | None = None,
              std: Sequence[float] | None = None) -> torch.Tensor:
    """float32 ``(x/255 - mean) / std`` for uint8 input, ``(x - mean) / std`` for float input
    (taken to be in [0, 1]); ``mean``/``std`` are per channel. Never modifies ``x``."""
    scale = 1.0 / 255.0 if x.dtype == torch.uint8 else 1.0
    try:  # the constants of a (mean, std) once per device, not two host-to-device copies a batch
        key = (_hashable(mean), _hashable(std), x.shape[1], str(x.device), scale)
    except TypeError:  # statistics given as tensors: no key, build them
        key = None
    pair = _AFFINE.get(key) if key is not None else None
    if pair is None:
        pair = _affine(mean, std, x.shape[1], x.device, scale)
        if key is not None and len(_AFFINE) < 64:  # a handful of data sets per process
            _AFFINE[key] = pair
    return _scale_shift(x, *pair)


_AFFINE: dict = {}


def _hashable(v):
    if v is None or isinstance(v, (int, float)):
        return v
    if isinstance(v, torch.Tensor):
        raise TypeError("a tensor")
    return tuple(float(a) for a in v)


def _scale_shift(x: torch.Tensor, mul: torch.Tensor, sub: torch.Tensor) -> torch.Tensor:
    # In place on the fresh float copy (one pass fewer); out of place when x is already
    # float32, because .to() then returns x itself.
    if x.dtype == torch.float32:
        return (x * mul).sub_(sub)
    return x.to(torch.float32).mul_(mul).sub_(sub)


class Augment:
    """Crop (zero padding ``padding``), flip, optionally colour jitter (``color_jitter``:
    brightness, contrast, saturation, hue; see :func:`color_jitter`), then optionally normalise
    and cutout, on a batch.

    The order follows DARTS: crop and flip act on raw pixels (so padding is black), cutout
    acts after normalisation (so the hole is 0 in normalised units, the mean colour). Without
    ``mean``/``std`` the output keeps the input dtype and cutout writes ``fill``.
    Random draws happen in a fixed order (offsets, flips, cutout centres), so applying
    :func:`random_crop`, :func:`random_flip`, :func:`cutout` one after another with the same
    generator state gives the same result.
    """

    def __init__(self, padding: int = 4, flip: bool = True, cutout: int = 0,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 flip_p: float = 0.5, fill: float = 0.0, color_jitter: Sequence[float] | None = None):
        self.padding, self.flip, self.cutout = int(padding), bool(flip), int(cutout)
        self.jitter = tuple(float(v) for v in color_jitter) if color_jitter else None
        self.mean, self.std = mean, std
        self.flip_p, self.fill = float(flip_p), float(fill)
        self._cache: dict = {}  # (device, channels, dtype) -> normalisation constants

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        n, c, h, w = x.shape
        offsets = _draw_offsets(n, self.padding, generator) if self.padding > 0 else None
        flips = _draw_flips(n, self.flip_p, generator) if self.flip else None
        centers = _draw_centers(n, h, w, generator) if self.cutout > 0 else None
        # Drawn last, so the crops, flips and cutouts of a run without jitter stay as they were.
        factors = _draw_jitter(n, self.jitter, generator) if self.jitter else None
        fresh = False  # whether x is our own tensor (then in-place ops are safe)
        if offsets is not None or flips is not None:
            x, fresh = _crop_flip(x, self.padding, offsets, flips), True
        if factors is not None:  # on raw pixels, as torchvision's ColorJitter before ToTensor
            x, fresh = color_jitter(x, factors), True
        if self.mean is not None or self.std is not None:
            key = (x.device, c, x.dtype)
            if key not in self._cache:
                scale = 1.0 / 255.0 if x.dtype == torch.uint8 else 1.0
                self._cache[key] = _affine(self.mean, self.std, c, x.device, scale)
            mul, sub = self._cache[key]
            x, fresh = _scale_shift(x, mul, sub), True
        if centers is not None:
            mask = _cutout_mask(x.shape, self.cutout, centers, x.device)
            x = x.masked_fill_(mask, self.fill) if fresh else x.masked_fill(mask, self.fill)
        return x

    def __repr__(self) -> str:
        return (f"Augment(padding={self.padding}, flip={self.flip}, cutout={self.cutout}, "
                f"color_jitter={self.jitter}, normalise={self.mean is not None})")


def train_augment(info, cutout: int = 0, padding: int = 4, flip: bool = True) -> Augment:
    """The standard training augmentation for an in-memory dataset described by ``info``
    (a :class:`DatasetInfo`): pad-4 crop, flip, optional cutout, normalised with its stats.
    Fashion-MNIST gets the same (flips are harmless there and keep configs uniform)."""
    return Augment(padding=padding, flip=flip, cutout=cutout, mean=info.mean, std=info.std)
