import copy
import os

import pytest
import torch
import torch.nn.functional as F
import yaml
from tests_support import (
    NETWORK64_TOL,
    OUTSIDE_TRAINER,
    ColourDataModule,
    quiet_trainer,
    refused,
    resumable_fit,
)

from distill.cli import main
from distill.errors import ConfigError
from distill.losses import feature_loss, kd_loss
from distill.methods import FeatureKD

timm = pytest.importorskip("timm")

OPTIMIZER = lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)  # noqa: E731
#: A ViT small enough for a test: 32 px images in 8 px patches (a 4 x 4 grid), width 32.
TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
VIT = "timm:vit_tiny_patch16_224"
#: The student's statistics in the tests (CIFAR-10's); timm's ViT expects mean = std = 0.5.
STUDENT_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


@pytest.fixture(scope="module")
def vit_checkpoint(tmp_path_factory):
    """A timm ViT's state dict, as ``torch.save(model.state_dict())`` writes it."""
    torch.manual_seed(5)
    vit = timm.create_model(VIT.removeprefix("timm:"), pretrained=False, num_classes=5, **TINY_VIT)
    path = tmp_path_factory.mktemp("vit") / "vit.pth"
    torch.save(vit.state_dict(), path)
    return str(path)


def make(checkpoint, **kwargs):
    defaults = dict(
        student_backbone="resnet8", teacher_backbone="resnet14", teacher_checkpoint=checkpoint,
        num_classes=5, optimizer=OPTIMIZER,
    )  # fmt: skip
    return FeatureKD(**{**defaults, **kwargs})


def make_dense(checkpoint, **kwargs):
    """A dense FeatureKD with the tiny ViT teacher, fed the tests' student statistics."""
    defaults = dict(teacher_backbone=VIT, teacher_backbone_kwargs=TINY_VIT, level="dense")
    model = make(checkpoint, **{**defaults, **kwargs})
    model.teacher_inputs.configure(*STUDENT_STATS)  # what a trainer does at setup
    return model


