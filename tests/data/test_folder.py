"""ImageFolderDataModule on broken trees: bad files, hidden entries, empty classes, 16 bits."""

import logging
import os
import shutil
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from tests_support import ROOT

from distill.cli import main
from distill.data import ImageFolderDataModule
from distill.errors import ConfigError


def make(folder, tmp_path, **kwargs):
    kwargs = {
        "batch_size": 4,
        "num_workers": 0,
        "scan_cache_dir": str(tmp_path / "cache"),
        **kwargs,
    }
    return ImageFolderDataModule(data_dir=str(folder), image_size=32, **kwargs)


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def add_jpeg(path, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def plant_bad_files(png_folder):
    """A truncated JPEG and a truncated PNG in train, random bytes in val."""
    jpeg = truncate(add_jpeg(png_folder / "train" / "dog" / "late.jpg"))
    png = truncate(png_folder / "train" / "cat" / "2.png")
    junk = png_folder / "val" / "frog" / "junk.png"
    junk.write_bytes(np.random.default_rng(0).bytes(300))
    return [str(jpeg), str(png), str(junk)]


def test_truncated_jpeg_png_and_random_bytes_are_named_at_setup(png_folder, tmp_path):
    bad = plant_bad_files(png_folder)
    with pytest.raises(ConfigError) as error:
        make(png_folder, tmp_path).setup("fit")
    message = str(error.value)
    assert message.startswith("3 image file(s) cannot be read")
    assert all(repr(path) in message for path in bad)
    assert "truncated" in message and "cannot identify image file" in message
    assert "data.init_args.on_bad_image=skip" in message and "\n" not in message


def test_many_bad_files_are_counted_and_the_first_named(png_folder, tmp_path):
    for index in range(6):
        truncate(png_folder / "train" / "frog" / f"{index}.png")
    with pytest.raises(ConfigError, match=r"^6 image file\(s\)") as error:
        make(png_folder, tmp_path).setup("fit")
    assert "frog/0.png" in str(error.value) and str(error.value).count("frog/") == 5
    assert "and 1 more" in str(error.value)


def test_skip_leaves_bad_files_out_with_a_warning(png_folder, tmp_path, caplog):
    bad = plant_bad_files(png_folder)
    dm = make(png_folder, tmp_path, on_bad_image="skip")
    with caplog.at_level(logging.WARNING, logger="distill.data.folder"):
        dm.setup("fit")
    assert "skipping 3 image file(s)" in caplog.text and bad[0] in caplog.text
    train, val = dm.train_set.dataset, dm.val_set.dataset
    assert len(dm.train_set) == 3 * 6 - 1 and len(dm.val_set) == 3 * 3
    assert train.targets == [0] * 5 + [1] * 6 + [2] * 6
    assert not set(bad) & {path for path, _ in train.samples + val.samples}
    assert torch.equal(dm.train_targets(), torch.tensor(train.targets))
    for index in (0, 4, 5, 16):  # labels still follow the folders after the gap
        path, target = train.samples[index]
        assert train.classes[target] in path and train[index][1] == target


def test_hidden_folder_and_file_do_not_shift_labels(png_folder, tmp_path):
    checkpoints = png_folder / "train" / ".ipynb_checkpoints"
    checkpoints.mkdir()
    add_jpeg(checkpoints / "0-checkpoint.jpg")
    (png_folder / "train" / "cat" / "._0.png").write_bytes(b"AppleDouble")
    nested = png_folder / "train" / "dog" / ".cache"
    nested.mkdir()
    add_jpeg(nested / "x.jpg")
    dm = make(png_folder, tmp_path)
    dm.setup("fit")
    train = dm.train_set.dataset
    assert train.classes == dm.classes == ["cat", "dog", "frog"]
    assert train.targets == [0] * 6 + [1] * 6 + [2] * 6
    assert all("/." not in path for path, _ in train.samples)
    views, targets, _ = next(iter(dm.train_eval_dataloader()))
    assert int(targets.max()) < dm.num_classes


def test_empty_class_folder_names_split_and_path(png_folder, tmp_path):
    empty = png_folder / "val" / "dog"
    for path in empty.iterdir():
        path.unlink()
    (empty / ".DS_Store").write_bytes(b"")
    with pytest.raises(ConfigError, match="is empty") as error:
        make(png_folder, tmp_path).setup("fit")
    message = str(error.value)
    assert "data.init_args.val_dir" in message
    assert repr(str(empty)) in message and repr(str(png_folder / "val")) in message


def test_sixteen_bit_png_is_scaled_not_clipped(png_folder, tmp_path):
    values = np.arange(0, 65536, 1024, dtype=np.uint16).reshape(8, 8)
    values[0, :3] = (257, 65535, 300)
    path = png_folder / "train" / "cat" / "deep.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as on_disk:
        assert on_disk.mode.startswith("I")  # really 16-bit on disk
    dm = make(png_folder, tmp_path)
    dm.setup("fit")
    train = dm.train_set.dataset
    image, target = train[[p for p, _ in train.samples].index(str(path))]
    pixels = np.asarray(image).astype(np.int64)
    assert image.mode == "RGB" and target == 0
    assert (pixels == pixels[..., :1]).all()  # grey in three channels
    # The high byte, as Pillow reads 16-bit RGB; within 1 of v * 255 / 65535; never min(v, 255).
    assert (pixels[..., 0] == values >> 8).all()
    assert np.abs(pixels[..., 0] - values.astype(np.float64) * 255 / 65535).max() < 1
    assert pixels[0, :3, 0].tolist() == [1, 255, 1]


def test_file_broken_after_the_scan_is_named_during_training(png_folder, tmp_path):
    dm = make(png_folder, tmp_path)
    dm.setup("fit")
    broken = truncate(png_folder / "train" / "frog" / "1.png")
    with pytest.raises(ConfigError, match="cannot decode image") as error:
        for _ in dm.train_eval_dataloader():
            pass
    assert str(broken) in str(error.value)


def test_unchecked_truncated_file_is_named_during_training(png_folder, tmp_path):
    broken = truncate(png_folder / "train" / "dog" / "3.png")
    dm = make(png_folder, tmp_path, verify_images="off")
    with pytest.raises(ConfigError, match="truncated") as error:
        for _ in dm.train_dataloader():
            pass
    assert str(broken) in str(error.value)


def test_unsupported_pixel_mode_is_named(png_folder, tmp_path):
    path = png_folder / "train" / "cat" / "0.png"
    Image.fromarray(np.zeros((4, 4), dtype=np.float32)).save(path, format="TIFF")
    with pytest.raises(ConfigError, match="unsupported pixel mode 'F'") as error:
        make(png_folder, tmp_path).setup("fit")
    assert str(path) in str(error.value)


def test_decode_check_finds_what_the_header_check_cannot(png_folder, tmp_path):
    path = png_folder / "train" / "cat" / "0.png"
    data = path.read_bytes()
    # Garbage image data behind a correct CRC: the chunks verify, the pixels do not inflate.
    start = data.index(b"IDAT")
    length = int.from_bytes(data[start - 4 : start], "big")
    junk = np.random.default_rng(0).bytes(length)
    crc = zlib.crc32(b"IDAT" + junk).to_bytes(4, "big")
    path.write_bytes(data[: start + 4] + junk + crc + data[start + 8 + length :])
    make(png_folder, tmp_path, verify_images="header").setup("fit")
    with pytest.raises(ConfigError, match="verify_images=decode") as error:
        make(png_folder, tmp_path, verify_images="decode").setup("fit")
    assert str(path) in str(error.value)


def test_unknown_choice_is_named(png_folder, tmp_path):
    with pytest.raises(ConfigError, match="on_bad_image='ignore'; valid: error, skip"):
        make(png_folder, tmp_path, on_bad_image="ignore")


def test_cli_names_bad_file_in_one_line_and_exits_2(png_folder, tmp_path, capsys):
    broken = truncate(png_folder / "val" / "cat" / "0.png")
    args = [
        "fit", "--config", str(ROOT / "configs" / "quickstart.yaml"),
        "--trainer.default_root_dir", str(tmp_path),
        "--data", "distill.data.ImageFolderDataModule",
        "--data.init_args.data_dir", str(png_folder),
        "--data.init_args.num_workers", "0",
        "--model.init_args.num_classes", "3",
    ]  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and str(broken) in err and "Traceback" not in err


def test_folder_link_loop_is_named_before_anything_is_listed_twice(png_folder, tmp_path):
    loop = png_folder / "train" / "cat" / "loop"
    os.symlink(".", loop)  # today's os.walk lists each image 41 times: loop/loop/.../0.png
    with pytest.raises(ConfigError) as error:
        make(png_folder, tmp_path).setup("fit")
    message = str(error.value)
    assert message.startswith(
        "1 link(s) in the image folders (data.init_args.train_dir, val_dir) cannot be followed: "
    )
    assert f"{str(loop)!r} -> '.', the folder {str(loop.parent)!r} that holds the link" in message
    assert "Remove or repair" in message and "data.init_args.on_bad_image=skip" in message


def test_skipped_folder_link_loop_leaves_each_image_once(png_folder, tmp_path, caplog):
    os.symlink(".", png_folder / "train" / "cat" / "loop")
    dm = make(png_folder, tmp_path, on_bad_image="skip")
    with caplog.at_level(logging.WARNING, logger="distill.data.folder"):
        dm.setup("fit")
    assert len(dm.train_set) == 18 and dm.train_set.dataset.targets.count(0) == 6
    assert "leaving out 1 link(s)" in caplog.text and "loop" in caplog.text


def test_dangling_and_looping_file_links_are_named_in_one_message(png_folder, tmp_path):
    dog = png_folder / "train" / "dog"
    os.symlink("nowhere.png", dog / "gone.png")
    os.symlink("b.png", dog / "a.png")
    os.symlink("a.png", dog / "b.png")
    frog = png_folder / "val" / "frog"
    os.symlink("missing.jpg", frog / "x.jpg")
    for verify_images in ("header", "off"):  # listed, not found by the image check
        with pytest.raises(ConfigError) as error:
            make(png_folder, tmp_path, verify_images=verify_images).setup("fit")
        message = str(error.value)
        assert message.startswith("4 link(s) in the image folders")
        assert f"{str(dog / 'gone.png')!r} -> 'nowhere.png', which does not exist" in message
        assert f"{str(dog / 'a.png')!r} -> 'b.png', a loop of links" in message
        assert f"{str(frog / 'x.jpg')!r} -> 'missing.jpg'" in message


def test_class_folders_linked_from_elsewhere_keep_working(png_folder, tmp_path):
    for split in ("train", "val"):
        moved = tmp_path / "disk2" / split / "dog"
        (png_folder / split / "dog").rename(moved.parent.mkdir(parents=True) or moved)
        os.symlink(moved, png_folder / split / "dog")
    dm = make(png_folder, tmp_path)
    dm.setup("fit")
    train = dm.train_set.dataset
    assert train.classes == ["cat", "dog", "frog"] and train.targets.count(1) == 6
    assert len(dm.val_set) == 9


def test_dangling_class_folder_link_is_named_at_construction(png_folder, tmp_path):
    os.symlink(tmp_path / "unmounted" / "bird", png_folder / "train" / "bird")
    with pytest.raises(ConfigError, match="^1 link") as error:
        make(png_folder, tmp_path)
    assert "bird" in str(error.value) and "which does not exist" in str(error.value)


def test_two_paths_to_one_file_count_once_with_a_warning(png_folder, tmp_path, caplog):
    cat = png_folder / "train" / "cat"
    os.symlink("0.png", cat / "x.png")
    os.symlink(cat / "1.png", cat / "y.png")
    dm = make(png_folder, tmp_path)
    with caplog.at_level(logging.WARNING, logger="distill.data.folder"):
        dm.setup("fit")
    assert len(dm.train_set) == 18 and dm.train_set.dataset.targets.count(0) == 6
    assert "2 image file(s)" in caplog.text and "count once" in caplog.text
    assert f"{str(cat / 'x.png')!r} is {str(cat / '0.png')!r}" in caplog.text


def test_one_file_in_two_classes_is_refused(png_folder, tmp_path):
    stray = png_folder / "train" / "dog" / "stray.png"
    os.symlink(png_folder / "train" / "cat" / "3.png", stray)
    with pytest.raises(ConfigError) as error:
        make(png_folder, tmp_path).setup("fit")
    message = str(error.value)
    assert message.startswith("data.init_args.train_dir: 1 image file(s)")
    assert f"{str(stray)!r} in 'dog' is {str(png_folder / 'train' / 'cat' / '3.png')!r}" in message
    assert "in 'cat'" in message and "two labels" in message


def test_file_in_both_splits_is_warned_about(png_folder, tmp_path, caplog):
    leaked = png_folder / "val" / "cat" / "leaked.png"
    os.symlink(png_folder / "train" / "cat" / "4.png", leaked)
    dm = make(png_folder, tmp_path)
    with caplog.at_level(logging.WARNING, logger="distill.data.folder"):
        dm.setup("fit")
    assert len(dm.val_set) == 10  # still validated on: a warning, not a refusal
    assert "1 image file(s) of data.init_args.val_dir are also in data.init_args.train_dir" in (
        caplog.text
    )
    assert repr(str(leaked)) in caplog.text


@pytest.mark.parametrize("kept", [["cat"], []])
def test_fewer_than_two_classes_are_refused_at_construction(png_folder, tmp_path, kept):
    for split in ("train", "val"):
        for name in {"cat", "dog", "frog"} - set(kept):
            shutil.rmtree(png_folder / split / name)
    with pytest.raises(ConfigError) as error:
        make(png_folder, tmp_path)
    message = str(error.value)
    assert message.startswith(f"data.init_args.train_dir: {str(png_folder / 'train')!r} has")
    assert f"{len(kept)} class folder(s)" in message and "at least 2 class folders" in message


def test_class_with_no_readable_image_left_is_refused(png_folder, tmp_path):
    for path in (png_folder / "val" / "dog").iterdir():
        truncate(path)
    with pytest.raises(ConfigError, match="no image of class folder.s. dog of") as error:
        make(png_folder, tmp_path, on_bad_image="skip").setup("fit")
    assert "data.init_args.val_dir" in str(error.value)


def test_cli_names_a_dangling_link_in_one_line_and_exits_2(png_folder, tmp_path, capsys):
    gone = png_folder / "val" / "cat" / "gone.png"
    os.symlink("nowhere.png", gone)
    args = [
        "fit", "--config", str(ROOT / "configs" / "quickstart.yaml"),
        "--trainer.default_root_dir", str(tmp_path),
        "--data", "distill.data.ImageFolderDataModule",
        "--data.init_args.data_dir", str(png_folder),
        "--data.init_args.num_workers", "0",
        "--model.init_args.num_classes", "3",
    ]  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert f"{str(gone)!r} -> 'nowhere.png', which does not exist" in err
