import os

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from tests_support import ColourDataModule, quiet_trainer, refused, resumable_fit

from distill.data import TwoViews
from distill.errors import ConfigError
from distill.eval import KNNEval
from distill.methods import DINO, MoCo, ReKD, Supervised
from distill.modules import PrototypeBank

OPTIMIZER = lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)  # noqa: E731


def make(**kwargs):
    defaults = dict(
        student_backbone="resnet8", teacher_backbone="resnet14", proj_hidden_dim=32,
        proj_dim=16, queue_size=20, num_prototypes=4, threshold=0.0, key_momentum=0.9,
        optimizer=OPTIMIZER,
    )  # fmt: skip
    return ReKD(**{**defaults, **kwargs})


def colours(**kwargs):
    return ColourDataModule(batch_size=10, views=TwoViews(blur_prob=0.0), **kwargs)


def batch_of_views(seed=0, size=8):
    generator = torch.Generator().manual_seed(seed)
    views = [torch.randn(size, 3, 32, 32, generator=generator) for _ in range(2)]
    return views, torch.arange(size) % 3, torch.arange(size)


def ready_model(**kwargs):
    """A model whose teacher queue is full of labelled keys and whose bank is initialised."""
    torch.manual_seed(0)
    model = make(**kwargs)
    keys = F.normalize(torch.randn(20, 16))
    model.student.queue.enqueue(F.normalize(torch.randn(20, 16)))
    model.teacher.queue.enqueue(keys, torch.arange(20) % 3)
    model.prototypes.init_from(keys)
    model.logged = []
    model.log_terms = lambda terms, **_: model.logged.append(terms)
    return model