def batch(size=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(size, 3, 32, 32, generator=generator)
    return images, torch.randint(0, 5, (size,), generator=generator), torch.arange(size)


@OUTSIDE_TRAINER
@pytest.mark.parametrize(
    ("metric", "projector", "kd_weight"),
    [("mse", "linear", 0.0), ("cosine", "mlp", 0.5), ("mse", "identity", 0.0)],
)
def test_embedding_loss_is_the_weighted_sum_of_its_terms(
    teacher_checkpoint, metric, projector, kd_weight
):
    model = make(
        teacher_checkpoint, metric=metric, projector=projector, kd_weight=kd_weight,
        feature_weight=3.0, ce_weight=0.2, temperature=2.0,
    )  # fmt: skip
    model.teacher_weights.load()
    model.eval()  # fixed BN statistics, so both evaluations see the same networks
    images, targets, indices = batch()
    loss = model.training_step((images, targets, indices), 0)
    embedding, logits = model.student.forward_features(images)
    teacher_embedding, teacher_logits = model.teacher.forward_features(images)
    expected = 3.0 * feature_loss(model.projector(embedding), teacher_embedding, metric)
    expected = expected + 0.2 * F.cross_entropy(logits, targets)
    if kd_weight:
        expected = expected + kd_weight * kd_loss(logits, teacher_logits, 2.0)
    torch.testing.assert_close(loss, expected)
    assert isinstance(model.projector, torch.nn.Identity) == (projector == "identity")


@OUTSIDE_TRAINER
def test_unlabelled_samples_add_no_cross_entropy(teacher_checkpoint):
    model = make(teacher_checkpoint, ce_weight=1.0)
    model.teacher_weights.load()
    model.eval()
    images, _, indices = batch()
    loss = model.training_step((images, torch.full((6,), -1), indices), 0)
    embedding, _ = model.student.forward_features(images)
    teacher_embedding, _ = model.teacher.forward_features(images)
    expected = feature_loss(model.projector(embedding), teacher_embedding, "mse")
    torch.testing.assert_close(loss, expected)


@OUTSIDE_TRAINER
def test_backward_reaches_the_student_and_projector_only(vit_checkpoint):
    model = make_dense(vit_checkpoint, kd_weight=1.0)
    model.teacher_weights.load()
    model.training_step(batch(), 0).backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert all(
        p.grad is not None for p in [*model.student.parameters(), *model.projector.parameters()]
    )


def hand_dense_loss(model, images, metric, column_major=False):
    """Float64 by hand: the ViT's patch tokens (timm's forward_features without the class
    token) of the batch re-normalised from the student's statistics to timm's (0.5, 0.5), put
    on the 4 x 4 grid row-major; the student's 8 x 8 map through the 1x1 conv and
    eval batch norm, then bilinearly halved (each grid cell the mean of a 2 x 2 block); the
    distance per token, averaged. ``column_major``: the tokens put on the grid column by
    column instead (a wrong order, for contrast)."""
    mean, std = (torch.tensor(v, dtype=torch.float64)[:, None, None] for v in STUDENT_STATS)
    teacher_images = (images * std + mean - 0.5) / 0.5
    tokens = model.teacher.backbone.forward_features(teacher_images)  # [B, 1 + 16, 32]
    teacher = torch.zeros(len(images), 32, 4, 4, dtype=torch.float64)
    for index in range(16):
        row, column = (index % 4, index // 4) if column_major else (index // 4, index % 4)
        teacher[:, :, row, column] = tokens[:, 1 + index]
    student_map = model.student.backbone.forward_feature_map(images)  # [B, 64, 8, 8]
    conv, norm = model.projector.project
    projected = torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], student_map)
    scale = norm.weight / (norm.running_var + norm.eps).sqrt()
    projected = (projected - norm.running_mean[:, None, None]) * scale[:, None, None]
    projected = projected + norm.bias[:, None, None]
    student = projected.unfold(2, 2, 2).unfold(3, 2, 2).mean(dim=(-1, -2))  # [B, 32, 4, 4]
    if metric == "mse":
        return (student - teacher).pow(2).mean()
    cosine = (student * teacher).sum(1) / (student.norm(dim=1) * teacher.norm(dim=1))
    return (1 - cosine).mean()


@OUTSIDE_TRAINER
@pytest.mark.parametrize("metric", ["mse", "cosine"])
def test_dense_loss_matches_the_tokens_on_the_grid_by_hand(vit_checkpoint, metric):
    model = make_dense(vit_checkpoint, metric=metric, ce_weight=0.0)
    model.teacher_weights.load()
    norm = model.projector.project[1]  # statistics a projector has after some training
    norm.running_mean.uniform_(-0.5, 0.5)
    norm.running_var.uniform_(0.5, 2.0)
    model = model.double().eval()
    model.teacher_inputs.configure(*STUDENT_STATS)  # its coefficients again, now in float64
    images = batch()[0].double()
    loss = model.training_step((images, torch.zeros(6, dtype=torch.long), torch.arange(6)), 0)
    with torch.no_grad():
        expected = hand_dense_loss(model, images, metric)
    # Float64 networks on both sides (tests_support.NETWORK64_TOL); a transposed grid, a
    # kept class token or another resize moves the loss by far more.
    torch.testing.assert_close(loss, expected, rtol=NETWORK64_TOL, atol=0)
    with torch.no_grad():
        column_major = hand_dense_loss(model, images, metric, column_major=True)
    assert not torch.isclose(loss, column_major, rtol=1e-3)


def teacher_file_state(checkpoint):
    return {k: v for k, v in torch.load(checkpoint, weights_only=True).items()}


