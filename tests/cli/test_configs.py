"""Every committed config parses, names known backbones (distill's, torchvision's or timm's,
the teacher spec's architecture too), and round-trips print_config."""

from pathlib import Path

import pytest
import torchvision
import yaml

from distill.backbones import available_backbones
from distill.cli import main

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").rglob("*.yaml"))


def known_backbone(name: str) -> bool:
    """A distill backbone, ``torchvision:<model>`` naming a torchvision classification model,
    or ``timm:<model>`` naming a timm model (when timm is installed)."""
    if name.startswith("torchvision:"):
        return name.removeprefix("torchvision:") in torchvision.models.list_models(
            module=torchvision.models
        )
    if name.startswith("timm:"):
        timm = pytest.importorskip("timm")
        return timm.is_model(name.removeprefix("timm:"))
    return name in available_backbones()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_config_parses_with_known_backbone(path, capsys):
    try:
        main(["fit", "--config", str(path), "--print_config"])
    except SystemExit as exit_:
        assert not exit_.code, capsys.readouterr().err
    config = yaml.safe_load(capsys.readouterr().out)
    model = config["model"]["init_args"]
    backbones = [model.get(k) for k in ("backbone", "student_backbone", "teacher_backbone")]
    backbones.append((model.get("teacher") or {}).get("architecture"))  # the teacher spec's
    assert all(known_backbone(b) for b in backbones if b is not None), backbones
    assert any(b is not None for b in backbones)
    assert config["trainer"]["max_epochs"] >= 1


def test_there_are_configs():
    assert len(CONFIGS) >= 9
