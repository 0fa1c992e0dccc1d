import copy

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from tests_support import (
    EPS32,
    ColourDataModule,
    FrozenModel,
    assert_within,
    quiet_trainer,
    run_validate,
    softmax_rtol,
)

from distill.errors import ConfigError
from distill.eval.linear import LinearProbe, fit_linear_classifier, linear_classifier


def fit_with_probe(probe, root, epochs=3, **data):
    model = FrozenModel()
    before = copy.deepcopy(model.student.state_dict())
    trainer = quiet_trainer(root, max_epochs=epochs, callbacks=[probe])
    trainer.fit(model, datamodule=ColourDataModule(**data))
    return model, before, trainer


def test_probe_learns_without_touching_backbone_weights_or_buffers(tmp_path):
    probe = LinearProbe(lr=0.05)
    model, before, trainer = fit_with_probe(probe, tmp_path, epochs=4)
    after = model.student.state_dict()
    for name, value in before.items():
        assert torch.equal(value, after[name]), f"{name} changed"
    # The backbone's BN ran in eval mode only: its batch counter never moved.
    assert int(after["backbone.norm.num_batches_tracked"]) == 0
    assert trainer.callback_metrics["val/linear_top1"] == 1.0
    assert all(p.grad is None for p in model.student.parameters())


def test_probe_state_round_trips_through_checkpoint_hooks(tmp_path):
    probe = LinearProbe(lr=0.05)
    fit_with_probe(probe, tmp_path, epochs=1)
    state = copy.deepcopy(probe.state_dict())
    fresh = LinearProbe(lr=0.05)
    fresh.load_state_dict(state)  # before setup: kept until the classifier exists
    fit_with_probe(fresh, tmp_path / "again", epochs=0)
    for name, value in state["classifier"].items():
        assert torch.equal(fresh.classifier.state_dict()[name], value)


def test_offline_probe_reports_accuracy_after_fit(tmp_path):
    probe = LinearProbe(online=False, offline_epochs=100)
    fit_with_probe(probe, tmp_path, epochs=1)
    assert probe.offline_top1 == 1.0
    assert probe.classifier is not None and probe.optimizer.state == {}  # online part idle


def test_fit_linear_classifier_separates_clusters_and_not_noise():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 10, generator=generator) * 4
    labels = torch.arange(4).repeat_interleave(50)
    features = centres[labels] + torch.randn(200, 10, generator=generator)
    classifier = fit_linear_classifier(features, labels, 4, epochs=50)
    held_out = centres[labels] + torch.randn(200, 10, generator=generator)
    assert (classifier(held_out).argmax(1) == labels).float().mean() > 0.95
    noise = torch.randn(400, 10, generator=generator)
    random_labels = torch.randint(0, 4, (400,), generator=generator)
    classifier = fit_linear_classifier(noise[:200], random_labels[:200], 4, epochs=50)
    accuracy = (classifier(noise[200:]).argmax(1) == random_labels[200:]).float().mean()
    assert accuracy < 0.4


def test_fit_linear_classifier_skips_unlabelled_rows():
    features = torch.cat([torch.full((20, 2), 1.0), torch.full((20, 2), -1.0)])
    features = features + 0.01 * torch.randn(40, 2)
    labels = torch.cat([torch.zeros(20), torch.ones(20)]).long()
    labels[::2] = -1
    classifier = fit_linear_classifier(features, labels, 2, epochs=20)
    assert (classifier(features).argmax(1) == torch.cat([torch.zeros(20), torch.ones(20)])).all()


def test_student_and_teacher_probes_have_separate_checkpoint_entries():
    keys = {LinearProbe(submodule="student").state_key, LinearProbe(submodule="teacher").state_key}
    assert len(keys) == 2


def clusters(generator, num_classes=4, per_class=50, dim=10):
    centres = torch.randn(num_classes, dim, generator=generator) * 4
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    return centres, labels, centres[labels] + torch.randn(len(labels), dim, generator=generator)


