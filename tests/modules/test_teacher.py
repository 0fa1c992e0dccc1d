import pytest
import torch

from distill.errors import ConfigError
from distill.methods import Supervised
from distill.modules import FrozenTeacher


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "teacher.ckpt"
    torch.save({"state_dict": Supervised(backbone="resnet8", num_classes=10).state_dict()}, path)
    return str(path)


def test_teacher_is_frozen_and_stays_in_eval_mode(checkpoint):
    teacher = FrozenTeacher("resnet8", 10, checkpoint)
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not any(m.training for m in teacher.modules())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    teacher(torch.randn(8, 3, 32, 32))
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_teacher_loads_the_supervised_student(checkpoint):
    source = Supervised(backbone="resnet8", num_classes=10)
    source.load_state_dict(torch.load(checkpoint)["state_dict"])
    teacher = FrozenTeacher("resnet8", 10, checkpoint)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(teacher(x), source.student.eval()(x))


def test_missing_checkpoint_setting_names_the_key():
    with pytest.raises(ConfigError, match="teacher_checkpoint is required"):
        FrozenTeacher("resnet8", 10, None)


def test_wrong_teacher_architecture_lists_keys(checkpoint):
    with pytest.raises(ConfigError, match="missing keys"):
        FrozenTeacher("resnet14", 10, checkpoint)


def test_teacher_loads_the_newest_version_of_a_run_directory(write_run):
    sources = []
    for version, seed in ((0, 0), (1, 1)):
        torch.manual_seed(seed)
        sources.append(Supervised(backbone="resnet8", num_classes=10))
        newest = write_run(version, state_dict=sources[-1].state_dict())
    teacher = FrozenTeacher("resnet8", 10, str(newest.parents[3]))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(teacher(x), sources[1].student.eval()(x))