def test_teacher_is_trained_by_its_own_loss_only():
    model = ready_model(relation_weight=0.7, threshold=-1.0)
    loss = model.training_step(batch_of_views(), 0)
    terms = model.logged[-1]
    assert terms["mined_positives"] > 0 and "student_relation" in terms
    student = [p for p in model.student.parameters() if p.requires_grad]
    teacher = [p for p in model.teacher.parameters() if p.requires_grad]
    student_loss = 0.3 * terms["student_instance"] + 0.7 * terms["student_relation"]
    torch.testing.assert_close(terms["student"], student_loss)
    torch.testing.assert_close(loss, student_loss + terms["teacher_moco"])
    grads = torch.autograd.grad(student_loss, teacher, allow_unused=True, retain_graph=True)
    assert all(g is None for g in grads)  # the relation carries no gradient to the teacher
    teacher_loss = terms["teacher_moco"]
    grads = torch.autograd.grad(teacher_loss, student, allow_unused=True, retain_graph=True)
    assert all(g is None for g in grads)
    total = torch.autograd.grad(loss, teacher, retain_graph=True)
    own = torch.autograd.grad(terms["teacher_moco"], teacher)
    for a, b in zip(total, own, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("anchor_embedding", ["key", "query"])
def test_relation_is_mined_with_the_chosen_teacher_embedding(anchor_embedding):
    model = ready_model(anchor_embedding=anchor_embedding)
    mined = []
    model.mine_positives = lambda anchors, targets: (
        mined.append(anchors) or (torch.zeros(len(anchors), 20, dtype=torch.bool), {})
    )
    views, targets, indices = batch_of_views()
    torch.manual_seed(2)
    model.training_step((views, targets, indices), 0)
    torch.manual_seed(2)
    queries, keys = model.teacher.queries_and_keys(views, symmetric=False)
    expected = keys if anchor_embedding == "key" else queries
    torch.testing.assert_close(mined[0], expected)
    assert not mined[0].requires_grad


def test_positives_come_from_teacher_prototypes_and_labels_only_from_diagnostics():
    model = ready_model(threshold=0.2)
    queue = model.teacher.queue
    anchors = F.normalize(queue.keys[:6] + 0.1 * torch.randn(6, 16))
    targets = torch.tensor([0, 1, 2, 0, -1, 1])
    positives, stats = model.mine_positives(anchors, targets)
    expected = model.prototypes.relation(anchors, queue.keys)
    assert torch.equal(positives, expected) and positives.any()
    assert stats["mined_positives"] == pytest.approx(expected.sum(1).float().mean().item())
    assigned = model.prototypes.assign(anchors)
    assert stats["unassigned_fraction"] == pytest.approx((assigned < 0).float().mean().item())
    in_use = set(assigned.tolist()) | set(model.prototypes.assign(queue.keys).tolist())
    assert stats["prototypes_in_use"] == len(in_use - {-1})
    pairs = [(i, j) for i in range(6) for j in range(20) if expected[i, j] and targets[i] >= 0]
    correct = sum(int(targets[i] == queue.labels[j]) for i, j in pairs)
    assert stats["mined_precision"].item() == pytest.approx(correct / len(pairs))
    # The loss does not depend on the labels.
    views, _, indices = batch_of_views()
    torch.manual_seed(1)
    with_labels = model.training_step((views, torch.arange(8) % 3, indices), 0)
    torch.manual_seed(1)
    unlabelled = model.training_step((views, torch.full((8,), -1), indices), 0)
    assert torch.equal(with_labels, unlabelled)
    # A step without a labelled mined pair keeps the precision of the last step that had one.
    assert torch.equal(model.logged[-1]["mined_precision"], model.logged[-2]["mined_precision"])


def test_mined_precision_is_nan_until_a_labelled_pair_is_mined():
    model = ready_model(threshold=-1.0)
    anchors = F.normalize(torch.randn(4, 16))
    _, stats = model.mine_positives(anchors, torch.full((4,), -1))
    assert stats["mined_positives"] > 0 and stats["mined_precision"].isnan()
    positives, stats = model.mine_positives(anchors, torch.zeros(4, dtype=torch.long))
    correct = positives & (model.teacher.queue.labels == 0)
    assert stats["mined_precision"].item() == pytest.approx(correct.sum() / positives.sum())


def test_unfilled_slots_are_never_positives():
    model = make(threshold=-1.0)
    model.teacher.queue.enqueue(F.normalize(torch.randn(12, 16)))
    model.prototypes.init_from(model.teacher.queue.keys)
    anchors = F.normalize(torch.randn(5, 16))
    positives, _ = model.mine_positives(anchors, torch.zeros(5).long())
    related = model.prototypes.relation(anchors, model.teacher.queue.keys)
    assert related[:, 12:].any()  # the initial random keys would be related...
    assert not positives[:, 12:].any()  # ...but are not candidates
    assert torch.equal(positives[:, :12], related[:, :12])


class Watcher(L.Callback):
    """Records the state the module is about to update and the terms it logged."""

    def __init__(self) -> None:
        self.steps = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        student_k, teacher_k, anchors, targets = (t.clone() for t in pl_module._pending)
        self.steps.append(
            dict(
                student_k=student_k, teacher_k=teacher_k, anchors=anchors, targets=targets,
                pointer=int(pl_module.teacher.queue.pointer),
                prototypes=pl_module.prototypes.prototypes.clone(),
                initialized=bool(pl_module.prototypes.initialized),
                relation="train/mined_positives" in trainer.callback_metrics,
            )
        )  # fmt: skip


def test_fit_keeps_queues_aligned_and_initialises_then_updates_the_bank(tmp_path):
    torch.manual_seed(0)
    model, watcher = make(prototype_init_step=3), Watcher()
    knn = [KNNEval(k=[5]), KNNEval("teacher", k=[5], log_prefix="val/teacher_knn")]
    callbacks = [watcher, *knn]
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=5, callbacks=callbacks)
    trainer.fit(model, datamodule=colours())
    steps = watcher.steps
    # The queue (20 slots, batches of 10) is full after step 2; the bank waits for step 3.
    assert [s["initialized"] for s in steps] == [False, False, False, True, True]
    assert [s["relation"] for s in steps] == [False, False, False, True, True]
    reference = PrototypeBank(4, 16, threshold=0.0)
    # After step 3 the bank is k-means on the teacher's queue as it was then.
    teacher_queue_after_3 = torch.cat([steps[2]["teacher_k"], steps[1]["teacher_k"]])
    reference.init_from(teacher_queue_after_3)
    torch.testing.assert_close(steps[3]["prototypes"], reference.prototypes)
    # Step 4 moved it with the teacher's anchor embeddings of that step: its keys.
    assert torch.equal(steps[3]["anchors"], steps[3]["teacher_k"])
    reference.update(steps[3]["anchors"])
    torch.testing.assert_close(steps[4]["prototypes"], reference.prototypes)
    # Last step: both queues hold that step's keys of the same images in the same slots.
    last = steps[-1]
    slots = torch.arange(last["pointer"], last["pointer"] + 10) % 20
    assert torch.equal(model.student.queue.keys[slots], last["student_k"])
    assert torch.equal(model.teacher.queue.keys[slots], last["teacher_k"])
    assert torch.equal(model.teacher.queue.labels[slots], last["targets"])
    assert torch.equal(model.student.queue.pointer, model.teacher.queue.pointer)
    metrics = trainer.callback_metrics
    logged = {"train/prototypes_in_use", "train/unassigned_fraction", "train/mined_positives"}
    assert logged | {"train/mined_precision", "train/teacher_moco"} <= set(metrics)
    assert {"val/knn_top1", "val/teacher_knn_top1"} <= set(metrics)
    optimised = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    trainable = [p for m in (model.student, model.teacher) for p in m.parameters()]
    assert optimised == {id(p) for p in trainable if p.requires_grad}
    assert not any(p.requires_grad for p in model.teacher.key_backbone.parameters())


def test_resume_from_checkpoint_equals_uninterrupted_fit(tmp_path):
    def fit(root, stop_after=None, ckpt_path=None):
        return resumable_fit(
            lambda: make(teacher_backbone="resnet8"), colours, root, stop_after, ckpt_path
        )

    straight, _ = fit(tmp_path / "straight")
    _, interrupted = fit(tmp_path / "first", stop_after=2)
    assert interrupted.global_step == 4
    resumed, trainer = fit(tmp_path / "second", ckpt_path=str(tmp_path / "first" / "last.ckpt"))
    assert trainer.global_step == 8
    state = straight.state_dict()
    assert bool(state["prototypes.initialized"]) and state["teacher.queue.filled"] == 20
    for name, value in state.items():
        torch.testing.assert_close(resumed.state_dict()[name], value, msg=name, rtol=0, atol=0)


def test_bad_arguments_are_refused():
    with pytest.raises(ConfigError, match="num_prototypes=30 exceeds queue_size=20"):
        make(num_prototypes=30)
    with pytest.raises(ConfigError, match=r"threshold=2.0; valid: a number in \[-1, 1\]"):
        make(threshold=2.0)
    with pytest.raises(ConfigError, match="num_prototypes=0; valid"):
        make(num_prototypes=0)
    with pytest.raises(ConfigError, match="anchor_embedding='value'; valid: key, query"):
        make(anchor_embedding="value")
    model = ready_model()
    with pytest.raises(ConfigError, match="two views per image, got 3 views"):
        views, targets, indices = batch_of_views()
        model.training_step(([*views, views[0]], targets, indices), 0)


def student_gradients(loss, model):
    params = [p for p in model.student.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, params, retain_graph=True)


def test_relation_weight_zero_is_moco_v2_in_value_and_gradient():
    model = ready_model(relation_weight=0.0, threshold=-1.0, shuffle_bn="off")
    moco = MoCo(backbone="resnet8", proj_hidden_dim=32, proj_dim=16, queue_size=20,
                shuffle_bn="off", optimizer=OPTIMIZER)  # fmt: skip
    moco.student.load_state_dict(model.student.state_dict())
    moco.log_terms = lambda terms: None
    batch = batch_of_views()
    model.training_step(batch, 0)
    terms = model.logged[-1]
    assert terms["mined_positives"] > 0  # relations were mined, and weigh nothing
    expected = moco.training_step(batch, 0)
    torch.testing.assert_close(terms["student"], expected, rtol=1e-6, atol=1e-6)
    for ours, theirs in zip(
        student_gradients(terms["student"], model), student_gradients(expected, moco), strict=True
    ):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_relation_loss_alone_is_info_nce_when_no_prototype_is_assigned():
    model = ready_model(relation_weight=1.0, threshold=1.0, shuffle_bn="off")
    model.training_step(batch_of_views(), 0)
    terms = model.logged[-1]
    assert terms["unassigned_fraction"] == 1.0 and terms["mined_positives"] == 0
    torch.testing.assert_close(terms["student"], terms["student_instance"])
    for ours, instance in zip(
        student_gradients(terms["student"], model),
        student_gradients(terms["student_instance"], model),
        strict=True,
    ):
        torch.testing.assert_close(ours, instance)
    # Once relations are mined the relation loss differs from InfoNCE.
    model = ready_model(relation_weight=1.0, threshold=-1.0, shuffle_bn="off")
    model.training_step(batch_of_views(), 0)
    assert not torch.allclose(model.logged[-1]["student"], model.logged[-1]["student_instance"])


