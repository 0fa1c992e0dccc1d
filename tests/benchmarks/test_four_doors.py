"""benchmarks/four_doors.py: one network distill trained, written as torchvision, timm,
official MoCo and official DINO files, comes back identical through every door of the
teacher spec (issue 19's "the same network through four doors")."""

from __future__ import annotations

import pytest
import torch
import yaml

from distill.data import ImageFolderDataModule
from distill.methods import Supervised
from tests.tests_support import quiet_trainer

pytest.importorskip("timm")  # the timm door (the [timm] extra; CI installs it)

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)  # the run's own statistics, not ImageNet's


def data(png_folder) -> ImageFolderDataModule:
    return ImageFolderDataModule(data_dir=str(png_folder), mean=MEAN, std=STD, image_size=32,
                                 batch_size=6, num_workers=0)  # fmt: skip


@pytest.fixture
def trained(png_folder, tmp_path):
    """A torchvision resnet18 that distill trained for a few steps, saved as a checkpoint
    with the config.yaml LightningCLI leaves beside its run."""
    torch.manual_seed(0)
    # In the contiguous memory format, as teachers run: the same kernels, the same bits.
    model = Supervised(backbone="torchvision:resnet18", num_classes=3, channels_last=False)
    trainer = quiet_trainer(tmp_path, max_steps=3, limit_val_batches=0)
    trainer.fit(model, datamodule=data(png_folder))
    checkpoints = tmp_path / "run" / "version_0" / "checkpoints"
    checkpoints.mkdir(parents=True)
    trainer.save_checkpoint(checkpoints / "last.ckpt")
    config = {"data": {"class_path": "distill.data.ImageFolderDataModule", "init_args": {
        "data_dir": str(png_folder), "mean": list(MEAN), "std": list(STD), "image_size": 32,
        "num_workers": 0}}}  # fmt: skip
    (tmp_path / "run" / "version_0" / "config.yaml").write_text(yaml.safe_dump(config))
    return model, checkpoints / "last.ckpt"


def test_every_door_gives_the_trained_network(four_doors, trained, png_folder, tmp_path):
    model, path = trained
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    architecture, network = four_doors.trained_network(checkpoint)
    assert architecture == "torchvision:resnet18"
    doors = four_doors.write_doors(str(path), architecture, network, tmp_path / "doors")
    assert [d.name for d in doors] == ["distill", "torchvision", "timm", "MoCo", "DINO"]
    datamodule = four_doors.data_module(four_doors.run_config(str(path)))
    results = [four_doors.through(door, datamodule) for door in doors]

    # The reference is the network the run trained: its own backbone's features.
    model.eval()
    own = four_doors.features(model.student, datamodule, "val")[0]
    assert torch.equal(results[0]["features"][1], own)
    for result in results[1:]:
        assert all(
            torch.equal(a, b)
            for a, b in zip(result["features"], results[0]["features"], strict=True)
        ), result["door"]
        assert result["knn"] == results[0]["knn"]
    reports = {r["door"].name: r["report"] for r in results}
    assert reports["timm"].architecture == "timm:resnet18"
    assert reports["MoCo"].format == "MoCo v1/v2 (official)"
    assert reports["MoCo"].network.startswith("query encoder")
    assert reports["DINO"].format == "DINO (official)"
    assert reports["DINO"].network.startswith("teacher")
    assert all(r.num_loaded == 120 for r in reports.values())  # resnet18's backbone tensors


def test_a_wrong_network_would_show(four_doors, trained, tmp_path):
    # The perturbed encoder_k and DINO student are other networks: a loader that took them
    # would fail the test above.
    _, path = trained
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    architecture, network = four_doors.trained_network(checkpoint)
    doors = {d.name: d for d in four_doors.write_doors(str(path), architecture, network,
                                                       tmp_path / "doors")}  # fmt: skip
    moco = torch.load(doors["MoCo"].weights, weights_only=False)["state_dict"]
    dino = torch.load(doors["DINO"].weights, weights_only=False)
    query, key = (moco[f"module.encoder_{e}.conv1.weight"] for e in "qk")
    teacher, student = dino["teacher"]["backbone.conv1.weight"], dino["student"][
        "module.backbone.conv1.weight"]  # fmt: skip
    assert torch.equal(query, network["conv1.weight"]) and torch.equal(teacher, query)
    assert not torch.equal(key, query) and not torch.equal(student, teacher)


def test_main_prints_the_table_and_keeps_nothing_of_the_users(four_doors, trained, capsys,
                                                              tmp_path):  # fmt: skip
    _, path = trained
    keep = tmp_path / "kept"
    assert four_doors.main([str(path), "--keep", str(keep)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "door" not in line]
    assert len(rows) == 5 and all(line.endswith("| yes |") for line in rows)
    assert "the same network through every door" in out
    assert sorted(p.name for p in keep.iterdir()) == [
        "checkpoint.pth",
        "checkpoint_0009.pth.tar",
        "model.safetensors",
        "resnet18.pth",
    ]
    with pytest.raises(SystemExit):  # an existing folder is refused, its files untouched
        four_doors.main([str(path), "--keep", str(keep)])
    assert "already exists" in capsys.readouterr().err


def test_a_run_of_another_method_is_one_message(four_doors, trained, capsys):
    _, path = trained
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    checkpoint["hyper_parameters"]["backbone"] = "resnet20"
    torch.save(checkpoint, path)
    assert four_doors.main([str(path)]) == 2
    err = capsys.readouterr().err
    assert "a distill.methods.Supervised run with a torchvision: backbone" in err
    assert "'resnet20'" in err
