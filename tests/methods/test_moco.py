import lightning as L
import pytest
import torch
from tests_support import (
    ColourDataModule,
    assert_within,
    ema_error,
    quiet_trainer,
    refused,
    resumable_fit,
)

from distill.data import SupervisedViews, TwoViews
from distill.errors import ConfigError
from distill.methods import MoCo


def make(**kwargs):
    defaults = dict(
        backbone="resnet8", proj_hidden_dim=32, proj_dim=16, queue_size=32, key_momentum=0.9,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    )  # fmt: skip
    return MoCo(**{**defaults, **kwargs})


def colours(**kwargs):
    return ColourDataModule(batch_size=10, views=TwoViews(blur_prob=0.0), **kwargs)


def key_and_query_parameters(model):
    query = [*model.student.backbone.parameters(), *model.student.head.parameters()]
    key = [*model.student.key_backbone.parameters(), *model.student.key_head.parameters()]
    return query, key


class Watcher(L.Callback):
    """Snapshots the queue, key encoder and pending keys before the module updates them."""

    def __init__(self) -> None:
        self.snapshots = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        _, key = key_and_query_parameters(pl_module)
        self.snapshots.append(
            {
                "keys": pl_module._pending_keys.clone(),
                "queue": pl_module.student.queue.keys.clone(),
                "pointer": int(pl_module.student.queue.pointer),
                "key_params": [p.detach().clone() for p in key],
            }
        )


@pytest.mark.numerics
def test_key_encoder_and_queue_follow_their_update_rules(tmp_path):
    torch.manual_seed(0)
    model, watcher = make(), Watcher()
    trainer = quiet_trainer(tmp_path, max_steps=4, limit_val_batches=0, callbacks=[watcher])
    trainer.fit(model, datamodule=colours())
    last = watcher.snapshots[-1]
    query, key = key_and_query_parameters(model)
    for before, q, k in zip(last["key_params"], query, key, strict=True):
        expected = 0.9 * before.double() + 0.1 * q.detach().double()
        assert_within(k, expected, ema_error(0.9, before, q))
    # The 4th batch of 10 keys went to slots 30, 31, 0, ..., 7 of the 32-slot queue.
    assert last["pointer"] == 30 and int(model.student.queue.pointer) == 8
    slots = torch.arange(30, 40) % 32
    assert torch.equal(model.student.queue.keys[slots], last["keys"])
    others = torch.ones(32, dtype=torch.bool)
    others[slots] = False
    assert torch.equal(model.student.queue.keys[others], last["queue"][others])
    assert model.student.queue.is_full
    assert "train/loss" in trainer.callback_metrics


def test_optimiser_holds_the_query_encoder_only(tmp_path):
    model = make()
    trainer = quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(model, datamodule=colours())
    optimised = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    query, key = key_and_query_parameters(model)
    assert optimised == {id(p) for p in query}
    assert not any(p.requires_grad for p in key)


def test_key_encoder_moves_per_optimiser_step_and_queue_per_batch(tmp_path):
    model = make(symmetric=True, queue_size=64)
    calls = []
    update = model.student.update_key_encoder
    model.student.update_key_encoder = lambda m: (calls.append(m), update(m))
    trainer = quiet_trainer(
        tmp_path, max_epochs=1, limit_train_batches=4, limit_val_batches=0,
        accumulate_grad_batches=2,
    )  # fmt: skip
    trainer.fit(model, datamodule=colours())
    assert calls == [0.9, 0.9]  # 4 micro-batches, 2 optimiser steps
    assert int(model.student.queue.pointer) == (4 * 2 * 10) % 64  # symmetric: both keys


def test_single_view_batches_are_refused(tmp_path):
    data = ColourDataModule(batch_size=10, views=SupervisedViews())
    with pytest.raises(ConfigError, match="two views per image, got a single tensor"):
        quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(make(), datamodule=data)


def test_key_momentum_outside_unit_interval_is_refused():
    with pytest.raises(ConfigError, match="key_momentum=1.5; valid"):
        make(key_momentum=1.5)


def test_resume_from_checkpoint_equals_uninterrupted_fit(tmp_path):
    def fit(root, stop_after=None, ckpt_path=None):
        return resumable_fit(lambda: make(queue_size=30), colours, root, stop_after, ckpt_path)

    straight, _ = fit(tmp_path / "straight")
    _, interrupted = fit(tmp_path / "first", stop_after=2)
    resumed, trainer = fit(tmp_path / "second", ckpt_path=str(tmp_path / "first" / "last.ckpt"))
    assert interrupted.global_step == 4 and trainer.global_step == 8
    assert int(straight.student.queue.pointer) == 80 % 30
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, msg=name, rtol=0, atol=0)


def test_a_last_batch_of_one_trains_and_is_queued(tmp_path):
    model = make(queue_size=64)  # 60 images in batches of 59: the second batch holds one
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_val_batches=0)
    trainer.fit(model, datamodule=ColourDataModule(batch_size=59, drop_last=False,
                                                   views=TwoViews(blur_prob=0.0)))  # fmt: skip
    assert trainer.global_step == 2 and int(model.student.queue.pointer) == 60
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize(
    ("argument", "value", "valid"),
    [
        ("temperature", 0.0, "a number > 0"),
        ("temperature", -0.2, "a number > 0"),
        ("queue_size", 0, "an integer >= 1"),
        ("proj_dim", 0, "an integer >= 1"),
        ("proj_hidden_dim", 0, "an integer >= 1"),
        ("key_momentum", 1.5, "a number in [0, 1]"),
    ],
)
def test_bad_numbers_are_one_message_naming_the_key(argument, value, valid):
    message = refused(MoCo, backbone="resnet8", **{argument: value})
    assert message == f"model.init_args.{argument}={value!r}; valid: {valid}"
