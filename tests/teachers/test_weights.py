"""When a teacher's weights are read, what is reported, and a frozen teacher kept out of the
student's checkpoints (``in_checkpoint: false``)."""

from types import SimpleNamespace

import lightning as L
import pytest
import torch
from tests_support import ColourDataModule, quiet_trainer, resumable_fit

from distill.backbones import to_channels_last
from distill.data import TwoViews
from distill.errors import ConfigError
from distill.methods import KD, MoCo, ReKD, Supervised
from distill.teachers import TeacherSpec, build_momentum_teacher, build_teacher
from distill.teachers.weights import weights_digest

SGD = lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)  # noqa: E731


@pytest.fixture
def checkpoint(tmp_path):
    """A Supervised resnet8 run's checkpoint (10 classes)."""
    torch.manual_seed(0)
    path = tmp_path / "teacher.ckpt"
    torch.save({"state_dict": Supervised(backbone="resnet8", num_classes=10).state_dict()}, path)
    return str(path)


def short_form(path, backbone="resnet8"):
    """The teacher KD's ``teacher_backbone`` and ``teacher_checkpoint`` give."""
    spec = TeacherSpec.short_form(backbone, path).resolve_embedding("logits", ("logits",), "KD")
    return build_teacher(spec, num_classes=10)


def supervised_student(path) -> torch.nn.Module:
    source = Supervised(backbone="resnet8", num_classes=10)
    source.load_state_dict(torch.load(path)["state_dict"])
    return source.student.eval()


def test_the_teacher_is_the_supervised_runs_classifier_and_the_load_is_reported(
    checkpoint, lightning_log
):
    teacher = short_form(checkpoint)
    assert teacher.weights.source is None  # nothing read when built
    report = teacher.weights.load()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(teacher.network(x), supervised_student(checkpoint)(x))
    assert str(report) == (
        f"Teacher resnet8 from {checkpoint}\n"
        "  format: distill checkpoint (Supervised)\n"
        "  network: Supervised's student (student.backbone.*)\n"
        f"  loaded: {report.num_loaded} tensors (backbone {report.num_loaded - 2}, classifier 2)\n"
        "  left out: nothing\n"
        "  inputs: the student's batch as it is (its statistics and size)"
    )
    assert lightning_log.text.count("Teacher resnet8 from") == 1  # one report per load


def test_building_reads_no_file_and_a_missing_one_is_named_at_load(tmp_path):
    missing = str(tmp_path / "gone")
    weights = short_form(missing).weights  # eval and export build the model like this
    with pytest.raises(ConfigError, match=rf"^model.init_args.teacher_checkpoint: '{missing}'"):
        weights.load()


def test_the_newest_run_of_a_run_directory_is_taken(write_run):
    sources = []
    for version, seed in ((0, 0), (1, 1)):
        torch.manual_seed(seed)
        sources.append(Supervised(backbone="resnet8", num_classes=10))
        newest = write_run(version, state_dict=sources[-1].state_dict())
    teacher = short_form(str(newest.parents[3]))
    assert teacher.weights.load().source == str(newest)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(teacher.network(x), sources[1].student.eval()(x))


def test_a_momentum_teacher_takes_both_encoders_from_a_run_directory(write_run):
    torch.manual_seed(1)
    moco = MoCo(backbone="resnet8", proj_hidden_dim=32, proj_dim=16, queue_size=20)
    with torch.no_grad():  # the key encoder has moved away, as after training
        for parameter in moco.student.key_backbone.parameters():
            parameter.add_(1.0)
    path = write_run(0, state_dict=moco.state_dict())
    spec = TeacherSpec.short_form("resnet8", str(path.parents[3]), embedding="head")
    teacher = build_momentum_teacher(spec, False, 32, 16, 20)
    teacher.weights.load()
    for name, value in moco.student.state_dict().items():
        if not name.startswith("queue."):  # the queue holds keys of the run's own images
            assert torch.equal(teacher.network.state_dict()[name], value), name


