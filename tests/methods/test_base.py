import collections
import math
import re
import warnings

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins import MixedPrecision
from tests_support import EPS32, ColourDataModule, PoisonBatch, fit_teacher_student, quiet_trainer
from torch import nn

from distill.data import MultiCropViews, TwoViews
from distill.errors import ConfigError, NonFiniteLossError
from distill.methods import CRD, DINO, KD, MoCo, ReKD, Supervised
from distill.methods.base import Method, lr_factor, split_decay_groups


def cosine_reference(step, total, warmup, floor):
    """Independent form: linear warm-up to 1, then half a cosine to ``floor`` at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / (total - warmup - 1)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


@pytest.mark.parametrize("step", [0, 4, 5, 6, 30, 52, 98, 99])
def test_cosine_with_warmup_matches_formula(step):
    got = lr_factor(step, 100, 10, "cosine", warmup_epochs=0.5, min_lr_ratio=0.01)
    assert got == pytest.approx(cosine_reference(step, 100, 5, 0.01), rel=1e-9)


def test_cosine_ends_at_floor_and_stays_there():
    assert lr_factor(99, 100, 10, "cosine", min_lr_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor(150, 100, 10, "cosine", min_lr_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(1.0)


def test_multistep_decays_at_epoch_milestones():
    factor = lambda step: lr_factor(step, 1000, 10, "multistep", milestones=[2, 4], lr_decay=0.1)
    assert [factor(s) for s in (0, 19, 20, 39, 40, 99)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01]
    )


def test_constant_warms_up_then_holds():
    values = [lr_factor(s, 100, 4, "constant", warmup_epochs=1) for s in range(6)]
    assert values == pytest.approx([0.25, 0.5, 0.75, 1, 1, 1])


def test_decay_groups_exclude_norms_biases_and_frozen_parameters():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    net[2].weight.requires_grad_(False)
    decay, no_decay = split_decay_groups([net], exclude_norm_bias=True)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 3])]
    assert len(no_decay["params"]) == 4 and no_decay["weight_decay"] == 0.0
    (single,) = split_decay_groups([net], exclude_norm_bias=False)
    assert len(single["params"]) == 5


def test_unknown_schedule_names_key_and_choices():
    with pytest.raises(ConfigError, match="lr_schedule='step'.*cosine, multistep, constant"):
        Method(lr_schedule="step")


class CountSteps(Method):
    """Counts the batches on which ``optimizer_stepped`` reports a step."""

    def __init__(self) -> None:
        super().__init__(lr_schedule="constant")
        self.student = nn.Linear(3, 1)
        self.stepped_batches: list[int] = []

    def training_step(self, batch, batch_idx):
        return self.student(batch[0]).pow(2).mean()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.optimizer_stepped():
            self.stepped_batches.append(batch_idx)


@pytest.mark.parametrize("accumulate", [1, 3])
def test_optimizer_stepped_once_per_optimizer_step(tmp_path, accumulate):
    from tests_support import quiet_trainer

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(12, 3)))
    model = CountSteps()
    trainer = quiet_trainer(tmp_path, max_epochs=1, accumulate_grad_batches=accumulate)
    trainer.fit(model, data)
    # With accumulation the step lands on the last micro-batch of each group.
    assert model.stepped_batches == list(range(accumulate - 1, 12, accumulate))
    assert trainer.global_step == 12 // accumulate


def test_finite_guard_skip_mode_drops_the_bad_step_and_keeps_weights_finite(tmp_path):
    model = Supervised(backbone="resnet8", num_classes=5, nonfinite_loss="skip")
    trainer = quiet_trainer(
        tmp_path, max_steps=4, limit_val_batches=0, callbacks=[PoisonBatch(step=1)]
    )
    with pytest.warns(UserWarning, match="skip: skipped global step 1, not finite: train/loss"):
        trainer.fit(model, datamodule=ColourDataModule())
    assert model.nonfinite.skipped_batches == 1 and trainer.global_step == 4
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_finite_guard_error_mode_raises_at_the_next_check_naming_the_term(tmp_path):
    model = Supervised(backbone="resnet8", num_classes=5, nonfinite_check_interval=3)
    trainer = quiet_trainer(
        tmp_path, max_steps=6, limit_val_batches=0, callbacks=[PoisonBatch(step=1)]
    )
    with pytest.raises(NonFiniteLossError, match=r"not finite: train/loss at global step 1;"):
        trainer.fit(model, datamodule=ColourDataModule())
    assert trainer.global_step == 2  # checked before the 3rd optimiser step


def state_copy(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in module.state_dict().items()}


def changed_entries(before: dict, after: dict) -> list[str]:
    """State-dict keys whose tensors differ."""
    return [key for key in before if not torch.equal(before[key], after[key])]


class StateAround(L.Callback):
    """The module's whole state before global step ``step`` and before the step after it
    (after the batch's ``on_train_batch_end``, where queues, banks and EMAs move)."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.before = self.after = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        # The first batch of each step (under gradient accumulation, several share it).
        if trainer.global_step == self.step and self.before is None:
            self.before = state_copy(pl_module)
        elif trainer.global_step == self.step + 1 and self.after is None:
            self.after = state_copy(pl_module)


SGD = lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)  # noqa: E731


