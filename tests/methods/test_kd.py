import os
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
import torchvision
import yaml
from tests_support import (
    OUTSIDE_TRAINER,
    fit_teacher_student,
    quiet_trainer,
    refused,
    teacher_file_weights,
)

from distill.cli import main
from distill.data import DigitsDataModule
from distill.errors import ConfigError
from distill.eval import LinearProbe
from distill.losses import kd_loss
from distill.methods import KD, Supervised


@pytest.fixture
def teacher_checkpoint(tmp_path):
    torch.manual_seed(1)
    path = tmp_path / "teacher.ckpt"
    torch.save({"state_dict": Supervised(backbone="resnet14", num_classes=10).state_dict()}, path)
    return str(path)


def make(checkpoint, **kwargs):
    defaults = dict(
        student_backbone="resnet8", teacher_backbone="resnet14",
        teacher_checkpoint=checkpoint, num_classes=10,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    )  # fmt: skip
    return KD(**{**defaults, **kwargs})


@OUTSIDE_TRAINER
def test_loss_is_weighted_ce_plus_kd(teacher_checkpoint):
    model = make(teacher_checkpoint, temperature=3.0, kd_weight=0.7, ce_weight=0.2)
    model.teacher_weights.load()
    images, targets = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    model.eval()  # fixed BN statistics, so both evaluations see the same network
    loss = model.training_step((images, targets, torch.arange(6)), 0)
    logits, teacher_logits = model.student(images), model.teacher(images)
    expected = 0.2 * F.cross_entropy(logits, targets) + 0.7 * kd_loss(logits, teacher_logits, 3.0)
    torch.testing.assert_close(loss, expected)


def test_fit_loads_the_teacher_and_trains_only_the_student(teacher_checkpoint, tmp_path):
    model = make(teacher_checkpoint)  # Python users build the model and fit it
    data = DigitsDataModule(batch_size=16)
    trainer = fit_teacher_student(
        model, teacher_checkpoint, tmp_path, data, max_steps=4, limit_val_batches=1
    )
    # Loaded after the model was set up: it keeps the channels-last layout of configure_model.
    assert model.teacher.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert {"train/kd", "train/ce", "train/loss"} <= set(trainer.callback_metrics)


@OUTSIDE_TRAINER
def test_backward_sends_no_gradient_to_the_teacher(teacher_checkpoint):
    model = make(teacher_checkpoint)
    batch = (torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)), torch.arange(4))
    model.training_step(batch, 0).backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert all(p.grad is not None for p in model.student.parameters())


def test_teacher_with_other_logit_width_is_refused_with_the_shapes(teacher_checkpoint):
    # KD compares logits class by class: a 10-class teacher cannot teach a 5-class student.
    with pytest.raises(ConfigError, match=r"head\.weight \(10, \d+\) vs \(5, \d+\).*num_classes"):
        make(teacher_checkpoint, num_classes=5).teacher_weights.load()


def test_teacher_checkpoint_is_required():
    with pytest.raises(ConfigError, match="model.init_args.teacher_checkpoint is required"):
        make(None)


def test_fresh_fit_without_the_teacher_file_names_the_setting(tmp_path):
    missing = str(tmp_path / "runs" / "teacher")
    model = make(missing)
    trainer = quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    with pytest.raises(
        ConfigError, match=rf"^model.init_args.teacher_checkpoint: '{missing}' does not exist"
    ):
        trainer.fit(model, datamodule=DigitsDataModule(batch_size=16))


