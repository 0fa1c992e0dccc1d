"""View recipes: how one training image becomes one view or a list of views.

A recipe is chosen per DataModule (``data.init_args.views``) and is shared by all of them:
``SupervisedViews`` yields one tensor, ``TwoViews`` and ``MultiCropViews`` yield a list of
tensors (globals first). A recipe lists its views as ``ViewSpec``s with the settings of
lightly's SimCLR/MoCo-v2 and DINO view transforms; ``build`` makes the host-side transform
(``HostViews``), and ``DeviceViews`` (``device_views.py``) runs the same specs batched on the
training device instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from PIL import Image
from torch import Tensor
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from distill.data.arguments import (
    VIEWS,
    require_int,
    require_number,
    require_numbers,
    require_probability,
    require_scale,
)
from distill.data.augment import (
    ViewParams,
    ViewSpec,
    blur_radius,
    draw_codes,
    group_params,
    spec_table,
)
from distill.data.image_ops import photometric

Transform = Callable[[object], torch.Tensor | list[torch.Tensor]]


def to_uint8(image: Image.Image | Tensor) -> Tensor:
    """A PIL image or ``[C, H, W]`` uint8 tensor as a ``[3, H, W]`` uint8 RGB tensor."""
    if isinstance(image, Image.Image):
        image = F.pil_to_tensor(image if image.mode == "RGB" else image.convert("RGB"))
    if image.dtype != torch.uint8 or image.ndim != 3:
        raise TypeError(f"expected a PIL image or a [C, H, W] uint8 tensor, got {image.dtype}")
    return image.expand(3, -1, -1) if image.shape[0] == 1 else image


def size_groups(specs: Sequence[ViewSpec]) -> list[tuple[int, int]]:
    """``(start, stop)`` of each run of consecutive views with one size and interpolation."""
    keys = [(spec.size, spec.interpolation) for spec in specs]
    starts = [i for i, key in enumerate(keys) if i == 0 or key != keys[i - 1]]
    return list(zip(starts, [*starts[1:], len(keys)], strict=True))


def normalize(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``(images - mean) / std`` in place in one pass; mean and std ``[1, 3, 1, 1]``."""
    return torch.addcmul(-mean / std, images, 1 / std, out=images)


class Prepared(NamedTuple):
    """One sample ready for a batched view transform: its uint8 image and its random codes."""

    image: Tensor
    codes: Tensor


class ViewPlan:
    """How a list of view specs is made, group by group (consecutive views of one size
    together): the loop ``HostViews`` and ``DeviceViews`` share; they differ in the crop."""

    def __init__(self, specs: Sequence[ViewSpec]) -> None:
        self.specs = list(specs)
        self.table = spec_table(self.specs)
        self.groups = size_groups(self.specs)
        self.radius = blur_radius(self.specs)

    def render(
        self,
        codes: Tensor,
        sizes: Tensor,
        crop_group: Callable[[int, int, ViewParams], Tensor],
        mean: Tensor,
        std: Tensor,
    ) -> list[Tensor]:
        """``[B, 3, S, S]`` per view, from codes ``[B, V, NUM_UNIFORMS]`` and image sizes
        ``[B, 2]``; ``crop_group(start, stop, params)`` gives views ``start:stop`` as float
        crops in [0, 1], ``[(stop - start) * B, 3, S, S]``, row r from sample r % B."""
        count = len(codes)
        views: list[Tensor] = []
        for start, stop in self.groups:
            params = group_params(codes, sizes, self.table, start, stop)
            images = photometric(crop_group(start, stop, params), params, self.radius)
            images = normalize(images, mean, std)
            views.extend(images.view(stop - start, count, *images.shape[1:]).unbind(0))
        return views


