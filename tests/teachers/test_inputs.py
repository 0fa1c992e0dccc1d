"""A teacher receives what its own preprocessing makes of the student's images."""

import math

import pytest
import torch
from tests_support import EPS32
from torchvision.transforms import v2

from distill.data import CIFAR10DataModule
from distill.errors import ConfigError
from distill.teachers import TeacherInputs, TeacherSpec, build_teacher

CIFAR = (CIFAR10DataModule.mean, CIFAR10DataModule.std)
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def images(size: int, seed: int = 0) -> torch.Tensor:
    """uint8 images ``[4, 3, size, size]``, the pixels a DataModule would read."""
    return torch.randint(
        0, 256, (4, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8
    )


def student_batch(pixels: torch.Tensor, mean, std) -> torch.Tensor:
    """The student's float32 batch, normalised as distill's transforms do (ToTensor, Normalize)."""
    return v2.Normalize(mean, std)(v2.ToDtype(torch.float32, scale=True)(pixels))


def own_preprocessing(pixels: torch.Tensor, size: int, mean, std) -> torch.Tensor:
    """The teacher's own pipeline on the same pixels, in float64: to [0, 1], torchvision's
    ``Resize`` (bilinear, antialiased) to ``size``, its normalisation."""
    pipeline = v2.Compose(
        [
            v2.ToDtype(torch.float64, scale=True),
            v2.Resize((size, size), antialias=True),
            v2.Normalize(mean, std),
        ]
    )
    return pipeline(pixels)


def tolerance(student, teacher, size: int, scale: float) -> float:
    """Bound on the float32 adaptor's error against the float64 reference, in units of the
    largest value ``M`` any step touches (a pixel of 0 or 1 under either normalisation).

    Roundings, each at most ``EPS32`` (twice one rounding's worst case) of ``M``: the
    student's batch (``k/255``, the mean and std constants, the subtraction and division: 5),
    the coefficients ``s_s/s_t`` and ``(m_s − m_t)/s_t`` and the multiply-add (4), and in
    each of the resize's two separable passes a product and a sum per input pixel read
    (bilinear upsampling reads 2, an antialiased shrink by ``scale`` ``2·ceil(scale) + 1``);
    the student's share is carried over by ``s_s/s_t`` (``gain``). And the position: each
    pass computes its source coordinates in float32 (``(i + 0.5)·scale``, up to ``size``
    input pixels: error ``<= 2·size·EPS32`` pixels), and the interpolated value moves by at
    most the largest difference of two pixels, ``2M``, per pixel of shift.
    """
    taps = 2 if scale <= 1 else 2 * math.ceil(scale) + 1
    roundings = 5 + 4 + 2 * 2 * taps
    largest = max(
        abs(p - m) / s
        for stats in (student, teacher)
        for m, s in zip(*stats, strict=True)
        for p in (0.0, 1.0)
    )
    gain = max(1.0, *(s / t for s, t in zip(student[1], teacher[1], strict=True)))
    position = 2 * (2 * size) * 2  # two passes x coordinate error x value change per pixel
    return (roundings * gain + position) * EPS32 * largest


@pytest.mark.numerics
def test_an_imagenet_teacher_at_224_receives_its_own_preprocessing_of_a_cifar_batch():
    # torchvision's ResNet-18 with its IMAGENET1K_V1 metadata: ImageNet statistics, 224 px.
    spec = TeacherSpec.from_config(
        {"architecture": "torchvision:resnet18", "weights": "DEFAULT", "embedding": "backbone"}
    )
    teacher = build_teacher(spec)
    teacher.inputs.configure(*CIFAR)  # what a Trainer does at setup, from the DataModule
    received = []
    teacher.network.backbone.conv1.register_forward_pre_hook(lambda m, a: received.append(a[0]))
    pixels = images(32)
    teacher.network(student_batch(pixels, *CIFAR))
    expected = own_preprocessing(pixels, 224, *IMAGENET)
    assert received[0].shape == (4, 3, 224, 224) and received[0].dtype == torch.float32
    atol = tolerance(CIFAR, IMAGENET, 32, 32 / 224)
    torch.testing.assert_close(received[0].double(), expected, rtol=0, atol=atol)


@pytest.mark.numerics
def test_a_smaller_teacher_receives_an_antialiased_shrink():
    inputs = TeacherInputs(*IMAGENET, image_size=32)
    inputs.configure(*CIFAR)
    pixels = images(96, seed=1)
    received = inputs(student_batch(pixels, *CIFAR))
    expected = own_preprocessing(pixels, 32, *IMAGENET)
    torch.testing.assert_close(
        received.double(), expected, rtol=0, atol=tolerance(CIFAR, IMAGENET, 96, 3.0)
    )


def test_a_teacher_with_the_students_inputs_gets_the_batch_itself():
    inputs = TeacherInputs(*CIFAR, image_size=32)  # distill's own teacher, stated explicitly
    inputs.configure(*CIFAR)
    batch = torch.randn(2, 3, 32, 32)
    assert inputs(batch) is batch
    assert TeacherInputs().is_identity


def test_a_teacher_with_its_own_statistics_needs_the_students():
    with pytest.raises(ConfigError, match="the teacher's inputs are not set up"):
        TeacherInputs(*IMAGENET)(torch.randn(1, 3, 8, 8))


def test_nothing_of_the_inputs_is_saved():
    inputs = TeacherInputs(*IMAGENET, image_size=224)
    inputs.configure(*CIFAR)
    assert inputs.state_dict() == {}