@pytest.mark.parametrize(("optimizer", "lr"), [("sgd", 0.1), ("lbfgs", 1.0), ("adam", 0.01)])
def test_each_optimiser_separates_clusters_on_held_out_points(optimizer, lr):
    generator = torch.Generator().manual_seed(0)
    centres, labels, features = clusters(generator)
    classifier = fit_linear_classifier(features, labels, 4, 50, lr, optimizer=optimizer)
    held_out = centres[labels] + torch.randn(200, 10, generator=generator)
    assert (classifier(held_out).argmax(1) == labels).float().mean() > 0.95


@pytest.mark.numerics
def test_lbfgs_reaches_the_regularised_logistic_regression_optimum():
    from sklearn.linear_model import LogisticRegression

    generator = torch.Generator().manual_seed(1)
    _, labels, features = clusters(generator, per_class=40)
    features = features + 2 * torch.randn(160, 10, generator=generator)  # overlapping classes
    weight_decay = 0.01
    classifier = fit_linear_classifier(
        features, labels, 4, 500, 1.0, weight_decay=weight_decay, optimizer="lbfgs"
    )
    # The same objective in scikit-learn: C·Σ CE + ½‖W‖² = (mean CE + λ/2·‖W‖²)·C·N, C = 1/(λN),
    # on the features standardised as the classifier's batch norm does.
    mean, var = features.mean(0), features.var(0, correction=0)
    standardised = ((features - mean) / (var + 1e-5).sqrt()).double().numpy()
    reference = LogisticRegression(C=1 / (weight_decay * 160), tol=1e-10, max_iter=10_000)
    reference.fit(standardised, labels.numpy())
    with torch.no_grad():
        probabilities = classifier(features).softmax(1).double()
    expected = torch.from_numpy(reference.predict_proba(standardised))
    moved, evaluation = optimum_distance(classifier, features, labels, weight_decay)
    assert moved.max() < 2e-3  # reached the optimum: no probability would move by 2e-3
    assert_within(probabilities, expected, 2 * moved + evaluation)


def optimum_distance(classifier, features, labels, weight_decay):
    """``(moved, evaluation)`` ``[N, C]``: how far the probe's probabilities are from those
    at the optimum, and the float32 error of evaluating them.

    From the result's own float64 gradient: a Newton step ``H⁺∇f`` (the pseudo-inverse
    skips the flat direction of a common bias shift) predicts the optimum to second order,
    and moves each probability by ``J·step``. The float32 evaluation standardises (3
    roundings of |x| + |μ|), takes 10 products and a bias, and a softmax over C classes.
    """
    norm, linear = classifier
    x = (features.double() - norm.running_mean.double()) / (
        norm.running_var.double() + norm.eps
    ).sqrt()
    shape = linear.weight.shape

    def logits(theta):
        return x @ theta[: shape.numel()].view(shape).T + theta[shape.numel() :]

    def objective(theta):
        weight = theta[: shape.numel()]
        return F.cross_entropy(logits(theta), labels) + weight_decay / 2 * weight.square().sum()

    theta = torch.cat([linear.weight.flatten(), linear.bias]).detach().double()
    gradient = torch.autograd.functional.jacobian(objective, theta)
    step = torch.linalg.pinv(torch.autograd.functional.hessian(objective, theta)) @ gradient
    _, moved = torch.autograd.functional.jvp(lambda t: logits(t).softmax(1), theta, step)
    weight, bias = linear.weight.detach().double().abs(), linear.bias.detach().double().abs()
    scale = (norm.running_var.double() + norm.eps).rsqrt()
    x_error = 3 * EPS32 * (features.double().abs() + norm.running_mean.double().abs()) * scale
    z_error = x_error @ weight.T + 11 * EPS32 * (x.abs() @ weight.T + bias)
    rtol = softmax_rtol(float(z_error.max()), float(logits(theta).abs().max()), shape[0])
    return moved.abs(), rtol * logits(theta).softmax(1)