def test_resume_and_load_from_checkpoint_take_the_teacher_from_the_checkpoint(
    teacher_checkpoint, tmp_path
):
    data = DigitsDataModule(batch_size=16)
    trainer = quiet_trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(make(teacher_checkpoint), datamodule=data)
    student_ckpt = str(tmp_path / "student.ckpt")
    trainer.save_checkpoint(student_ckpt)
    expected = teacher_file_weights(teacher_checkpoint)
    torch.manual_seed(2)  # the teacher's file now holds another run
    other = Supervised(backbone="resnet14", num_classes=10)
    torch.save({"state_dict": other.state_dict()}, teacher_checkpoint)

    resumed = make(teacher_checkpoint)
    trainer = quiet_trainer(tmp_path, max_steps=4, limit_val_batches=1)
    trainer.fit(resumed, datamodule=data, ckpt_path=student_ckpt)
    assert trainer.global_step == 4
    for name, value in resumed.teacher.state_dict().items():
        assert torch.equal(value, expected[name]), name

    os.remove(teacher_checkpoint)  # and then it is gone
    loaded = KD.load_from_checkpoint(student_ckpt)
    quiet_trainer(tmp_path).validate(loaded, datamodule=data, verbose=False)
    for name, value in loaded.teacher.state_dict().items():
        assert torch.equal(value, expected[name]), name


def test_frozen_teacher_alone_raises_no_eval_mode_warning(tmp_path, teacher_checkpoint):
    def eval_mode_warnings(model):
        trainer = quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(model, datamodule=DigitsDataModule(batch_size=16))
        return [str(w.message) for w in caught if "in eval mode at the start" in str(w.message)]

    assert eval_mode_warnings(make(teacher_checkpoint)) == []
    model = make(teacher_checkpoint)
    model.student.head.eval()  # a module left in eval mode by mistake is still reported
    assert len(eval_mode_warnings(model)) == 1


@pytest.mark.filterwarnings("ignore:resuming from")  # settings changed on purpose
def test_command_line_resume_needs_no_teacher_file(teacher_checkpoint, tmp_path):
    config = tmp_path / "kd.yaml"
    model = {"student_backbone": "resnet8", "teacher_backbone": "resnet14", "num_classes": 10}
    config.write_text(
        yaml.safe_dump(
            {
                "seed_everything": 0,  # without it Lightning warns that it chose 0
                "model": {
                    "class_path": "distill.methods.KD",
                    "init_args": {**model, "teacher_checkpoint": teacher_checkpoint},
                },
                "data": {"class_path": "distill.data.DigitsDataModule"},
                "trainer": {"default_root_dir": str(tmp_path), "limit_val_batches": 1,
                            "enable_progress_bar": False},
            }
        )
    )  # fmt: skip
    main(["fit", "--config", str(config), "--trainer.max_steps", "2"])
    last = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    os.remove(teacher_checkpoint)
    main(["fit", "--config", str(config), "--trainer.max_steps", "3", "--ckpt_path", str(last)])
    resumed = tmp_path / "lightning_logs" / "version_1" / "checkpoints" / "last.ckpt"
    state = torch.load(resumed, weights_only=True)
    assert state["global_step"] == 3
    for name, value in torch.load(last, weights_only=True)["state_dict"].items():
        if name.startswith("teacher."):
            assert torch.equal(state["state_dict"][name], value), name


def kd_config(tmp_path, teacher) -> Path:
    config = tmp_path / "kd.yaml"
    model = {"student_backbone": "resnet8", "teacher_backbone": "resnet14", "num_classes": 10}
    config.write_text(
        yaml.safe_dump(
            {
                "seed_everything": 0,
                "model": {"class_path": "distill.methods.KD",
                          "init_args": {**model, "teacher_checkpoint": str(teacher)}},
                "data": {"class_path": "distill.data.DigitsDataModule"},
                "trainer": {"default_root_dir": str(tmp_path / "run"), "limit_val_batches": 1,
                            "enable_progress_bar": False},
            }
        )
    )  # fmt: skip
    return config


def test_fresh_cli_fit_with_a_missing_teacher_is_refused_before_any_log_folder(tmp_path, capsys):
    config = kd_config(tmp_path, tmp_path / "no-such-teacher")
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(config)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert (
        f"distill: error: model.init_args.teacher_checkpoint: '{tmp_path / 'no-such-teacher'}'"
        " does not exist" in err
    )
    assert not (tmp_path / "run").exists()


