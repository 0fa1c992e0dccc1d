"""Batches of every DataModule under every view recipe, on generated data."""

import contextlib
import warnings

import lightning as L
import pytest
import torch
from tests_support import ColourDataModule
from torch.utils.data import DistributedSampler

from distill.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    DigitsDataModule,
    ImageFolderDataModule,
    MultiCropViews,
    STL10DataModule,
    SupervisedViews,
    TwoViews,
)
from distill.errors import ConfigError

RECIPES = {
    "supervised": lambda size: SupervisedViews(crop_size=size),
    "two_view": lambda size: TwoViews(crop_size=size, blur_prob=0.0),
    "multi_crop": lambda size: MultiCropViews(
        num_global=2, num_local=2, global_size=size, local_size=size // 2
    ),
}


def make(name, views, paths):
    common = dict(batch_size=4, num_workers=0, views=views, eval_batch_size=5)
    if name == "digits":
        return DigitsDataModule(**common)
    if name == "cifar10":
        return CIFAR10DataModule(data_dir=str(paths["cifar10"]), **common)
    if name == "cifar100":
        return CIFAR100DataModule(data_dir=str(paths["cifar100"]), **common)
    if name == "stl10":
        return STL10DataModule(data_dir=str(paths["stl10"]), image_size=32, **common)
    return ImageFolderDataModule(data_dir=str(paths["folder"]), image_size=32, **common)


@pytest.fixture
def paths(png_folder, fake_cifar10, fake_cifar100, fake_stl10):
    return {
        "folder": png_folder,
        "cifar10": fake_cifar10,
        "cifar100": fake_cifar100,
        "stl10": fake_stl10,
    }


@pytest.mark.parametrize("recipe", sorted(RECIPES))
@pytest.mark.parametrize("name", ["digits", "cifar10", "cifar100", "stl10", "folder"])
def test_training_batch_layout(name, recipe, paths):
    torch.manual_seed(0)
    dm = make(name, RECIPES[recipe](32), paths)
    views, targets, indices = next(iter(dm.train_dataloader()))
    if recipe == "supervised":
        assert isinstance(views, torch.Tensor) and views.shape == (4, 3, 32, 32)
    else:
        assert isinstance(views, list) and len(views) == dm.views.num_views
        assert views[0].shape == (4, 3, 32, 32)
        if recipe == "multi_crop":
            assert views[-1].shape == (4, 3, 16, 16)
    first = views if isinstance(views, torch.Tensor) else views[0]
    assert first.dtype == torch.float32
    assert targets.dtype == torch.int64 and indices.dtype == torch.int64
    assert len(set(indices.tolist())) == 4
    assert int(indices.max()) < len(dm.train_set)
    # The index addresses the sample: its raw label matches the batch's label.
    for index, target in zip(indices.tolist(), targets.tolist(), strict=True):
        assert dm.train_set.dataset[index][1] in (target, None) or target == -1
    if name == "stl10":  # the default training split is unlabelled
        assert (targets == -1).all()
    else:
        assert ((targets >= 0) & (targets < dm.num_classes)).all()


@pytest.mark.parametrize("name", ["digits", "cifar10", "cifar100", "stl10", "folder"])
def test_eval_loaders_are_unaugmented_and_labelled(name, paths):
    dm = make(name, RECIPES["two_view"](32), paths)
    images, targets, indices = next(iter(dm.val_dataloader()))
    assert images.shape[1:] == (3, 32, 32)
    assert ((targets >= 0) & (targets < dm.num_classes)).all()
    bank = [batch for batch in dm.train_eval_dataloader()]
    bank_indices = torch.cat([b[2] for b in bank])
    assert torch.equal(bank_indices, torch.arange(len(dm.train_eval_set)))
    assert (torch.cat([b[1] for b in bank]) >= 0).all()
    again = next(iter(dm.train_eval_dataloader()))[0]
    torch.testing.assert_close(bank[0][0], again)  # deterministic: no augmentation


def test_eval_dataloader_shards_cover_the_set_once():
    dm = DigitsDataModule(eval_batch_size=64)
    shards = [torch.cat([b[2] for b in dm.eval_dataloader("val", rank, 2)]) for rank in range(2)]
    covered = torch.cat(shards).unique()
    assert torch.equal(covered, torch.arange(len(dm.val_set)))


