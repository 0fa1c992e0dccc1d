import os

import lightning as L
import pytest
import torch
from tests_support import OUTSIDE_TRAINER, ColourDataModule, quiet_trainer, refused, resumable_fit

from distill.data import SupervisedViews, TwoViews
from distill.errors import ConfigError
from distill.eval import KNNEval
from distill.losses.seed import seed_loss
from distill.methods import SEED, MoCo

OPTIMIZER = lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)  # noqa: E731


@pytest.fixture(scope="module")
def moco_checkpoint(tmp_path_factory):
    """A MoCo run's checkpoint: resnet14 with a 32 → 16 head, key encoder unlike the query's."""
    torch.manual_seed(3)
    moco = MoCo(backbone="resnet14", proj_hidden_dim=32, proj_dim=16, queue_size=20)
    with torch.no_grad():
        for param in moco.student.key_backbone.parameters():
            param.add_(1.0)
    path = tmp_path_factory.mktemp("moco") / "moco.ckpt"
    torch.save({"state_dict": moco.state_dict()}, path)
    return str(path)


def make(checkpoint, **kwargs):
    defaults = dict(
        student_backbone="resnet8", teacher_backbone="resnet14", teacher_checkpoint=checkpoint,
        teacher_proj_hidden_dim=32, teacher_proj_dim=16, proj_hidden_dim=32, queue_size=30,
        optimizer=OPTIMIZER,
    )  # fmt: skip
    return SEED(**{**defaults, **kwargs})


def colours(**kwargs):
    return ColourDataModule(batch_size=10, views=TwoViews(blur_prob=0.0), **kwargs)


class Watcher(L.Callback):
    """Before the module's own hook: the step's teacher embeddings, recomputed from the batch
    by the teacher, and the queue the step left to be updated."""

    def on_train_start(self, trainer, pl_module):
        self.teacher = {k: v.clone() for k, v in pl_module.teacher.state_dict().items()}
        self.student = {k: v.clone() for k, v in pl_module.student.state_dict().items()}
        self.steps = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        recomputed = torch.cat([pl_module.teacher_embeddings(view) for view in batch[0]])
        self.steps.append(
            dict(
                pending=pl_module._pending.clone(), recomputed=recomputed,
                queue=pl_module.queue.keys.clone(), pointer=int(pl_module.queue.pointer),
            )
        )  # fmt: skip


def test_a_step_queues_the_teachers_embeddings_and_trains_the_student_only(
    tmp_path, moco_checkpoint
):
    torch.manual_seed(0)
    model, watcher = make(moco_checkpoint), Watcher()
    trainer = quiet_trainer(tmp_path, max_steps=4, limit_val_batches=0, callbacks=[watcher])
    trainer.fit(model, datamodule=colours())
    last = watcher.steps[-1]
    # The queued rows are the frozen teacher's embeddings of the batch's two views.
    assert torch.equal(last["pending"], last["recomputed"]) and last["pending"].shape == (20, 16)
    # Step 4's 20 embeddings went to slots 0..19 of the 30-slot queue (3 x 20 = 60 before).
    assert last["pointer"] == 0 and int(model.queue.pointer) == 20
    assert torch.equal(model.queue.keys[:20], last["pending"])
    assert torch.equal(model.queue.keys[20:], last["queue"][20:])
    # The teacher: untouched (parameters and batch-norm statistics), in eval mode, and the
    # query encoder of the MoCo checkpoint.
    for name, value in model.teacher.state_dict().items():
        assert torch.equal(value, watcher.teacher[name]), name
    moco_state = torch.load(moco_checkpoint)["state_dict"]
    for name, value in model.teacher.state_dict().items():
        assert torch.equal(value, moco_state[f"student.{name}"]), name
    assert not model.teacher.training and model.student.training
    # The student moved, and only it is optimised.
    moved = [not torch.equal(v, watcher.student[k]) for k, v in model.student.state_dict().items()]
    assert any(moved)
    optimised = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert optimised == {id(p) for p in model.student.parameters()}
    logged = {"train/loss", "train/teacher_entropy", "train/teacher_own_weight", "train/lr"}
    assert logged <= set(trainer.callback_metrics)


