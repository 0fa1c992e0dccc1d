"""Per-view augmentation parameters: what the view recipes draw, and how.

A view's random choices are a function of ``NUM_UNIFORMS`` integer codes drawn under the
sample's seed (``draw_codes``), so they are a function of (seed, epoch, index) wherever and
with whatever other samples the view is made. ``sample_params`` turns the codes of many
views at once into their parameters, on the host (``HostViews``) or on the training device
(``DeviceViews``) alike.

The distributions are those of torchvision's ``RandomResizedCrop`` (ten tries, then the
central fallback) or ``RandomCrop`` with padding, ``RandomHorizontalFlip``, ``ColorJitter``
inside ``RandomApply`` (factors uniform in ``[max(0, 1 - s), 1 + s]``, hue in ``[-h, h]``,
the four adjustments in a random order per view), ``RandomGrayscale``, and lightly's
``GaussianBlur`` (sigma uniform in ``blur_sigma``) and ``RandomSolarization``, as lightly's
SimCLR, MoCo-v2 and DINO view transforms compose them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from distill.data.arguments import (
    require_int,
    require_numbers,
    require_probability,
    require_scale,
)
from distill.errors import ConfigError

#: Random codes per view: crop 10 x (area, log-ratio) tries + (top, left), flip, jitter
#: (apply, 4 factors, 4 order keys), grayscale, blur (apply, sigma), solarize.
NUM_UNIFORMS = 36
CODE_BITS = 24  # int32 codes in [0, 2**24): exact in float32, and never cast by precision plugins
_TRIES = 10
_TOP, _LEFT, _FLIP, _JITTER, _FACTORS, _ORDER = 20, 21, 22, 23, 24, 28
_GRAY, _BLUR, _SIGMA, _SOLARIZE = 32, 33, 34, 35
#: Brightness, contrast, saturation factors and hue shift that change nothing.
IDENTITY_FACTORS = (1.0, 1.0, 1.0, 0.0)


@dataclass(frozen=True)
class ViewSpec:
    """How one view is drawn (see the module docstring for the distributions).

    Args:
        size: Output side in pixels.
        scale: Area fraction range of the random resized crop.
        ratio: Aspect ratio (width / height) range of the random resized crop.
        padding: Zero padding of a plain random crop of ``size`` instead of the resized crop.
        hflip_prob: Probability of a horizontal flip.
        jitter: Colour jitter strengths (brightness, contrast, saturation, hue).
        jitter_prob: Probability of applying the colour jitter.
        gray_prob: Probability of converting to grayscale.
        blur_prob: Probability of a Gaussian blur.
        blur_sigma: Range of the blur's standard deviation in output pixels.
        solarize_prob: Probability of solarising (inverting values >= 128 of 255).
        interpolation: "bilinear" or "bicubic" (host crops; device crops are bilinear).
    """

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    padding: int | None = None
    hflip_prob: float = 0.5
    jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    jitter_prob: float = 0.0
    gray_prob: float = 0.0
    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_prob: float = 0.0
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        # The recipes check their own arguments by their keys; this catches a spec built
        # directly (a recipe of one's own) before a crop or a colour op fails on it.
        require_int("ViewSpec.size", self.size, 1)
        require_scale("ViewSpec.scale", self.scale)
        require_numbers("ViewSpec.ratio", self.ratio, 2, low=0.0, low_open=True)
        if self.padding is not None:
            require_int("ViewSpec.padding", self.padding, 0)
        require_numbers("ViewSpec.jitter", self.jitter, 4)
        require_numbers("ViewSpec.blur_sigma", self.blur_sigma, 2, low=0.0, low_open=True)
        for name in ("hflip_prob", "jitter_prob", "gray_prob", "blur_prob", "solarize_prob"):
            require_probability(f"ViewSpec.{name}", getattr(self, name))
        for name in ("ratio", "blur_sigma"):
            if getattr(self, name)[0] > getattr(self, name)[1]:
                value = getattr(self, name)
                raise ConfigError(f"ViewSpec.{name}={value!r}; valid: (min, max), min <= max")
        if min(self.jitter[:3]) < 0 or not 0 <= self.jitter[3] <= 0.5:
            raise ConfigError(
                f"ViewSpec.jitter={self.jitter!r}; valid: brightness, contrast and saturation "
                f">= 0, hue in [0, 0.5]"
            )
        if self.interpolation not in ("bilinear", "bicubic"):
            raise ConfigError(
                f"ViewSpec.interpolation={self.interpolation!r}; valid: bilinear, bicubic"
            )

    @property
    def photometric(self) -> bool:
        """Whether the view has any colour, blur or solarisation op."""
        probabilities = (self.jitter_prob, self.gray_prob, self.blur_prob, self.solarize_prob)
        return any(probability > 0 for probability in probabilities)

    def row(self) -> list[float]:
        """The spec as the numbers ``sample_params`` reads (``COLUMNS``)."""
        (b, c, s, h), (low, high) = self.jitter, self.ratio
        padding = -1 if self.padding is None else self.padding
        ranges = [(max(0.0, 1 - v), 1 + v) for v in (b, c, s)]
        return [
            *self.scale, low, high, math.log(low), math.log(high), padding, self.hflip_prob,
            *(bound for pair in ranges for bound in pair), h, self.jitter_prob,
            self.gray_prob, self.blur_prob, *self.blur_sigma, self.solarize_prob, self.size,
        ]  # fmt: skip


#: The columns of a spec table.
COLUMNS = (
    "scale_min", "scale_max", "ratio_min", "ratio_max", "log_ratio_min", "log_ratio_max",
    "padding", "hflip_prob", "brightness_min", "brightness_max", "contrast_min",
    "contrast_max", "saturation_min", "saturation_max", "hue", "jitter_prob", "gray_prob",
    "blur_prob", "sigma_min", "sigma_max", "solarize_prob", "size",
)  # fmt: skip
_COL = {name: index for index, name in enumerate(COLUMNS)}


def spec_table(specs: list[ViewSpec]) -> Tensor:
    """``[V, len(COLUMNS)]`` float64 table of ``specs``, one row per view."""
    return torch.tensor([spec.row() for spec in specs], dtype=torch.float64)


def _column(spec: Tensor, name: str) -> Tensor:
    return spec[:, _COL[name]]


def draw_codes(num_views: int) -> Tensor:
    """``[V, NUM_UNIFORMS]`` int32 random codes from torch's generator (seeded per sample)."""
    return torch.randint(0, 1 << CODE_BITS, (num_views, NUM_UNIFORMS), dtype=torch.int32)


