"""The teacher specification: checked keys and values, plain values in checkpoints."""

import io

import pytest
import torch

from distill.errors import ConfigError
from distill.teachers import TeacherSpec


def refused(config) -> str:
    with pytest.raises(ConfigError) as error:
        TeacherSpec.from_config(config)
    return str(error.value)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"architecture": "resnet20", "weigths": "x.ckpt"},
         "model.init_args.teacher: unknown key 'weigths'; did you mean 'weights'?"),
        ({"weights": "x.ckpt"},
         "model.init_args.teacher.architecture is required: a distill backbone (resnet20), "
         "torchvision:<model> or timm:<model>"),
        ({"architecture": "resnet20", "network": "ema"},
         "model.init_args.teacher.network='ema'; valid: auto, teacher, student, query, key"),
        ({"architecture": "resnet20", "mean": [0.5, 0.5, 0.5]},
         "model.init_args.teacher: give mean and std together (or neither)"),
        ({"architecture": "resnet20", "mean": [0.5] * 3, "std": [0.2, 0.0, 0.2]},
         "model.init_args.teacher.std=[0.2, 0.0, 0.2]; valid: three numbers > 0 (one per RGB "
         "channel) or null"),
        ({"architecture": "resnet20", "image_size": 0},
         "model.init_args.teacher.image_size=0; valid: an integer >= 1 or null"),
    ],
)  # fmt: skip
def test_bad_values_are_one_message_naming_the_key(config, message):
    assert refused(config) == message


def test_the_spec_is_recorded_as_plain_values():
    spec = TeacherSpec.from_config({
        "architecture": "torchvision:resnet50", "weights": "IMAGENET1K_V2", "mean": (0.5,) * 3,
        "std": (0.25,) * 3, "image_size": 224, "in_checkpoint": False, "kwargs": {"a": 1},
    })  # fmt: skip
    buffer = io.BytesIO()
    torch.save({"teacher": spec.to_config()}, buffer)
    buffer.seek(0)
    restored = torch.load(buffer, weights_only=True)["teacher"]  # loads without trusting code
    assert TeacherSpec.from_config(restored) == spec


@pytest.mark.parametrize(
    ("architecture", "weights", "kind"),
    [("torchvision:resnet50", "IMAGENET1K_V2", "torchvision"),
     ("torchvision:resnet50", "ResNet50_Weights.DEFAULT", "torchvision"),
     ("torchvision:resnet50", "runs/r50/last.ckpt", "file"),
     ("timm:resnet50", "pretrained", "timm"), ("timm:resnet50", "r50.safetensors", "file"),
     ("resnet50", "DEFAULT", "file"), ("resnet50", None, "none")],
)  # fmt: skip
def test_weights_are_a_library_name_or_a_path(architecture, weights, kind):
    assert TeacherSpec(architecture, weights).weights_kind == kind


def test_the_spec_and_the_short_form_are_one_or_the_other():
    with pytest.raises(ConfigError) as error:
        TeacherSpec.from_arguments(
            {"architecture": "resnet20", "weights": "t.ckpt"},
            dict(teacher_backbone="resnet32x4", teacher_checkpoint="t.ckpt"),
            dict(teacher_backbone="resnet32x4"),
        )
    assert str(error.value).startswith(
        "model.init_args.teacher and model.init_args.teacher_checkpoint both give the teacher"
    )
    short = TeacherSpec.from_arguments(
        None, dict(teacher_backbone="resnet20", teacher_checkpoint="t.ckpt"), {}
    )
    assert (short.architecture, short.weights, short.weights_key) == (
        "resnet20",
        "t.ckpt",
        "model.init_args.teacher_checkpoint",
    )


def test_a_method_refuses_an_embedding_it_cannot_read():
    spec = TeacherSpec("resnet20", "t.ckpt", embedding="backbone")
    with pytest.raises(ConfigError) as error:
        spec.resolve_embedding("logits", ("logits",), "KD")
    assert str(error.value) == (
        "model.init_args.teacher.embedding='backbone': KD reads the teacher's logits; valid: "
        "auto, logits"
    )
    assert (
        TeacherSpec("resnet20", "t.ckpt").resolve_embedding("head", ("head",), "X").embedding
        == "head"
    )