@OUTSIDE_TRAINER
def test_the_step_scores_the_student_against_the_queue_before_its_update(moco_checkpoint):
    model = make(moco_checkpoint, student_temperature=0.15, teacher_temperature=0.03)
    model.teacher_weights.load()
    views = [torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    queue = model.queue.keys.clone()
    loss = model.training_step((views, torch.zeros(6).long(), torch.arange(6)), 0)
    student = torch.nn.functional.normalize(torch.cat(model.student(views)), dim=1)
    teacher = torch.cat([model.teacher_embeddings(view) for view in views])
    assert torch.equal(loss, seed_loss(student, teacher, queue, 0.15, 0.03))
    assert torch.equal(model._pending, teacher)


def test_a_supervised_teacher_teaches_its_backbone_features(tmp_path, teacher_checkpoint):
    torch.manual_seed(0)
    model = make(teacher_checkpoint, teacher_embedding="backbone")
    assert model.student.head(torch.randn(2, 64)).shape == (2, 64)  # the teacher's width
    assert model.queue.keys.shape == (30, 64)
    knn = [KNNEval(k=[5]), KNNEval("teacher", k=[5], log_prefix="val/teacher_knn")]
    trainer = quiet_trainer(
        tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1, callbacks=knn
    )
    trainer.fit(model, datamodule=colours())
    assert {"val/knn_top1", "val/teacher_knn_top1"} <= set(trainer.callback_metrics)
    report = model.teacher_weights.report
    assert set(report.loaded) == {"backbone"}  # its classifier is left out, and said so
    assert [why for _, _, why in report.left_out] == [
        "the classifier (the teacher's backbone is read)"
    ]


def test_single_view_batches_are_distilled_as_the_paper_does(tmp_path, moco_checkpoint):
    model = make(moco_checkpoint)
    data = ColourDataModule(batch_size=10, views=SupervisedViews())
    quiet_trainer(tmp_path, max_steps=2, limit_val_batches=0).fit(model, datamodule=data)
    assert int(model.queue.filled) == 20  # one embedding per image


def test_resume_equals_uninterrupted_fit_without_the_teachers_file(tmp_path, moco_checkpoint):
    teacher = tmp_path / "teacher.ckpt"
    teacher.write_bytes(open(moco_checkpoint, "rb").read())

    def fit(root, stop_after=None, ckpt_path=None):
        return resumable_fit(lambda: make(str(teacher)), colours, root, stop_after, ckpt_path)

    straight, _ = fit(tmp_path / "straight")
    _, interrupted = fit(tmp_path / "first", stop_after=2)
    os.remove(teacher)  # the resumed fit takes the teacher from its own checkpoint
    resumed, trainer = fit(tmp_path / "second", ckpt_path=str(tmp_path / "first" / "last.ckpt"))
    assert interrupted.global_step == 4 and trainer.global_step == 8
    state = straight.state_dict()
    assert int(state["queue.filled"]) == 30 and int(state["queue.pointer"]) == 8 * 20 % 30
    for name, value in state.items():
        torch.testing.assert_close(resumed.state_dict()[name], value, msg=name, rtol=0, atol=0)


def test_a_frozen_teacher_needs_weights(moco_checkpoint, teacher_checkpoint):
    message = refused(SEED, student_backbone="resnet8", teacher_backbone="resnet14")
    assert message.startswith("model.init_args.teacher_checkpoint is required: the teacher is")
    model = make(teacher_checkpoint)  # a supervised checkpoint has no MoCo head
    with pytest.raises(
        ConfigError, match=r"^model.init_args.teacher_checkpoint: .* has no MoCo-v2 projection head"
    ):
        model.teacher_weights.load()
    spec = {"architecture": "resnet14", "weights": teacher_checkpoint}  # the same, in the spec
    with pytest.raises(ConfigError, match=r"^model.init_args.teacher.weights: .* has no MoCo-v2"):
        make(
            None, teacher_checkpoint=None, teacher_backbone="resnet50", teacher=spec
        ).teacher_weights.load()
    message = refused(
        make, checkpoint=None, teacher_backbone="resnet50", teacher={"architecture": "resnet14"}
    )
    assert message.startswith("model.init_args.teacher.weights is required: the teacher is")


@OUTSIDE_TRAINER
def test_the_teacher_spec_takes_the_query_encoder_unless_the_key_is_asked_for(moco_checkpoint):
    state = torch.load(moco_checkpoint)["state_dict"]
    for network, prefix in (("auto", "student."), ("query", "student."), ("key", "student.key_")):
        spec = {"architecture": "resnet14", "weights": moco_checkpoint, "network": network}
        model = make(None, teacher_checkpoint=None, teacher_backbone="resnet50", teacher=spec)
        model.teacher_weights.load()
        for name, value in model.teacher.state_dict().items():  # backbone.*, head.*
            assert torch.equal(value, state[prefix + name]), (network, name)
    assert not torch.equal(
        state["student.backbone.conv1.weight"], state["student.key_backbone.conv1.weight"]
    )
    # The short form and the spec are one or the other.
    message = refused(make, checkpoint=moco_checkpoint, teacher=spec)
    assert message.startswith(
        "model.init_args.teacher and model.init_args.teacher_backbone, "
        "model.init_args.teacher_checkpoint both give the teacher: use one form"
    )


@OUTSIDE_TRAINER
def test_a_teacher_head_of_another_width_is_refused_with_its_keys(moco_checkpoint):
    model = make(moco_checkpoint, teacher_proj_hidden_dim=64)
    with pytest.raises(
        ConfigError, match=r"shape mismatches \[head.layers.0.bias \(32,\) vs \(64,\)"
    ):
        model.teacher_weights.load()


@pytest.mark.parametrize(
    ("argument", "value", "valid"),
    [
        ("student_temperature", 0.0, "a number > 0"),
        ("teacher_temperature", -0.01, "a number > 0"),
        ("queue_size", 0, "an integer >= 1"),
        ("proj_hidden_dim", 0, "an integer >= 1"),
        ("teacher_proj_dim", 0, "an integer >= 1"),
        ("teacher_embedding", "logits", "head, backbone"),
    ],
)
def test_bad_arguments_are_one_message_naming_the_key(moco_checkpoint, argument, value, valid):
    message = refused(make, checkpoint=moco_checkpoint, **{argument: value})
    assert message == f"model.init_args.{argument}={value!r}; valid: {valid}"
