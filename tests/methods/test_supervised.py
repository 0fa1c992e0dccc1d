import pytest
import torch
from tests_support import quiet_trainer as trainer

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


def test_num_classes_mismatch_names_key_and_value(tmp_path):
    model = Supervised(backbone="resnet8", num_classes=100)
    with pytest.raises(ConfigError, match="num_classes=100.*10 classes") as error:
        trainer(tmp_path, max_steps=1).fit(model, datamodule=DigitsDataModule())
    # Setting the data's count is the fix for a fresh fit, not for another checkpoint's head.
    assert "set model.init_args.num_classes=10" in str(error.value)
    assert "`distill eval` probes its backbone" in str(error.value)
