"""Small Vision Transformers (Dosovitskiy et al. 2021; DeiT sizes) on torchvision's
``VisionTransformer``; the output is the class token after the final norm.
"""

from __future__ import annotations

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
        return self.vit(x)


@register_backbone("vit_tiny")
def vit_tiny(image_size: int = 224, patch_size: int = 16) -> ViTBackbone:
    """ViT-Tiny: width 192, 12 blocks, 3 heads."""
    return ViTBackbone(image_size, patch_size, 192, 12, 3)


@register_backbone("vit_small")
def vit_small(image_size: int = 224, patch_size: int = 16) -> ViTBackbone:
    """ViT-Small: width 384, 12 blocks, 6 heads."""
    return ViTBackbone(image_size, patch_size, 384, 12, 6)
