import sys

import pytest
import torch

from distill.errors import ConfigError
from distill.modules.timm_teacher import FrozenTimmTeacher, import_timm

timm = pytest.importorskip("timm")

#: A ViT small enough for a test: 8 px patches, width 32, 2 blocks; never downloaded.
TINY_VIT = dict(patch_size=8, embed_dim=32, depth=2, num_heads=2)


def vit(**kwargs):
    torch.manual_seed(0)
    return FrozenTimmTeacher("vit_tiny_patch16_224", {**TINY_VIT, "img_size": 32, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "prefix"),
    [({}, 1), ({"reg_tokens": 4}, 5), ({"class_token": False, "global_pool": "avg"}, 0)],
    ids=["class-token", "class-and-register-tokens", "no-prefix"],
)
def test_dense_map_is_the_patch_tokens_on_the_grid_in_row_major_order(kwargs, prefix):
    teacher = vit(img_size=(16, 32), **kwargs)  # a 2 x 4 grid: rows and columns differ
    images = torch.randn(3, 3, 16, 32)
    feature_map, embedding, logits = teacher.forward_dense(images)
    tokens = teacher.network.forward_features(images)  # [B, prefix + 8, 32]
    assert tokens.shape == (3, prefix + 8, 32) and feature_map.shape == (3, 32, 2, 4)
    for i in range(2):
        for j in range(4):
            assert torch.equal(feature_map[:, :, i, j], tokens[:, prefix + i * 4 + j]), (i, j)
    expected_embedding, expected_logits = teacher.forward_features(images)
    torch.testing.assert_close(embedding, expected_embedding, rtol=0, atol=0)
    torch.testing.assert_close(logits, expected_logits, rtol=0, atol=0)


def test_a_patch_of_the_image_moves_only_its_own_token():
    # Without attention a token sees only its own patch: the grid position of patch (1, 2).
    teacher = vit(img_size=(16, 32), depth=1)
    teacher.network.blocks[0] = torch.nn.Identity()
    images = torch.randn(1, 3, 16, 32)
    changed = images.clone()
    changed[:, :, 8:16, 16:24] += 1.0  # rows 8-15, columns 16-23: patch row 1, column 2
    difference = (teacher.forward_dense(changed)[0] - teacher.forward_dense(images)[0]).abs()
    moved = difference.amax(dim=(0, 1)) > 0
    assert moved.nonzero().tolist() == [[1, 2]]


def test_embedding_and_logits_are_timms_pre_logits_and_output():
    teacher = vit(num_classes=7)
    images = torch.randn(2, 3, 32, 32)
    embedding, logits = teacher.forward_features(images)
    tokens = teacher.network.forward_features(images)
    assert torch.equal(embedding, tokens[:, 0])  # a ViT's class token after the final norm
    assert torch.equal(logits, teacher.network(images)) and logits.shape == (2, 7)
    assert teacher.num_features == 32 and teacher.num_classes == 7
    headless = vit(num_classes=0)
    assert headless.forward_features(images)[1] is None and headless.num_classes == 0


def test_it_says_whether_it_has_a_feature_map_and_which_input_size_it_takes():
    teacher = vit(img_size=(16, 32))
    assert teacher.has_feature_map and teacher.fixed_input_size == (16, 32)
    assert vit(dynamic_img_size=True).fixed_input_size is None
    older = vit()
    older.network.forward_intermediates = None  # as a timm model without intermediate features
    assert not older.has_feature_map


def test_it_is_frozen_and_stays_in_eval_mode():
    teacher = vit()
    teacher.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())


def test_loads_a_timm_state_dict_strictly(tmp_path):
    source = vit(num_classes=5)
    teacher = FrozenTimmTeacher("vit_tiny_patch16_224", {**TINY_VIT, "img_size": 32})
    with pytest.raises(ConfigError, match=r"head\.weight \(5, 32\) vs \(1000, 32\)"):
        teacher.load_pretrained_state(source.network.state_dict(), "vit.pth")
    torch.manual_seed(1)
    teacher = FrozenTimmTeacher(
        "vit_tiny_patch16_224", {**TINY_VIT, "img_size": 32, "num_classes": 5}
    )
    before = teacher.network.state_dict()["patch_embed.proj.weight"].clone()
    assert not torch.equal(before, source.network.state_dict()["patch_embed.proj.weight"])
    loaded = teacher.load_pretrained_state(source.network.state_dict(), "vit.pth")
    assert loaded == "timm vit_tiny_patch16_224 from 'vit.pth'"
    for name, value in source.network.state_dict().items():
        assert torch.equal(teacher.network.state_dict()[name], value), name


def test_unknown_models_and_arguments_are_one_message():
    with pytest.raises(ConfigError, match=r"timm has no model 'vit_tiny_patch16_22'; did you mean"):
        FrozenTimmTeacher("vit_tiny_patch16_22")
    with pytest.raises(ConfigError, match=r"teacher_backbone_kwargs: timm model .* does not take"):
        FrozenTimmTeacher("vit_tiny_patch16_224", {"no_such_argument": 1})


def test_without_timm_the_message_names_the_install_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[timm\]'"):
        import_timm()
