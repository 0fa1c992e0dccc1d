"""View recipes: how one training image becomes one view or a list of views.

A recipe is chosen per DataModule (``data.init_args.views``) and is shared by all of them:
``SupervisedViews`` yields one tensor, ``TwoViews`` and ``MultiCropViews`` yield a list of
tensors (globals first). The random augmentations are lightly's view transforms; a recipe
only picks their settings and receives the dataset's normalisation from the DataModule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from lightly.transforms.dino_transform import DINOViewTransform
from lightly.transforms.simclr_transform import SimCLRViewTransform
from torchvision import transforms as T

Transform = Callable[[object], torch.Tensor | list[torch.Tensor]]


def _normalize(mean: Sequence[float], std: Sequence[float]) -> dict[str, list[float]]:
    return {"mean": list(mean), "std": list(std)}


class ViewRecipe:
    """Base class: ``build(mean, std)`` returns the training transform of a DataModule."""

    #: Number of views the transform returns (1 means a single tensor, not a list).
    num_views: int = 1

    def build(self, mean: Sequence[float], std: Sequence[float]) -> Transform:
        """Returns the transform from a PIL image to a view tensor or a list of them."""
        raise NotImplementedError


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
        self.crop_size = crop_size
        self.padding = padding
        self.random_resized_crop = random_resized_crop
        self.min_scale = min_scale
        self.hflip_prob = hflip_prob

    def build(self, mean: Sequence[float], std: Sequence[float]) -> Transform:
        if self.random_resized_crop:
            crop = T.RandomResizedCrop(self.crop_size, scale=(self.min_scale, 1.0))
        else:
            crop = T.RandomCrop(self.crop_size, padding=self.padding, pad_if_needed=True)
        return T.Compose(
            [
                crop,
                T.RandomHorizontalFlip(self.hflip_prob),
                T.ToTensor(),
                T.Normalize(mean, std),
            ]
        )


class _ListOfViews:
    """Applies one transform per view and returns the list (picklable for worker processes)."""

    def __init__(self, view_transforms: list[Callable]) -> None:
        self.view_transforms = view_transforms

    def __call__(self, image: object) -> list[torch.Tensor]:
        return [transform(image) for transform in self.view_transforms]


class TwoViews(ViewRecipe):
    """MoCo-v2 / SimCLR augmentation: two random resized crops with colour distortion.

    Defaults are MoCo-v2's (colour jitter 0.4, hue 0.1, grayscale 0.2, blur 0.5, crop scale
    0.2-1); CIFAR-size configs usually set ``blur_prob: 0``.

    Args:
        crop_size: Output size in pixels.
        min_scale: Smallest crop area fraction.
        color_jitter: Brightness/contrast/saturation strength (hue is a quarter of it).
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
        self.crop_size = crop_size
        self.min_scale = min_scale
        self.color_jitter = color_jitter
        self.color_jitter_prob = color_jitter_prob
        self.gray_prob = gray_prob
        self.blur_prob = blur_prob
        self.hflip_prob = hflip_prob

    def build(self, mean: Sequence[float], std: Sequence[float]) -> Transform:
        view = SimCLRViewTransform(
            input_size=self.crop_size,
            cj_prob=self.color_jitter_prob,
            cj_strength=1.0,
            cj_bright=self.color_jitter,
            cj_contrast=self.color_jitter,
            cj_sat=self.color_jitter,
            cj_hue=self.color_jitter / 4,
            min_scale=self.min_scale,
            random_gray_scale=self.gray_prob,
            gaussian_blur=self.blur_prob,
            hf_prob=self.hflip_prob,
            normalize=_normalize(mean, std),
        )
        return _ListOfViews([view, view])


class MultiCropViews(ViewRecipe):
    """DINO multi-crop: ``num_global`` global crops then ``num_local`` small local crops.

    As in DINO, the first global view is always blurred, the second is blurred with
    probability 0.1 and solarised with probability 0.2, local views are blurred with
    probability 0.5. Defaults are CIFAR-size (32 px globals, 16 px locals); the ImageNet
    recipe is ``global_size=224, local_size=96, num_local=10``.

    Args:
        num_global: Number of global crops (the teacher's views), at least 1.
        num_local: Number of local crops (student only).
        global_size: Global crop size in pixels.
        local_size: Local crop size in pixels.
        global_scale: Area fraction range of the global crops.
        local_scale: Area fraction range of the local crops.
        color_jitter_strength: Multiplier of DINO's colour jitter (0.4, 0.4, 0.2, 0.1).
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
        if num_global < 1 or num_local < 0:
            raise ValueError(
                f"MultiCropViews needs num_global >= 1 and num_local >= 0, "
                f"got num_global={num_global}, num_local={num_local}"
            )
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

    def _view(self, size: int, scale: tuple, blur: float, solarize: float, normalize: dict):
        # lightly multiplies these DINO jitter values by cj_strength.
        return DINOViewTransform(
            crop_size=size,
            crop_scale=scale,
            cj_strength=0.5 * self.color_jitter_strength,
            gaussian_blur=blur,
            solarization_prob=solarize,
            normalize=normalize,
        )

    def build(self, mean: Sequence[float], std: Sequence[float]) -> Transform:
        norm = _normalize(mean, std)
        first_blur, other_blur, local_blur = self.blur_probs
        views = [self._view(self.global_size, self.global_scale, first_blur, 0.0, norm)]
        views += [
            self._view(
                self.global_size, self.global_scale, other_blur, self.solarization_prob, norm
            )
            for _ in range(self.num_global - 1)
        ]
        views += [
            self._view(self.local_size, self.local_scale, local_blur, 0.0, norm)
            for _ in range(self.num_local)
        ]
        return _ListOfViews(views)


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