class HostViews:
    """The training transform of a recipe, made in the loader workers a batch at a time.

    ``prepare`` runs per sample under the sample's seed: the image becomes one
    ``[3, H, W]`` uint8 tensor and draws its views' codes. ``apply`` makes the views of a
    whole batch: each view is cropped, resized (antialiased) and flipped on uint8 by
    torchvision's v2 kernels; the views of one size from every sample are stacked
    ``[B * V, 3, S, S]``, converted to float once, coloured, blurred and solarised row by
    row (``image_ops.photometric``; torchvision's uint8 colour kernels take one factor per
    call and convert to float inside each op), and normalised: the batch's views, collated.
    ``IndexedDataset.__getitems__`` calls the two; calling the transform on one image does
    both and returns that image's views.

    Args:
        specs: One spec per view, in output order.
        mean: Per-channel normalisation mean.
        std: Per-channel normalisation standard deviation.
        as_list: Return a list of views per sample (else the single view's tensor).
    """

    def __init__(
        self,
        specs: Sequence[ViewSpec],
        mean: Sequence[float],
        std: Sequence[float],
        as_list: bool = True,
    ) -> None:
        self.plan = ViewPlan(specs)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.as_list = as_list

    def __call__(self, image: Image.Image | Tensor) -> Tensor | list[Tensor]:
        views = self.apply([self.prepare(image)])
        return [view[0] for view in views] if self.as_list else views[0]

    def prepare(self, image: Image.Image | Tensor) -> Prepared:
        """The sample's uint8 image and codes (call it under the sample's seed)."""
        return Prepared(to_uint8(image), draw_codes(len(self.plan.specs)))

    def apply(self, samples: Sequence[Prepared]) -> Tensor | list[Tensor]:
        """The batch's views: ``[B, 3, S, S]`` per view (one tensor unless ``as_list``)."""
        count, specs = len(samples), self.plan.specs
        sizes = torch.tensor([sample.image.shape[-2:] for sample in samples])
        codes = torch.stack([sample.codes for sample in samples])  # [B, V, NUM_UNIFORMS]

        def crop_group(start: int, stop: int, params: ViewParams) -> Tensor:
            boxes, flips = params.box.tolist(), params.flip.tolist()
            crops = [  # row r: view start + r // count of sample r % count
                crop(samples[row % count].image, specs[start + row // count], box, flip)
                for row, (box, flip) in enumerate(zip(boxes, flips, strict=True))
            ]
            return torch.stack(crops).float().div_(255)

        views = self.plan.render(codes, sizes, crop_group, self.mean, self.std)
        return views if self.as_list else views[0]


def crop(image: Tensor, spec: ViewSpec, box: Sequence[float], flip: bool) -> Tensor:
    """``[3, S, S]`` uint8 view of ``[3, H, W]``: the box resized (or cut out, padded), flipped."""
    top, left, height, width = (int(value) for value in box)
    if spec.padding is not None:  # zeros outside the image, as RandomCrop's padding
        view = F.crop(image, top, left, height, width)
    else:
        mode, size = InterpolationMode(spec.interpolation), [spec.size, spec.size]
        view = F.resized_crop(image, top, left, height, width, size, mode, antialias=True)
    return view.flip(-1) if flip else view


class ViewRecipe:
    """Base class: ``specs()`` lists the views, ``build(mean, std)`` makes the transform."""

    #: Number of views the transform returns (1 means a single tensor, not a list).
    num_views: int = 1

    def specs(self) -> list[ViewSpec]:
        """One ``ViewSpec`` per view, in output order."""
        raise NotImplementedError

    def build(self, mean: Sequence[float], std: Sequence[float]) -> Transform:
        """Returns the transform from a PIL image to a view tensor or a list of them."""
        return HostViews(self.specs(), mean, std, as_list=True)


class SupervisedViews(ViewRecipe):
    """Standard supervised augmentation: random crop (with padding) or random resized crop, flip.

    Args:
        crop_size: Output size in pixels.
        padding: Zero padding before a random crop (CIFAR recipe: 4); ignored with
            ``random_resized_crop``.
        random_resized_crop: Use RandomResizedCrop (ImageNet recipe) instead of a padded crop.
        min_scale: Smallest crop area fraction for the random resized crop.
        hflip_prob: Probability of a horizontal flip.
    """

    num_views = 1

    def __init__(
        self,
        crop_size: int = 32,
        padding: int = 4,
        random_resized_crop: bool = False,
        min_scale: float = 0.08,
        hflip_prob: float = 0.5,
    ) -> None:
        require_int(f"{VIEWS}.crop_size", crop_size, 1)
        require_int(f"{VIEWS}.padding", padding, 0)
        require_number(f"{VIEWS}.min_scale", min_scale, 0.0, 1.0, low_open=True)
        require_probability(f"{VIEWS}.hflip_prob", hflip_prob)
        self.crop_size = crop_size
        self.padding = padding
        self.random_resized_crop = random_resized_crop
        self.min_scale = min_scale
        self.hflip_prob = hflip_prob

    def specs(self) -> list[ViewSpec]:
        return [
            ViewSpec(
                size=self.crop_size,
                scale=(self.min_scale, 1.0),
                padding=None if self.random_resized_crop else self.padding,
                hflip_prob=self.hflip_prob,
            )
        ]

    def build(self, mean: Sequence[float], std: Sequence[float]) -> Transform:
        return HostViews(self.specs(), mean, std, as_list=False)


class TwoViews(ViewRecipe):
    """MoCo-v2 / SimCLR augmentation: two random resized crops with colour distortion.

    Defaults are MoCo-v2's (colour jitter 0.4, hue 0.1, grayscale 0.2, blur 0.5, crop scale
    0.2-1); CIFAR-size configs usually set ``blur_prob: 0``. The settings of lightly's
    ``SimCLRViewTransform`` with ``cj_strength=1``: bilinear crops, blur sigma 0.1-2 px.

    Args:
        crop_size: Output size in pixels.
        min_scale: Smallest crop area fraction.
        color_jitter: Brightness/contrast/saturation strength (hue is a quarter of it),
            in [0, 2].
        color_jitter_prob: Probability of applying colour jitter.
        gray_prob: Probability of converting to grayscale.
        blur_prob: Probability of a Gaussian blur.
        hflip_prob: Probability of a horizontal flip.
    """

    num_views = 2

    def __init__(
        self,
        crop_size: int = 32,
        min_scale: float = 0.2,
        color_jitter: float = 0.4,
        color_jitter_prob: float = 0.8,
        gray_prob: float = 0.2,
        blur_prob: float = 0.5,
        hflip_prob: float = 0.5,
    ) -> None:
        require_int(f"{VIEWS}.crop_size", crop_size, 1)
        require_number(f"{VIEWS}.min_scale", min_scale, 0.0, 1.0, low_open=True)
        # The hue jitter, a quarter of the strength, must stay within half a turn.
        require_number(f"{VIEWS}.color_jitter", color_jitter, 0.0, 2.0)
        for key, probability in (
            ("color_jitter_prob", color_jitter_prob),
            ("gray_prob", gray_prob),
            ("blur_prob", blur_prob),
            ("hflip_prob", hflip_prob),
        ):
            require_probability(f"{VIEWS}.{key}", probability)
        self.crop_size = crop_size
        self.min_scale = min_scale
        self.color_jitter = color_jitter
        self.color_jitter_prob = color_jitter_prob
        self.gray_prob = gray_prob
        self.blur_prob = blur_prob
        self.hflip_prob = hflip_prob

    def specs(self) -> list[ViewSpec]:
        strength = self.color_jitter
        view = ViewSpec(
            size=self.crop_size,
            scale=(self.min_scale, 1.0),
            hflip_prob=self.hflip_prob,
            jitter=(strength, strength, strength, strength / 4),
            jitter_prob=self.color_jitter_prob,
            gray_prob=self.gray_prob,
            blur_prob=self.blur_prob,
        )
        return [view, view]


class MultiCropViews(ViewRecipe):
    """DINO multi-crop: ``num_global`` global crops then ``num_local`` small local crops.

    As in DINO, the first global view is always blurred, the second is blurred with
    probability 0.1 and solarised with probability 0.2, local views are blurred with
    probability 0.5. Defaults are CIFAR-size (32 px globals, 16 px locals); the ImageNet
    recipe is ``global_size=224, local_size=96, num_local=10``. The settings of lightly's
    ``DINOViewTransform``: bicubic crops, colour jitter (0.4, 0.4, 0.2, 0.1) with
    probability 0.8, grayscale 0.2, blur sigma 0.1-2 px.

    Args:
        num_global: Number of global crops (the teacher's views), at least 1.
        num_local: Number of local crops (student only).
        global_size: Global crop size in pixels.
        local_size: Local crop size in pixels.
        global_scale: Area fraction range of the global crops.
        local_scale: Area fraction range of the local crops.
        color_jitter_strength: Multiplier of DINO's colour jitter (0.4, 0.4, 0.2, 0.1), in
            [0, 5].
        blur_probs: Blur probability of (first global, other globals, locals); CIFAR-size
            configs usually set all three to 0.
        solarization_prob: Solarisation probability of the second and later globals.
    """

    def __init__(
        self,
        num_global: int = 2,
        num_local: int = 6,
        global_size: int = 32,
        local_size: int = 16,
        global_scale: tuple[float, float] = (0.4, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.4),
        color_jitter_strength: float = 1.0,
        blur_probs: tuple[float, float, float] = (1.0, 0.1, 0.5),
        solarization_prob: float = 0.2,
    ) -> None:
        require_int(f"{VIEWS}.num_global", num_global, 1)  # the teacher's views
        require_int(f"{VIEWS}.num_local", num_local, 0)
        require_int(f"{VIEWS}.global_size", global_size, 1)
        require_int(f"{VIEWS}.local_size", local_size, 1)
        require_scale(f"{VIEWS}.global_scale", global_scale)
        require_scale(f"{VIEWS}.local_scale", local_scale)
        # The hue jitter, a tenth of the strength, must stay within half a turn.
        require_number(f"{VIEWS}.color_jitter_strength", color_jitter_strength, 0.0, 5.0)
        require_numbers(f"{VIEWS}.blur_probs", blur_probs, 3, 0.0, 1.0)
        require_probability(f"{VIEWS}.solarization_prob", solarization_prob)
        self.num_global = num_global
        self.num_local = num_local
        self.global_size = global_size
        self.local_size = local_size
        self.global_scale = tuple(global_scale)
        self.local_scale = tuple(local_scale)
        self.color_jitter_strength = color_jitter_strength
        self.blur_probs = tuple(blur_probs)
        self.solarization_prob = solarization_prob

    @property
    def num_views(self) -> int:  # type: ignore[override]
        return self.num_global + self.num_local

    def _view(self, size: int, scale: tuple, blur: float, solarize: float) -> ViewSpec:
        strength = self.color_jitter_strength
        return ViewSpec(
            size=size,
            scale=scale,
            jitter=(0.4 * strength, 0.4 * strength, 0.2 * strength, 0.1 * strength),
            jitter_prob=0.8,
            gray_prob=0.2,
            blur_prob=blur,
            solarize_prob=solarize,
            interpolation="bicubic",
        )

    def specs(self) -> list[ViewSpec]:
        first_blur, other_blur, local_blur = self.blur_probs
        views = [self._view(self.global_size, self.global_scale, first_blur, 0.0)]
        views += [
            self._view(self.global_size, self.global_scale, other_blur, self.solarization_prob)
        ] * (self.num_global - 1)
        views += [self._view(self.local_size, self.local_scale, local_blur, 0.0)] * self.num_local
        return views


def eval_transform(
    image_size: int, mean: Sequence[float], std: Sequence[float], resize: int | None = None
) -> Transform:
    """Un-augmented transform for evaluation: resize, centre crop, normalise."""
    return T.Compose(
        [
            T.Resize(resize or image_size),
            T.CenterCrop(image_size),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )
