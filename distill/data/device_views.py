"""Device-side views: the loader ships uint8 canvases, the training device makes the views.

``DeviceViews(recipe=...)`` wraps ``SupervisedViews``, ``TwoViews`` or ``MultiCropViews``.
In the loader each image only becomes a fixed-size ``[3, C, C]`` uint8 canvas (resized, no
crop, no randomness) with its original size and its views' random codes, drawn under the
sample's seed: workers decode and resize, nothing more. ``ViewDataModule``'s
``on_after_batch_transfer`` then calls ``DeviceViews.apply`` on the device: every view of the
batch is cropped, flipped, coloured, blurred and solarised there with its own parameters,
as many views at a time as the batch holds. The parameters are the host recipe's for the
same codes (``augment.sample_params``), so a sample's views are a function of (seed, epoch,
index) on any device, with any batch size and under DDP; a resumed fit sees the views of
the uninterrupted one. Methods are unaware of where the views were made.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from PIL import Image
from torch import Tensor
from torchvision.ops import roi_align
from torchvision.transforms.v2 import functional as F

from distill.data.arguments import VIEWS, require_int
from distill.data.augment import ViewParams, ViewSpec, draw_codes
from distill.data.views import SupervisedViews, ViewPlan, ViewRecipe, to_uint8
from distill.errors import ConfigError


class Canvas(NamedTuple):
    """One sample (or, collated, a batch) of the device recipe's loader.

    Attributes:
        image: ``[3, C, C]`` uint8 canvas, or ``[3, H, W]`` without a canvas size (batch:
            ``[B, 3, C, C]``).
        size: ``[2]`` int32 (height, width) of the original image (batch: ``[B, 2]``).
        codes: ``[V, NUM_UNIFORMS]`` int32 random codes of its views (batch: ``[B, V, ...]``).
    """

    image: Tensor
    size: Tensor
    codes: Tensor


class CanvasTransform:
    """The loader side of ``DeviceViews``: an image to its ``Canvas`` (picklable).

    The image is resized to ``canvas_size`` squared without keeping its aspect ratio: crops
    are drawn in the original geometry and mapped onto the canvas, so nothing is cut off.

    Args:
        num_views: Views per image (codes drawn).
        canvas_size: Canvas side; ``None`` keeps each image's size (all must be equal).
    """

    def __init__(self, num_views: int, canvas_size: int | None) -> None:
        self.num_views = num_views
        self.canvas_size = canvas_size
        self._first_size: tuple[int, int] | None = None

    def __call__(self, image: Image.Image | Tensor) -> Canvas:
        image = to_uint8(image)
        height, width = image.shape[-2:]
        if self.canvas_size is not None:
            if (height, width) != (self.canvas_size, self.canvas_size):
                image = F.resize(image, [self.canvas_size, self.canvas_size], antialias=True)
        elif self._first_size not in (None, (height, width)):
            raise ConfigError(
                f"DeviceViews: images of different sizes ({self._first_size[0]}x"
                f"{self._first_size[1]} and {height}x{width}) need a common canvas; set "
                f"data.init_args.views.init_args.canvas_size (e.g. 256)."
            )
        self._first_size = (height, width)
        size = torch.tensor([height, width], dtype=torch.int32)
        return Canvas(image, size, draw_codes(self.num_views))


class DeviceViews(ViewRecipe):
    """Makes a recipe's views batched on the training device instead of in loader workers.

    The augmentations and their distributions are the wrapped recipe's; crops are resampled
    bilinearly with ``roi_align`` (a crop smaller than its output is upsampled, a larger one
    averaged over ``ceil(crop / output)`` samples per pixel in each direction), where the
    host recipes resize with torchvision's antialiased bilinear or bicubic kernels. Per view
    size ``apply`` reads a few row counts back from the device (the rows to jitter, rotate,
    grey, blur and solarise, each op running on its rows only).

    Args:
        recipe: The views to make: ``SupervisedViews``, ``TwoViews`` or ``MultiCropViews``.
        canvas_size: Side of the square uint8 canvas each image is resized to in the
            loader (e.g. 256 for ImageNet); ``None`` keeps the images' own size, which must
            then be one size for all images (CIFAR, STL-10).
    """

    def __init__(self, recipe: ViewRecipe, canvas_size: int | None = None) -> None:
        try:
            specs = recipe.specs()
        except NotImplementedError:
            specs = None
        if specs is None or isinstance(recipe, DeviceViews):
            raise ConfigError(
                f"DeviceViews(recipe={type(recipe).__name__}): the recipe must list its views "
                f"(SupervisedViews, TwoViews or MultiCropViews)."
            )
        if canvas_size is not None:
            require_int(f"{VIEWS}.canvas_size", canvas_size, 1)
        self.recipe = recipe
        self.canvas_size = canvas_size
        self._plan = ViewPlan(specs)

    def __getattr__(self, name: str):
        # The wrapped recipe's settings (DINO reads ``num_global``).
        if name.startswith("_") or name in ("recipe", "canvas_size"):
            raise AttributeError(name)
        return getattr(self.recipe, name)

    @property
    def num_views(self) -> int:  # type: ignore[override]
        return self.recipe.num_views

    def specs(self) -> list[ViewSpec]:
        return list(self._plan.specs)

    def build(self, mean: Sequence[float], std: Sequence[float]) -> CanvasTransform:
        """The loader's transform (the normalisation is applied on the device)."""
        return CanvasTransform(len(self._plan.specs), self.canvas_size)

    def apply(
        self, batch: Canvas, mean: Sequence[float], std: Sequence[float]
    ) -> Tensor | list[Tensor]:
        """The views of a batch of canvases, on the canvases' device.

        Args:
            batch: Collated ``Canvas``: images ``[B, 3, C, C]``, sizes ``[B, 2]``, codes
                ``[B, V, NUM_UNIFORMS]``.
            mean: Per-channel normalisation mean.
            std: Per-channel normalisation standard deviation.

        Returns:
            ``[B, 3, S, S]`` per view, globals first (one tensor for ``SupervisedViews``).
        """
        # The canvases, then mirrored (a flipped view is a crop of the mirrored canvas).
        canvases = torch.cat([batch.image, batch.image.flip(-1)]).float().div_(255)
        mean = canvases.new_tensor(mean).view(1, -1, 1, 1)
        std = canvases.new_tensor(std).view(1, -1, 1, 1)

        def crop_group(start: int, stop: int, params: ViewParams) -> Tensor:
            spec, sizes = self._plan.specs[start], batch.size.repeat(stop - start, 1)
            return _crop(canvases, params.box, params.flip, sizes, spec.size, spec.padding)

        views = self._plan.render(batch.codes, batch.size, crop_group, mean, std)
        return views[0] if isinstance(self.recipe, SupervisedViews) else views


