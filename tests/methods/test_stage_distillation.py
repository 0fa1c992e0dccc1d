"""What FitNets, AT, SP and VID share (``distill.methods.stage_distillation``): one forward of
each network per step, a frozen teacher, the parts they learn trained beside the student and
left out of an export, stage pairs checked by name, float32 loss terms under bf16, and
configs whose stages are RepDistiller's."""

import copy
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from tests_support import (
    OUTSIDE_TRAINER,
    ColourDataModule,
    assert_teacher_is,
    moved_entries,
    optimised_parameters,
    quiet_trainer,
    refused,
    teacher_file_weights,
)

from distill.backbones import create_backbone, layer_calls, stage_names
from distill.commands.export import export
from distill.methods import AT, SP, VID, FitNets, Supervised
from distill.modules import StageConnectors

METHODS = {"fitnets": FitNets, "at": AT, "sp": SP, "vid": VID}
#: What each method learns besides the student, and the name of its logged term.
LEARNED = {"fitnets": "connectors", "vid": "vid"}
TERMS = {"fitnets": "hint", "at": "at", "sp": "sp", "vid": "vid"}
SGD = lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)  # noqa: E731
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def make(method, checkpoint, **kwargs):
    defaults = dict(
        student_backbone="resnet8", teacher_backbone="resnet14", teacher_checkpoint=checkpoint,
        num_classes=5, optimizer=SGD,
    )  # fmt: skip
    return METHODS[method](**{**defaults, **kwargs})


@OUTSIDE_TRAINER
@pytest.mark.parametrize("method", METHODS)
def test_a_step_runs_each_network_once(teacher_checkpoint, method):
    model = make(method, teacher_checkpoint, kd_weight=0.5)  # the teacher's logits read too
    model.teacher_weights.load()
    images = torch.randn(4, 3, 32, 32)
    batch = (images, torch.randint(0, 5, (4,)), torch.arange(4))
    teacher_once = layer_calls(model.teacher, lambda: model.teacher(images))
    student_once = layer_calls(model.student, lambda: model.student(images))
    assert layer_calls(model.teacher, lambda: model.training_step(batch, 0)) == teacher_once
    assert layer_calls(model.student, lambda: model.training_step(batch, 0)) == student_once


