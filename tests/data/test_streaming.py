"""StreamingDataModule and distill stream-convert on tiny PNG folders (needs the 'stream' extra)."""

import json
import os
import re
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import write_png_folder
from lightning.pytorch.utilities.exceptions import SIGTERMException
from tests_support import StopFlagAfter, launch_ddp, quiet_trainer

from distill.callbacks import MethodCheckpoint
from distill.cli import main
from distill.commands import stream_convert
from distill.data import (
    DeviceViews,
    ImageFolderDataModule,
    MultiCropViews,
    StreamingDataModule,
    SupervisedViews,
    TwoViews,
)
from distill.data.folder import ImageFolderSplit
from distill.data.sampling import sample_seed
from distill.errors import ConfigError
from distill.methods import Supervised

litdata = pytest.importorskip("litdata")

WORKER = Path(__file__).with_name("ddp_streaming_worker.py")
STATS = {"mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3)}


def convert(folder, shards, **options) -> Path:
    """Both splits of the ImageFolder ``folder`` as shards under ``shards``."""
    for split in ("train", "val"):
        stream_convert(str(folder), split, str(shards / split), **options)
    return shards


@pytest.fixture
def shards(png_folder, tmp_path):
    return convert(png_folder, tmp_path / "shards")


def streaming(shards, **kwargs) -> StreamingDataModule:
    return StreamingDataModule(data_dir=str(shards), num_workers=0, **STATS, **kwargs)


def folder_module(folder, **kwargs) -> ImageFolderDataModule:
    return ImageFolderDataModule(data_dir=str(folder), num_workers=0, **STATS, **kwargs)


def test_shards_hold_every_image_once_with_its_bytes_class_and_row(png_folder, shards):
    split = folder_module(png_folder).train_dataset()
    stream = litdata.StreamingDataset(str(shards / "train"))
    samples = [stream[position] for position in range(len(stream))]
    rows = [sample["index"] for sample in samples]
    assert sorted(rows) == list(range(len(split.samples))) == list(range(18))
    for sample in samples:  # the file's bytes as on disk, and its ImageFolder class
        path, target = split.samples[sample["index"]]
        assert sample["image"] == Path(path).read_bytes() and sample["target"] == target
    info = json.loads((shards / "train" / "distill.json").read_text())
    assert info["rows"] == rows and info["targets"] == split.targets
    assert info["classes"] == ["cat", "dog", "frog"] and info["num_samples"] == 18
    # Written in a random order: litdata shuffles files and blocks within them, so a
    # class-sorted layout would give batches of one class.
    assert rows != sorted(rows)


def test_conversion_with_two_writers_keeps_the_order(png_folder, tmp_path):
    one = stream_convert(str(png_folder), "train", str(tmp_path / "one"), chunk_bytes="2kB")
    two = stream_convert(
        str(png_folder), "train", str(tmp_path / "two"), chunk_bytes="2kB", num_workers=2
    )
    streams = [litdata.StreamingDataset(str(path)) for path in (one, two)]
    orders = [[stream[i]["index"] for i in range(len(stream))] for stream in streams]
    assert orders[0] == orders[1] == json.loads((two / "distill.json").read_text())["rows"]
    assert len(list(two.glob("chunk-*.bin"))) > 2  # several files, from both writers


def test_a_non_empty_output_is_refused_and_left_as_it_was(png_folder, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "notes.txt").write_text("mine")
    for overwrite in (False, True):  # a folder with other files is never replaced
        with pytest.raises(ConfigError, match="not streaming shards .notes.txt.") as error:
            stream_convert(str(png_folder), "train", str(output), overwrite=overwrite)
        assert str(output) in str(error.value)
    assert os.listdir(output) == ["notes.txt"] and (output / "notes.txt").read_text() == "mine"
    assert set(os.listdir(tmp_path)) - {"xdg-cache"} == {"images", "out"}


def test_earlier_shards_are_replaced_only_with_overwrite(png_folder, tmp_path):
    output = stream_convert(str(png_folder), "train", str(tmp_path / "out"), seed=1)
    before = {path.name: path.read_bytes() for path in output.iterdir()}
    with pytest.raises(ConfigError, match="already holds streaming shards.*--overwrite true"):
        stream_convert(str(png_folder), "train", str(output), seed=2)
    assert {path.name: path.read_bytes() for path in output.iterdir()} == before
    stream_convert(str(png_folder), "train", str(output), seed=2, overwrite=True)
    rows = json.loads((output / "distill.json").read_text())["rows"]
    assert rows != json.loads(before["distill.json"])["rows"]  # the new conversion's
    assert set(os.listdir(tmp_path)) - {"xdg-cache"} == {"images", "out"}  # nothing partial


def test_missing_split_is_one_message_from_the_command_line(png_folder, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["stream-convert", "--root", str(png_folder), "--split", "test",
              "--output", str(tmp_path / "out")])  # fmt: skip
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("distill: error: --root") and "'test'" not in error
    assert str(png_folder / "test") in error and "does not exist" in error
    assert not (tmp_path / "out").exists()


def test_unreadable_image_is_named_and_nothing_is_written(png_folder, tmp_path):
    broken = png_folder / "train" / "dog" / "0.png"
    broken.write_bytes(broken.read_bytes()[:60])
    with pytest.raises(ConfigError, match="0.png"):
        stream_convert(str(png_folder), "train", str(tmp_path / "out"))
    assert set(os.listdir(tmp_path)) - {"xdg-cache"} == {"images"}  # no shards, partial or not


def test_missing_shards_name_the_key_and_the_command(tmp_path, shards):
    with pytest.raises(ConfigError, match="data.init_args.val_dir") as error:
        streaming(shards, val_dir="absent")
    assert "absent" in str(error.value) and "distill stream-convert" in str(error.value)
    (tmp_path / "plain").mkdir()
    with pytest.raises(ConfigError, match="holds no streaming shards"):
        streaming(shards, train_dir=str(tmp_path / "plain"))


def test_shards_read_through_a_remote_url_scheme(shards):
    # litdata's local: scheme takes the path of remote storage (s3://, gs://): the chunks
    # and distill.json are downloaded to the cache, not read in place.
    remote = streaming(shards, train_dir=f"local:{shards / 'train'}", batch_size=4)
    local = streaming(shards, batch_size=4)
    assert remote.num_classes == 3 and torch.equal(remote.train_targets(), local.train_targets())
    (a, *_), (b, *_) = (next(iter(dm.train_dataloader())) for dm in (remote, local))
    assert torch.equal(a, b)


def host_views(folder, recipe, seed, epoch, indices):
    """The ImageFolder DataModule's batch of ``indices`` for (seed, epoch)."""
    dm = folder_module(folder, views=recipe)
    dm.setup("fit")
    items = [(sample_seed(seed, epoch, int(i)), int(i)) for i in indices]
    batch = dm.train_set.__getitems__(items)
    return batch.batch if hasattr(batch, "batch") else torch.utils.data.default_collate(batch)


RECIPES = {
    "supervised": lambda: SupervisedViews(crop_size=32),
    "two_view": lambda: TwoViews(crop_size=24),
    "multi_crop": lambda: MultiCropViews(global_size=24, local_size=12, num_local=2),
    "device_two_view": lambda: DeviceViews(TwoViews(crop_size=24)),
}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_views_are_the_image_folders_for_the_same_seed_epoch_and_index(png_folder, shards, recipe):
    dm = streaming(shards, batch_size=4, views=RECIPES[recipe]())
    loader = dm.train_dataloader()  # no trainer: litdata's own epochs, 1 and 2
    for epoch in (0, 1):
        for views, targets, indices in loader:
            expected, expected_targets, _ = host_views(
                png_folder, RECIPES[recipe](), dm.seed, epoch, indices
            )
            if recipe.startswith("device"):  # canvases and codes, then the device's views
                views, expected = (
                    dm.on_after_batch_transfer([batch, targets, indices], 0)[0]
                    for batch in (views, expected)
                )
            views = views if isinstance(views, list) else [views]
            expected = expected if isinstance(expected, list) else [expected]
            assert len(views) == len(expected) and torch.equal(targets, expected_targets)
            assert all(torch.equal(a, b) for a, b in zip(views, expected, strict=True))


def test_evaluation_loaders_give_the_image_folders_samples(png_folder, shards):
    dm, reference = streaming(shards, eval_batch_size=5), folder_module(png_folder)
    assert dm.num_classes == reference.num_classes == 3
    assert torch.equal(dm.train_targets(), reference.train_targets())
    dm.setup("fit")
    assert len(dm.train_set) == 18  # CRD's bank rows
    for split in ("train", "val"):
        batches = [list(dm.eval_dataloader(split)), list(reference.eval_dataloader(split))]
        (images, targets, indices), (ref_images, ref_targets, ref_indices) = (
            [torch.cat(part) for part in zip(*loader, strict=True)] for loader in batches
        )
        order = torch.argsort(indices)  # read in shard order, each sample with its row
        assert torch.equal(indices[order], ref_indices)
        assert torch.equal(targets[order], ref_targets)
        assert torch.equal(images[order], ref_images)


class RecordBatches(L.Callback):
    """The indices and views of every training batch of the fit, in order."""

    def __init__(self) -> None:
        self.indices: list[int] = []
        self.views: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.indices += batch[2].tolist()
        self.views += list(batch[0].clone())


def fit(root, data, callbacks, ckpt_path=None, max_epochs=2) -> L.Trainer:
    L.seed_everything(0)
    checkpoint = MethodCheckpoint(dirpath=str(root), monitor=None)
    trainer = quiet_trainer(
        root, max_epochs=max_epochs, limit_val_batches=0, enable_checkpointing=True,
        callbacks=[checkpoint, *callbacks],
    )  # fmt: skip
    model = Supervised(backbone="resnet8", num_classes=3)
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    return trainer


def test_mid_epoch_resume_trains_exactly_the_rest_with_the_same_views(tmp_path, shards):
    make = lambda: streaming(shards, batch_size=4)  # noqa: E731  (18 samples: 4 batches)
    whole, first, rest = RecordBatches(), RecordBatches(), RecordBatches()
    fit(tmp_path / "whole", make(), [whole])
    with pytest.raises(SIGTERMException):
        fit(tmp_path / "first", make(), [first, StopFlagAfter(3)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(tmp_path / "rest", make(), [rest], str(tmp_path / "first" / "last.ckpt"))
    messages = [str(w.message) for w in caught]
    assert len(whole.indices) == 2 * 16  # two epochs of 4 full batches
    assert first.indices == whole.indices[:12]
    assert first.indices + rest.indices == whole.indices  # the epoch's rest, then epoch 1
    assert whole.indices[:16] != whole.indices[16:]  # epochs are shuffled apart
    assert all(torch.equal(a, b) for a, b in zip(rest.views, whole.views[12:], strict=True))
    assert not [m for m in messages if "not resumable" in m or "IterableDataset" in m]


def test_mid_epoch_resume_in_another_batch_size_is_refused(tmp_path, shards):
    # The folder DataModules re-express the position (ViewDataModule.continue_epoch);
    # litdata's per-worker loader state cannot be, so the resume stops with the reason.
    with pytest.raises(SIGTERMException):
        fit(tmp_path / "first", streaming(shards, batch_size=4), [StopFlagAfter(3)])
    last = tmp_path / "first" / "last.ckpt"
    before = last.read_bytes()
    message = (
        f"--ckpt_path {last} was written in the middle of epoch 0 with "
        "data.init_args.batch_size=4 on 1 process(es); this fit has "
        "data.init_args.batch_size=2 on 1, and StreamingDataModule continues"
    )
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
        fit(tmp_path / "rest", streaming(shards, batch_size=2), [], str(last))
    assert last.read_bytes() == before


def test_an_epoch_cut_short_is_not_continued_by_the_next(tmp_path, shards):
    # limit_train_batches ends epochs early; litdata's own state would resume the cut epoch.
    make = lambda: streaming(shards, batch_size=4)  # noqa: E731
    whole, resumed = RecordBatches(), RecordBatches()
    fit(tmp_path / "whole", make(), [whole], max_epochs=3)
    L.seed_everything(0)
    trainer = quiet_trainer(tmp_path / "cut", max_epochs=1, limit_train_batches=2,
                            limit_val_batches=0)  # fmt: skip
    trainer.fit(Supervised(backbone="resnet8", num_classes=3), datamodule=make())
    trainer.save_checkpoint(tmp_path / "cut.ckpt")
    fit(tmp_path / "resumed", make(), [resumed], str(tmp_path / "cut.ckpt"), max_epochs=3)
    assert resumed.indices == whole.indices[16:]  # epochs 1 and 2, whole, as in one run


def test_ranks_take_equal_full_batches_and_resume_exactly(tmp_path):
    # 22 samples, batch 4 on 2 ranks: 5 full batches, not divisible by world x batch.
    folder = write_png_folder(tmp_path / "images", per_class=11, classes=("a", "b"), size=16)
    shards = convert(folder, tmp_path / "shards")
    launch_ddp(WORKER, [shards, tmp_path], world=2)
    runs = {
        (mode, rank): json.loads((tmp_path / f"{mode}_rank{rank}.json").read_text())
        for mode in ("whole", "first", "rest")
        for rank in (0, 1)
    }
    for rank in (0, 1):
        whole = runs["whole", rank]
        assert whole["batch_sizes"] == [4, 4, 4, 4]  # two epochs of 2 full batches
        first, rest = runs["first", rank]["indices"], runs["rest", rank]["indices"]
        assert first == whole["indices"][:4]  # interrupted after one batch
        assert first + rest == whole["indices"]
    for epoch in (0, 1):  # the ranks split each epoch: no sample twice
        seen = [i for r in (0, 1) for i in runs["whole", r]["indices"][8 * epoch : 8 * epoch + 8]]
        assert len(set(seen)) == 16


def test_same_views_whatever_the_shard_order(png_folder, tmp_path):
    # Two conversions with other write orders: the same samples get the same views per
    # (seed, epoch, index), wherever they sit in the shards.
    a = streaming(convert(png_folder, tmp_path / "a", seed=1), batch_size=18, drop_last=False)
    b = streaming(convert(png_folder, tmp_path / "b", seed=2), batch_size=18, drop_last=False)
    (views_a, _, rows_a), (views_b, _, rows_b) = (
        next(iter(dm.train_dataloader())) for dm in (a, b)
    )
    assert not torch.equal(rows_a, rows_b)
    order_a, order_b = torch.argsort(rows_a), torch.argsort(rows_b)
    assert torch.equal(views_a[order_a], views_b[order_b])


def test_split_listing_is_the_image_folders(png_folder):
    from distill.data.shards import list_split

    listed = list_split(str(png_folder / "train"), "--split train")
    assert isinstance(listed, ImageFolderSplit)
    assert listed.samples == folder_module(png_folder).train_dataset().samples
