"""A frozen teacher trains nothing, moves no statistic and runs under inference mode; its
dense forward gives the last feature map (a timm ViT's patch tokens on their grid)."""

import pytest
import torch
import torch.nn.functional as F

from distill.backbones import create_backbone, feature_map
from distill.teachers import TeacherNetwork, TeacherSpec, build_teacher, frozen_forward

#: A ViT small enough for a test: 8 px patches, width 32, 2 blocks; never downloaded.
TINY_VIT = dict(patch_size=8, embed_dim=32, depth=2, num_heads=2)


def network(**kwargs) -> TeacherNetwork:
    torch.manual_seed(0)
    return TeacherNetwork(create_backbone("resnet8"), **{"num_classes": 10, **kwargs})


def test_a_frozen_teacher_is_in_eval_mode_without_gradients_and_keeps_its_statistics():
    teacher = network()
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()  # Lightning puts the whole model in training mode every epoch
    assert not any(m.training for m in teacher.modules())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    teacher(torch.randn(8, 3, 32, 32))
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, before[name]), name  # batch-norm statistics included


def test_a_frozen_teacher_runs_under_inference_mode_and_hands_out_ordinary_tensors():
    teacher = network()
    modes = []
    teacher.backbone.register_forward_hook(
        lambda *_: modes.append(torch.is_inference_mode_enabled())
    )
    embedding, logits = teacher.forward_features(torch.randn(4, 3, 32, 32))
    assert modes == [True]
    assert not embedding.is_inference() and not logits.is_inference()
    # A loss on them trains the student: autograd may save them for the backward pass.
    student = torch.randn(4, 10, requires_grad=True)
    F.kl_div(F.log_softmax(student, 1), F.softmax(logits, 1), reduction="batchmean").backward()
    assert student.grad is not None


def test_an_online_teacher_trains():
    teacher = network(frozen=False)
    teacher.train()
    assert teacher.training and all(p.requires_grad for p in teacher.parameters())
    modes = []
    teacher.backbone.register_forward_hook(
        lambda *_: modes.append(torch.is_inference_mode_enabled())
    )
    teacher(torch.randn(4, 3, 32, 32)).sum().backward()
    assert modes == [False] and teacher.head.weight.grad is not None


def test_the_embedding_decides_the_head():
    x = torch.randn(2, 3, 32, 32)
    features = network(embedding="backbone")
    assert not any(k.startswith("head.") for k in features.state_dict())
    embedding, logits = features.forward_features(x)
    assert embedding.shape == (2, features.num_features) and logits is None
    projected = network(embedding="head", proj_hidden_dim=32, proj_dim=8)
    assert projected.num_features == 8 and projected(x).shape == (2, 8)
    classifier = network()
    embedding, logits = classifier.forward_features(x)
    assert classifier.num_classes == 10 and logits.shape == (2, 10)
    torch.testing.assert_close(logits, classifier.head(embedding), rtol=0, atol=0)


def test_frozen_forward_clones_its_outputs_out_of_inference_mode():
    outputs = frozen_forward(lambda x: {"a": x * 2, "b": [x + 1, "text"]}, torch.ones(3))
    assert not outputs["a"].is_inference() and not outputs["b"][0].is_inference()
    assert outputs["b"][1] == "text" and torch.equal(outputs["a"], torch.full((3,), 2.0))


def test_a_convolutional_teachers_dense_forward_is_the_map_its_forward_pools():
    teacher = network()
    x = torch.randn(2, 3, 32, 32)
    dense, embedding, logits = teacher.forward_dense(x)
    torch.testing.assert_close(dense, feature_map(teacher.backbone, x), rtol=0, atol=0)
    expected_embedding, expected_logits = teacher.forward_features(x)
    torch.testing.assert_close(embedding, expected_embedding)  # pooled once, not bit for bit
    torch.testing.assert_close(logits, expected_logits)
    assert teacher.has_feature_map and teacher.feature_map_features == dense.shape[1] == 64
    assert teacher.fixed_input_size is None and not dense.is_inference()
    vit = network(embedding="backbone", **{"num_classes": None})
    vit.backbone = create_backbone("vit_tiny", image_size=32, patch_size=8)
    assert not vit.has_feature_map