def test_oracle_relation_marks_same_label_slots():
    model = ready_model(relation="labels", threshold=1.0)
    anchors = F.normalize(torch.randn(6, 16))
    targets = torch.tensor([0, 1, 2, 0, -1, 1])
    positives, stats = model.mine_positives(anchors, targets)
    labels = model.teacher.queue.labels
    expected = (targets.unsqueeze(1) == labels.unsqueeze(0)) & (targets >= 0).unsqueeze(1)
    assert torch.equal(positives, expected) and positives.any()
    assert stats["mined_precision"] == 1.0


def save_checkpoint(path, model):
    torch.save({"state_dict": model.state_dict()}, path)
    return str(path)


def loaded(**kwargs) -> ReKD:
    """``make(**kwargs)`` with the teacher's checkpoint read, as the start of a fit does."""
    model = make(**kwargs)
    model.teacher_weights.load()
    return model


def test_teacher_is_initialised_from_moco_rekd_supervised_or_state_dict(tmp_path):
    torch.manual_seed(1)
    moco = MoCo(backbone="resnet14", proj_hidden_dim=32, proj_dim=16, queue_size=20,
                optimizer=OPTIMIZER)  # fmt: skip
    with torch.no_grad():  # the key encoder differs from the query encoder, as after training
        for p in moco.student.key_backbone.parameters():
            p.add_(1.0)
    model = loaded(teacher_checkpoint=save_checkpoint(tmp_path / "moco.ckpt", moco))
    report = model.teacher_weights.report
    assert report.format == "distill checkpoint (MoCo)" and "key encoder" in report.loaded
    for name, value in moco.student.state_dict().items():
        if not name.startswith("queue."):
            assert torch.equal(model.teacher.state_dict()[name], value), name
    assert not torch.equal(model.teacher.queue.keys, moco.student.queue.keys)  # never loaded

    rekd = loaded(teacher_checkpoint=save_checkpoint(tmp_path / "rekd.ckpt", model))
    assert rekd.teacher_weights.report.network.startswith("ReKD's teacher")
    assert torch.equal(
        rekd.teacher.key_backbone.conv1.weight, moco.student.key_backbone.conv1.weight
    )

    supervised = Supervised(backbone="resnet14", num_classes=5, optimizer=OPTIMIZER)
    model = loaded(teacher_checkpoint=save_checkpoint(tmp_path / "sup.ckpt", supervised))
    report = model.teacher_weights.report
    assert report.format == "distill checkpoint (Supervised)"
    assert list(report.loaded) == ["backbone"]
    assert ("student.head.*", 2, "the classifier (the teacher's head is read)") in report.left_out
    for name, value in supervised.student.backbone.state_dict().items():
        assert torch.equal(model.teacher.backbone.state_dict()[name], value), name
        assert torch.equal(model.teacher.key_backbone.state_dict()[name], value), name

    path = tmp_path / "backbone.pt"
    torch.save(supervised.student.backbone.state_dict(), path)
    model = loaded(teacher_checkpoint=str(path), teacher_frozen=True, teacher_embedding="backbone")
    assert model.teacher_weights.report.format == "state dict"
    assert model.prototypes.prototypes.shape == (4, 64) and model.teacher.queue.keys.shape == (
        20,
        64,
    )


def test_teacher_checkpoint_that_does_not_fit_is_refused_by_name(tmp_path):
    moco = MoCo(backbone="resnet8", proj_hidden_dim=32, proj_dim=16, queue_size=20,
                optimizer=OPTIMIZER)  # fmt: skip
    path = save_checkpoint(tmp_path / "moco.ckpt", moco)
    message = (
        r"^model.init_args.teacher_checkpoint: weights in '.*moco.ckpt' do not fit the "
        r"CifarResNet: missing keys \[layer1.1"
    )
    with pytest.raises(ConfigError, match=message):
        loaded(teacher_checkpoint=path)  # a resnet14 teacher
    with pytest.raises(ConfigError, match="teacher_checkpoint: '.*missing.ckpt' does not exist"):
        loaded(teacher_checkpoint=str(tmp_path / "missing.ckpt"))


