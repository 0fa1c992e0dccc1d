import pytest
import torch
import torch.nn.functional as F
from tests_support import OUTSIDE_TRAINER, fit_teacher_student, refused

from distill.losses import kd_loss, pkt_loss
from distill.methods import PKT, Supervised


@pytest.fixture(scope="module")
def wide_teacher(tmp_path_factory):
    """A Supervised wrn_16_2 (128-d embeddings, twice resnet8's 64) on the 5 colours."""
    torch.manual_seed(4)
    path = tmp_path_factory.mktemp("wide_teacher") / "teacher.ckpt"
    torch.save({"state_dict": Supervised(backbone="wrn_16_2", num_classes=5).state_dict()}, path)
    return str(path)


def make(checkpoint, embedding="auto", **kwargs):
    teacher = {"architecture": "wrn_16_2", "weights": checkpoint, "embedding": embedding}
    optimizer = lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)  # noqa: E731
    return PKT(student_backbone="resnet8", teacher=teacher, num_classes=5, optimizer=optimizer,
               **kwargs)  # fmt: skip


@pytest.mark.parametrize(
    ("embedding", "kd_weight"), [("logits", 0.0), ("logits", 0.4), ("backbone", 0.0)]
)
@OUTSIDE_TRAINER
def test_loss_is_ce_plus_pkt_on_the_pooled_embeddings(
    wide_teacher, monkeypatch, embedding, kd_weight
):
    # A file with a classifier, read as a classifier (logits) or for its features alone.
    model = make(wide_teacher, embedding, pkt_weight=300.0, kd_weight=kd_weight, ce_weight=0.7)
    model.eval()  # fixed BN statistics: both evaluations see the same network
    model.teacher_weights.load()
    logged = {}
    monkeypatch.setattr(model, "log", lambda name, value, **_: logged.__setitem__(name, value))
    images, targets = torch.randn(8, 3, 32, 32), torch.randint(0, 5, (8,))
    loss = model.training_step((images, targets, torch.arange(8)), 0)
    student_emb, logits = model.student.forward_features(images)
    teacher_emb = model.teacher.backbone(images)  # widths differ: 64 vs 128
    ce = F.cross_entropy(logits, targets)
    expected = 0.7 * ce + 300.0 * pkt_loss(student_emb, teacher_emb)
    names = {"train/loss", "train/ce", "train/pkt"}
    if kd_weight:
        expected = expected + 0.4 * kd_loss(logits, model.teacher(images), 4.0)
        names.add("train/kd")
    # The same float32 operations on the same outputs, in the same order: equal to the bit.
    torch.testing.assert_close(loss, expected, rtol=0, atol=0)
    assert set(logged) == names
    torch.testing.assert_close(logged["train/pkt"], pkt_loss(student_emb, teacher_emb))
    assert logged["train/pkt"] > 0


@OUTSIDE_TRAINER
def test_a_bf16_autocast_step_computes_its_loss_in_float32(wide_teacher):
    model = make(wide_teacher).eval()
    model.teacher_weights.load()
    images, targets = torch.randn(8, 3, 32, 32), torch.randint(0, 5, (8,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.training_step((images, targets, torch.arange(8)), 0)
        student_emb, logits = model.student.forward_features(images)
        teacher_emb = model.teacher.backbone(images)
    assert student_emb.dtype == teacher_emb.dtype == torch.bfloat16  # autocast was on
    # The float32 formula of the networks' bf16 outputs.
    student_emb, logits, teacher_emb = student_emb.float(), logits.float(), teacher_emb.float()
    expected = F.cross_entropy(logits, targets) + 30000.0 * pkt_loss(student_emb, teacher_emb)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected, rtol=0, atol=0)


def test_fit_trains_only_the_student_and_logs_the_terms(wide_teacher, tmp_path):
    trainer = fit_teacher_student(make(wide_teacher), wide_teacher, tmp_path)
    assert {"train/loss", "train/ce", "train/pkt"} <= set(trainer.callback_metrics)
    assert "train/kd" not in trainer.callback_metrics  # RepDistiller's PKT: -a 0


def test_reference_weights_are_the_defaults():
    model = PKT(teacher_checkpoint="teacher.ckpt")
    assert (model.pkt_weight, model.ce_weight, model.kd_weight) == (30000.0, 1.0, 0.0)


@pytest.mark.parametrize(
    ("argument", "value", "valid"),
    [
        ("pkt_weight", -1.0, "a number >= 0"),
        ("kd_weight", float("nan"), "a number >= 0"),
        ("temperature", 0.0, "a number > 0"),
        ("ce_weight", -1.0, "a number >= 0"),
    ],
)
def test_bad_arguments_are_one_message_naming_the_key(argument, value, valid):
    message = refused(PKT, teacher_checkpoint="teacher.ckpt", **{argument: value})
    assert message == f"model.init_args.{argument}={value!r}; valid: {valid}"


def test_teacher_embeddings_other_than_the_pooled_features_are_refused():
    head = {"architecture": "resnet14", "weights": "t.ckpt", "embedding": "head"}
    assert refused(PKT, teacher=head) == (
        "model.init_args.teacher.embedding='head': PKT reads the teacher's logits or backbone; "
        "valid: auto, logits, backbone"
    )
    features = {"architecture": "resnet14", "weights": "t.ckpt", "embedding": "backbone"}
    assert refused(PKT, teacher=features, kd_weight=1.0) == (
        "model.init_args.kd_weight=1.0 matches the teacher's logits, but the teacher reads its "
        "backbone (teacher.embedding): set it to logits (a teacher with a classifier), or "
        "kd_weight: 0"
    )