@OUTSIDE_TRAINER
@pytest.mark.parametrize("method", METHODS)
def test_every_term_is_float32_under_bf16_autocast(teacher_checkpoint, method, monkeypatch):
    model = make(method, teacher_checkpoint, kd_weight=0.5)
    model.teacher_weights.load()
    logged = {}
    monkeypatch.setattr(model, "log_terms", lambda terms: logged.update(terms))
    batch = (torch.randn(4, 3, 32, 32), torch.randint(0, 5, (4,)), torch.arange(4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model.training_step(batch, 0)
    assert set(logged) == {"loss", "ce", "kd", TERMS[method]}
    assert {name: value.dtype for name, value in logged.items()} == dict.fromkeys(
        logged, torch.float32
    )


@pytest.fixture(scope="module", params=list(METHODS))
def fitted(request, teacher_checkpoint, tmp_path_factory):
    """A 4-step fit of each method, with checkpoints, counting the teacher's forwards."""
    method = request.param
    root = tmp_path_factory.mktemp(method)
    L.seed_everything(0)
    model = make(method, teacher_checkpoint)
    learned = getattr(model, LEARNED.get(method, "student"))
    before = {
        "student": copy.deepcopy(model.student.state_dict()),
        "learned": copy.deepcopy(learned.state_dict()),
    }
    convolutions = []
    model.teacher.backbone.conv1.register_forward_hook(lambda *_: convolutions.append(1))
    trainer = quiet_trainer(
        root, max_epochs=1, limit_train_batches=4, limit_val_batches=1, enable_checkpointing=True,
        callbacks=[L.pytorch.callbacks.ModelCheckpoint(dirpath=str(root), save_last=True)],
    )  # fmt: skip
    data = ColourDataModule(batch_size=10)
    trainer.fit(model, datamodule=data)
    return method, model, trainer, before, len(convolutions), root, data


def test_a_fit_trains_the_student_and_its_parts_and_leaves_the_teacher(fitted, teacher_checkpoint):
    method, model, trainer, before, teacher_forwards, _, _ = fitted
    assert teacher_forwards == 4  # once per step (validation runs the student alone)
    assert_teacher_is(model.teacher, teacher_file_weights(teacher_checkpoint))
    assert not any(p.requires_grad for p in model.teacher.parameters())
    moved = moved_entries(model.student, before["student"])
    assert "backbone.conv1.weight" in moved and "head.weight" in moved
    expected = {id(p) for p in model.student.parameters()}
    if method in LEARNED:
        learned = getattr(model, LEARNED[method])
        for name, value in learned.state_dict().items():
            if name.endswith("num_batches_tracked"):
                assert int(value) == 4, name
            else:
                assert not torch.equal(value, before["learned"][name]), name
        expected |= {id(p) for p in learned.parameters()}
    assert optimised_parameters(trainer) == expected
    assert {"train/loss", "train/ce", f"train/{TERMS[method]}", "val/top1"} <= set(
        trainer.callback_metrics
    )
    assert "train/kd" not in trainer.callback_metrics  # kd_weight 0: RepDistiller's setting
    assert model.step_features["student"].shape == (10, 64)  # for online probes
    assert model.step_features["teacher"].shape == (10, 64)


def test_export_writes_the_student_backbone_alone(fitted, tmp_path):
    method, model, _, _, _, root, data = fitted
    last = root / "last.ckpt"
    state = torch.load(last, weights_only=True)["state_dict"]
    if method in LEARNED:
        assert any(name.startswith(f"{LEARNED[method]}.") for name in state)
    weights, _ = export(model, data, {}, str(last), output=str(tmp_path / "student.pt"))
    exported = torch.load(weights, weights_only=True)
    backbone = {
        name.removeprefix("student.backbone."): value
        for name, value in state.items()
        if name.startswith("student.backbone.")
    }
    assert set(exported) == set(backbone)
    assert all(torch.equal(exported[name], value) for name, value in backbone.items())


@pytest.mark.parametrize("method", METHODS)
def test_a_stage_a_backbone_lacks_is_one_message_listing_its_stages(teacher_checkpoint, method):
    message = refused(make, method=method, checkpoint=teacher_checkpoint,
                      stages=[["stage2", "stage4"]])  # fmt: skip
    assert message == (
        "model.init_args.stages: the teacher has no stage 'stage4'; its stages: stem, stage1, "
        "stage2, stage3"
    )
    message = refused(make, method=method, checkpoint=teacher_checkpoint,
                      stages=[["pool", "stage3"]])  # fmt: skip
    assert message == (
        "model.init_args.stages: the student has no stage 'pool' (pool is the embedding, not a "
        "feature map); its stages: stem, stage1, stage2, stage3"
    )
    for stages in ([], [["stage2"]], "stage2", [["stage2", 2]]):
        message = refused(make, method=method, checkpoint=teacher_checkpoint, stages=stages)
        assert message == (
            f"model.init_args.stages={stages!r}; valid: a list of [student stage, teacher "
            "stage] pairs, e.g. [[stage2, stage2]], or null (the method's default)"
        )


@pytest.mark.parametrize("method", METHODS)
def test_bad_weights_are_one_message_naming_the_key(teacher_checkpoint, method):
    weight = f"{TERMS[method]}_weight"
    for key, value, valid in (
        (weight, -1.0, "a number >= 0"),
        ("kd_weight", -0.5, "a number >= 0"),
        ("temperature", 0.0, "a number > 0"),
    ):
        message = refused(make, method=method, checkpoint=teacher_checkpoint, **{key: value})
        assert message == f"model.init_args.{key}={value!r}; valid: {valid}"


@pytest.mark.parametrize("method", METHODS)
def test_kd_needs_a_teacher_read_by_its_logits(teacher_checkpoint, method):
    spec = dict(architecture="resnet14", weights=teacher_checkpoint, embedding="backbone")
    make(method, None, teacher_backbone="resnet32x4", teacher=spec)  # features are enough
    message = refused(make, method=method, checkpoint=None, teacher_backbone="resnet32x4",
                      teacher=spec, kd_weight=1.0)  # fmt: skip
    assert message.startswith("model.init_args.kd_weight=1.0 matches the teacher's logits")


def test_the_default_inner_pairs_refuse_networks_of_other_depths(tmp_path):
    path = tmp_path / "vgg8.ckpt"
    torch.save({"state_dict": Supervised(backbone="vgg8", num_classes=5).state_dict()}, path)
    for method in ("at", "vid"):
        message = refused(make, method=method, checkpoint=str(path), teacher_backbone="vgg8")
        assert message == (
            "model.init_args.stages: the default pairs every stage after the stem, but the "
            "student's (stage1, stage2, stage3) and the teacher's (stage1, stage2, stage3, "
            "stage4) differ in number; name the pairs, e.g. [[stage3, stage4]]"
        )
    model = make("at", str(path), teacher_backbone="vgg8", stages=[["stage3", "stage4"]])
    assert model.stage_pairs == [("stage3", "stage4")]


STAGE_CONFIGS = sorted(path for m in METHODS for path in (CONFIGS / m).glob("*.yaml"))


@pytest.mark.parametrize("path", STAGE_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_each_config_names_repdistillers_stages_of_its_backbones(path):
    model = yaml.safe_load(path.read_text())["model"]
    init = model["init_args"]
    method = METHODS[path.parent.name]
    assert model["class_path"] == f"distill.methods.{method.__name__}"
    student = create_backbone(init["student_backbone"])
    teacher = create_backbone(init["teacher_backbone"])
    expected = method.default_stages(stage_names(student), stage_names(teacher))
    assert [tuple(pair) for pair in init["stages"]] == expected
    assert (init["ce_weight"], init["kd_weight"]) == (1.0, 0.0)
    weight = {"fitnets": 100.0, "at": 1000.0, "sp": 3000.0, "vid": 1.0}[path.parent.name]
    assert init[f"{TERMS[path.parent.name]}_weight"] == weight
    if method is FitNets:  # its regressors fit the two backbones at 32 px
        StageConnectors.from_backbones(init["stages"], student, teacher, 32, relu=True)