class ViewParams(NamedTuple):
    """The parameters of ``N`` views (one row each).

    Attributes:
        box: ``[N, 4]`` float64 crop (top, left, height, width) in source pixels; a padded
            random crop may start at negative coordinates (zeros outside the image).
        flip: ``[N]`` bool, flip horizontally.
        factors: ``[N, 4]`` float32 brightness, contrast, saturation factors and hue shift
            (1, 1, 1, 0 where the jitter is not applied).
        order: ``[N, 4]`` int64, the jitter op (0-3 as in ``factors``) applied at each slot.
        gray: ``[N]`` bool, convert to grayscale.
        sigma: ``[N]`` float32 blur standard deviation, 0 for no blur.
        solarize: ``[N]`` bool, solarise.
    """

    box: Tensor
    flip: Tensor
    factors: Tensor
    order: Tensor
    gray: Tensor
    sigma: Tensor
    solarize: Tensor

    def rows(self, start: int, stop: int) -> ViewParams:
        """The parameters of rows ``start:stop``."""
        return ViewParams(*(field[start:stop] for field in self))


def _resized_crop_boxes(u: Tensor, spec: Tensor, height: Tensor, width: Tensor) -> Tensor:
    """torchvision's ``RandomResizedCrop.make_params``, one row per view: ``[N, 4]``."""
    scale_min, scale_max = _column(spec, "scale_min")[:, None], _column(spec, "scale_max")[:, None]
    ratio_min, ratio_max = _column(spec, "log_ratio_min"), _column(spec, "log_ratio_max")
    target = (height * width)[:, None] * (scale_min + (scale_max - scale_min) * u[:, :_TRIES])
    log_ratio = ratio_min[:, None] + (ratio_max - ratio_min)[:, None] * u[:, _TRIES : 2 * _TRIES]
    w = torch.round(torch.sqrt(target * log_ratio.exp()))  # [N, tries]
    h = torch.round(torch.sqrt(target / log_ratio.exp()))
    fits = (w > 0) & (w <= width[:, None]) & (h > 0) & (h <= height[:, None])
    first = fits.to(torch.uint8).argmax(1, keepdim=True)  # the first try that fits
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    top = torch.floor(u[:, _TOP] * (height - h + 1)).clamp(max=height - h)
    left = torch.floor(u[:, _LEFT] * (width - w + 1)).clamp(max=width - w)
    # No try fits: the central crop of the whole image, clamped to the ratio range.
    in_ratio, low, high = width / height, _column(spec, "ratio_min"), _column(spec, "ratio_max")
    fallback_w = torch.where(in_ratio > high, torch.round(height * high), width)
    fallback_h = torch.where(in_ratio < low, torch.round(width / low), height)
    fallback = torch.stack(
        [(height - fallback_h) // 2, (width - fallback_w) // 2, fallback_h, fallback_w], 1
    )
    return torch.where(fits.any(1)[:, None], torch.stack([top, left, h, w], 1), fallback)


def _padded_crop_boxes(u: Tensor, spec: Tensor, height: Tensor, width: Tensor) -> Tensor:
    """torchvision's ``RandomCrop(size, padding, pad_if_needed=True)``: ``[N, 4]`` boxes that
    start in the padding (negative) where they do."""
    padding, size = _column(spec, "padding"), _column(spec, "size")
    pad_y = padding + (size - height - 2 * padding).clamp(min=0)
    pad_x = padding + (size - width - 2 * padding).clamp(min=0)
    top = torch.floor(u[:, _TOP] * (height + 2 * pad_y - size + 1)) - pad_y
    left = torch.floor(u[:, _LEFT] * (width + 2 * pad_x - size + 1)) - pad_x
    return torch.stack([top, left, size, size], 1)


def sample_params(codes: Tensor, spec: Tensor, height: Tensor, width: Tensor) -> ViewParams:
    """The parameters of ``N`` views from their codes.

    Args:
        codes: ``[N, NUM_UNIFORMS]`` int32 codes (``draw_codes``).
        spec: ``[N, len(COLUMNS)]`` float64, each view's row of ``spec_table``.
        height: ``[N]`` source image heights in pixels.
        width: ``[N]`` source image widths in pixels.
    """
    u = codes.to(torch.float64) / (1 << CODE_BITS)
    height, width = height.to(torch.float64), width.to(torch.float64)
    low = spec[:, [_COL["brightness_min"], _COL["contrast_min"], _COL["saturation_min"]]]
    high = spec[:, [_COL["brightness_max"], _COL["contrast_max"], _COL["saturation_max"]]]
    factors = low + (high - low) * u[:, _FACTORS : _FACTORS + 3]
    hue = _column(spec, "hue") * (2 * u[:, _FACTORS + 3] - 1)
    factors = torch.cat([factors, hue[:, None]], 1)
    jittered = u[:, _JITTER] < _column(spec, "jitter_prob")
    factors = torch.where(jittered[:, None], factors, factors.new_tensor(IDENTITY_FACTORS))
    sigma_min, sigma_max = _column(spec, "sigma_min"), _column(spec, "sigma_max")
    sigma = sigma_min + (sigma_max - sigma_min) * u[:, _SIGMA]
    blurred = u[:, _BLUR] < _column(spec, "blur_prob")
    return ViewParams(
        box=torch.where(
            (_column(spec, "padding") >= 0)[:, None],
            _padded_crop_boxes(u, spec, height, width),
            _resized_crop_boxes(u, spec, height, width),
        ),
        flip=u[:, _FLIP] < _column(spec, "hflip_prob"),
        factors=factors.float(),
        order=u[:, _ORDER : _ORDER + 4].argsort(dim=1, stable=True),  # uniform random permutation
        gray=u[:, _GRAY] < _column(spec, "gray_prob"),
        sigma=torch.where(blurred, sigma, 0.0).float(),
        solarize=u[:, _SOLARIZE] < _column(spec, "solarize_prob"),
    )


def group_params(codes: Tensor, sizes: Tensor, table: Tensor, start: int, stop: int) -> ViewParams:
    """The parameters of views ``start:stop`` of a batch, rows view-major.

    Args:
        codes: ``[B, V, NUM_UNIFORMS]`` int32 codes of the batch.
        sizes: ``[B, 2]`` (height, width) of each sample's image.
        table: ``[V, len(COLUMNS)]`` the views' ``spec_table``.
        start: First view of the group.
        stop: One past its last view.

    Returns:
        ``(stop - start) * B`` rows; row ``r`` is view ``start + r // B`` of sample ``r % B``.
    """
    views = stop - start
    return sample_params(
        codes[:, start:stop].transpose(0, 1).reshape(-1, NUM_UNIFORMS),
        table[start:stop].to(codes.device).repeat_interleave(len(codes), 0),
        sizes[:, 0].repeat(views),
        sizes[:, 1].repeat(views),
    )


def blur_radius(specs: Sequence[ViewSpec]) -> int:
    """Kernel taps each side for the widest blur of ``specs`` (3 sigma)."""
    blurred = [spec.blur_sigma[1] for spec in specs if spec.blur_prob > 0]
    return max((math.ceil(3 * sigma) for sigma in blurred), default=0)
