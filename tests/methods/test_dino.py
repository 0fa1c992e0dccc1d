import copy
import math
import warnings

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins import MixedPrecision
from tests_support import (
    EPS32,
    NETWORK64_TOL,
    TRANSCENDENTAL,
    ColourDataModule,
    assert_within,
    ema_error,
    quiet_trainer,
    refused,
    resumable_fit,
)

from distill.data import MultiCropViews
from distill.errors import ConfigError
from distill.eval import KNNEval, LinearProbe
from distill.methods import DINO


def make(**kwargs) -> DINO:
    defaults = dict(
        backbone="resnet8", output_dim=64, hidden_dim=32, bottleneck_dim=16,
        optimizer=lambda p: torch.optim.AdamW(p, lr=0.05), lr_reference_batch=None,
    )  # fmt: skip
    return DINO(**{**defaults, **kwargs})


def colour_data(num_local: int = 2, **kwargs) -> ColourDataModule:
    views = MultiCropViews(num_global=2, num_local=num_local, blur_probs=(0.0, 0.0, 0.0))
    return ColourDataModule(views=views, **kwargs)


def cosine(step: int, total: int, start: float, end: float) -> float:
    """DINO's cosine schedule in float64, ``end`` reached on the last step ``total - 1``."""
    return end - (end - start) * (math.cos(math.pi * step / (total - 1)) + 1) / 2


def clip_rtol(numel: int) -> float:
    """Relative error bound of float32 per-parameter clipping ``g·max/(‖g‖ + 1e-6)``: the norm
    (``numel`` squares summed, whatever the order, then a sqrt halves it), the coefficient's
    division and addition, and the product."""
    return numel * EPS32 / 2 + 4 * EPS32 + TRANSCENDENTAL