def test_a_dense_fit_trains_student_and_projector_and_leaves_the_vit_teacher(
    vit_checkpoint, tmp_path
):
    model = make_dense(vit_checkpoint, kd_weight=0.5)
    student_before = copy.deepcopy(model.student.state_dict())
    projector_before = copy.deepcopy(model.projector.state_dict())
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=3, limit_val_batches=1)
    trainer.fit(model, datamodule=ColourDataModule(batch_size=10))
    teacher = model.teacher.state_dict()
    for name, value in teacher_file_state(vit_checkpoint).items():  # its classifier too (KD)
        own = name if name.startswith("head.") else f"backbone.{name}"
        assert torch.equal(teacher[own], value), name
    assert not model.teacher.training and not any(
        p.requires_grad for p in model.teacher.parameters()
    )
    student_moved = [
        n for n, v in model.student.state_dict().items() if not torch.equal(v, student_before[n])
    ]
    assert "backbone.conv1.weight" in student_moved and "head.weight" in student_moved
    for name, value in model.projector.state_dict().items():
        if name.endswith("num_batches_tracked"):
            assert int(value) == 3
        else:
            assert not torch.equal(value, projector_before[name]), name
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    expected = [*model.student.parameters(), *model.projector.parameters()]
    assert optimised == {id(p) for p in expected}
    assert {"train/loss", "train/feature", "train/ce", "train/kd", "val/top1"} <= set(
        trainer.callback_metrics
    )
    assert model.step_features["student"].shape == (10, 64)  # for online probes


def test_resume_equals_uninterrupted_fit_without_the_teachers_file(vit_checkpoint, tmp_path):
    teacher = tmp_path / "vit.pth"
    teacher.write_bytes(open(vit_checkpoint, "rb").read())

    def fit(root, stop_after=None, ckpt_path=None):
        return resumable_fit(
            lambda: make_dense(str(teacher), metric="cosine"),
            lambda: ColourDataModule(batch_size=10),
            root, stop_after, ckpt_path,
        )  # fmt: skip

    straight, _ = fit(tmp_path / "straight")
    _, interrupted = fit(tmp_path / "first", stop_after=2)
    os.remove(teacher)  # the resumed fit takes the teacher from its own checkpoint
    resumed, trainer = fit(tmp_path / "second", ckpt_path=str(tmp_path / "first" / "last.ckpt"))
    assert interrupted.global_step == 4 and trainer.global_step == 8
    state = straight.state_dict()
    assert any(name.startswith("projector.") for name in state)
    for name, value in state.items():
        torch.testing.assert_close(resumed.state_dict()[name], value, msg=name, rtol=0, atol=0)


def test_export_writes_the_student_backbone_without_the_projector(vit_checkpoint, tmp_path):
    config = tmp_path / "feature.yaml"
    init = dict(
        student_backbone="resnet8", teacher_backbone=VIT, teacher_backbone_kwargs=TINY_VIT,
        teacher_checkpoint=vit_checkpoint, num_classes=10, level="dense",
    )  # fmt: skip
    config.write_text(
        yaml.safe_dump(
            {
                "seed_everything": 0,
                "model": {"class_path": "distill.methods.FeatureKD", "init_args": init},
                "data": {"class_path": "distill.data.DigitsDataModule"},
                "trainer": {"default_root_dir": str(tmp_path / "run"), "max_steps": 1,
                            "limit_val_batches": 1, "enable_progress_bar": False},
            }
        )
    )  # fmt: skip
    main(["fit", "--config", str(config)])
    last = tmp_path / "run" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)["state_dict"]
    assert any(name.startswith("projector.") for name in state)
    output = tmp_path / "student.pt"
    main(["export", "--config", str(config), "--ckpt_path", str(last), "--output", str(output)])
    exported = torch.load(output, weights_only=True)
    backbone = {
        k.removeprefix("student.backbone."): v
        for k, v in state.items()
        if k.startswith("student.backbone.")
    }
    assert set(exported) == set(backbone)
    for name, value in exported.items():
        assert torch.equal(value, backbone[name]), name


