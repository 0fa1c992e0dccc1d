"""Small Vision Transformers (Dosovitskiy et al. 2021; DeiT sizes) on torchvision's
``VisionTransformer``; the output is the class token after the final norm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import VisionTransformer

from distill.backbones import register_backbone


class ViTBackbone(nn.Module):
    """A ViT without classification head.

    Args:
        image_size: Input size in pixels (must be divisible by ``patch_size``).
        patch_size: Patch size in pixels (16 for ImageNet, 4 for CIFAR).
        hidden_dim: Token width.
        depth: Number of transformer blocks.
        num_heads: Attention heads.
    """

    #: ``to_channels_last`` leaves ViTs alone: their one convolution cuts patches, whose
    #: channels-last output the reshape to tokens would copy back.
    prefers_channels_last = False

    def __init__(
        self, image_size: int, patch_size: int, hidden_dim: int, depth: int, num_heads: int
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(
                f"image_size {image_size} must be divisible by patch_size {patch_size}"
            )
        self.vit = VisionTransformer(
            image_size=image_size,
            patch_size=patch_size,
            num_layers=depth,
            num_heads=num_heads,
            hidden_dim=hidden_dim,
            mlp_dim=4 * hidden_dim,
        )
        self.vit.heads = nn.Identity()
        self.num_features = hidden_dim

    def forward(self, x: Tensor) -> Tensor:
        """Class token ``[B, D]`` of images ``[B, 3, H, W]``; H and W multiples of the patch size.

        Other sizes than ``image_size`` (DINO's local crops) get the position embedding
        bicubically interpolated to their patch grid, as DINO's ViT does.
        """
        if x.shape[-2:] == (self.vit.image_size, self.vit.image_size):
            return self.vit(x)
        vit, encoder = self.vit, self.vit.encoder
        height, width = (size // vit.patch_size for size in x.shape[-2:])
        if (height * vit.patch_size, width * vit.patch_size) != tuple(x.shape[-2:]):
            raise ValueError(
                f"image size {tuple(x.shape[-2:])} must be a multiple of "
                f"patch_size {vit.patch_size}"
            )
        tokens = vit.conv_proj(x).flatten(2).transpose(1, 2)  # [B, h*w, D]
        tokens = torch.cat([vit.class_token.expand(len(x), -1, -1), tokens], dim=1)
        grid = vit.image_size // vit.patch_size
        pos = encoder.pos_embedding  # [1, 1 + grid*grid, D]
        patch_pos = pos[:, 1:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos, size=(height, width), mode="bicubic")
        pos = torch.cat([pos[:, :1], patch_pos.flatten(2).transpose(1, 2)], dim=1)
        return encoder.ln(encoder.layers(encoder.dropout(tokens + pos)))[:, 0]


@register_backbone("vit_tiny")
def vit_tiny(image_size: int = 224, patch_size: int = 16) -> ViTBackbone:
    """ViT-Tiny: width 192, 12 blocks, 3 heads."""
    return ViTBackbone(image_size, patch_size, 192, 12, 3)


@register_backbone("vit_small")
def vit_small(image_size: int = 224, patch_size: int = 16) -> ViTBackbone:
    """ViT-Small: width 384, 12 blocks, 6 heads."""
    return ViTBackbone(image_size, patch_size, 384, 12, 6)
