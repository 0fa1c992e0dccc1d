import os

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from tests_support import (
    EPS32,
    OUTSIDE_TRAINER,
    ColourDataModule,
    assert_within,
    ema_error,
    quiet_trainer,
    refused,
    resumable_fit,
)

from distill.data import SupervisedViews, TwoViews
from distill.errors import ConfigError
from distill.methods import DisCo, MoCo

OPTIMIZER = lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)  # noqa: E731


@pytest.fixture(scope="module")
def moco_checkpoint(tmp_path_factory):
    """A MoCo run's checkpoint: resnet14 with a 32 → 16 head."""
    torch.manual_seed(3)
    moco = MoCo(backbone="resnet14", proj_hidden_dim=32, proj_dim=16, queue_size=20)
    path = tmp_path_factory.mktemp("moco") / "moco.ckpt"
    torch.save({"state_dict": moco.state_dict()}, path)
    return str(path)


def make(checkpoint, **kwargs):
    defaults = dict(
        student_backbone="resnet8", teacher_backbone="resnet14", teacher_checkpoint=checkpoint,
        teacher_proj_hidden_dim=32, teacher_proj_dim=16, proj_hidden_dim=32, queue_size=30,
        key_momentum=0.9, consistency_weight=2.0, optimizer=OPTIMIZER,
    )  # fmt: skip
    return DisCo(**{**defaults, **kwargs})


def colours(**kwargs):
    return ColourDataModule(batch_size=10, views=TwoViews(blur_prob=0.0), **kwargs)


def key_and_query_parameters(model):
    query = [*model.student.backbone.parameters(), *model.student.head.parameters()]
    key = [*model.student.key_backbone.parameters(), *model.student.key_head.parameters()]
    return query, key


class Watcher(L.Callback):
    """Before the module's own hook: the step's keys, the queue and the key encoder."""

    def on_train_start(self, trainer, pl_module):
        self.teacher = {k: v.clone() for k, v in pl_module.teacher.state_dict().items()}
        self.steps = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        _, key = key_and_query_parameters(pl_module)
        self.steps.append(
            dict(
                keys=pl_module._pending_keys.clone(), queue=pl_module.student.queue.keys.clone(),
                pointer=int(pl_module.student.queue.pointer),
                key_params=[p.detach().clone() for p in key],
            )
        )  # fmt: skip


@pytest.mark.numerics
def test_a_step_moves_the_student_follows_moco_and_leaves_the_teacher(tmp_path, moco_checkpoint):
    torch.manual_seed(0)
    model, watcher = make(moco_checkpoint), Watcher()
    trainer = quiet_trainer(tmp_path, max_steps=4, limit_val_batches=0, callbacks=[watcher])
    trainer.fit(model, datamodule=colours())
    last = watcher.steps[-1]
    query, key = key_and_query_parameters(model)
    for before, q, k in zip(last["key_params"], query, key, strict=True):
        assert_within(
            k, 0.9 * before.double() + 0.1 * q.detach().double(), ema_error(0.9, before, q)
        )
    # Step 4's 10 keys went to slots 0..9 of the 30-slot queue; the others stayed.
    assert last["pointer"] == 0 and int(model.student.queue.pointer) == 10
    assert torch.equal(model.student.queue.keys[:10], last["keys"])
    assert torch.equal(model.student.queue.keys[10:], last["queue"][10:])
    for name, value in model.teacher.state_dict().items():  # parameters and statistics
        assert torch.equal(value, watcher.teacher[name]), name
    assert not model.teacher.training and model.student.training
    optimised = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert optimised == {id(p) for p in query}
    assert {"train/loss", "train/contrastive", "train/consistency"} <= set(trainer.callback_metrics)


def batch_of_views(size=6):
    views = [
        torch.randn(size, 3, 32, 32, generator=torch.Generator().manual_seed(s)) for s in (1, 2)
    ]
    return views, torch.zeros(size).long(), torch.arange(size)


def teacher_network(checkpoint):
    """The MoCo checkpoint's query encoder, in eval mode: what the frozen teacher must be."""
    moco = MoCo(backbone="resnet14", proj_hidden_dim=32, proj_dim=16, queue_size=20)
    moco.load_state_dict(torch.load(checkpoint)["state_dict"])
    return torch.nn.Sequential(moco.student.backbone, moco.student.head).eval()