def skip_mode_method(name: str, teacher_checkpoint: str):
    """A small ``nonfinite_loss: skip`` method, its data and the step a NaN batch hits."""
    common = dict(optimizer=SGD, nonfinite_loss="skip")
    encoders = dict(proj_hidden_dim=16, proj_dim=8, queue_size=20, **common)
    two_views = ColourDataModule(views=TwoViews(blur_prob=0.0))
    if name == "supervised":
        return Supervised(backbone="resnet8", num_classes=5, **common), ColourDataModule(), 1
    if name == "crd":  # at step 0, where the first batch fixes CRD's normalisers Z
        crd = CRD(
            student_backbone="resnet8", teacher_backbone="resnet14", num_classes=5,
            teacher_checkpoint=teacher_checkpoint, num_negatives=16, embed_dim=8, **common,
        )  # fmt: skip
        return crd, ColourDataModule(), 0
    if name == "dino":
        views = MultiCropViews(num_global=2, num_local=2, blur_probs=(0.0, 0.0, 0.0))
        dino = DINO(backbone="resnet8", output_dim=32, hidden_dim=16, bottleneck_dim=8,
                    lr_reference_batch=None, **common)  # fmt: skip
        return dino, ColourDataModule(views=views), 1
    if name == "moco":
        return MoCo(backbone="resnet8", **encoders), two_views, 1
    # ReKD: at step 2, once the full teacher queue has initialised the prototypes.
    rekd = ReKD(student_backbone="resnet8", teacher_backbone="resnet8", num_prototypes=4,
                threshold=0.0, **encoders)  # fmt: skip
    return rekd, two_views, 2


@pytest.mark.parametrize("name", ["supervised", "crd", "dino", "moco", "rekd"])
def test_skipped_nan_batch_changes_no_state(tmp_path, name, teacher_checkpoint):
    torch.manual_seed(0)
    model, data, step = skip_mode_method(name, teacher_checkpoint)
    around = StateAround(step)
    trainer = quiet_trainer(
        tmp_path, max_steps=step + 2, limit_val_batches=0,
        callbacks=[PoisonBatch(step), around],
    )  # fmt: skip
    with pytest.warns(UserWarning, match=f"global step {step}"):  # the skip warning
        trainer.fit(model, datamodule=data)
    # Weights, running statistics, queues, banks, center, prototypes, EMA teacher: as before.
    assert changed_entries(around.before, around.after) == []
    assert any(key.endswith("running_var") for key in around.before)
    # The batch after it trains, and updates the state again, all finite.
    final = state_copy(model)
    assert changed_entries(around.after, final) != []
    assert all(t.isfinite().all() for t in final.values() if t.is_floating_point())
    if name == "crd":  # Z, restored to "not fixed", was fixed by the next batch
        assert (model.crd.normalizers > 0).all()