def test_frozen_teacher_never_changes_and_gets_no_loss(tmp_path):
    moco = MoCo(backbone="resnet14", proj_hidden_dim=32, proj_dim=16, queue_size=20,
                optimizer=OPTIMIZER)  # fmt: skip
    model = loaded(teacher_checkpoint=save_checkpoint(tmp_path / "t.ckpt", moco),
                   teacher_frozen=True, prototype_init_step=2)  # fmt: skip
    before = {k: v.clone() for k, v in model.teacher.state_dict().items() if "queue" not in k}
    trainer = quiet_trainer(tmp_path, max_steps=4, limit_val_batches=0)
    trainer.fit(model, datamodule=colours())
    assert not model.teacher.training and model.student.training
    for name, value in before.items():  # parameters and batch-norm statistics
        assert torch.equal(model.teacher.state_dict()[name], value), name
    assert "train/teacher_moco" not in trainer.callback_metrics
    assert "train/mined_positives" in trainer.callback_metrics
    optimised = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert not optimised & {id(p) for p in model.teacher.parameters()}
    assert int(model.teacher.queue.filled) == 20


def test_teacher_options_that_cannot_work_are_refused(tmp_path):
    with pytest.raises(
        ConfigError, match="teacher_frozen=true needs model.init_args.teacher_checkpoint"
    ):
        make(teacher_frozen=True)
    with pytest.raises(ConfigError, match="teacher_embedding=backbone needs teacher_frozen=true"):
        make(teacher_embedding="backbone")
    with pytest.raises(ConfigError, match=r"relation_weight=1.5; valid: a number in \[0, 1\]"):
        make(relation_weight=1.5)
    with pytest.raises(ConfigError, match="relation='classes'; valid: teacher, labels"):
        make(relation="classes")


class TeacherAtTrainStart(L.Callback):
    """The teacher's state when training starts: after any restore and the teacher's load."""

    def on_train_start(self, trainer, pl_module):
        self.state = {k: v.clone() for k, v in pl_module.teacher.state_dict().items()}


def test_resume_takes_the_teacher_from_the_checkpoint_without_reading_its_file(tmp_path):
    moco = MoCo(backbone="resnet14", proj_hidden_dim=32, proj_dim=16, queue_size=20,
                optimizer=OPTIMIZER)  # fmt: skip
    teacher_file = save_checkpoint(tmp_path / "moco.ckpt", moco)
    start = TeacherAtTrainStart()
    trainer = quiet_trainer(tmp_path, max_steps=2, limit_val_batches=0, callbacks=[start])
    trainer.fit(make(teacher_checkpoint=teacher_file), datamodule=colours())
    assert torch.equal(start.state["backbone.conv1.weight"], moco.student.backbone.conv1.weight)
    student_ckpt = str(tmp_path / "student.ckpt")
    trainer.save_checkpoint(student_ckpt)
    trained = {k: v.clone() for k, v in trainer.lightning_module.teacher.state_dict().items()}
    os.remove(teacher_file)

    # The online teacher trained on: resuming must continue from it, not from the file.
    trainer = quiet_trainer(tmp_path, max_steps=3, limit_val_batches=0, callbacks=[start])
    trainer.fit(make(teacher_checkpoint=teacher_file), datamodule=colours(), ckpt_path=student_ckpt)
    assert trainer.global_step == 3
    for name, value in trained.items():
        assert torch.equal(start.state[name], value), name


@pytest.mark.parametrize(
    ("argument", "value", "valid"),
    [
        ("temperature", 0.0, "a number > 0"),
        ("threshold", 1.5, "a number in [-1, 1]"),
        ("prototype_momentum", 1.0, "a number in [0, 1)"),
        ("prototype_init_step", -1, "an integer >= 0"),
        ("kmeans_restarts", 0, "an integer >= 1"),
        ("num_prototypes", 0, "an integer >= 1"),
        ("queue_size", 0, "an integer >= 1"),
    ],
)
def test_bad_numbers_are_one_message_naming_the_key(argument, value, valid):
    message = refused(
        ReKD, student_backbone="resnet8", teacher_backbone="resnet8", **{argument: value}
    )
    assert message == f"model.init_args.{argument}={value!r}; valid: {valid}"


