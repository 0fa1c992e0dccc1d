"""Float image ops on stacks of views, one parameter per row: images ``[N, 3, S, S]`` in [0, 1].

torchvision's float formulas (``adjust_brightness``, ``adjust_contrast``,
``adjust_saturation``, ``adjust_hue``; PIL's luma weights), a Gaussian blur with reflected
borders and PIL's solarisation threshold. Each op is a few whole-stack tensor ops whatever
``N``: per-op dispatch (a few microseconds) is paid once per stack, not once per view, which
is what makes small views cheap. ``photometric`` applies a view's ``ViewParams`` to its row.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.data.augment import IDENTITY_FACTORS, ViewParams

#: ITU-R 601-2 luma, as PIL's "L" conversion (torchvision's rgb_to_grayscale: 0.2989 for red).
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
#: Up to this side a blur is two dense matrix products (one BLAS call each); above it, sums
#: of shifted copies, as the products' S^3 cost overtakes them (one thread, 28 x 96 px views:
#: 4.2 ms against 2.9 ms; alike at 32 px).
_MATMUL_MAX_SIZE = 48
#: On the CPU, rows of at most this many pixels are processed at once: temporaries of a few
#: MB are reused by the allocator and stay in cache (a 32 x 224 px stack at once: ~4x slower).
CHUNK_PIXELS = 1 << 18
#: On accelerators larger chunks, fewer kernel launches; this bounds the temporaries' memory.
DEVICE_CHUNK_PIXELS = 1 << 24


def luma(images: Tensor) -> Tensor:
    """``[N, 1, H, W]`` luma of ``[N, 3, H, W]`` RGB images."""
    # A matrix product: a 1x1 conv2d takes 50-300x longer on CPU for a stack of images.
    weights = images.new_tensor(LUMA_WEIGHTS)
    return torch.matmul(weights, images.flatten(2)).view(len(images), 1, *images.shape[2:])


def grayscale(images: Tensor) -> Tensor:
    """Grayscale ``[N, 3, H, W]`` images in place (luma in every channel)."""
    return images.copy_(luma(images).expand_as(images))


def blend(images: Tensor, reference: Tensor, factor: Tensor) -> Tensor:
    """torchvision's ``_blend``: ``factor * images + (1 - factor) * reference`` in [0, 1].

    Brightness blends with black, contrast with the mean luma, saturation with the luma.

    Args:
        images: ``[N, 3, H, W]`` (modified in place).
        reference: Broadcastable to ``[N, 1, H, W]``.
        factor: ``[N, 1, 1, 1]``.
    """
    return torch.addcmul(reference * (1 - factor), images, factor, out=images).clamp_(0, 1)


#: Sextant centre, slope and offset of R, G, B as functions of the hue in sextants h:
#: ``clamp(slope |h - centre| + offset, 0, 1)`` is the channel of a pure hue.
_HUE_CURVES = ((3.0, 2.0, 4.0), (1.0, -1.0, -1.0), (-1.0, 2.0, 2.0))


def shift_hue(images: Tensor, shift: Tensor) -> Tensor:
    """Rotates the HSV hue of ``images`` by ``shift`` ``[N]`` turns in place (torchvision's
    adjust_hue).

    RGB -> HSV, ``h <- (h + shift) mod 1``, HSV -> RGB with each channel
    ``min + chroma * curve(6h)``; max, min and hence value and saturation are kept.
    """
    high, low = images.amax(dim=1, keepdim=True), images.amin(dim=1, keepdim=True)
    chroma = high - low
    safe = chroma.clamp(min=1e-12)
    r, g, b = images[:, 0:1], images[:, 1:2], images[:, 2:3]
    hue = torch.where(  # in sextants, as torchvision's _rgb_to_hsv (red, then green wins ties)
        high == r, (g - b) / safe, torch.where(high == g, (b - r) / safe + 2, (r - g) / safe + 4)
    )
    hue.add_(6 * shift.view(-1, 1, 1, 1))
    hue.sub_(torch.floor(hue / 6).mul_(6))  # mod 6 (remainder() is several times slower)
    centre, slope, offset = (images.new_tensor(c).view(1, 3, 1, 1) for c in _HUE_CURVES)
    curve = (hue - centre).abs_().mul_(slope).add_(offset).clamp_(0, 1)
    return torch.addcmul(low, curve, chroma, out=images)


def solarize(images: Tensor) -> Tensor:
    """PIL's ``solarize(threshold=128)`` in place: inverts the values that round to >= 128."""
    return torch.where(images >= 0.5, 1 - images, images, out=images)


def _reflect(size: int, radius: int, device: torch.device) -> Tensor:
    """``[size, 2 radius + 1]`` source index of each tap, borders reflected (radius < size)."""
    index = torch.arange(size, device=device)[:, None] + torch.arange(
        -radius, radius + 1, device=device
    )
    index = index.abs()
    return torch.where(index > size - 1, 2 * (size - 1) - index, index)