def test_skipped_accumulated_step_changes_no_state(tmp_path, teacher_checkpoint):
    # Both micro-batches of optimiser step 1 are NaN: neither queues its keys, the step does
    # nothing, the key encoder does not move, every running statistic is restored.
    torch.manual_seed(0)
    model, data, step = skip_mode_method("moco", teacher_checkpoint)
    around = StateAround(step)
    trainer = quiet_trainer(
        tmp_path, max_steps=step + 2, limit_val_batches=0, accumulate_grad_batches=2,
        callbacks=[PoisonBatch(step), around],
    )  # fmt: skip
    with pytest.warns(UserWarning, match=f"global step {step}"):
        trainer.fit(model, datamodule=data)
    assert changed_entries(around.before, around.after) == []
    assert trainer.global_step == step + 2 and model.nonfinite.skipped_batches == 1


class PoisonSteps(L.Callback):
    """Fills the images of the batches at ``steps`` with NaN."""

    def __init__(self, steps) -> None:
        self.poisons = [PoisonBatch(step) for step in steps]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        for poison in self.poisons:
            poison.on_train_batch_start(trainer, pl_module, batch, batch_idx)


@pytest.mark.parametrize("steps, stop", [([1, 6], None), ([1, 4, 6], 6), ([1, 7, 9], None)])
def test_skip_mode_stops_once_more_than_its_share_of_recent_steps_were_skipped(
    tmp_path, steps, stop
):
    # 0.25 of a window of 8: two skipped steps among the last 8 are tolerated, three are not.
    model = Supervised(
        backbone="resnet8", num_classes=5, nonfinite_loss="skip", optimizer=SGD,
        nonfinite_skip_share=0.25, nonfinite_skip_window=8,
    )  # fmt: skip
    trainer = quiet_trainer(tmp_path, max_steps=10, limit_val_batches=0)
    trainer.callbacks.append(PoisonSteps(steps))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if stop is None:
            trainer.fit(model, datamodule=ColourDataModule())
            assert trainer.global_step == 10
            return
        with pytest.raises(
            NonFiniteLossError,
            match=rf"skip skipped 3 of the last {stop + 1} optimiser steps \(global steps 1 to "
            rf"{stop}\), more than model.init_args.nonfinite_skip_share=0.25 of "
            r"model.init_args.nonfinite_skip_window=8",
        ):
            trainer.fit(model, datamodule=ColourDataModule())
    assert trainer.global_step == stop


def lr_in(message: str) -> tuple[float, int]:
    """The ``lr X at global step N`` of a message."""
    found = re.search(r"lr ([0-9.e+-]+) at global step (\d+)", message)
    assert found, message
    return float(found.group(1)), int(found.group(2))


def huge_lr_model(mode: str) -> Supervised:
    return Supervised(
        backbone="resnet8", num_classes=5, nonfinite_loss=mode, warmup_epochs=1,
        optimizer=lambda p: torch.optim.SGD(p, lr=1e6, momentum=0.9),
    )  # fmt: skip


def test_skip_mode_with_a_huge_lr_stops_instead_of_skipping_to_the_end(tmp_path):
    trainer = quiet_trainer(tmp_path, max_epochs=10, limit_val_batches=0)  # 60 steps
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(NonFiniteLossError, match="nonfinite_loss: skip") as error:
            trainer.fit(huge_lr_model("skip"), datamodule=ColourDataModule())
    assert trainer.global_step < 20
    assert "learning rate too high (lr " in str(error.value)