def test_a_state_dict_that_fills_the_teacher_is_kept_and_the_file_never_read(
    checkpoint, tmp_path, lightning_log
):
    trained = short_form(checkpoint)
    trained.weights.load()
    gone = str(tmp_path / "gone")
    teacher = short_form(gone)  # the teacher's file is gone since
    trainer = SimpleNamespace(strategy=None, ckpt_path="run/last.ckpt")
    teacher.network.load_state_dict(trained.network.state_dict())  # as a restore does
    teacher.weights.load_unless_given(trainer)
    assert (
        "Teacher: the weights restored from run/last.ckpt (model.init_args.teacher_checkpoint "
        f"'{gone}' not read)"
    ) in lightning_log.text
    for name, value in trained.network.state_dict().items():
        assert torch.equal(teacher.network.state_dict()[name], value), name


def test_the_digest_is_of_the_values_not_their_memory_layout(checkpoint):
    teacher = short_form(checkpoint)
    teacher.weights.load()
    digest = weights_digest(teacher.network)
    to_channels_last(teacher.network)  # what configure_model does before a fit
    assert weights_digest(teacher.network) == digest
    with torch.no_grad():
        teacher.network.head.bias[0] += 1e-6
    assert weights_digest(teacher.network) != digest


# --- in_checkpoint: false ----------------------------------------------------------------------


def kd(teacher_path, in_checkpoint=False):
    teacher = dict(architecture="resnet14", weights=str(teacher_path), in_checkpoint=in_checkpoint)
    return KD(student_backbone="resnet8", num_classes=5, optimizer=SGD, teacher=teacher)


@pytest.fixture
def kd_teacher(tmp_path):
    torch.manual_seed(1)
    path = tmp_path / "teacher" / "teacher.ckpt"
    path.parent.mkdir()
    torch.save({"state_dict": Supervised(backbone="resnet14", num_classes=5).state_dict()}, path)
    return path


def test_a_teacher_left_out_is_recorded_and_resumes_exactly(kd_teacher, tmp_path):
    straight, _ = resumable_fit(lambda: kd(kd_teacher), ColourDataModule, tmp_path / "straight")
    resumable_fit(lambda: kd(kd_teacher), ColourDataModule, tmp_path / "first", stop_after=2)
    last = tmp_path / "first" / "last.ckpt"
    saved = torch.load(last, weights_only=True)  # plain values only
    assert not any(key.startswith("teacher.") for key in saved["state_dict"])
    assert saved["teacher"]["in_checkpoint"] is False
    assert saved["teacher"]["spec"] == {
        "architecture": "resnet14",
        "weights": str(kd_teacher),
        "network": "auto",
        "embedding": "logits",
        "mean": None,
        "std": None,
        "image_size": None,
        "in_checkpoint": False,
        "kwargs": {},
    }
    assert saved["teacher"]["sha256"] == weights_digest(straight.teacher)
    resumed, trainer = resumable_fit(
        lambda: kd(kd_teacher), ColourDataModule, tmp_path / "second", ckpt_path=str(last)
    )
    assert trainer.global_step == straight.trainer.global_step
    for name, value in straight.state_dict().items():  # the teacher, read again, included
        torch.testing.assert_close(resumed.state_dict()[name], value, msg=name, rtol=0, atol=0)


def test_a_teacher_that_changed_since_is_refused_on_resume(kd_teacher, tmp_path):
    resumable_fit(lambda: kd(kd_teacher), ColourDataModule, tmp_path / "first", stop_after=1)
    torch.manual_seed(2)  # the teacher's file now holds another network
    torch.save(
        {"state_dict": Supervised(backbone="resnet14", num_classes=5).state_dict()}, kd_teacher
    )
    with pytest.raises(
        ConfigError,
        match=r"^model.init_args.teacher.weights: the teacher loaded "
        r"from .* is not the one the restored checkpoint was trained with",
    ):
        resumable_fit(
            lambda: kd(kd_teacher),
            ColourDataModule,
            tmp_path / "second",
            ckpt_path=str(tmp_path / "first" / "last.ckpt"),
        )


