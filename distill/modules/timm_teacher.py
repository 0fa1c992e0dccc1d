"""A timm model as a frozen teacher. timm is an optional extra (``pip install -e '.[timm]'``),
imported only when a ``timm:`` teacher is built."""

from __future__ import annotations

import difflib
from types import ModuleType

import torch
from torch import Tensor, nn

from distill.errors import ConfigError
from distill.modules.weights import load_state_strict


def import_timm() -> ModuleType:
    """The ``timm`` package.

    Raises:
        ConfigError: timm is not installed (the message names the install line).
    """
    try:
        import timm
    except ImportError as error:
        raise ConfigError(
            "a timm: teacher needs timm, an optional extra of distill: "
            "pip install -e '.[timm]' (or pip install timm)"
        ) from error
    return timm


class FrozenTimmTeacher(nn.Module):
    """A timm model that never trains, read as a distillation teacher.

    Built with random weights (``pretrained=False``: never a download); its weights come
    from ``load_pretrained_state`` (``TeacherWeights`` calls it at the start of a run) or
    with the state dict of a student's checkpoint that holds it. Its parameters have
    ``requires_grad=False`` and it stays in eval mode when Lightning calls ``train()``.

    Args:
        name: timm model name, e.g. ``vit_small_patch16_224``.
        model_kwargs: ``timm.create_model`` arguments (``img_size``, ``patch_size``,
            ``num_classes``, ...): they must match the weights loaded later.
    """

    def __init__(self, name: str, model_kwargs: dict | None = None) -> None:
        super().__init__()
        timm = import_timm()
        kwargs = dict(model_kwargs or {})
        try:
            self.network = timm.create_model(name, pretrained=False, **kwargs)
        except RuntimeError as error:
            if "Unknown model" not in str(error):
                raise
            close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.7)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"model.init_args.teacher_backbone: timm has no model {name!r}{hint} "
                "(timm.list_models('*pattern*') lists them)"
            ) from error
        except TypeError as error:
            raise ConfigError(
                f"model.init_args.teacher_backbone_kwargs: timm model {name!r} does not take "
                f"{kwargs}: {error}"
            ) from error
        self.name = name
        #: Width of the pooled embedding, and of the tokens (channels) of the feature map.
        self.num_features: int = self.network.num_features
        #: Classes of its classifier; 0 without one.
        self.num_classes: int = self.network.num_classes
        self.requires_grad_(False)
        self.eval()

    @property
    def has_feature_map(self) -> bool:
        """Whether ``forward_dense`` works: timm gives this model's intermediate features."""
        return callable(getattr(self.network, "forward_intermediates", None))

    @property
    def fixed_input_size(self) -> tuple[int, int] | None:
        """The one image size ``(h, w)`` the model takes (a ViT built without
        ``dynamic_img_size``); ``None`` when it takes any."""
        patch_embed = getattr(self.network, "patch_embed", None)
        if getattr(patch_embed, "strict_img_size", False) and patch_embed.img_size:
            return tuple(patch_embed.img_size)
        return None

    def train(self, mode: bool = True) -> FrozenTimmTeacher:
        """Always eval mode: its normalisation statistics are part of what it teaches."""
        return super().train(False)

    def forward_features(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """The pooled embedding ``[B, num_features]`` (timm's pre-logits) and the logits
        ``[B, num_classes]`` (``None`` without a classifier)."""
        return self._head(self.network.forward_features(images))

    def forward_dense(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """The last feature map ``[B, num_features, h, w]``, the embedding and the logits.

        The map is timm's ``forward_intermediates`` of the last block, normalised as
        ``forward_features`` normalises it, in NCHW: for a ViT its patch tokens without the
        prefix (class, register, distillation) tokens, in row-major order on the patch grid
        (token ``i·w + j`` at row ``i``, column ``j``); for a convolutional model its last map.
        """
        final, (feature_map,) = self.network.forward_intermediates(
            images, indices=1, norm=True, output_fmt="NCHW"
        )
        return (feature_map, *self._head(final))

    def _head(self, features: Tensor) -> tuple[Tensor, Tensor | None]:
        embedding = self.network.forward_head(features, pre_logits=True)
        logits = self.network.forward_head(features) if self.num_classes else None
        return embedding, logits

    def forward(self, images: Tensor) -> Tensor:
        """The pooled embedding ``[B, num_features]``."""
        return self.forward_features(images)[0]

    @torch.no_grad()
    def load_pretrained_state(self, state: dict[str, Tensor], source: str) -> str:
        """Loads the timm model's own state dict (as ``torch.save(model.state_dict())`` or
        timm's ``.pth``/``.bin`` files hold it) strictly; returns what was loaded, for the log.

        Raises:
            ConfigError: Keys or shapes that do not fit (``source`` names the file).
        """
        load_state_strict(self.network, state, repr(source))
        return f"timm {self.name} from {source!r}"