def test_error_mode_writes_no_checkpoint_with_an_infinite_state(tmp_path):
    # lr 1e6: the loss stays finite for a while, the batch-norm variances do not.
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=tmp_path, save_last=True, every_n_train_steps=1
    )
    trainer = quiet_trainer(
        tmp_path, max_epochs=2, limit_val_batches=0, enable_checkpointing=True,
        callbacks=[checkpoints],
    )  # fmt: skip
    with pytest.raises(
        NonFiniteLossError, match="parameter and buffer tensors from global"
    ) as error:
        trainer.fit(huge_lr_model("error"), datamodule=ColourDataModule())
    message = str(error.value)
    bad_step = int(re.search(r"tensors from global step (\d+) on", message).group(1))
    assert "running_var" in message
    # The checkpoint after the bad step was refused: last.ckpt is the state before it.
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert saved["global_step"] == bad_step
    for path in tmp_path.glob("*.ckpt"):
        state = torch.load(path, weights_only=False)["state_dict"]
        assert all(t.isfinite().all() for t in state.values() if t.is_floating_point()), path
    # The lr of the bad step, from the schedule (warm-up over 6 steps of 12), not the lr now.
    lr, step = lr_in(message)
    assert step == bad_step
    expected = 1e6 * lr_factor(bad_step, 12, 6, "cosine", warmup_epochs=1)
    assert lr == pytest.approx(expected, rel=5e-4)  # printed with 4 significant digits
    assert lr != pytest.approx(trainer.optimizers[0].param_groups[0]["lr"], rel=5e-4)


def test_error_message_gives_the_lr_at_the_bad_step_not_at_detection(tmp_path):
    model = Supervised(
        backbone="resnet8", num_classes=5, warmup_epochs=1, nonfinite_check_interval=4,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.3),
    )  # fmt: skip
    trainer = quiet_trainer(
        tmp_path, max_steps=6, limit_val_batches=0, callbacks=[PoisonBatch(step=1)]
    )
    with pytest.raises(NonFiniteLossError) as error:
        trainer.fit(model, datamodule=ColourDataModule())
    assert trainer.global_step == 3  # detected before step 3, 2 steps after the bad one
    lr, step = lr_in(str(error.value))
    assert step == 1
    # Warm-up over the 6 steps per epoch: step 1 runs at 2/6 of the base lr, step 3 at 4/6.
    assert lr == pytest.approx(0.3 * 2 / 6, rel=5e-4)


@pytest.mark.parametrize("channels_last", [True, False])
def test_channels_last_flag_sets_the_layout_the_fit_trains_in(tmp_path, channels_last):
    model = Supervised(backbone="resnet8", num_classes=5, channels_last=channels_last)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    before = [c.weight.detach().clone() for c in convs]
    inputs = []
    convs[0].register_forward_hook(lambda module, args, out: inputs.append(args[0]))
    trainer = quiet_trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(model, datamodule=ColourDataModule())
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert all(c.weight.is_contiguous(memory_format=layout) for c in convs)
    assert all(x.is_contiguous(memory_format=layout) for x in inputs)
    # The optimiser trained the converted parameters themselves.
    optimised = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert {id(c.weight) for c in convs} <= optimised
    assert all(not torch.equal(c.weight, b) for c, b in zip(convs, before, strict=True))


def fused_adamw_on_cpu_or_skip() -> None:
    """Skips the test where this torch has no fused AdamW for CPU tensors (before 2.4)."""
    param = nn.Parameter(torch.ones(2))
    param.grad = torch.ones(2)
    try:
        torch.optim.AdamW([param], fused=True).step()
    except (RuntimeError, ValueError) as error:
        pytest.skip(f"no fused AdamW for CPU tensors in torch {torch.__version__}: {error}")


