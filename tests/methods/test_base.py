import math

import pytest
import torch
from tests_support import ColourDataModule, PoisonBatch, quiet_trainer
from torch import nn

from distill.errors import ConfigError, NonFiniteLossError
from distill.methods import Supervised
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
    with pytest.warns(UserWarning, match="non-finite training loss at global step 1: skipped"):
        trainer.fit(model, datamodule=ColourDataModule())
    assert model.skipped_batches == 1 and trainer.global_step == 4
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_finite_guard_error_mode_raises_at_the_next_check_naming_the_term(tmp_path):
    model = Supervised(backbone="resnet8", num_classes=5, nonfinite_check_interval=3)
    trainer = quiet_trainer(
        tmp_path, max_steps=6, limit_val_batches=0, callbacks=[PoisonBatch(step=1)]
    )
    with pytest.raises(NonFiniteLossError, match=r"train/loss at global step 1 \(epoch 0\)"):
        trainer.fit(model, datamodule=ColourDataModule())
    assert trainer.global_step == 2  # checked before the 3rd optimiser step


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
