"""Heads: the classifier's outputs, the multi-crop wrapper's grouped forward and the DINO
head's weight norm."""

import warnings

import pytest
import torch
from lightly.models.modules.heads import DINOProjectionHead
from tests_support import NETWORK64_TOL
from torch import nn

from distill.backbones import create_backbone
from distill.modules.heads import Classifier, MultiCropWrapper, backbone_features, dino_head


class CountingBackbone(nn.Module):
    """A linear map of the mean colour; records the batch of every call."""

    num_features = 6

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, self.num_features)
        self.batches: list[int] = []

    def forward(self, images):
        self.batches.append(len(images))
        return self.linear(images.mean(dim=(2, 3)))


def test_classifier_gives_its_last_feature_map_embedding_and_logits_in_one_pass():
    torch.manual_seed(0)
    classifier = Classifier(create_backbone("resnet8"), 7).eval()
    assert classifier.num_features == 64 and classifier.num_classes == 7
    assert classifier.has_feature_map
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feature_map, embedding, logits = classifier.forward_dense(images)
        expected_embedding, expected_logits = classifier.forward_features(images)
    assert feature_map.shape == (2, 64, 8, 8)
    torch.testing.assert_close(embedding, expected_embedding, rtol=0, atol=0)
    torch.testing.assert_close(logits, expected_logits, rtol=0, atol=0)
    assert not Classifier(
        create_backbone("vit_tiny", image_size=32, patch_size=8), 7
    ).has_feature_map


def test_classifier_gives_named_stages_embedding_and_logits_in_one_pass():
    torch.manual_seed(0)
    classifier = Classifier(create_backbone("resnet8"), 7).eval()
    images = torch.randn(2, 3, 32, 32)
    convolutions = []
    classifier.backbone.conv1.register_forward_hook(lambda *_: convolutions.append(1))
    with torch.no_grad():
        stages, embedding, logits = classifier.forward_stages(images, ["stage2", "stage1"])
        assert len(convolutions) == 1  # one pass of the backbone
        backbone = classifier.backbone  # the stages by the network's own modules
        stage1 = backbone.layer1(torch.relu(backbone.bn1(backbone.conv1(images))))
        expected_embedding, expected_logits = classifier.forward_features(images)
    assert list(stages) == ["stage2", "stage1"]
    torch.testing.assert_close(stages["stage1"], stage1, rtol=0, atol=0)
    torch.testing.assert_close(stages["stage2"], backbone.layer2(stage1), rtol=0, atol=0)
    torch.testing.assert_close(embedding, expected_embedding, rtol=0, atol=0)
    torch.testing.assert_close(logits, expected_logits, rtol=0, atol=0)


@pytest.mark.numerics
def test_multi_crop_wrapper_runs_one_backbone_pass_per_run_of_equal_sizes():
    torch.manual_seed(0)
    backbone = CountingBackbone().double()  # float64: batches of other sizes than one view's
    wrapper = MultiCropWrapper(backbone, nn.Linear(6, 5).double())
    sizes = [32, 32, 16, 16, 16, 32]  # three runs of equal size: 2, 3 and 1 views
    views = [torch.randn(4, 3, s, s, dtype=torch.float64) for s in sizes]
    outputs = wrapper(views)
    assert backbone.batches == [8, 12, 4]
    assert [tuple(o.shape) for o in outputs] == [(4, 5)] * len(sizes)
    for view, output in zip(views, outputs, strict=True):  # the same as one view at a time
        expected = wrapper.head(backbone(view))
        torch.testing.assert_close(output, expected, rtol=NETWORK64_TOL, atol=NETWORK64_TOL)


def test_head_loads_a_state_dict_of_the_old_weight_norm_layer():
    # Checkpoints written before the switch to parametrizations hold weight_g and weight_v;
    # torch's weight_norm parametrisation renames them on load, which the head must keep.
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        old = torch.nn.Sequential(DINOProjectionHead(8, 16, 4, 12, norm_last_layer=False))
    with torch.no_grad():
        old[0].last_layer.weight_g.uniform_(0.5, 2.0)  # a trained norm, not lightly's 1
    state = old.state_dict()
    assert {"0.last_layer.weight_g", "0.last_layer.weight_v"} <= set(state)
    new = torch.nn.Sequential(dino_head(8, 16, 4, 12, norm_last_layer=False))
    new.load_state_dict(state)  # strict: every key found a place
    old.eval(), new.eval()
    images = torch.randn(5, 8)
    torch.testing.assert_close(new(images), old(images))
    assert "0.last_layer.weight_g" in state  # the caller's dict is left as it was


def test_backbone_features_carry_no_gradient():
    backbone = CountingBackbone()
    features = backbone_features(backbone, torch.randn(2, 3, 8, 8))
    assert features.shape == (2, 6) and not features.requires_grad
    assert backbone_features(nn.Sequential(), torch.ones(1)).requires_grad is False