def first_moments(tmp_path, fused: bool, algorithm: str) -> list[torch.Tensor]:
    """AdamW's ``exp_avg`` after one clipped step under ``16-mixed`` with a GradScaler."""
    torch.manual_seed(0)

    def adamw(params):
        return torch.optim.AdamW(params, lr=0.01, fused=fused, foreach=None if fused else False)

    model = Supervised(backbone="resnet8", num_classes=5, optimizer=adamw)
    # Lightning turns 16-mixed on a CPU trainer into bf16: the plugin keeps fp16 and a scaler.
    scaler = torch.amp.GradScaler("cpu", init_scale=16.0)
    trainer = quiet_trainer(
        tmp_path / str(fused), max_steps=1, limit_val_batches=0, gradient_clip_val=1e-3,
        gradient_clip_algorithm=algorithm, plugins=[MixedPrecision("16-mixed", "cpu", scaler)],
    )  # fmt: skip
    trainer.fit(model, datamodule=ColourDataModule())
    assert scaler.get_scale() == 16.0  # the step was taken
    optimizer = trainer.optimizers[0]
    return [optimizer.state[p]["exp_avg"] for p in model.student.parameters()]


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_clipping_a_fused_optimizer_under_a_grad_scaler_clips_unscaled_gradients(
    tmp_path, algorithm
):
    # Lightning refuses to clip for an optimiser that unscales in its step; Method unscales
    # first, so the fused step sees the gradients the unfused one sees.
    fused_adamw_on_cpu_or_skip()
    fused = first_moments(tmp_path, True, algorithm)
    reference = first_moments(tmp_path, False, algorithm)
    for moment, expected in zip(fused, reference, strict=True):
        # The same clipped gradients; exp_avg = (1 − β1)·g by the fused kernel (a lerp from 0:
        # two roundings) and by the foreach one (two roundings): 4 roundings apart at most.
        torch.testing.assert_close(moment, expected, rtol=4 * EPS32, atol=0)
    # exp_avg = (1 - β1) × the clipped gradient, to 1e-3 in total norm or in each element.
    moments = torch.cat([m.flatten() for m in reference]).double()
    clipped = moments.abs().max() if algorithm == "value" else moments.norm()
    # The clip factor max_norm / (norm + 1e-6) comes from a float32 norm of n entries (n
    # roundings at worst, in any order) and is off by 1e-6 / norm ≤ 1e-3 (clipping means
    # norm > max_norm); the moments add two roundings. Clipped while scaled it is 16× off.
    rtol = (moments.numel() + 4) * EPS32 + 1e-6 / 1e-3
    assert clipped == pytest.approx(0.1 * 1e-3, rel=rtol)


@pytest.mark.parametrize("fused", [True, False])
def test_skip_mode_under_a_grad_scaler_skips_the_batch_for_either_optimizer(tmp_path, fused):
    # A fused optimiser's gradients are still scaled when the step is dropped: Method
    # unscales them first, so the scaler has its inf check and skips the step too.
    if fused:
        fused_adamw_on_cpu_or_skip()
    torch.manual_seed(0)
    model = Supervised(
        backbone="resnet8", num_classes=5, nonfinite_loss="skip",
        optimizer=lambda p: torch.optim.AdamW(p, lr=0.01, fused=fused),
    )  # fmt: skip
    scaler = torch.amp.GradScaler("cpu", init_scale=16.0)
    around = StateAround(1)
    trainer = quiet_trainer(
        tmp_path, max_steps=3, limit_val_batches=0, callbacks=[PoisonBatch(1), around],
        plugins=[MixedPrecision("16-mixed", "cpu", scaler)],
    )  # fmt: skip
    with pytest.warns(UserWarning, match="global step 1"):
        trainer.fit(model, datamodule=ColourDataModule())
    assert changed_entries(around.before, around.after) == []
    assert trainer.global_step == 3 and scaler.get_scale() == 8.0  # halved once, for step 1


SGD_ = torch.optim.SGD


