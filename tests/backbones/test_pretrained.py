"""load_pretrained: a backbone rebuilt from an exported state dict and its JSON sidecar."""

import json

import pytest
import torch

from distill.backbones import create_backbone, load_pretrained
from distill.errors import ConfigError


def write_export(folder, name: str, kwargs: dict) -> tuple[torch.nn.Module, str]:
    """The two files ``distill export`` writes, for a backbone with trained-looking state."""
    torch.manual_seed(0)
    backbone = create_backbone(name, **kwargs)
    with torch.no_grad():
        for tensor in backbone.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.1 * torch.rand_like(tensor))  # moves BN statistics too
    path = folder / "backbone.pt"
    torch.save(backbone.state_dict(), path)
    info = {"backbone": name, "kwargs": kwargs, "num_features": backbone.num_features}
    path.with_suffix(".json").write_text(json.dumps(info))
    return backbone, str(path)


@pytest.mark.parametrize(("name", "kwargs"), [("resnet8", {}), ("resnet18", {"cifar_stem": True})])
def test_rebuilt_backbone_has_the_weights_kwargs_and_outputs(tmp_path, name, kwargs):
    original, path = write_export(tmp_path, name, kwargs)
    rebuilt = load_pretrained(path)
    assert not rebuilt.training
    for key, value in original.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(images), original.eval()(images), rtol=0, atol=0)
    if kwargs.get("cifar_stem"):
        assert rebuilt.conv1.kernel_size == (3, 3)


def test_missing_sidecar_is_named(tmp_path):
    _, path = write_export(tmp_path, "resnet8", {})
    (tmp_path / "backbone.json").unlink()
    with pytest.raises(ConfigError, match="backbone.json does not exist"):
        load_pretrained(path)


def test_weights_of_another_backbone_are_refused(tmp_path):
    _, path = write_export(tmp_path, "resnet8", {})
    (tmp_path / "backbone.json").write_text(json.dumps({"backbone": "resnet14", "kwargs": {}}))
    with pytest.raises(ConfigError, match="(?s)do not fit backbone 'resnet14'.*Missing key"):
        load_pretrained(path)


@pytest.mark.parametrize(
    ("sidecar", "message"),
    [
        ('{"backbone": "resnet8",', "backbone.json is not valid JSON (Expecting"),
        ('["resnet8"]', 'backbone.json names no backbone (a "backbone": "name" entry)'),
        ('{"backbone": "resnet8", "kwargs": [1]}', 'backbone.json: "kwargs" is [1], not an object'),
    ],
)
def test_malformed_sidecar_is_named_with_its_fault(tmp_path, sidecar, message):
    _, path = write_export(tmp_path, "resnet8", {})
    (tmp_path / "backbone.json").write_text(sidecar)
    with pytest.raises(ConfigError) as error:
        load_pretrained(path)
    assert message in str(error.value)
    assert str(error.value).endswith("; write the pair again with distill export")


def test_truncated_weights_are_named(tmp_path):
    _, path = write_export(tmp_path, "resnet8", {})
    whole = (tmp_path / "backbone.pt").read_bytes()
    (tmp_path / "backbone.pt").write_bytes(whole[:1000])
    with pytest.raises(ConfigError, match=r"^cannot read weights: .*backbone.pt is truncated"):
        load_pretrained(path)


def test_a_checkpoint_instead_of_an_export_is_named(tmp_path):
    _, path = write_export(tmp_path, "resnet8", {})
    state = torch.load(path, weights_only=True)
    torch.save({"state_dict": state, "epoch": 0, "pytorch-lightning_version": "2.6.0"}, path)
    with pytest.raises(
        ConfigError, match="is a Lightning training checkpoint, not a backbone export"
    ):
        load_pretrained(path)


def test_a_training_checkpoint_is_named_with_how_to_export_it(tmp_path):
    # last.ckpt has no sidecar: the message is about the file given, not about last.json.
    path = tmp_path / "last.ckpt"
    state = {f"student.backbone.{k}": v for k, v in create_backbone("resnet8").state_dict().items()}
    torch.save({"state_dict": state, "epoch": 0, "pytorch-lightning_version": "2.6.0"}, path)
    with pytest.raises(ConfigError) as error:
        load_pretrained(str(path))
    assert str(error.value) == (
        f"{path} is a Lightning training checkpoint, not a backbone export: write the backbone "
        "and its sidecar first with `distill export --config <the run's config> --ckpt_path "
        f"{path}`, then load_pretrained the .pt file it writes"
    )