def test_unknown_optimiser_is_a_config_error():
    with pytest.raises(ConfigError, match="valid: adam, sgd, lbfgs"):
        fit_linear_classifier(torch.randn(4, 2), torch.arange(4) % 2, 2, optimizer="lars")


def test_untrained_probe_is_fitted_before_validate_reports(tmp_path):
    # No fit, no checkpoint: the probe is fitted on the train features, then scored on val.
    metrics = run_validate(FrozenModel(), ColourDataModule(), LinearProbe(), tmp_path)
    assert metrics["val/linear_top1"] == 1.0  # an untrained probe scores about 0.2
    shuffled = run_validate(
        FrozenModel(), ColourDataModule(shuffle_labels=True), LinearProbe(), tmp_path
    )
    assert shuffled["val/linear_top1"] < 0.6


def test_restored_probe_is_evaluated_as_it_is(tmp_path):
    # A checkpoint's probe that always says class 0: 6 of the 30 val images.
    classifier = linear_classifier(3, 5)
    with torch.no_grad():
        classifier[1].weight.zero_()
        classifier[1].bias.copy_(torch.tensor([1.0, 0, 0, 0, 0]))
    optimizer = torch.optim.Adam(classifier.parameters())
    probe = LinearProbe()
    probe.load_state_dict(
        {"classifier": classifier.state_dict(), "optimizer": optimizer.state_dict()}
    )
    metrics = run_validate(FrozenModel(), ColourDataModule(), probe, tmp_path)
    assert metrics["val/linear_top1"] == pytest.approx(0.2)


class ForwardSpy(L.Callback):
    """Counts a submodule's backbone forwards in training steps; pairs each probe input with
    the first backbone output of its step."""

    def __init__(self, submodule: str, probe: LinearProbe) -> None:
        self.submodule, self.probe = submodule, probe
        self.forwards, self.pairs, self.first = 0, [], None

    def on_train_start(self, trainer, pl_module):
        backbone = getattr(pl_module, self.submodule).backbone
        backbone.register_forward_hook(self.on_backbone)
        self.probe.classifier.register_forward_pre_hook(self.on_classifier)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.first = None

    def on_backbone(self, module, inputs, output):
        self.forwards += 1
        if self.first is None:
            self.first = output.detach().clone()

    def on_classifier(self, module, inputs):
        self.pairs.append((inputs[0].detach().clone(), self.first))


def supervised_method():
    from distill.methods import Supervised

    return Supervised(backbone="resnet8", num_classes=5), ColourDataModule()


def moco_method():
    from distill.data import TwoViews
    from distill.methods import MoCo

    model = MoCo(backbone="resnet8", proj_hidden_dim=16, proj_dim=8, queue_size=20)
    return model, ColourDataModule(views=TwoViews(blur_prob=0.0))


def dino_method():
    from distill.data import MultiCropViews
    from distill.methods import DINO

    model = DINO(backbone="resnet8", output_dim=32, hidden_dim=16, bottleneck_dim=8)
    views = MultiCropViews(num_global=2, num_local=2, blur_probs=(0.0, 0.0, 0.0))
    return model, ColourDataModule(views=views)


@pytest.mark.parametrize(
    ("make", "submodule", "forwards_per_step"),
    [
        (supervised_method, "student", 1),
        (moco_method, "student", 1),  # the query view (keys: the key encoder)
        (dino_method, "teacher", 1),  # the two globals in one batch
        (dino_method, "student", 2),  # globals, then locals
    ],
)
def test_probe_takes_the_steps_features_and_adds_no_backbone_forward(
    tmp_path, make, submodule, forwards_per_step
):
    torch.manual_seed(0)
    model, data = make()
    probe = LinearProbe(submodule=submodule, lr=0.05)
    spy = ForwardSpy(submodule, probe)
    trainer = quiet_trainer(
        tmp_path, max_steps=3, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[probe, spy]
    )
    trainer.fit(model, datamodule=data)
    assert spy.forwards == 3 * forwards_per_step  # what the method's own step runs
    assert len(spy.pairs) == 3 and "train/linear_loss" in trainer.callback_metrics
    for features, first_output in spy.pairs:  # the first view's rows of the step's forward
        torch.testing.assert_close(features, first_output[: len(features)].float())