@pytest.mark.parametrize(
    "optimizer, arguments, message",
    [
        (SGD_, {"lr": -1}, "lr: Invalid learning rate: -1; valid: a finite number >= 0"),
        (SGD_, {"lr": math.nan}, "lr=nan; valid: a finite number >= 0"),
        (SGD_, {"momentum": -0.9}, "momentum: .*-0.9; valid: a number in \\[0, 1\\)"),
        (SGD_, {"momentum": 1.5}, "momentum=1.5; valid: a number in \\[0, 1\\)"),
        (SGD_, {"weight_decay": -5e-4}, "weight_decay: .*-0.0005; valid: a finite number >= 0"),
        (SGD_, {"nesterov": True}, "nesterov: Nesterov momentum requires a momentum"),
        (torch.optim.AdamW, {"betas": (1.2, 0.999)}, "betas: .*index 0: 1.2; valid: two"),
    ],
)
def test_invalid_optimizer_numbers_name_the_key_at_construction(optimizer, arguments, message):
    with pytest.raises(ConfigError, match=f"^model.init_args.optimizer.init_args.{message}"):
        Supervised(
            backbone="resnet8", num_classes=5,
            optimizer=lambda params: optimizer(params, **{"lr": 0.1, **arguments}),
        )  # fmt: skip


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"warmup_epochs": -1.0}, "warmup_epochs=-1.0; valid: a finite number >= 0"),
        ({"warmup_epochs": math.inf}, "warmup_epochs=inf; valid: a finite number >= 0"),
        ({"min_lr_ratio": -0.1}, "min_lr_ratio=-0.1; valid: a number in \\[0, 1\\]"),
        ({"lr_decay": 2.0}, "lr_decay=2.0; valid: a number in \\[0, 1\\]"),
        ({"milestones": [30, 20]}, "milestones=\\[30, 20\\]; valid: increasing epochs >= 0"),
        ({"milestones": [10, 10]}, "milestones=\\[10, 10\\]; valid: increasing epochs >= 0"),
        ({"milestones": [-1, 5]}, "milestones=\\[-1, 5\\]; valid: increasing epochs >= 0"),
        ({"nonfinite_check_interval": 0}, "nonfinite_check_interval=0; valid: an integer >= 1"),
        ({"nonfinite_skip_share": 1.5}, "nonfinite_skip_share=1.5; valid: a number in \\[0, 1\\]"),
        ({"nonfinite_skip_window": 0}, "nonfinite_skip_window=0; valid: an integer >= 1"),
        ({"nonfinite_loss": "ignore"}, "nonfinite_loss='ignore'; valid: error, skip, off"),
    ],
)  # fmt: skip
def test_invalid_schedule_and_nonfinite_numbers_name_the_key_at_construction(arguments, message):
    with pytest.raises(ConfigError, match=f"^model.init_args.{message}"):
        Supervised(backbone="resnet8", num_classes=5, **arguments)


#: Calls of the graphs compiled with the "distill_test_counting" backend (eager kernels).
COMPILED_CALLS = collections.Counter()


@torch._dynamo.register_backend(name="distill_test_counting")
def counting_backend(graph: torch.fx.GraphModule, example_inputs):
    def run(*args):
        COMPILED_CALLS["calls"] += 1
        return graph.forward(*args)

    return run


def test_compile_flag_compiles_student_and_teacher_when_the_fit_sets_up(
    tmp_path, teacher_checkpoint
):
    arguments = dict(
        student_backbone="resnet8", teacher_backbone="resnet14",
        teacher_checkpoint=teacher_checkpoint, num_classes=5,
    )  # fmt: skip
    model = KD(compile=True, compile_backend="distill_test_counting", **arguments)
    assert not hasattr(model.student.backbone, "compiled")  # compiled when set up, not built
    calls = COMPILED_CALLS["calls"]
    # The teacher as its file held it, the student trained: by the compiled forwards.
    fit_teacher_student(model, teacher_checkpoint, tmp_path, max_steps=3)
    assert model.student.backbone.compiled and model.teacher.backbone.compiled
    assert COMPILED_CALLS["calls"] - calls >= 2 * 3  # both backbones, every step
    # The state dict of the eager model: no _orig_mod. keys in its checkpoints.
    assert list(model.state_dict()) == list(KD(**arguments).state_dict())


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"compile": "fast"}, "compile='fast'; valid: false, true or a mode: default, "
         "reduce-overhead, max-autotune, max-autotune-no-cudagraphs"),
        ({"compile_backend": "inducter"}, "compile_backend='inducter'; valid: .*inductor.*, "
         "or a debugging one \\(aot_eager, eager; "),
        ({"compile": "max-autotune", "compile_backend": "aot_eager"},
         "compile='max-autotune' is a mode of the inductor backend, not of "
         "compile_backend='aot_eager'; valid with aot_eager: false or true"),
    ],
)  # fmt: skip
def test_invalid_compile_arguments_name_the_key_at_construction(arguments, message):
    with pytest.raises(ConfigError, match=f"^model.init_args.{message}"):
        Supervised(backbone="resnet8", num_classes=5, **arguments)


