import pytest
import torch

from distill.backbones import create_backbone
from distill.errors import ConfigError
from distill.methods import Supervised
from distill.modules import Classifier, load_weights


def test_loads_student_weights_from_a_lightning_checkpoint(tmp_path):
    source = Supervised(backbone="resnet8", num_classes=10)
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": source.state_dict(), "epoch": 3}, path)
    target = load_weights(Classifier(create_backbone("resnet8"), 10), str(path))
    for name, value in source.student.state_dict().items():
        assert torch.equal(target.state_dict()[name], value)


def test_loads_a_plain_state_dict(tmp_path):
    source = Classifier(create_backbone("resnet8"), 7)
    path = tmp_path / "weights.pt"
    torch.save(source.state_dict(), path)
    target = load_weights(Classifier(create_backbone("resnet8"), 7), str(path))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(target.eval()(x), source.eval()(x))


def test_mismatch_lists_missing_unexpected_and_shape_keys(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(Classifier(create_backbone("resnet8"), 10).state_dict(), path)
    with pytest.raises(ConfigError) as error:
        load_weights(Classifier(create_backbone("resnet14"), 100), str(path))
    message = str(error.value)
    assert "missing keys [backbone.layer1.1" in message
    assert "head.weight (10, 64) vs (100, 64)" in message
    assert str(path) in message


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.ckpt"):
        load_weights(Classifier(create_backbone("resnet8"), 10), str(tmp_path / "nope.ckpt"))


def test_classifier_returns_embedding_and_logits():
    model = Classifier(create_backbone("resnet8"), 5).eval()
    x = torch.randn(3, 3, 32, 32)
    features, logits = model.forward_features(x)
    assert features.shape == (3, model.backbone.num_features) and logits.shape == (3, 5)
    torch.testing.assert_close(logits, model.head(model.backbone(x)))


def test_compiled_module_prefixes_are_stripped(tmp_path):
    source = Supervised(backbone="resnet8", num_classes=10)
    # What a checkpoint of torch.compile(model.student) holds: keys under "_orig_mod.".
    compiled = {
        k.replace("student.", "student._orig_mod.", 1): v for k, v in source.state_dict().items()
    }
    path = tmp_path / "compiled.ckpt"
    torch.save({"state_dict": compiled}, path)
    target = load_weights(Classifier(create_backbone("resnet8"), 10), str(path))
    for name, value in source.student.state_dict().items():
        assert torch.equal(target.state_dict()[name], value)
    plain = tmp_path / "compiled.pt"
    torch.save({f"_orig_mod.{k}": v for k, v in source.student.state_dict().items()}, plain)
    load_weights(Classifier(create_backbone("resnet8"), 10), str(plain))
