from types import SimpleNamespace

import pytest
import torch
from torch import nn

from distill.errors import ConfigError
from distill.methods import Supervised
from distill.modules import FrozenTeacher
from distill.modules.teacher import TeacherWeights


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "teacher.ckpt"
    torch.save({"state_dict": Supervised(backbone="resnet8", num_classes=10).state_dict()}, path)
    return str(path)


def supervised_student(path) -> nn.Module:
    source = Supervised(backbone="resnet8", num_classes=10)
    source.load_state_dict(torch.load(path)["state_dict"])
    return source.student.eval()


class Method(nn.Module):
    """What a method holds: a student, a teacher and when the teacher takes its weights."""

    def __init__(self, checkpoint: str) -> None:
        super().__init__()
        self.student = nn.Linear(2, 2)
        self.teacher = FrozenTeacher("resnet8", 10)
        self.teacher_weights = TeacherWeights(self.teacher, checkpoint)


def test_teacher_is_frozen_and_stays_in_eval_mode():
    teacher = FrozenTeacher("resnet8", 10)
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not any(m.training for m in teacher.modules())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    teacher(torch.randn(8, 3, 32, 32))
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_teacher_loads_the_supervised_student(checkpoint):
    teacher = FrozenTeacher("resnet8", 10)
    weights = TeacherWeights(teacher, checkpoint)
    assert weights.source is None
    assert weights.load() == f"classifier from {checkpoint!r}" == weights.source
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(teacher(x), supervised_student(checkpoint)(x))  # same network, same kernels


def test_building_reads_no_file_and_a_missing_one_is_named_at_load(tmp_path):
    missing = str(tmp_path / "gone")
    weights = Method(missing).teacher_weights  # eval and export build the model like this
    with pytest.raises(ConfigError, match=rf"^model.init_args.teacher_checkpoint: '{missing}'"):
        weights.load()


def test_wrong_teacher_architecture_lists_keys(checkpoint):
    teacher = FrozenTeacher("resnet14", 10)
    with pytest.raises(ConfigError, match="teacher_checkpoint: weights in .* missing keys"):
        TeacherWeights(teacher, checkpoint).load()


def test_teacher_loads_the_newest_version_of_a_run_directory(write_run):
    sources = []
    for version, seed in ((0, 0), (1, 1)):
        torch.manual_seed(seed)
        sources.append(Supervised(backbone="resnet8", num_classes=10))
        newest = write_run(version, state_dict=sources[-1].state_dict())
    teacher = FrozenTeacher("resnet8", 10)
    TeacherWeights(teacher, str(newest.parents[3])).load()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(teacher(x), sources[1].student.eval()(x))


def test_without_a_checkpoint_the_teacher_keeps_its_initialisation():
    weights = TeacherWeights(FrozenTeacher("resnet8", 10), None, "random (online teacher)")
    assert weights.source == "random (online teacher)"
    with pytest.raises(ConfigError, match="teacher_checkpoint is not set: nothing to load"):
        weights.load()


def test_a_state_dict_that_fills_the_teacher_is_kept_and_the_file_never_read(
    checkpoint, tmp_path, lightning_log
):
    trained = Method(checkpoint)
    trained.teacher_weights.load()
    state = trained.state_dict()
    gone = str(tmp_path / "gone")
    model = Method(gone)  # the teacher's file is gone since
    trainer = SimpleNamespace(strategy=None, ckpt_path=None)  # no strategy needed
    model.load_state_dict({k: v for k, v in state.items() if k.startswith("student.")}, False)
    assert model.teacher_weights.source is None  # a state without the teacher fills nothing
    model.load_state_dict(state)  # as Lightning's restore and load_from_checkpoint do
    model.teacher_weights.load_unless_given(trainer)
    assert model.teacher_weights.source == "the weights loaded with the model's state dict"
    assert f"Teacher: {model.teacher_weights.source} (teacher_checkpoint {gone!r} not read)" in (
        lightning_log.text
    )
    for name, value in trained.teacher.state_dict().items():
        assert torch.equal(model.teacher.state_dict()[name], value), name


BACKBONE_ONLY = (
    " holds a backbone alone, without a classification head (as `distill export` writes it), "
    "but the teacher of KD, RKD and CRD is the whole classifier, backbone and head (KD matches "
    "its logits). Give the teacher's run directory (its trainer.default_root_dir) or one of its "
    "checkpoints (e.g. lightning_logs/version_N/checkpoints/last.ckpt)."
)


def test_a_backbone_export_as_teacher_is_named_as_such(tmp_path):
    # What distill export writes: the backbone's own keys (no backbone./head.), a sidecar.
    torch.manual_seed(0)
    exported = str(tmp_path / "last.student-backbone.pt")
    torch.save(FrozenTeacher("resnet8", 10).backbone.state_dict(), exported)
    with pytest.raises(ConfigError) as error:
        TeacherWeights(FrozenTeacher("resnet8", 10), exported).load()
    assert str(error.value) == f"model.init_args.teacher_checkpoint: {exported!r}{BACKBONE_ONLY}"
    # Another architecture's export is recognised by its sidecar.
    (tmp_path / "last.student-backbone.json").write_text('{"backbone": "resnet8", "kwargs": {}}')
    with pytest.raises(ConfigError) as error:
        TeacherWeights(FrozenTeacher("resnet14", 10), exported).load()
    assert str(error.value).endswith(BACKBONE_ONLY)


def test_a_classifier_state_dict_with_a_missing_head_keeps_the_key_list(tmp_path):
    # backbone.* keys without head.*: a classifier's state dict that lost keys, not an export.
    state = FrozenTeacher("resnet8", 10).state_dict()
    path = str(tmp_path / "partial.pt")
    torch.save({k: v for k, v in state.items() if not k.startswith("head.")}, path)
    with pytest.raises(ConfigError, match=r"missing keys \[head.bias, head.weight\]"):
        TeacherWeights(FrozenTeacher("resnet8", 10), path).load()