def test_digits_split_is_fixed_stratified_and_disjoint():
    dm = DigitsDataModule()
    dm.setup()
    train, val = dm.train_set.dataset, dm.val_set.dataset
    assert len(train) + len(val) == 1797 and len(val) == 360
    assert set(val.targets.tolist()) == set(range(10))
    again = DigitsDataModule()
    again.setup()
    assert (again.val_set.dataset.images == val.images).all()
    train_rows = {row.tobytes() for row in train.images}
    assert sum(row.tobytes() in train_rows for row in val.images) < 5  # only true duplicates


def test_stl10_evaluates_on_labelled_train_and_test(fake_stl10):
    dm = STL10DataModule(data_dir=str(fake_stl10), train_split="train+unlabeled", image_size=32)
    dm.setup()
    assert len(dm.train_set) == 6 + 12 and len(dm.train_eval_set) == 6 and len(dm.val_set) == 6


def test_missing_cifar_folder_names_path_and_flag(tmp_path):
    with pytest.raises(ConfigError, match="download=true") as error:
        CIFAR10DataModule(data_dir=str(tmp_path / "nowhere"))
    assert "nowhere" in str(error.value) and "data_dir" in str(error.value)


def test_failed_download_names_folder(tmp_path, monkeypatch):
    from distill.data import cifar

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(cifar._CIFAR100Files, "download", offline)
    dm = CIFAR100DataModule(data_dir=str(tmp_path / "c100"), download=True)
    with pytest.raises(ConfigError, match="network is unreachable") as error:
        dm.prepare_data()
    assert "c100" in str(error.value) and "download=false" in str(error.value)


def test_missing_stl10_files_are_listed(tmp_path):
    with pytest.raises(ConfigError, match="unlabeled_X.bin"):
        STL10DataModule(data_dir=str(tmp_path))


def test_missing_image_folder_names_key_and_path(tmp_path):
    with pytest.raises(ConfigError, match="train_dir") as error:
        ImageFolderDataModule(data_dir=str(tmp_path), train_dir="absent")
    assert "absent" in str(error.value)


def test_image_folder_class_mismatch_is_reported(png_folder):
    (png_folder / "val" / "extra").mkdir()
    with pytest.raises(ConfigError, match="extra"):
        ImageFolderDataModule(data_dir=str(png_folder))


class UnseededLoader(ColourDataModule):
    """A training loader distill does not position: plain, in dataset order."""

    def train_dataloader(self):
        self.setup("fit")
        return self._loader(self.train_set, self.batch_size, False, True)