@OUTSIDE_TRAINER
@pytest.mark.numerics
@pytest.mark.parametrize("symmetric", [False, True])
def test_consistency_pulls_both_views_query_embeddings_onto_the_teachers(
    moco_checkpoint, symmetric
):
    torch.manual_seed(0)
    model = make(moco_checkpoint, symmetric=symmetric, shuffle_bn="off")
    model.teacher_weights.load()
    with torch.no_grad():  # keys unlike queries, as after training: view 2 must be a query
        for param in model.student.key_backbone.parameters():
            param.add_(0.5)
    terms = []
    model.log_terms = lambda logged: terms.append(logged)
    views, targets, indices = batch_of_views()
    loss = model.training_step((views, targets, indices), 0)
    teacher = teacher_network(moco_checkpoint)
    expected = 0.0
    for view in views:  # ‖q_v − t_v‖², q_v from the query encoder (batch statistics of view v)
        student = F.normalize(model.student.head(model.student.backbone(view)), dim=1)
        target = F.normalize(teacher(view), dim=1)
        expected += ((student.double() - target.double()) ** 2).sum(dim=1).mean().item()
    # Per view: 16 squared differences summed, the mean of 6 rows (as in tests/losses).
    assert terms[0]["consistency"].item() == pytest.approx(expected, rel=(16 + 6 + 4) * EPS32)
    torch.testing.assert_close(loss, terms[0]["contrastive"] + 2.0 * terms[0]["consistency"])


@OUTSIDE_TRAINER
def test_consistency_weight_zero_is_moco_v2_in_value_and_gradient(moco_checkpoint):
    torch.manual_seed(0)
    model = make(moco_checkpoint, consistency_weight=0.0, shuffle_bn="off")
    model.teacher_weights.load()
    model.log_terms = lambda terms: None
    moco = MoCo(backbone="resnet8", proj_hidden_dim=32, proj_dim=16, queue_size=30,
                shuffle_bn="off", optimizer=OPTIMIZER)  # fmt: skip
    moco.student.load_state_dict(model.student.state_dict())
    moco.log_terms = lambda terms: None
    batch = batch_of_views()
    ours, theirs = model.training_step(batch, 0), moco.training_step(batch, 0)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    ours_grad = torch.autograd.grad(ours, [*model.student.backbone.parameters()])
    theirs_grad = torch.autograd.grad(theirs, [*moco.student.backbone.parameters()])
    for a, b in zip(ours_grad, theirs_grad, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_supervised_teacher_sets_the_students_embedding_width(tmp_path, teacher_checkpoint):
    model = make(teacher_checkpoint, teacher_embedding="backbone")
    assert model.student.queue.keys.shape == (30, 64)  # resnet14's features
    quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(model, datamodule=colours())
    assert set(model.teacher_weights.report.loaded) == {"backbone"}  # no head of the file's


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
    assert int(straight.student.queue.pointer) == 80 % 30
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, msg=name, rtol=0, atol=0)


def test_single_view_batches_and_teachers_without_weights_are_refused(tmp_path, moco_checkpoint):
    data = ColourDataModule(batch_size=10, views=SupervisedViews())
    with pytest.raises(ConfigError, match="DisCo need two views per image, got a single tensor"):
        quiet_trainer(tmp_path, max_steps=1).fit(make(moco_checkpoint), datamodule=data)
    message = refused(DisCo, student_backbone="resnet8", teacher_backbone="resnet14")
    assert message.startswith("model.init_args.teacher_checkpoint is required: the teacher is")


@pytest.mark.parametrize(
    ("argument", "value", "valid"),
    [
        ("temperature", 0.0, "a number > 0"),
        ("queue_size", 0, "an integer >= 1"),
        ("key_momentum", 1.5, "a number in [0, 1]"),
        ("consistency_weight", -1.0, "a number >= 0"),
        ("teacher_embedding", "logits", "head, backbone"),
    ],
)
def test_bad_arguments_are_one_message_naming_the_key(moco_checkpoint, argument, value, valid):
    message = refused(make, checkpoint=moco_checkpoint, **{argument: value})
    assert message == f"model.init_args.{argument}={value!r}; valid: {valid}"


@OUTSIDE_TRAINER
def test_the_teacher_spec_gives_the_teacher_of_the_short_form(moco_checkpoint):
    short = make(moco_checkpoint)
    spec = {"architecture": "resnet14", "weights": moco_checkpoint, "embedding": "head"}
    specified = make(None, teacher_checkpoint=None, teacher_backbone="resnet50", teacher=spec)
    for model in (short, specified):
        model.teacher_weights.load()
    assert specified.teacher.state_dict().keys() == short.teacher.state_dict().keys()
    for name, value in short.teacher.state_dict().items():
        assert torch.equal(specified.teacher.state_dict()[name], value), name
    assert specified.hparams.teacher == spec  # recorded as given, plain values