def test_load_from_checkpoint_reloads_a_teacher_left_out(kd_teacher, tmp_path):
    model, _ = resumable_fit(
        lambda: kd(kd_teacher), ColourDataModule, tmp_path / "run", stop_after=1
    )
    loaded = KD.load_from_checkpoint(tmp_path / "run" / "last.ckpt")  # no missing-key error
    quiet_trainer(tmp_path).validate(loaded, datamodule=ColourDataModule(), verbose=False)
    for name, value in model.teacher.state_dict().items():
        assert torch.equal(loaded.teacher.state_dict()[name], value), name


def test_a_frozen_rekd_teacher_left_out_keeps_its_queue_in_the_checkpoint(tmp_path):
    torch.manual_seed(1)
    moco = MoCo(backbone="resnet8", proj_hidden_dim=32, proj_dim=16, queue_size=20)
    teacher_file = tmp_path / "moco.ckpt"
    torch.save({"state_dict": moco.state_dict()}, teacher_file)

    def rekd():
        teacher = dict(architecture="resnet8", weights=str(teacher_file), in_checkpoint=False)
        return ReKD(
            student_backbone="resnet8",
            proj_hidden_dim=32,
            proj_dim=16,
            queue_size=20,
            num_prototypes=4,
            threshold=0.0,
            teacher_frozen=True,
            teacher=teacher,
            optimizer=SGD,
        )

    def data():
        return ColourDataModule(views=TwoViews(blur_prob=0.0))

    straight, _ = resumable_fit(rekd, data, tmp_path / "straight")
    resumable_fit(rekd, data, tmp_path / "first", stop_after=2)
    saved = torch.load(tmp_path / "first" / "last.ckpt", weights_only=True)["state_dict"]
    teacher_keys = [k for k in saved if k.startswith("teacher.")]
    assert teacher_keys and all(k.startswith("teacher.queue.") for k in teacher_keys)
    resumed, _ = resumable_fit(
        rekd, data, tmp_path / "second", ckpt_path=str(tmp_path / "first" / "last.ckpt")
    )
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, msg=name, rtol=0, atol=0)


def test_an_online_teacher_cannot_be_left_out(tmp_path):
    teacher = dict(architecture="resnet8", weights="moco.ckpt", in_checkpoint=False)
    with pytest.raises(ConfigError, match="in_checkpoint=false needs a frozen teacher"):
        ReKD(student_backbone="resnet8", teacher=teacher, queue_size=20, num_prototypes=4)


@pytest.mark.parametrize("in_checkpoint", [True, False])
def test_a_teacher_kept_in_the_checkpoint_is_restored_not_read(kd_teacher, tmp_path, in_checkpoint):
    L.seed_everything(0)
    resumable_fit(lambda: kd(kd_teacher, True), ColourDataModule, tmp_path / "first", stop_after=1)
    saved = torch.load(tmp_path / "first" / "last.ckpt", weights_only=True)
    assert saved["teacher"] == {
        "spec": kd(kd_teacher, True).teacher_weights.spec.to_config(),
        "in_checkpoint": True,
    }
    kd_teacher.unlink()  # not needed: the checkpoint holds the teacher
    # A resume that now leaves the teacher out keeps the restored one and records its digest.
    model, _ = resumable_fit(
        lambda: kd(kd_teacher, in_checkpoint),
        ColourDataModule,
        tmp_path / "second",
        ckpt_path=str(tmp_path / "first" / "last.ckpt"),
    )
    saved = torch.load(tmp_path / "second" / "last.ckpt", weights_only=True)
    assert any(k.startswith("teacher.") for k in saved["state_dict"]) is in_checkpoint
    if not in_checkpoint:
        assert saved["teacher"]["sha256"] == weights_digest(model.teacher)