def interrupted_and_resumed(tmp_path, data, resumed_data, batches=2):
    """Fits Supervised on ``data``, stops it (as a SIGTERM would) after ``batches`` batches
    of its first epoch, and resumes from there on ``resumed_data``; the warnings of the resume
    and the dataset indices it trained on, in order."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException
    from tests_support import RecordIndices, StopFlagAfter, quiet_trainer

    from distill.callbacks import MethodCheckpoint
    from distill.methods import Supervised

    def fit(root, datamodule, callbacks, ckpt_path=None):
        L.seed_everything(0)
        checkpoint = MethodCheckpoint(dirpath=str(root), monitor=None)
        trainer = quiet_trainer(root, max_epochs=1, limit_val_batches=0, enable_checkpointing=True,
                                callbacks=[checkpoint, *callbacks])  # fmt: skip
        trainer.fit(Supervised(backbone="resnet8", num_classes=5), datamodule=datamodule,
                    ckpt_path=ckpt_path)  # fmt: skip

    with pytest.raises(SIGTERMException):
        fit(tmp_path / "first", data, [StopFlagAfter(batches)])
    record = RecordIndices()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(tmp_path / "second", resumed_data, [record], str(tmp_path / "first" / "last.ckpt"))
    return [str(w.message) for w in caught], record.indices


NOT_RESUMABLE = "ended before the epoch ended and your dataloader is not resumable"


def test_mid_epoch_resume_continues_at_the_next_sample_without_lightnings_warning(tmp_path):
    data = ColourDataModule(batch_size=8)
    messages, indices = interrupted_and_resumed(tmp_path, data, ColourDataModule(batch_size=8))
    data.setup("fit")
    order = list(DistributedSampler(data.train_set, 1, 0, shuffle=True, seed=data.seed))
    assert indices == order[16:56]  # after 2 batches of 8, to the last full batch
    assert not [m for m in messages if NOT_RESUMABLE in m]  # exact: nothing to warn about


def test_mid_epoch_resume_of_a_loader_distill_does_not_position_keeps_lightnings_warning(
    tmp_path,
):
    messages, _ = interrupted_and_resumed(tmp_path, UnseededLoader(), UnseededLoader())
    assert [m for m in messages if NOT_RESUMABLE in m]


@pytest.mark.parametrize("batch_size", [4, 16])
def test_mid_epoch_resume_with_another_batch_size_trains_the_rest_of_the_epoch(
    tmp_path, batch_size
):
    # The position is the 16 samples the first fit trained: the other 44 of the epoch's order
    # follow in batches of the new size, the last incomplete one dropped (drop_last).
    data = ColourDataModule(batch_size=8)
    messages, indices = interrupted_and_resumed(
        tmp_path, data, ColourDataModule(batch_size=batch_size)
    )
    data.setup("fit")
    order = list(DistributedSampler(data.train_set, 1, 0, shuffle=True, seed=data.seed))
    assert indices == order[16 : 16 + 44 // batch_size * batch_size]
    assert not [m for m in messages if NOT_RESUMABLE in m]


def test_mid_epoch_resume_with_another_batch_size_without_method_checkpoint_is_refused(
    tmp_path,
):
    # Only distill's MethodCheckpoint re-counts Lightning's batches in the new batch size;
    # a fit without it would train samples twice or skip some.
    from tests_support import quiet_trainer

    from distill.methods import Supervised

    def fit(root, batch_size, steps, ckpt_path=None):
        L.seed_everything(0)
        checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=str(root), save_top_k=-1,
                                                         every_n_train_steps=2)  # fmt: skip
        trainer = quiet_trainer(root, max_steps=steps, limit_val_batches=0,
                                enable_checkpointing=True, callbacks=[checkpoint])  # fmt: skip
        data = ColourDataModule(batch_size=batch_size)
        model = Supervised(backbone="resnet8", num_classes=5)
        trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)

    fit(tmp_path / "first", 8, steps=2)
    (written,) = (tmp_path / "first").glob("*.ckpt")
    with pytest.raises(ConfigError) as error:
        fit(tmp_path / "second", 4, steps=4, ckpt_path=str(written))
    message = str(error.value)
    assert "was written in the middle of epoch 0, after 2 batch(es) of 8 samples on 1" in message
    assert "this fit has data.init_args.batch_size=4 on 1 process(es)" in message
    assert "no distill.callbacks.MethodCheckpoint to continue the epoch" in message
    assert "data.init_args.batch_size=8" in message and "--trainer.max_epochs 1" in message


def test_an_epoch_resumed_twice_with_other_batch_sizes_trains_each_sample_once(tmp_path):
    # 16 samples in batches of 8, then 12 in batches of 4 (the second checkpoint counts its
    # batches from the first one's position), then the other 32 in batches of 2.
    from lightning.pytorch.utilities.exceptions import SIGTERMException
    from tests_support import RecordIndices, StopFlagAfter, quiet_trainer

    from distill.callbacks import MethodCheckpoint
    from distill.methods import Supervised

    def fit(name, batch_size, callbacks, ckpt_path=None):
        L.seed_everything(0)
        record = RecordIndices()
        checkpoint = MethodCheckpoint(dirpath=str(tmp_path / name), monitor=None)
        trainer = quiet_trainer(tmp_path, max_epochs=1, limit_val_batches=0,
                                enable_checkpointing=True,
                                callbacks=[checkpoint, record, *callbacks])  # fmt: skip
        with contextlib.suppress(SIGTERMException):
            trainer.fit(Supervised(backbone="resnet8", num_classes=5), ckpt_path=ckpt_path,
                        datamodule=ColourDataModule(batch_size=batch_size))  # fmt: skip
        return record.indices

    first = fit("first", 8, [StopFlagAfter(2)])
    # Each resume reports the batch size it changed (its consequences are tested elsewhere).
    with pytest.warns(UserWarning, match="data.init_args.batch_size: 8 -> 4"):
        second = fit("second", 4, [StopFlagAfter(3)], str(tmp_path / "first" / "last.ckpt"))
    with pytest.warns(UserWarning, match="data.init_args.batch_size: 4 -> 2"):
        third = fit("third", 2, [], str(tmp_path / "second" / "last.ckpt"))
    data = ColourDataModule()
    data.setup("fit")
    order = list(DistributedSampler(data.train_set, 1, 0, shuffle=True, seed=0))
    assert (first, second, third) == (order[:16], order[16:28], order[28:])