def test_valid_edges_of_the_numbers_are_accepted():
    Supervised(
        backbone="resnet8", num_classes=5, warmup_epochs=0.0, min_lr_ratio=1.0, lr_decay=0.0,
        milestones=[0, 1], nonfinite_check_interval=1, nonfinite_skip_share=0.0,
        nonfinite_skip_window=1, optimizer=lambda p: torch.optim.SGD(p, lr=0.0, momentum=0.0),
    )  # fmt: skip


class FiniteLossAt(Method):
    """A finite loss whose step ``bad`` has NaN gradients or an infinite running variance."""

    def __init__(self, bad: int, what: str) -> None:
        super().__init__(nonfinite_loss="skip", lr_schedule="constant", optimizer=SGD)
        self.student = nn.Linear(3, 1)
        self.side = nn.BatchNorm1d(3)  # a branch the loss does not use
        self.bad, self.what = bad, what

    def training_step(self, batch, batch_idx):
        inputs = batch[0]
        loss = self.student(inputs).pow(2).mean()
        if self.global_step == self.bad and self.what == "gradients":
            loss = loss + (self.student.weight.sum() * 0).sqrt()  # 0, with a NaN gradient
        scale = math.inf if self.global_step == self.bad and self.what == "statistics" else 1
        self.side(inputs * scale)
        self.log_terms({"loss": loss})
        return loss


@pytest.mark.parametrize("what, reason", [("gradients", "gradients"),
                                          ("statistics", "2 running statistics")])  # fmt: skip
def test_skip_mode_skips_non_finite_gradients_or_statistics_under_a_finite_loss(
    tmp_path, what, reason
):
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(12, 3)), 4)
    model = FiniteLossAt(bad=1, what=what)
    around = StateAround(1)
    trainer = quiet_trainer(tmp_path, max_steps=3, callbacks=[around])
    with pytest.warns(UserWarning, match=f"skipped global step 1, not finite: {reason}"):
        trainer.fit(model, data)
    assert changed_entries(around.before, around.after) == []
    assert all(t.isfinite().all() for t in state_copy(model).values() if t.is_floating_point())


class BreakingSGD(torch.optim.SGD):
    """SGD whose update ``bad`` leaves one weight infinite, as a finite but huge update would."""

    def __init__(self, params, bad: int) -> None:
        super().__init__(params, lr=0.05)
        self.bad, self.steps = bad, 0

    @torch.no_grad()
    def step(self, closure=None):
        loss = super().step(closure)
        if self.steps == self.bad:
            self.param_groups[0]["params"][0].view(-1)[0] = math.inf
        self.steps += 1
        return loss


def test_skip_mode_stops_when_the_weights_went_non_finite(tmp_path):
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(24, 3)), 4)
    model = FiniteLossAt(bad=-1, what="none")
    model.optimizer_factory = lambda params: BreakingSGD(params, bad=1)
    trainer = quiet_trainer(tmp_path, max_steps=6)
    with pytest.raises(NonFiniteLossError, match="skip cannot undo") as error:
        trainer.fit(model, data)
    assert "1 of 6 parameter and buffer tensors from global step 1 on (student.weight)" in str(
        error.value
    )
    assert trainer.global_step == 2  # found at the next batch, not skipped to the end