def test_resume_says_a_changed_teacher_checkpoint_is_not_read(teacher_checkpoint, tmp_path):
    config = kd_config(tmp_path, teacher_checkpoint)
    main(["fit", "--config", str(config), "--trainer.max_steps", "1"])
    last = tmp_path / "run" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(["fit", "--config", str(config), "--trainer.max_steps", "2", "--ckpt_path", str(last),
              "--model.init_args.teacher_checkpoint", str(tmp_path / "elsewhere")])  # fmt: skip
    (message,) = [str(w.message) for w in caught if "model arguments differ" in str(w.message)]
    assert "(not read: the teacher is the one in the checkpoint)" in message


@pytest.mark.parametrize(
    ("argument", "value", "valid"),
    [
        ("temperature", 0.0, "a number > 0"),
        ("temperature", -4.0, "a number > 0"),
        ("kd_weight", -0.9, "a number >= 0"),
        ("ce_weight", -0.1, "a number >= 0"),
        ("num_classes", 1, "an integer >= 2"),
    ],
)
def test_bad_numbers_are_one_message_naming_the_key(argument, value, valid):
    message = refused(KD, teacher_checkpoint="teacher.ckpt", **{argument: value})
    assert message == f"model.init_args.{argument}={value!r}; valid: {valid}"


class TeacherInputsSeen(L.Callback):
    """The shapes of what the teacher's first convolution receives, and whether the training
    steps ran it under inference mode (a probe's evaluation of it is the probe's affair)."""

    def __init__(self) -> None:
        self.shapes, self.inference = set(), set()

    def on_fit_start(self, trainer, pl_module):
        def record(module, args):
            self.shapes.add(tuple(args[0].shape[1:]))
            if trainer.training:
                self.inference.add(torch.is_inference_mode_enabled())

        pl_module.teacher.backbone.conv1.register_forward_pre_hook(record)


def test_a_torchvision_teacher_from_a_file_is_fed_its_own_inputs_and_never_trains(tmp_path):
    torch.manual_seed(3)
    weights = torchvision.models.resnet18(num_classes=10).state_dict()
    path = tmp_path / "resnet18_digits.pth"
    torch.save(weights, path)
    # torchvision's ImageNet statistics (its metadata), at 48 px instead of its 224.
    teacher = {"architecture": "torchvision:resnet18", "weights": str(path), "image_size": 48}
    model = KD(student_backbone="resnet8", num_classes=10, teacher=teacher,
               optimizer=lambda p: torch.optim.SGD(p, lr=0.1))  # fmt: skip
    seen = TeacherInputsSeen()
    probe = LinearProbe(submodule="teacher")  # trains on the teacher's step features
    trainer = quiet_trainer(tmp_path, max_steps=2, limit_val_batches=1, callbacks=[seen, probe])
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=16))
    assert seen.shapes == {(3, 48, 48)} and seen.inference == {True}
    assert model.teacher_inputs.student == (DigitsDataModule.mean, DigitsDataModule.std)
    assert model.teacher_inputs.mean == (0.485, 0.456, 0.406)
    expected = {f"backbone.{k}": v for k, v in weights.items() if not k.startswith("fc.")}
    expected.update({"head.weight": weights["fc.weight"], "head.bias": weights["fc.bias"]})
    for name, value in model.teacher.state_dict().items():
        assert torch.equal(value, expected[name]), name  # weights and batch-norm statistics
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimised == {id(p) for p in model.student.parameters()}
    assert "train/linear_loss" in trainer.callback_metrics  # the teacher's features trained it


def test_kd_refuses_a_teacher_without_logits():
    teacher = {"architecture": "resnet14", "weights": "t.ckpt", "embedding": "backbone"}
    assert refused(KD, teacher=teacher) == (
        "model.init_args.teacher.embedding='backbone': KD reads the teacher's logits; valid: "
        "auto, logits"
    )
    assert refused(KD, teacher_checkpoint="t.ckpt", teacher=teacher).startswith(
        "model.init_args.teacher and model.init_args.teacher_checkpoint both give the teacher"
    )