def test_probe_embeds_the_view_itself_when_the_module_hands_nothing_over(tmp_path):
    probe = LinearProbe(lr=0.05)
    spy = ForwardSpy("student", probe)
    trainer = quiet_trainer(
        tmp_path, max_epochs=1, limit_train_batches=3, limit_val_batches=0, callbacks=[probe, spy]
    )  # FrozenModel takes no optimiser step: max_steps would never be reached
    trainer.fit(FrozenModel(), datamodule=ColourDataModule())
    assert spy.forwards == 3 and len(spy.pairs) == 3  # the probe's own eval-mode forwards


class ProbeAround(L.Callback):
    """The probe's whole state (classifier, batch norm, optimiser) before global step ``step``
    and before the step after it, i.e. after that batch's ``on_train_batch_end``."""

    def __init__(self, probe: LinearProbe, step: int) -> None:
        self.probe, self.step = probe, step
        self.before = self.after = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            self.before = copy.deepcopy(self.probe.state_dict())
        elif trainer.global_step == self.step + 1:
            self.after = copy.deepcopy(self.probe.state_dict())


def tensors(state) -> dict[str, torch.Tensor]:
    """Every tensor of a nested state dict, by its path."""
    if isinstance(state, torch.Tensor):
        return {"": state}
    if isinstance(state, dict):
        items = state.items()
    elif isinstance(state, list | tuple):
        items = enumerate(state)
    else:
        return {}
    return {
        f"{key}.{path}".rstrip("."): t for key, value in items for path, t in tensors(value).items()
    }


def test_probe_takes_no_step_on_a_batch_the_method_skipped(tmp_path):
    # nonfinite_loss: skip drops a NaN batch from the method; the probe, which would learn from
    # that batch's NaN features, must drop it too (Method.batch_skipped, by duck typing).
    from tests_support import PoisonBatch

    from distill.methods import Supervised

    torch.manual_seed(0)
    model = Supervised(backbone="resnet8", num_classes=5, nonfinite_loss="skip")
    probe = LinearProbe(lr=0.05)
    around = ProbeAround(probe, step=1)
    trainer = quiet_trainer(
        tmp_path, max_epochs=2, num_sanity_val_steps=0, callbacks=[probe, PoisonBatch(1), around]
    )
    with pytest.warns(UserWarning, match="skipped global step 1"):
        trainer.fit(model, datamodule=ColourDataModule())
    before, after = tensors(around.before), tensors(around.after)
    assert before.keys() == after.keys() and len(before) > 5  # weights, BN buffers, Adam state
    assert [key for key in before if not torch.equal(before[key], after[key])] == []
    final = tensors(probe.state_dict())
    assert all(t.isfinite().all() for t in final.values() if t.is_floating_point())
    assert int(final["classifier.0.num_batches_tracked"]) == 12 - 1  # every batch but one
    # A NaN classifier says class 0 for every image: 6 of the 30 val images (0.2).
    assert float(trainer.callback_metrics["val/linear_top1"]) > 0.5


@pytest.mark.parametrize(
    ("argument", "value", "valid"),
    [
        ("lr", -1.0, "a number > 0"),
        ("lr", 0.0, "a number > 0"),
        ("weight_decay", -0.1, "a number >= 0"),
        ("offline_epochs", -1, "an integer >= 0"),
        ("offline_lr", float("nan"), "a number > 0"),
    ],
)
def test_bad_arguments_are_one_message_naming_the_key(argument, value, valid):
    with pytest.raises(ConfigError) as error:
        LinearProbe(**{argument: value})
    key = f"trainer.callbacks.LinearProbe.init_args.{argument}"
    assert str(error.value) == f"{key}={value!r}; valid: {valid}"