def test_the_dense_forward_feeds_the_teacher_its_own_inputs():
    # The inputs sit in front of the backbone's forward, which the dense path goes around.
    torch.manual_seed(0)
    spec = TeacherSpec.from_config(
        dict(architecture="resnet8", weights="t.ckpt", embedding="backbone",
             mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], image_size=48)
    )  # fmt: skip
    teacher = build_teacher(spec)
    teacher.inputs.configure((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    seen = []
    teacher.network.backbone.conv1.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    x = torch.randn(2, 3, 32, 32)
    teacher.network.forward_features(x)
    teacher.network.forward_dense(x)
    expected = teacher.inputs(x)
    assert expected.shape == (2, 3, 48, 48)
    assert len(seen) == 2 and all(torch.equal(images, expected) for images in seen)


def test_the_stages_forward_feeds_the_teacher_its_own_inputs_once_in_one_pass():
    # As the dense path, forward_stages goes around the backbone's forward and its pre-hook
    # to read a stage; for the embedding alone it takes that forward (and the hook) itself.
    torch.manual_seed(0)
    spec = TeacherSpec.from_config(
        dict(architecture="resnet8", weights="t.ckpt", embedding="logits",
             mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], image_size=48)
    )  # fmt: skip
    teacher = build_teacher(spec, num_classes=10)
    teacher.inputs.configure((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    network = teacher.network
    seen, modes = [], []
    network.backbone.conv1.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    network.backbone.conv1.register_forward_hook(
        lambda *_: modes.append(torch.is_inference_mode_enabled())
    )
    x = torch.randn(2, 3, 32, 32)
    stages, embedding, logits = network.forward_stages(x, ["stage3", "stage1"])
    _, pooled, _ = network.forward_stages(x, ["pool"])
    expected = teacher.inputs(x)
    assert expected.shape == (2, 3, 48, 48)
    assert len(seen) == 2 and all(torch.equal(images, expected) for images in seen)
    assert modes == [True, True]
    with torch.no_grad():
        features = network.backbone.forward_feature_map(expected)  # stage3, by its own path
    assert torch.equal(stages["stage3"], features) and stages["stage1"].shape == (2, 16, 48, 48)
    expected_embedding, expected_logits = network.forward_features(x)
    torch.testing.assert_close(embedding, expected_embedding)  # pooled by other kernels
    torch.testing.assert_close(logits, expected_logits)
    torch.testing.assert_close(pooled, expected_embedding, rtol=0, atol=0)
    assert not stages["stage3"].is_inference()  # frozen: inference mode, tensors cloned out


def vit(**kwargs) -> TeacherNetwork:
    pytest.importorskip("timm")
    torch.manual_seed(0)
    backbone = create_backbone(
        "timm:vit_tiny_patch16_224", **{**TINY_VIT, "img_size": 32, **kwargs}
    )
    return TeacherNetwork(backbone, "logits", num_classes=7)


@pytest.mark.parametrize(
    ("kwargs", "prefix"),
    [({}, 1), ({"reg_tokens": 4}, 5), ({"class_token": False, "global_pool": "avg"}, 0)],
    ids=["class-token", "class-and-register-tokens", "no-prefix"],
)
def test_a_vits_dense_map_is_its_patch_tokens_on_the_grid_in_row_major_order(kwargs, prefix):
    teacher = vit(img_size=(16, 32), **kwargs)  # a 2 x 4 grid: rows and columns differ
    images = torch.randn(3, 3, 16, 32)
    dense, embedding, logits = teacher.forward_dense(images)
    tokens = teacher.backbone.forward_features(images)  # [B, prefix + 8, 32], normalised
    assert tokens.shape == (3, prefix + 8, 32) and dense.shape == (3, 32, 2, 4)
    for i in range(2):
        for j in range(4):
            assert torch.equal(dense[:, :, i, j], tokens[:, prefix + i * 4 + j]), (i, j)
    expected_embedding, expected_logits = teacher.forward_features(images)
    torch.testing.assert_close(embedding, expected_embedding, rtol=0, atol=0)
    torch.testing.assert_close(logits, expected_logits, rtol=0, atol=0)
    if prefix:  # the embedding is the class token after the final norm (timm's pre-logits)
        assert torch.equal(embedding, tokens[:, 0])


def test_a_patch_of_the_image_moves_only_its_own_token():
    # Without attention a token sees only its own patch: the grid position of patch (1, 2).
    teacher = vit(img_size=(16, 32), depth=1)
    teacher.backbone.blocks[0] = torch.nn.Identity()
    images = torch.randn(1, 3, 16, 32)
    changed = images.clone()
    changed[:, :, 8:16, 16:24] += 1.0  # rows 8-15, columns 16-23: patch row 1, column 2
    difference = (teacher.forward_dense(changed)[0] - teacher.forward_dense(images)[0]).abs()
    moved = difference.amax(dim=(0, 1)) > 0
    assert moved.nonzero().tolist() == [[1, 2]]


def test_a_timm_teacher_says_its_map_width_and_the_input_size_it_takes():
    teacher = vit(img_size=(16, 32))
    assert teacher.has_feature_map and teacher.fixed_input_size == (16, 32)
    assert teacher.feature_map_features == 32
    assert vit(dynamic_img_size=True).fixed_input_size is None
    older = vit()
    older.backbone.forward_intermediates = None  # a timm model without intermediate features
    assert not older.has_feature_map
    # A map narrower than the embedding: MobileNetV3's last stage, before its 1x1 head conv.
    mobilenet = TeacherNetwork(create_backbone("timm:mobilenetv3_small_050"), "backbone")
    dense, embedding, _ = mobilenet.forward_dense(torch.randn(2, 3, 64, 64))
    assert dense.shape[1] == mobilenet.feature_map_features == 288
    assert embedding.shape[1] == mobilenet.num_features == 1024
