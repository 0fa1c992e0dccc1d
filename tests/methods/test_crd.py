import lightning as L
import pytest
import torch
import torch.nn.functional as F
from tests_support import ColourDataModule, normalize_error, quiet_trainer, refused, resumable_fit

from distill.data import DigitsDataModule
from distill.errors import ConfigError
from distill.methods import CRD, Supervised


@pytest.fixture
def teacher_checkpoint(tmp_path):
    torch.manual_seed(3)
    path = tmp_path / "teacher.ckpt"
    torch.save({"state_dict": Supervised(backbone="resnet14", num_classes=10).state_dict()}, path)
    return str(path)


def make(checkpoint, **kwargs):
    defaults = dict(
        student_backbone="resnet8", teacher_backbone="resnet14", teacher_checkpoint=checkpoint,
        num_classes=10, num_negatives=64, embed_dim=16,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    )  # fmt: skip
    return CRD(**{**defaults, **kwargs})


class BankWatcher(L.Callback):
    """Snapshots the banks and the batch's embeddings before the module updates the banks."""

    def __init__(self) -> None:
        self.snapshots = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        z_s, z_t, idx = pl_module._pending_update
        self.snapshots.append((pl_module.crd.student_memory.rows.clone(), z_s.clone(), idx.clone()))


@pytest.mark.numerics
def test_banks_move_by_the_momentum_formula_and_teacher_stays(teacher_checkpoint, tmp_path):
    torch.manual_seed(0)
    model = make(teacher_checkpoint, kd_weight=1.0)
    state = torch.load(teacher_checkpoint)["state_dict"]  # what the teacher loads at fit start
    teacher_before = {
        k.removeprefix("student."): v for k, v in state.items() if k.startswith("student.")
    }
    watcher = BankWatcher()
    trainer = quiet_trainer(tmp_path, max_steps=3, limit_val_batches=0, callbacks=[watcher])
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=16))
    rows_before, z_s, idx = watcher.snapshots[-1]
    rows_after = model.crd.student_memory.rows
    expected = F.normalize(0.5 * rows_before[idx] + 0.5 * z_s, dim=1)
    torch.testing.assert_close(rows_after[idx], expected)  # the same float32 operations
    others = torch.ones(len(rows_after), dtype=torch.bool)
    others[idx] = False
    assert torch.equal(rows_after[others], rows_before[others])
    norms = rows_after[idx].norm(dim=1)  # normalised, then measured
    torch.testing.assert_close(norms, torch.ones(len(idx)), rtol=0, atol=2 * normalize_error(16))
    for name, value in model.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[name]), name
    assert torch.isfinite(model.crd.normalizers).all()
    assert {"train/crd", "train/kd", "train/ce"} <= set(trainer.callback_metrics)
    optimised = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    expected_params = list(model.student.parameters()) + list(model.crd.parameters())
    assert optimised == {id(p) for p in expected_params}


def test_other_class_sampler_uses_the_training_labels(teacher_checkpoint, tmp_path):
    model = make(teacher_checkpoint)
    data = DigitsDataModule(batch_size=16)
    quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(model, datamodule=data)
    assert torch.equal(model.crd.labels, data.train_targets())
    rows = model.crd.sample(torch.arange(16))
    assert (model.crd.labels[rows[:, 1:]] != model.crd.labels[:16].unsqueeze(1)).all()


def test_batches_without_indices_are_refused(teacher_checkpoint, tmp_path):
    model = make(teacher_checkpoint, sampler="uniform")
    quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(
        model, datamodule=DigitsDataModule(batch_size=16)
    )
    with pytest.raises(ConfigError, match="dataset index"):
        model.training_step((torch.randn(2, 3, 32, 32), torch.tensor([0, 1])), 0)


def test_resume_from_checkpoint_equals_uninterrupted_fit(teacher_checkpoint, tmp_path):
    def fit(root, stop_after=None, ckpt_path=None):
        return resumable_fit(
            lambda: make(teacher_checkpoint, kd_weight=1.0),
            lambda: DigitsDataModule(batch_size=16),
            root,
            stop_after,
            ckpt_path,
            batches=3,
        )

    straight, _ = fit(tmp_path / "straight")
    _, interrupted = fit(tmp_path / "first", stop_after=2)
    assert interrupted.global_step == 6
    resumed, trainer = fit(tmp_path / "second", ckpt_path=str(tmp_path / "first" / "last.ckpt"))
    assert trainer.global_step == 12
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, msg=name)


def test_a_last_batch_of_one_trains_and_moves_its_bank_row(tmp_path):
    path = tmp_path / "teacher5.ckpt"
    torch.save({"state_dict": Supervised(backbone="resnet14", num_classes=5).state_dict()}, path)
    model = make(str(path), num_classes=5)  # 60 images in batches of 59: the second has one
    rows = []

    class Before(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if len(batch[2]) == 1:
                rows.append((int(batch[2]), pl_module.crd.student_memory.rows.clone()))

    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_val_batches=0, callbacks=[Before()])
    trainer.fit(model, datamodule=ColourDataModule(batch_size=59, drop_last=False))
    ((index, before),) = rows
    assert trainer.global_step == 2 and torch.isfinite(trainer.callback_metrics["train/loss"])
    after = model.crd.student_memory.rows
    assert not torch.equal(after[index], before[index])
    others = torch.arange(len(after)) != index
    assert torch.equal(after[others], before[others])


@pytest.mark.parametrize(
    ("argument", "value", "valid"),
    [
        ("crd_weight", -0.8, "a number >= 0"),
        ("kd_weight", -1.0, "a number >= 0"),
        ("temperature", 0.0, "a number > 0"),
        ("nce_temperature", -0.07, "a number > 0"),
        ("memory_momentum", 1.5, "a number in [0, 1]"),
        ("num_negatives", 0, "an integer >= 1"),
        ("embed_dim", 0, "an integer >= 1"),
        ("sampler", "other", "uniform, other_class"),
    ],
)
def test_bad_numbers_are_one_message_naming_the_key(argument, value, valid):
    message = refused(CRD, teacher_checkpoint="teacher.ckpt", **{argument: value})
    assert message == f"model.init_args.{argument}={value!r}; valid: {valid}"


def test_crd_reads_a_teacher_without_classifier_and_needs_one_for_kd(tmp_path):
    # An official MoCo checkpoint's encoder: features only, MoCo's fc is its projection.
    torch.manual_seed(0)
    backbone = Supervised(backbone="resnet14", num_classes=5).student.backbone.state_dict()
    path = tmp_path / "moco.pth.tar"
    torch.save({"state_dict": {f"module.encoder_q.{k}": v for k, v in backbone.items()}}, path)
    teacher = {"architecture": "resnet14", "weights": str(path), "embedding": "backbone"}
    model = CRD(student_backbone="resnet8", num_classes=5, num_negatives=16, embed_dim=8,
                teacher=teacher, optimizer=lambda p: torch.optim.SGD(p, lr=0.05))  # fmt: skip
    trainer = quiet_trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(model, datamodule=ColourDataModule())
    assert model.teacher.head is None and "train/crd" in trainer.callback_metrics
    for name, value in backbone.items():
        assert torch.equal(model.teacher.backbone.state_dict()[name], value), name
    with pytest.raises(ConfigError, match=r"kd_weight=1.0 matches the teacher's logits, but the "
                       r"teacher reads its backbone \(teacher.embedding\)"):  # fmt: skip
        CRD(student_backbone="resnet8", num_classes=5, kd_weight=1.0, teacher=teacher)
