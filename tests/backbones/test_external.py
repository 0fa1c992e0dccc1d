"""torchvision's and timm's networks by prefixed name, their classifiers taken off."""

import pytest
import torch
import torchvision

from distill.backbones import create_backbone
from distill.errors import ConfigError


@pytest.mark.parametrize(
    ("name", "classifier_key", "num_features"),
    [("resnet18", "fc", 512), ("mobilenet_v2", "classifier.1", 1280),
     ("mobilenet_v3_small", "classifier.3", 1024)],
)  # fmt: skip
def test_a_torchvision_model_gives_the_input_of_its_last_linear_layer(
    name, classifier_key, num_features
):
    torch.manual_seed(0)
    full = torchvision.models.get_model(name, num_classes=10).eval()
    backbone = create_backbone(f"torchvision:{name}").eval()
    own = backbone.state_dict()
    classifier = {k for k in full.state_dict() if k.startswith(f"{classifier_key}.")}
    assert (
        set(full.state_dict()) - set(own)
        == classifier
        == {f"{classifier_key}.weight", f"{classifier_key}.bias"}
    )
    backbone.load_state_dict({k: v for k, v in full.state_dict().items() if k in own})
    assert backbone.classifier_key == classifier_key and backbone.num_features == num_features
    assert backbone.backbone_name == f"torchvision:{name}"
    x = torch.randn(2, 3, 64, 64)
    linear = full.get_submodule(classifier_key)
    torch.testing.assert_close(linear(backbone(x)), full(x), rtol=0, atol=0)


def test_a_timm_model_gives_its_pre_logits_embedding():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    full = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32).eval()
    backbone = create_backbone("timm:vit_tiny_patch16_224", img_size=32).eval()
    backbone.load_state_dict(
        {k: v for k, v in full.state_dict().items() if k in backbone.state_dict()}
    )
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(full.head(backbone(x)), full(x), rtol=0, atol=0)
    assert (backbone.num_features, backbone.classifier_key) == (192, "head")
    assert not backbone.prefers_channels_last  # a ViT's patches are reshaped to tokens


@pytest.mark.parametrize(
    ("name", "message"),
    [("torchvision:resnet5", "torchvision has no classification model 'resnet5' (closest: "),
     ("torchvision:squeezenet1_0", "has no linear classifier to take off"),
     ("torchvision:resnet18", "torchvision model 'resnet18': ")],
)  # fmt: skip
def test_bad_names_and_arguments_are_one_message(name, message):
    kwargs = {"no_such_argument": 1} if name == "torchvision:resnet18" else {}
    with pytest.raises(ConfigError) as error:
        create_backbone(name, **kwargs)
    assert message in str(error.value)


def test_a_timm_backbone_refuses_a_classifier_width():
    pytest.importorskip("timm")
    with pytest.raises(ConfigError) as error:
        create_backbone("timm:vit_tiny_patch16_224", img_size=32, num_classes=5)
    assert str(error.value) == (
        "timm model 'vit_tiny_patch16_224': num_classes is not an argument of a backbone (its "
        "classifier is taken off); a teacher's classifier comes with its weights (embedding: "
        "logits, as many classes as model.init_args.num_classes)"
    )