def test_the_teacher_sees_the_batch_resized_to_the_size_it_was_built_for(tmp_path):
    torch.manual_seed(0)
    vit = dict(TINY_VIT, img_size=64, patch_size=16)  # 64 px in 16 px patches: a 4 x 4 grid
    path = tmp_path / "vit.pth"
    torch.save(timm.create_model("vit_tiny_patch16_224", **vit).state_dict(), path)
    model = make_dense(str(path), teacher_backbone_kwargs=vit)
    model.teacher_inputs.configure((0.5,) * 3, (0.5,) * 3)  # timm's statistics: no change
    seen = []
    patch_embed = model.teacher.backbone.patch_embed  # the first layer that sees the images
    patch_embed.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    images = batch()[0]
    model.teacher_outputs(images)
    # timm's pretrained config of this ViT: bicubic, antialiased (as its own Resize).
    expected = F.interpolate(images, size=(64, 64), mode="bicubic", antialias=True)
    assert torch.equal(seen[0], expected)  # the same operation on the same batch
    spec = dict(architecture=VIT, weights=str(path), kwargs=vit, image_size=32)
    message = refused(make_dense, checkpoint=None, teacher_backbone="resnet20",
                      teacher_backbone_kwargs=None, teacher=spec)  # fmt: skip
    assert message.startswith(
        "model.init_args.teacher: timm:vit_tiny_patch16_224 takes 64x64 images only, but would "
        "be fed 32x32"
    )


@pytest.mark.parametrize(
    ("argument", "value", "valid"),
    [
        ("level", "tokens", "embedding, dense"),
        ("metric", "l1", "mse, cosine"),
        ("projector", "conv", "linear, mlp, identity"),
        ("feature_weight", -1.0, "a number >= 0"),
        ("kd_weight", -0.5, "a number >= 0"),
        ("temperature", 0.0, "a number > 0"),
        ("num_classes", 1, "an integer >= 2"),
    ],
)
def test_bad_arguments_are_one_message_naming_the_key(teacher_checkpoint, argument, value, valid):
    message = refused(make, checkpoint=teacher_checkpoint, **{argument: value})
    assert message == f"model.init_args.{argument}={value!r}; valid: {valid}"


def test_pairings_that_cannot_work_are_refused_with_what_would(teacher_checkpoint, vit_checkpoint):
    assert refused(make, checkpoint=None).startswith(
        "model.init_args.teacher_checkpoint is required"
    )
    message = refused(
        make, checkpoint=teacher_checkpoint, student_backbone="resnet8x4", projector="identity"
    )
    assert (
        "the student's have 256 and the teacher 'resnet14''s 64; use projector: linear" in message
    )
    message = refused(make, checkpoint=teacher_checkpoint, level="dense", projector="mlp")
    assert "with level: dense the projector is linear (a 1x1 convolution" in message
    vit_student = dict(
        student_backbone="vit_tiny", student_backbone_kwargs={"image_size": 32, "patch_size": 8}
    )
    message = refused(make, checkpoint=teacher_checkpoint, level="dense", **vit_student)
    assert message.startswith("model.init_args.level='dense' needs the student's last feature map")
    spec = dict(architecture=VIT, weights=vit_checkpoint, kwargs=TINY_VIT, embedding="backbone")
    message = refused(make, checkpoint=None, teacher_backbone="resnet20", teacher=spec,
                      kd_weight=1.0)  # fmt: skip
    assert message == (
        "model.init_args.kd_weight=1.0 matches the teacher's logits, but "
        "model.init_args.teacher.embedding='backbone' reads its features alone: set it to "
        "logits or auto (a teacher with a classifier of num_classes classes), or kd_weight: 0"
    )


def test_kd_from_a_teacher_file_without_a_classifier_is_refused_at_load(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "headless.pth"
    torch.save(timm.create_model("vit_tiny_patch16_224", num_classes=0, **TINY_VIT).state_dict(),
               path)  # fmt: skip
    model = make_dense(str(path), kd_weight=1.0)
    with pytest.raises(ConfigError, match=r"has no linear classifier, so it cannot give the "
                       r"teacher's logits.*FeatureKD does with kd_weight: 0$"):  # fmt: skip
        model.teacher_weights.load()
    make_dense(str(path), kd_weight=0.0).teacher_weights.load()  # its features are enough