def gaussian_blur(images: Tensor, sigma: Tensor, radius: int) -> Tensor:
    """Separable Gaussian blur of square ``[N, C, S, S]`` images in place, borders reflected.

    Args:
        images: ``[N, C, S, S]``.
        sigma: ``[N]`` standard deviations in pixels, > 0.
        radius: Taps each side (3 sigma of the widest kernel keeps >= 99.7% of it).
    """
    n, _, size, _ = images.shape
    radius = min(radius, size - 1)
    taps = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    weights = torch.exp(-0.5 * (taps / sigma.view(-1, 1)) ** 2)
    weights = weights / weights.sum(1, keepdim=True)  # [N, 2 radius + 1]
    if size <= _MATMUL_MAX_SIZE:
        index = _reflect(size, radius, images.device).expand(n, -1, -1)
        matrix = images.new_zeros(n, size, size)
        matrix.scatter_add_(2, index, weights[:, None, :].expand_as(index))
        matrix = matrix.unsqueeze(1)  # [N, 1, S, S]: row i averages the taps around pixel i
        return torch.matmul(matrix @ images, matrix.transpose(2, 3), out=images)
    for dim in (3, 2):
        padding = (radius, radius, 0, 0) if dim == 3 else (0, 0, radius, radius)
        padded = F.pad(images, padding, mode="reflect")
        torch.mul(padded.narrow(dim, 0, size), weights[:, :1, None, None], out=images)
        for tap in range(1, 2 * radius + 1):
            images.addcmul_(padded.narrow(dim, tap, size), weights[:, tap, None, None, None])
    return images


def _on_rows(images: Tensor, rows: Tensor, op: Callable[..., Tensor], *args: Tensor) -> Tensor:
    """``images`` with ``op(images[rows], *args[rows])`` written to the rows of mask ``rows``.

    The ops work in place: a mask of all rows costs no copy.
    """
    index = rows.nonzero()[:, 0]
    if len(index) == len(images):
        return op(images, *args)
    if len(index):
        images[index] = op(images[index], *(arg[index] for arg in args))
    return images


def color_jitter(images: Tensor, factors: Tensor, order: Tensor) -> Tensor:
    """torchvision's ColorJitter with each row's own factors and order, in place.

    At each of the four slots every row blends with its op's reference (black for
    brightness, the mean luma for contrast, the luma for saturation; factor 1 for a row
    whose op there is the hue), then the rows whose op is the hue are rotated.

    Args:
        images: ``[N, 3, S, S]`` in [0, 1].
        factors: ``[N, 4]`` brightness, contrast, saturation factors and hue shift.
        order: ``[N, 4]`` the op (0-3, as in ``factors``) of each slot.
    """
    blend_factors = torch.cat([factors[:, :3], torch.ones_like(factors[:, :1])], 1)
    for slot in range(4):
        op = order[:, slot]
        grey = luma(images)
        contrast, saturation = (op == 1).view(-1, 1, 1, 1), (op == 2).view(-1, 1, 1, 1)
        reference = grey * saturation + grey.mean((2, 3), keepdim=True) * contrast
        images = blend(images, reference, blend_factors.gather(1, op[:, None]).view(-1, 1, 1, 1))
        images = _on_rows(images, (op == 3) & (factors[:, 3] != 0), shift_hue, factors[:, 3])
    return images


def photometric(images: Tensor, params: ViewParams, blur_radius: int) -> Tensor:
    """Colour jitter, grayscale, blur and solarisation in place, each row with its parameters.

    Args:
        images: ``[N, 3, S, S]`` in [0, 1], overwritten with the result (and returned).
        params: The ``N`` rows' parameters.
        blur_radius: Blur taps each side (``augment.blur_radius`` of the specs).
    """
    pixels = CHUNK_PIXELS if images.device.type == "cpu" else DEVICE_CHUNK_PIXELS
    rows = max(1, pixels // (images.shape[-1] * images.shape[-2]))
    for start in range(0, len(images), rows):
        chunk, chunk_params = images[start : start + rows], params.rows(start, start + rows)
        _photometric(chunk, chunk_params, blur_radius)
    return images


def _photometric(images: Tensor, params: ViewParams, blur_radius: int) -> None:
    identity = params.factors.new_tensor(IDENTITY_FACTORS)
    jittered = (params.factors != identity).any(1)
    _on_rows(images, jittered, color_jitter, params.factors, params.order)
    _on_rows(images, params.gray, grayscale)
    blur = lambda x, sigma: gaussian_blur(x, sigma, blur_radius)  # noqa: E731
    _on_rows(images, params.sigma > 0, blur, params.sigma)
    _on_rows(images, params.solarize, solarize)
