"""``distill export``: a backbone state dict that rebuilds the checkpoint's backbone exactly."""

import json
import warnings
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from distill.backbones import load_pretrained
from distill.methods import DINO, Supervised

QUICKSTART = str(Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml")


def checkpoint_state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def test_round_trip_gives_the_checkpoints_backbone_outputs(supervised_ckpt, cli):
    code, out, err = cli(["export", "--config", QUICKSTART, "--ckpt_path", supervised_ckpt])
    assert code == 0, err
    weights = supervised_ckpt.with_name("last.student-backbone.pt")
    assert str(weights) in out
    info = json.loads(weights.with_suffix(".json").read_text())
    assert info["backbone"] == "resnet8" and info["kwargs"] == {} and info["num_features"] == 64
    assert info["mean"] == [0.306] * 3 and info["std"] == [0.324] * 3  # DigitsDataModule's
    assert info["image_size"] == 32 and info["submodule"] == "student"
    model = Supervised(backbone="resnet8", num_classes=10)
    model.load_state_dict(checkpoint_state(supervised_ckpt))
    # The backbone's own keys: no student./backbone. prefix, no classifier head.
    exported = torch.load(weights, weights_only=True)
    assert set(exported) == set(model.student.backbone.state_dict())
    backbone = load_pretrained(str(weights))
    assert not backbone.training
    images = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        expected = model.student.backbone.eval()(images)
        torch.testing.assert_close(backbone(images), expected, rtol=0, atol=0)


@pytest.mark.compiles
def test_checkpoint_of_a_compiled_run_exports_as_an_eager_one(
    compiled_supervised_ckpt, supervised_ckpt, cli
):
    checkpoint = torch.load(compiled_supervised_ckpt, weights_only=True)
    assert checkpoint["hyper_parameters"]["compile"] is True
    # The eager run's keys, in its order: no _orig_mod. from torch.compile's wrapper.
    assert list(checkpoint["state_dict"]) == list(checkpoint_state(supervised_ckpt))
    code, _, err = cli(["export", "--config", QUICKSTART, "--ckpt_path", compiled_supervised_ckpt])
    assert code == 0, err
    weights = compiled_supervised_ckpt.with_name("last.student-backbone.pt")
    exported = torch.load(weights, weights_only=True)
    model = Supervised(backbone="resnet8", num_classes=10)
    model.load_state_dict(checkpoint["state_dict"])
    assert set(exported) == set(model.student.backbone.state_dict())
    for name, value in exported.items():
        assert torch.equal(value, checkpoint["state_dict"][f"student.backbone.{name}"]), name
    images = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        expected = model.student.backbone.eval()(images)
        torch.testing.assert_close(load_pretrained(str(weights))(images), expected, rtol=0, atol=0)


def test_teacher_export_takes_the_teacher_weights(dino_ckpt, dino_config, tmp_path, cli):
    weights = tmp_path / "teacher.pt"
    args = ["export", "--config", dino_config, "--ckpt_path", dino_ckpt, "--output", weights]
    code, _, err = cli(args + ["--submodule", "teacher"])
    assert code == 0, err
    state = checkpoint_state(dino_ckpt)
    exported = torch.load(weights, weights_only=True)
    for name, value in exported.items():
        assert torch.equal(value, state[f"teacher.backbone.{name}"]), name
    name = "conv1.weight"
    assert not torch.equal(exported[name], state[f"student.backbone.{name}"])  # an EMA
    model = DINO(backbone="resnet8", output_dim=64, hidden_dim=32, bottleneck_dim=16)
    model.load_state_dict(state)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = model.teacher.backbone.eval()(images)
        torch.testing.assert_close(load_pretrained(str(weights))(images), expected)


def test_kd_teacher_exports_from_the_students_checkpoint_after_its_run_is_gone(
    kd_run, supervised_ckpt, tmp_path, cli
):
    config, checkpoint = kd_run  # the teacher's run directory no longer exists
    weights = tmp_path / "teacher.pt"
    args = ["export", "--config", config, "--ckpt_path", checkpoint, "--output", weights]
    code, _, err = cli(args + ["--submodule", "teacher"])
    assert code == 0, err
    teacher = checkpoint_state(supervised_ckpt)
    exported = torch.load(weights, weights_only=True)
    assert len(exported) > 10
    for name, value in exported.items():
        assert torch.equal(value, teacher[f"student.backbone.{name}"]), name


@pytest.fixture
def resnet18_checkpoint(tmp_path):
    """A Supervised resnet18 state with non-trivial batch-norm statistics, as a checkpoint."""
    torch.manual_seed(0)
    model = Supervised(backbone="resnet18", num_classes=10)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "compiled.ckpt"
    # A torch.compile'd student stores its weights under _orig_mod.
    state = {
        k.replace("student.", "student._orig_mod.", 1): v for k, v in model.state_dict().items()
    }
    torch.save({"state_dict": state}, path)
    return model, path


def test_torchvision_backbone_loads_into_torchvision_resnet18(resnet18_checkpoint, cli):
    model, path = resnet18_checkpoint
    args = [
        "export", "--model", "distill.methods.Supervised",
        "--model.init_args.backbone", "resnet18", "--data", "distill.data.DigitsDataModule",
        "--ckpt_path", path,
    ]  # fmt: skip
    code, _, err = cli(args)
    assert code == 0, err
    state = torch.load(path.with_name("compiled.student-backbone.pt"), weights_only=True)
    plain = torchvision.models.resnet18()
    missing, unexpected = plain.load_state_dict(state, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and unexpected == []
    headless = torchvision.models.resnet18()
    headless.fc = nn.Identity()
    headless.load_state_dict(state, strict=True)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model.student.backbone.eval()(images)
        torch.testing.assert_close(headless.eval()(images), expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--submodule", "teacher"], "has no submodule 'teacher'"),
        (["--model.init_args.backbone", "resnet14"], "do not fit the CifarResNet"),
    ],
)
def test_mistakes_end_in_one_message_and_write_nothing(
    supervised_ckpt, tmp_path, cli, extra, message
):
    weights = tmp_path / "never.pt"
    args = ["export", "--config", QUICKSTART, "--ckpt_path", supervised_ckpt, "--output", weights]
    code, _, err = cli(args + extra)
    assert code == 2 and message in err and "Traceback" not in err
    assert not weights.exists() and not weights.with_suffix(".json").exists()


def test_model_arguments_unlike_the_checkpoints_are_not_warned_about(
    supervised_ckpt, tmp_path, cli
):
    # Export reads the backbone alone; the run's other arguments (here its loss) play no part.
    args = ["export", "--config", QUICKSTART, "--ckpt_path", supervised_ckpt]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, err = cli([*args, "--output", tmp_path / "backbone.pt",
                            "--model.init_args.label_smoothing", "0.3"])  # fmt: skip
    assert code == 0, err
    assert not [w for w in caught if "model arguments differ" in str(w.message)]
    assert (tmp_path / "backbone.pt").is_file()


def export_args(ckpt: Path, *extra) -> list:
    return ["export", "--config", QUICKSTART, "--ckpt_path", ckpt, *extra]


def test_output_that_is_the_checkpoint_is_refused_by_any_path(supervised_ckpt, tmp_path, cli):
    before = supervised_ckpt.read_bytes()
    alias = tmp_path / "alias.ckpt"
    alias.symlink_to(supervised_ckpt)
    for output in (supervised_ckpt, alias):
        code, _, err = cli(export_args(supervised_ckpt, "--output", output, "--overwrite", "true"))
        assert code == 2 and "Traceback" not in err
        assert (
            f"--output {output} is the checkpoint being read (--ckpt_path {supervised_ckpt}); "
            "choose another --output"
        ) in err
    assert supervised_ckpt.read_bytes() == before


def test_output_that_is_another_checkpoint_is_refused_even_with_overwrite(
    supervised_ckpt, tmp_path, cli
):
    other = tmp_path / "other.pt"  # a Lightning checkpoint, whatever its name
    other.write_bytes(supervised_ckpt.read_bytes())
    code, _, err = cli(export_args(supervised_ckpt, "--output", other, "--overwrite", "true"))
    assert code == 2
    assert (
        f"{other} is a checkpoint; distill never writes over one, not even with --overwrite" in err
    )
    assert other.read_bytes() == supervised_ckpt.read_bytes()


def test_weights_named_like_the_sidecar_are_refused(supervised_ckpt, tmp_path, cli):
    code, _, err = cli(export_args(supervised_ckpt, "--output", tmp_path / "model.json"))
    assert code == 2
    assert (
        f"--output {tmp_path / 'model.json'} ends in .json, the sidecar's suffix: the weights "
        f"and the sidecar would be one file; name the weights e.g. {tmp_path / 'model.pt'}"
    ) in err
    assert list(tmp_path.iterdir()) == []


def test_earlier_export_is_replaced_only_when_asked(supervised_ckpt, tmp_path, cli):
    weights = tmp_path / "model.pt"
    assert cli(export_args(supervised_ckpt, "--output", weights))[0] == 0
    weights.write_bytes(b"an earlier export")
    code, _, err = cli(export_args(supervised_ckpt, "--output", weights))
    assert code == 2
    assert (
        f"{weights} already exists; pass --overwrite true to replace it, or choose another --output"
    ) in err
    assert weights.read_bytes() == b"an earlier export"
    code, _, err = cli(export_args(supervised_ckpt, "--output", weights, "--overwrite", "true"))
    assert code == 0, err
    assert set(load_pretrained(str(weights)).state_dict()) >= {"conv1.weight"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.pt"]


def test_read_only_folder_ends_in_one_message_and_writes_nothing(
    supervised_ckpt, read_only_folder, cli
):
    weights = read_only_folder / "model.pt"
    code, out, err = cli(export_args(supervised_ckpt, "--output", weights))
    assert code == 74 and "Traceback" not in err
    message = err.strip().splitlines()[-1]
    assert message.startswith(f"distill: error: cannot write export {weights}: ")
    assert "read-only" in message  # EACCES under a 0o555 mode, EROFS on a read-only mount
    assert message.endswith("; nothing was exported. Choose another --output")
    assert list(read_only_folder.iterdir()) == []


def test_help_documents_overwrite(cli):
    code, out, _ = cli(["export", "--help"])
    assert code == 0
    assert "--overwrite" in out and "Replace an earlier export" in out


def test_a_torchvision_teacher_exports_with_its_name_and_its_own_inputs(spec_kd_run, tmp_path, cli):
    config, checkpoint, _ = spec_kd_run
    weights = tmp_path / "teacher.pt"
    args = ["export", "--config", config, "--ckpt_path", checkpoint, "--output", weights]
    code, _, err = cli(args + ["--submodule", "teacher"])
    assert code == 0, err
    info = json.loads(weights.with_suffix(".json").read_text())
    assert info["backbone"] == "torchvision:resnet18" and info["num_features"] == 512
    # What the teacher was fed, not the digits' statistics.
    assert info["mean"] == [0.485, 0.456, 0.406] and info["image_size"] == 32
    state = checkpoint_state(checkpoint)
    backbone = load_pretrained(str(weights))
    for name, value in backbone.state_dict().items():
        assert torch.equal(value, state[f"teacher.backbone.{name}"]), name


def test_a_checkpoint_that_left_its_teacher_out_exports_the_student(left_out_kd_run, tmp_path, cli):
    config, checkpoint, teacher = left_out_kd_run
    assert not any(k.startswith("teacher.") for k in checkpoint_state(checkpoint))
    args = ["export", "--config", config, "--ckpt_path", checkpoint]
    code, _, err = cli(args + ["--output", tmp_path / "student.pt"])
    assert code == 0, err
    state = checkpoint_state(checkpoint)
    for name, value in torch.load(tmp_path / "student.pt", weights_only=True).items():
        assert torch.equal(value, state[f"student.backbone.{name}"]), name
    code, _, err = cli(args + ["--submodule", "teacher", "--output", tmp_path / "teacher.pt"])
    assert code == 2
    assert (
        f"distill: error: --ckpt_path {checkpoint} holds no teacher: it was written with "
        "model.init_args.teacher.in_checkpoint: false, so the frozen teacher's weights are its "
        f"own ({teacher}); use them directly, or export the student"
    ) in err
