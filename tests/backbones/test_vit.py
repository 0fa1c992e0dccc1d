import pytest
import torch

from distill.backbones import create_backbone


@pytest.mark.parametrize("name, width", [("vit_tiny", 192), ("vit_small", 384)])
def test_patch_grid_and_width(name, width):
    backbone = create_backbone(name, image_size=32, patch_size=4).eval()
    # One class token plus (32 / 4)^2 patches.
    assert backbone.vit.encoder.pos_embedding.shape == (1, 1 + 64, width)
    assert backbone(torch.randn(2, 3, 32, 32)).shape == (2, width) == (2, backbone.num_features)


def test_output_is_the_class_token_and_depends_on_every_patch():
    torch.manual_seed(0)
    backbone = create_backbone("vit_tiny", image_size=32, patch_size=8).eval()
    vit = backbone.vit
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        tokens = torch.cat([vit.class_token, vit._process_input(x)], dim=1)
        torch.testing.assert_close(backbone(x), vit.encoder(tokens)[:, 0])
        y = x.clone()
        y[..., 24:, 24:] += 1.0  # only the last patch changes
        assert not torch.allclose(backbone(x), backbone(y))


def test_image_size_must_divide_by_patch_size():
    with pytest.raises(ValueError, match="divisible"):
        create_backbone("vit_tiny", image_size=30, patch_size=4)


def test_other_input_sizes_interpolate_the_position_embedding():
    torch.manual_seed(0)
    backbone = create_backbone("vit_tiny", image_size=32, patch_size=8).eval()
    vit = backbone.vit
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        # A 2x2 patch grid: each patch position is the bicubic resample of the 4x4 grid.
        grid = vit.encoder.pos_embedding[:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
        resampled = torch.nn.functional.interpolate(grid, size=(2, 2), mode="bicubic")
        pos = torch.cat(
            [vit.encoder.pos_embedding[:, :1], resampled.flatten(2).transpose(1, 2)], dim=1
        )
        tokens = torch.cat([vit.class_token.expand(2, -1, -1), vit.conv_proj(x).flatten(2).mT], 1)
        expected = vit.encoder.ln(vit.encoder.layers(tokens + pos))[:, 0]
        torch.testing.assert_close(backbone(x), expected)
    with pytest.raises(ValueError, match="multiple of patch_size 8"):
        backbone(torch.randn(1, 3, 20, 20))
