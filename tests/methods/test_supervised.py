import pytest
import torch
from tests_support import quiet_trainer as trainer
from tests_support import refused

from distill.data import DigitsDataModule
from distill.errors import ConfigError
from distill.methods import Supervised


def sgd(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


def test_training_lowers_the_loss_and_follows_the_schedule(tmp_path):
    torch.manual_seed(0)
    model = Supervised(backbone="resnet8", optimizer=sgd, lr_schedule="multistep", milestones=[1])
    data = DigitsDataModule(batch_size=32)
    images, targets, _ = next(iter(data.train_dataloader()))
    # Batch statistics (train mode): after 16 steps the running averages still lag behind.
    with torch.no_grad():
        before = torch.nn.functional.cross_entropy(model.train()(images), targets)
    fit = trainer(tmp_path, max_epochs=2, limit_train_batches=8, limit_val_batches=1)
    fit.fit(model, datamodule=data)
    with torch.no_grad():
        after = torch.nn.functional.cross_entropy(model.train()(images), targets)
    assert after < before
    # Epoch 2 runs after the milestone: lr = 0.1 * 0.1.
    assert fit.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.01)
    assert 0.0 <= float(fit.callback_metrics["val/top1"]) <= 1.0
    assert float(fit.callback_metrics["val/top5"]) >= float(fit.callback_metrics["val/top1"])


def test_validation_accuracy_matches_direct_count(tmp_path):
    model = Supervised(backbone="resnet8")
    data = DigitsDataModule()
    metrics = trainer(tmp_path).validate(model, datamodule=data, verbose=False)[0]
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for images, targets, _ in data.val_dataloader():
            correct += int((model(images).argmax(1) == targets).sum())
            total += len(targets)
    assert metrics["val/top1"] == pytest.approx(correct / total)


def num_classes_message(configured: int, data: int) -> str:
    return (
        f"model.init_args.num_classes={configured} but the data (DigitsDataModule) has {data} "
        f"classes. To train a model on this data, set model.init_args.num_classes={data}; a "
        "checkpoint's classification head fits only data with the classes it was trained on, "
        "while `distill eval` probes a checkpoint's backbone on data with any number of classes."
    )


def test_num_classes_mismatch_names_key_and_value(tmp_path):
    model = Supervised(backbone="resnet8", num_classes=100)
    with pytest.raises(ConfigError) as error:
        trainer(tmp_path, max_steps=1).fit(model, datamodule=DigitsDataModule())
    # Setting the data's count is the fix for a fresh fit, not for another checkpoint's head.
    assert str(error.value) == num_classes_message(100, 10)


def test_num_classes_message_claims_nothing_false_about_a_checkpoint(tmp_path):
    # A 10-class checkpoint resumed with num_classes 12 on the 10-class data: nothing was
    # trained with 12 classes, and setting 10 (the checkpoint's count) is the fix.
    first = trainer(tmp_path, max_steps=1, limit_val_batches=0)
    first.fit(Supervised(backbone="resnet8", num_classes=10), datamodule=DigitsDataModule())
    first.save_checkpoint(tmp_path / "ten.ckpt")
    resumed = Supervised(backbone="resnet8", num_classes=12)
    with pytest.raises(ConfigError) as error:
        trainer(tmp_path, max_steps=2).fit(
            resumed, datamodule=DigitsDataModule(), ckpt_path=tmp_path / "ten.ckpt"
        )
    assert str(error.value) == num_classes_message(12, 10)


@pytest.mark.parametrize(
    ("argument", "value", "valid"),
    [
        ("label_smoothing", 1.5, "a number in [0, 1)"),
        ("label_smoothing", 1.0, "a number in [0, 1)"),
        ("label_smoothing", -0.1, "a number in [0, 1)"),
        ("num_classes", 1, "an integer >= 2"),
    ],
)
def test_bad_numbers_are_one_message_naming_the_key(argument, value, valid):
    message = refused(Supervised, backbone="resnet8", **{argument: value})
    assert message == f"model.init_args.{argument}={value!r}; valid: {valid}"