def parameters(module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


class Watcher(L.Callback):
    """Records, per step, what the EMA, center and schedule checks need."""

    def __init__(self) -> None:
        self.steps = []
        self.teacher_grads = []
        self.teacher_modes = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.teacher_modes.append(pl_module.teacher.training)

    def on_after_backward(self, trainer, pl_module):
        self.teacher_grads.append([p.grad for p in pl_module.teacher.parameters()])
        student = [p.grad for p in pl_module.student.backbone.parameters()]
        assert any(g is not None and g.abs().sum() > 0 for g in student)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # Callbacks run before the module's hook: the EMA and center update have not happened.
        groups = trainer.optimizers[0].param_groups
        self.steps.append({
            "step": trainer.global_step - 1,
            "teacher": parameters(pl_module.teacher),
            "student": parameters(pl_module.student),
            "center": pl_module.dino_loss.center.clone(),
            "teacher_out": [t.clone() for t in pl_module._teacher_out],
            "loss": outputs["loss"].detach(),
            "wd": [g["weight_decay"] for g in groups],
            "lr": groups[0]["lr"],
            "logged": {k: float(v) for k, v in trainer.callback_metrics.items()},
        })  # fmt: skip


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Two epochs of three steps with k-NN and a linear probe on the teacher."""
    torch.manual_seed(0)
    model = make(warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=1)
    initial = parameters(model.student)
    watcher = Watcher()
    callbacks = [watcher, KNNEval(submodule="teacher", k=[5]), LinearProbe(submodule="teacher")]
    trainer = quiet_trainer(
        tmp_path_factory.mktemp("dino"), max_epochs=2, limit_train_batches=3,
        limit_val_batches=1, callbacks=callbacks,
    )  # fmt: skip
    trainer.fit(model, datamodule=colour_data())
    return model, trainer, watcher, initial


@pytest.mark.numerics
def test_multi_crop_batches_and_outputs_have_the_view_shapes():
    data = colour_data(num_local=3)
    data.setup("fit")
    views, targets, indices = next(iter(data.train_dataloader()))
    assert [tuple(v.shape) for v in views] == [(10, 3, 32, 32)] * 2 + [(10, 3, 16, 16)] * 3
    assert targets.shape == indices.shape == (10,)
    model = make().eval().double()  # float64: one pass per resolution, other batch sizes
    views = [v.double() for v in views]
    with torch.no_grad():
        outputs = model.student(views)
        # One backbone pass per resolution gives what a pass per view gives (eval-mode BN).
        one_by_one = [model.student.head(model.student.backbone(v)) for v in views]
        teacher = model.teacher(views[:2])
    assert [tuple(o.shape) for o in outputs] == [(10, 64)] * 5
    assert [tuple(t.shape) for t in teacher] == [(10, 64)] * 2
    for output, expected in zip(outputs, one_by_one, strict=True):
        torch.testing.assert_close(output, expected, rtol=NETWORK64_TOL, atol=NETWORK64_TOL)


def test_teacher_starts_as_a_copy_not_an_alias():
    model = make()
    student, teacher = model.student.state_dict(), model.teacher.state_dict()
    for name, value in student.items():
        assert torch.equal(teacher[name], value), name
        assert teacher[name].data_ptr() != value.data_ptr(), name
    assert not any(p.requires_grad for p in model.teacher.parameters())


def test_teacher_gets_no_gradient_and_stays_in_train_mode(fitted):
    _, _, watcher, _ = fitted
    assert len(watcher.teacher_grads) == 6
    assert all(g is None for grads in watcher.teacher_grads for g in grads)
    assert all(watcher.teacher_modes)


@pytest.mark.numerics
def test_teacher_is_the_ema_of_the_student_after_every_step(fitted):
    model, trainer, watcher, _ = fitted
    total = trainer.estimated_stepping_batches
    assert total == 6
    final_teacher = parameters(model.teacher)
    afters = [s["teacher"] for s in watcher.steps[1:]] + [final_teacher]
    for record, after in zip(watcher.steps, afters, strict=True):
        momentum = cosine(record["step"], total, 0.996, 1.0)
        for name, value in after.items():
            teacher, student = record["teacher"][name], record["student"][name]
            expected = momentum * teacher.double() + (1 - momentum) * student.double()
            # A step off in λ would move entries by ~1e-5.
            assert_within(value, expected, ema_error(momentum, teacher, student), name)
    # The teacher moved (λ < 1 before the last step) but is not the student.
    name = "backbone.conv1.weight"
    assert not torch.equal(final_teacher[name], watcher.steps[0]["teacher"][name])
    assert not torch.equal(final_teacher[name], parameters(model.student)[name])


@pytest.mark.numerics
def test_center_follows_the_teacher_outputs(fitted):
    model, _, watcher, _ = fitted
    afters = [s["center"] for s in watcher.steps[1:]] + [model.dino_loss.center]
    for record, after in zip(watcher.steps, afters, strict=True):
        outputs = torch.cat(record["teacher_out"])
        mean = outputs.double().mean(0)
        expected = 0.9 * record["center"].double() + 0.1 * mean
        # The float32 mean of n rows (n + 1 roundings of max|t|), then the EMA.
        mean_error = (len(outputs) + 1) * EPS32 * outputs.abs().max().item()
        error = 0.1 * mean_error + ema_error(0.9, record["center"], mean)
        assert_within(after, expected, error)


@pytest.mark.numerics
def test_schedules_at_start_middle_end_and_as_logged(fitted):
    model, trainer, watcher, _ = fitted
    for record in watcher.steps:
        step, logged = record["step"], record["logged"]
        momentum = cosine(step, 6, 0.996, 1.0)
        wd = cosine(step, 6, 0.04, 0.4)
        temp = 0.04 + 0.03 * min(step / 3, 1.0)  # one warm-up epoch of 3 steps
        assert logged["train/momentum"] == pytest.approx(momentum, rel=1e-6)
        assert logged["train/teacher_temp"] == pytest.approx(temp, rel=1e-6)
        assert logged["train/wd"] == pytest.approx(wd, rel=1e-6)
        assert record["wd"] == [pytest.approx(wd), 0.0]  # norms and biases: no decay
        assert logged["train/loss"] == pytest.approx(record["loss"].item())
    assert model.momentum_at(0) == pytest.approx(0.996)
    assert model.momentum_at(2.5) == pytest.approx(0.998)
    assert model.momentum_at(5) == 1.0
    assert model.weight_decay_at(0) == pytest.approx(0.04)
    assert model.weight_decay_at(5) == pytest.approx(0.4)
    for name in ("teacher_entropy", "teacher_kl_uniform", "lr"):
        assert f"train/{name}" in watcher.steps[-1]["logged"]
    entropy = watcher.steps[-1]["logged"]["train/teacher_entropy"]
    assert 0 < entropy < math.log(64)


def test_last_layer_is_frozen_during_the_first_epoch_only(fitted):
    model, _, watcher, initial = fitted
    name = "head.last_layer.parametrizations.weight.original1"  # v
    for record in watcher.steps[:3]:
        assert torch.equal(record["student"][name], initial[name])
    assert not torch.equal(watcher.steps[3]["student"][name], initial[name])
    # norm_last_layer: the weight norm's g stays 1 and is not trained.
    norm = model.student.head.last_layer.parametrizations.weight.original0  # g
    assert not norm.requires_grad and torch.equal(norm, torch.ones(64, 1))


def test_knn_and_linear_probe_evaluate_the_teacher_backbone(fitted):
    _, trainer, _, _ = fitted
    metrics = trainer.callback_metrics
    assert 0.0 <= float(metrics["val/knn_top1"]) <= 1.0
    assert 0.0 <= float(metrics["val/linear_top1"]) <= 1.0
    assert DINO.monitor == "val/knn_top1"


def test_lr_is_scaled_by_the_global_batch(tmp_path):
    model = make(lr_reference_batch=256, lr_schedule="constant")
    trainer = quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0, accumulate_grad_batches=2)
    trainer.fit(model, datamodule=colour_data())
    # batch 10 x 1 device x 2 accumulated batches = 20 images per step.
    for group in trainer.optimizers[0].param_groups:
        assert group["lr"] == pytest.approx(0.05 * 20 / 256)


def test_bf16_mixed_fit_keeps_loss_and_center_in_float32(tmp_path):
    torch.manual_seed(0)
    model = make()
    watcher = Watcher()
    trainer = quiet_trainer(
        tmp_path, max_steps=3, limit_val_batches=0, precision="bf16-mixed", callbacks=[watcher]
    )
    trainer.fit(model, datamodule=colour_data())
    assert watcher.steps[0]["teacher_out"][0].dtype == torch.bfloat16  # autocast was on
    for record in watcher.steps:
        assert record["loss"].dtype == torch.float32 and torch.isfinite(record["loss"])
    assert model.dino_loss.center.dtype == torch.float32
    assert torch.isfinite(model.dino_loss.center).all()
    assert all(torch.isfinite(p).all() for p in model.teacher.parameters())


@pytest.mark.parametrize(("interval", "steps"), [(1, 3), (50, 5)], ids=["every_step", "at_end"])
def test_collapsed_teacher_triggers_one_warning(tmp_path, interval, steps):
    # A teacher temperature of 100 makes every target almost uniform: entropy ~ log K.
    model = make(teacher_temp=100.0, warmup_teacher_temp=100.0, collapse_patience=3,
                 collapse_check_interval=interval)  # fmt: skip
    trainer = quiet_trainer(tmp_path, max_steps=5, limit_val_batches=0)
    # Checked every step: at the 3rd; every 50: at the end of training, after 5 steps.
    with pytest.warns(UserWarning, match=f"collapse to uniform for {steps} steps") as record:
        trainer.fit(model, datamodule=colour_data())
    assert sum("collapse" in str(w.message) for w in record) == 1
    assert trainer.callback_metrics["train/teacher_entropy"] > 0.95 * math.log(64)


def test_bad_batches_and_settings_raise_config_errors(tmp_path):
    model = make()
    with pytest.raises(ConfigError, match="multi-crop batches.*MultiCropViews"):
        model.multi_crop_views((torch.zeros(2, 3, 32, 32), torch.zeros(2), torch.zeros(2)))
    views = [torch.zeros(2, 3, 32, 32)] * 2 + [torch.zeros(2, 3, 16, 16)] * 2
    with pytest.raises(ConfigError, match="num_global_views=3 but the batch's views"):
        make(num_global_views=3).multi_crop_views((views, None, None))
    with pytest.raises(ConfigError, match="teacher_temp=0.0"):
        make(teacher_temp=0.0, warmup_teacher_temp=0.0)
    with pytest.raises(ConfigError, match="momentum_start=1.1"):
        make(momentum_start=1.1)
    with pytest.raises(ConfigError, match="weight_decay_end=-0.4; valid: a number >= 0"):
        make(weight_decay_end=-0.4)
    with pytest.raises(ConfigError, match="lr_reference_batch=-256; valid: a number of images"):
        make(lr_reference_batch=-256)
    with pytest.raises(ConfigError, match="num_global_views=1 but the data's views have num_g"):
        quiet_trainer(tmp_path, max_steps=1).fit(make(num_global_views=1), colour_data())


def test_resume_from_checkpoint_equals_uninterrupted_fit(tmp_path):
    def fit(root, stop_after=None, ckpt_path=None):
        return resumable_fit(
            lambda: make(teacher_temp=0.07, warmup_teacher_temp_epochs=3),
            colour_data,
            root,
            stop_after,
            ckpt_path,
        )

    straight, straight_trainer = fit(tmp_path / "straight")
    _, interrupted = fit(tmp_path / "first", stop_after=2)
    assert interrupted.global_step == 4
    resumed, trainer = fit(tmp_path / "second", ckpt_path=str(tmp_path / "first" / "last.ckpt"))
    assert trainer.global_step == 8
    for name, value in straight.state_dict().items():  # student, teacher and center
        torch.testing.assert_close(resumed.state_dict()[name], value, msg=name)
    for key in ("momentum", "teacher_temp", "wd", "loss"):
        assert float(trainer.callback_metrics[f"train/{key}"]) == pytest.approx(
            float(straight_trainer.callback_metrics[f"train/{key}"])
        ), key


@pytest.mark.numerics
def test_gradient_clipping_is_per_parameter_as_in_dino():
    model = make()
    torch.manual_seed(0)
    params = [p for p in model.student.parameters()]
    scales = torch.logspace(-3, 2, len(params))
    for p, scale in zip(params, scales, strict=True):
        p.grad = torch.randn_like(p) * scale / p.numel() ** 0.5
    before = [p.grad.double().clone() for p in params]
    model.configure_gradient_clipping(None, 3.0, "norm")
    clipped = 0
    for p, grad in zip(params, before, strict=True):
        norm = grad.norm()
        expected = grad * (3.0 / (norm + 1e-6)) if norm > 3.0 else grad
        clipped += int(norm > 3.0)
        rtol = clip_rtol(p.numel())
        torch.testing.assert_close(p.grad.double(), expected, rtol=rtol, atol=0)
        assert p.grad.norm() <= 3.0 * (1 + 2 * rtol)  # clipped, then measured
    assert 0 < clipped < len(params)  # some tensors above the limit, some below


@pytest.mark.numerics
def test_trainer_gradient_clip_val_clips_each_student_tensor(tmp_path):
    norms = []

    class RecordingAdamW(torch.optim.AdamW):
        def step(self, closure=None):
            loss = closure() if closure is not None else None
            norms.append([(p.grad.norm().item(), p.numel()) for g in self.param_groups
                          for p in g["params"] if p.grad is not None])  # fmt: skip
            super().step()
            return loss

    model = make(optimizer=lambda p: RecordingAdamW(p, lr=0.05), freeze_last_layer=0)
    trainer = quiet_trainer(tmp_path, max_steps=2, limit_val_batches=0, gradient_clip_val=1e-3)
    trainer.fit(model, datamodule=colour_data(batch_size=6))
    assert len(norms) == 2
    for step in norms:
        # Each tensor clipped, then its norm measured: twice clipping's float32 error.
        assert all(norm <= 1e-3 * (1 + 2 * clip_rtol(numel)) for norm, numel in step)
        # Total-norm clipping would leave the joint norm at the limit; here it is far above.
        assert sum(norm**2 for norm, _ in step) ** 0.5 > 3e-3


def test_a_last_batch_of_one_trains_and_moves_the_center(tmp_path):
    model = make(head_batch_norm=True)  # 60 images in batches of 59: the second holds one
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_val_batches=0)
    trainer.fit(model, datamodule=colour_data(batch_size=59, drop_last=False))
    assert trainer.global_step == 2
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert torch.isfinite(model.dino_loss.center).all() and model.dino_loss.center.abs().sum() > 0


def test_fit_on_single_view_data_is_refused_before_any_step(tmp_path):
    from distill.data import SupervisedViews

    model = make()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = quiet_trainer(tmp_path, max_steps=2, limit_val_batches=0)
    with pytest.raises(ConfigError, match="DINO needs multi-crop batches.*MultiCropViews"):
        trainer.fit(model, datamodule=ColourDataModule(views=SupervisedViews()))
    assert trainer.global_step == 0
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_heads_use_the_current_weight_norm_api_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        model = make()
    layer = model.student.head.last_layer
    assert torch.nn.utils.parametrize.is_parametrized(layer, "weight")
    copy.deepcopy(model.student)  # the old weight-norm hooks could not be deep-copied


def fused_adamw_on_cpu_or_skip() -> None:
    """Skips the test where this torch has no fused AdamW for CPU tensors (before 2.4)."""
    param = torch.nn.Parameter(torch.ones(2))
    param.grad = torch.ones(2)
    try:
        torch.optim.AdamW([param], fused=True).step()
    except (RuntimeError, ValueError) as error:
        pytest.skip(f"no fused AdamW for CPU tensors in torch {torch.__version__}: {error}")


def first_moments_after_one_clipped_step(tmp_path, fused: bool) -> dict[str, torch.Tensor]:
    """AdamW's ``exp_avg`` (0.1 × the clipped, unscaled gradient) after one ``16-mixed`` step."""
    torch.manual_seed(0)
    model = make(
        optimizer=lambda p: torch.optim.AdamW(
            p, lr=0.05, fused=fused, foreach=None if fused else False
        ),
        freeze_last_layer=0,
    )
    # 16-mixed on a CPU trainer is turned into bf16 by Lightning: the plugin keeps fp16 with
    # a GradScaler. A small initial scale keeps the first step from overflowing.
    scaler = torch.amp.GradScaler("cpu", init_scale=16.0)
    trainer = quiet_trainer(
        tmp_path / str(fused), max_steps=1, limit_val_batches=0, gradient_clip_val=1e-3,
        plugins=[MixedPrecision("16-mixed", "cpu", scaler)],
    )  # fmt: skip
    trainer.fit(model, datamodule=colour_data(batch_size=6))
    assert scaler.get_scale() == 16.0  # the step was taken, not skipped for an overflow
    optimizer = trainer.optimizers[0]
    assert getattr(optimizer, "_step_supports_amp_scaling", False) == fused
    return {
        name: optimizer.state[p]["exp_avg"].clone()
        for name, p in model.student.named_parameters()
        if p in optimizer.state
    }


def test_per_parameter_clipping_unscales_a_fused_optimizers_gradients_first(tmp_path):
    # Under a GradScaler Lightning leaves unscaling to a fused optimiser's step, after the
    # clipping: clipped while still scaled, each gradient would end 16 times too small.
    fused_adamw_on_cpu_or_skip()
    fused = first_moments_after_one_clipped_step(tmp_path, fused=True)
    reference = first_moments_after_one_clipped_step(tmp_path, fused=False)
    assert fused.keys() == reference.keys() and len(fused) > 10
    for name, moment in reference.items():
        # The same clipped gradients; exp_avg = (1 − β1)·g by the fused kernel (a lerp from 0:
        # two roundings) and by the foreach one (two roundings): 4 roundings apart at most.
        torch.testing.assert_close(fused[name], moment, rtol=4 * EPS32, atol=0, msg=name)
    clipped = [name for name, moment in reference.items() if moment.norm() > 0.1 * 1e-3 * 0.999]
    assert len(clipped) > 10  # most tensors were clipped to 1e-3 (exp_avg = 0.1 × gradient)


@pytest.mark.parametrize(
    ("argument", "value", "valid"),
    [
        ("student_temp", 0.0, "a number > 0"),
        ("teacher_temp", -0.04, "a number > 0"),
        ("warmup_teacher_temp", 0.0, "a number > 0"),
        ("warmup_teacher_temp_epochs", -1.0, "a number >= 0"),
        ("center_momentum", 1.5, "a number in [0, 1]"),
        ("output_dim", 0, "an integer >= 1"),
        ("freeze_last_layer", -1, "an integer >= 0"),
        ("collapse_tolerance", 2.0, "a number in [0, 1]"),
        ("collapse_check_interval", 0, "an integer >= 1"),
        ("weight_decay_end", float("inf"), "a number >= 0"),
    ],
)
def test_bad_numbers_are_one_message_naming_the_key(argument, value, valid):
    message = refused(DINO, backbone="resnet8", **{argument: value})
    assert message == f"model.init_args.{argument}={value!r}; valid: {valid}"
