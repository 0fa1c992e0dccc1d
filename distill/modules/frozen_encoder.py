"""A pretrained self-supervised encoder that never trains: the offline teacher of SEED and DisCo."""

from __future__ import annotations

from typing import Literal

import torch
from lightly.models.modules.heads import MoCoProjectionHead
from torch import Tensor, nn

from distill.errors import ConfigError
from distill.modules.momentum_encoder import encoder_state
from distill.modules.weights import load_state_strict, sub_state_dict


class FrozenEncoder(nn.Module):
    """A backbone and, with ``embedding: head``, its MoCo-v2 projection head, both frozen.

    Its parameters have ``requires_grad=False`` and it stays in eval mode when Lightning
    calls ``train()`` on the whole LightningModule, so its batch-norm statistics never
    move and an image's embedding does not depend on the rest of its batch. It is built
    untrained: its weights come from ``load_pretrained_state`` (``TeacherWeights`` calls
    it at the start of a run) or with the state dict of a checkpoint that holds it.

    Args:
        backbone: Feature extractor with an integer ``num_features``.
        embedding: ``head``: the projection head's output (the MoCo embedding, the space a
            MoCo teacher was trained in); ``backbone``: the backbone's features (for a
            checkpoint without a trained head, e.g. a supervised one).
        proj_hidden_dim: Hidden width of the head (``None``: the backbone's width, MoCo-v2).
        proj_dim: Output width of the head.
    """

    def __init__(
        self,
        backbone: nn.Module,
        embedding: Literal["head", "backbone"] = "head",
        proj_hidden_dim: int | None = None,
        proj_dim: int = 128,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.embedding = embedding
        if embedding == "head":
            hidden = proj_hidden_dim or backbone.num_features
            self.head = MoCoProjectionHead(backbone.num_features, hidden, proj_dim)
            #: Width of the embedding.
            self.num_features = proj_dim
        else:
            self.head = nn.Identity()
            self.num_features = backbone.num_features
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenEncoder:
        """Always eval mode: the batch-norm statistics are part of what the teacher teaches."""
        return super().train(False)

    def forward_features(self, images: Tensor) -> tuple[Tensor, None]:
        """The embedding ``[B, num_features]`` (not normalised) and no logits."""
        return self.head(self.backbone(images)), None

    def forward(self, images: Tensor) -> Tensor:
        """The embedding ``[B, num_features]`` (not normalised)."""
        return self.forward_features(images)[0]

    @torch.no_grad()
    def load_pretrained_state(self, state: dict[str, Tensor], source: str) -> str:
        """Loads the query encoder of a checkpoint's state dict read from ``source``; returns
        what was loaded, for the log.

        The encoder is found as ``MomentumEncoder.load_pretrained_state`` finds it (ReKD's
        teacher, MoCo's student, any other method's student backbone, a plain encoder or
        backbone state dict); of a momentum encoder the query network is taken, as SEED and
        DisCo take ``encoder_q`` of an official MoCo checkpoint. The key encoder and the
        queue are left out.

        Raises:
            ConfigError: Weights that do not fit, or ``embedding: head`` from a file without
                a projection head (a frozen random head would be taught as the teacher's).
        """
        state, kind = encoder_state(state)
        where = f"{source!r} (read as {kind})"
        load_state_strict(self.backbone, sub_state_dict(state, "backbone."), where)
        if self.embedding == "backbone":
            return f"backbone from {where}"
        head = sub_state_dict(state, "head.")
        if not head:
            raise ConfigError(
                f"{where} has no projection head, so the frozen teacher's head would stay "
                "randomly initialised. Set model.init_args.teacher_embedding: backbone to "
                "teach the backbone's features, or give a checkpoint with a trained head "
                "(a MoCo or ReKD run)."
            )
        load_state_strict(self.head, head, where)
        return f"backbone and head (query encoder) from {where}"