def test_a_distill_dino_run_gives_its_ema_teacher_not_its_student(tmp_path):
    # DINO's EMA teacher is the network DINO evaluates; here it has moved away from the student.
    torch.manual_seed(1)
    dino = DINO(backbone="resnet14", output_dim=64, hidden_dim=32, bottleneck_dim=16,
                lr_reference_batch=None, optimizer=OPTIMIZER)  # fmt: skip
    with torch.no_grad():
        for parameter in dino.teacher.backbone.parameters():
            parameter.add_(1.0)
    path = save_checkpoint(tmp_path / "dino.ckpt", dino)
    model = loaded(teacher_checkpoint=path, teacher_frozen=True, teacher_embedding="backbone")
    for name, value in dino.teacher.backbone.state_dict().items():
        assert torch.equal(model.teacher.backbone.state_dict()[name], value), name
        assert torch.equal(model.teacher.key_backbone.state_dict()[name], value), name


def test_a_frozen_teacher_whose_head_is_not_in_its_checkpoint_is_refused(tmp_path):
    supervised = Supervised(backbone="resnet14", num_classes=5, optimizer=OPTIMIZER)
    path = save_checkpoint(tmp_path / "supervised.ckpt", supervised)
    # Frozen, it would relate images through a random MLP head forever.
    with pytest.raises(ConfigError, match=r"^model.init_args.teacher_checkpoint: .*supervised.ckpt "
                       r"\(distill checkpoint \(Supervised\), .*\) has no MoCo-v2 projection head "
                       r".*model.init_args.teacher_embedding=head reads"):  # fmt: skip
        loaded(teacher_checkpoint=path, teacher_frozen=True)
    # Online, the teacher trains its head from the start: the file's backbone is enough.
    online = loaded(teacher_checkpoint=path)
    assert "head: not in the file, randomly initialised (the online teacher trains it)" in (
        online.teacher_weights.report.notes
    )


def test_a_frozen_teacher_runs_under_inference_mode(tmp_path):
    moco = MoCo(backbone="resnet14", proj_hidden_dim=32, proj_dim=16, queue_size=20,
                optimizer=OPTIMIZER)  # fmt: skip
    model = ready_model(teacher_checkpoint=save_checkpoint(tmp_path / "t.ckpt", moco),
                        teacher_frozen=True, anchor_embedding="query")  # fmt: skip
    modes = []
    for backbone in (model.teacher.backbone, model.teacher.key_backbone):
        backbone.register_forward_hook(lambda *_: modes.append(torch.is_inference_mode_enabled()))
    model.training_step(batch_of_views(), 0)
    assert modes == [True, True]  # the keys, then the query anchors
    assert not model._pending[1].is_inference() and not model._pending[2].is_inference()


def test_a_teacher_spec_gives_the_same_teacher_as_the_short_form(tmp_path):
    moco = MoCo(backbone="resnet14", proj_hidden_dim=32, proj_dim=16, queue_size=20,
                optimizer=OPTIMIZER)  # fmt: skip
    path = save_checkpoint(tmp_path / "moco.ckpt", moco)
    short = loaded(teacher_checkpoint=path, teacher_frozen=True)
    spec = make(teacher_backbone="resnet50", teacher_frozen=True,
                teacher={"architecture": "resnet14", "weights": path})  # fmt: skip
    spec.teacher_weights.load()
    assert short.teacher_weights.spec == spec.teacher_weights.spec
    for name, value in short.teacher.state_dict().items():
        if not name.startswith("queue."):
            assert torch.equal(spec.teacher.state_dict()[name], value), name
    with pytest.raises(ConfigError, match=r"model.init_args.teacher and "
                       r"model.init_args.teacher_embedding both give the teacher"):  # fmt: skip
        make(teacher_backbone="resnet50", teacher_frozen=True, teacher_embedding="backbone",
             teacher={"architecture": "resnet14", "weights": path})  # fmt: skip
