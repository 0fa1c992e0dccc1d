import pytest
import torch
import torch.nn.functional as F

from distill.errors import ConfigError
from distill.losses import rkd_angle_loss, rkd_distance_loss
from distill.methods import RKD, Supervised


@pytest.fixture
def teacher_checkpoint(tmp_path):
    torch.manual_seed(2)
    path = tmp_path / "teacher.ckpt"
    torch.save({"state_dict": Supervised(backbone="wrn_16_2", num_classes=10).state_dict()}, path)
    return str(path)


def make(checkpoint, **kwargs):
    return RKD(
        student_backbone="resnet8", teacher_backbone="wrn_16_2", teacher_checkpoint=checkpoint,
        num_classes=10, **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize("mode", ["D", "A", "DA"])
@pytest.mark.parametrize("normalize", [False, True])
def test_loss_is_ce_plus_weighted_relations(teacher_checkpoint, mode, normalize):
    model = make(teacher_checkpoint, mode=mode, normalize=normalize, rkd_weight=0.5).eval()
    images, targets = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    loss = model.training_step((images, targets, torch.arange(8)), 0)
    s_emb, logits = model.student.forward_features(images)
    t_emb = model.teacher.backbone(images)  # widths differ: 64 vs 128
    if normalize:
        s_emb, t_emb = F.normalize(s_emb), F.normalize(t_emb)
    relational = 0.0
    if "D" in mode:
        relational = relational + 25 * rkd_distance_loss(s_emb, t_emb)
    if "A" in mode:
        relational = relational + 50 * rkd_angle_loss(s_emb, t_emb)
    torch.testing.assert_close(loss, F.cross_entropy(logits, targets) + 0.5 * relational)


def test_unknown_mode_is_named():
    with pytest.raises(ConfigError, match="mode='AD'.*D, A, DA"):
        RKD(mode="AD")


def test_no_gradient_reaches_the_teacher(teacher_checkpoint):
    model = make(teacher_checkpoint)
    batch = (torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,)), torch.arange(6))
    model.training_step(batch, 0).backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert model.student.backbone.conv1.weight.grad.abs().sum() > 0