def _crop(
    canvases: Tensor, box: Tensor, flip: Tensor, size: Tensor, output: int, padding: int | None
) -> Tensor:
    """``[R, 3, output, output]`` crops, row r from canvas r % B, mirrored where ``flip``.

    Args:
        canvases: ``[2B, 3, H, W]`` floats: the batch's canvases, then the same mirrored.
        box: ``[R, 4]`` (top, left, height, width) in original pixels.
        flip: ``[R]`` bool, mirror the crop (crop the mirrored canvas at the mirrored box).
        size: ``[R, 2]`` original (height, width) of each row's image.
        output: Output side.
        padding: The random crop's zero padding (``None`` for resized crops).
    """
    scale = box.new_tensor(canvases.shape[-2:]) / size  # original pixels -> canvas pixels
    top, left = box[:, 0] * scale[:, 0], box[:, 1] * scale[:, 1]
    bottom, right = top + box[:, 2] * scale[:, 0], left + box[:, 3] * scale[:, 1]
    if padding is not None:  # zeros around the canvas, also read just outside the padding
        padding += max(0, output - min(canvases.shape[-2:]))  # RandomCrop's pad_if_needed
        canvases = torch.nn.functional.pad(canvases, (padding,) * 4)
        top, left, bottom, right = (edge + padding for edge in (top, left, bottom, right))
    width = canvases.shape[-1]
    left, right = torch.where(flip, width - right, left), torch.where(flip, width - left, right)
    index = torch.arange(len(box), device=box.device) % (len(canvases) // 2)
    index = index + flip * (len(canvases) // 2)
    rois = torch.stack([index.to(box.dtype), left, top, right, bottom], 1).to(canvases.dtype)
    return roi_align(canvases, rois, (output, output), sampling_ratio=-1, aligned=True)
