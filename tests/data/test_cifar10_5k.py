import hashlib
import io
import pickle
import re
import tarfile

import numpy as np
import pytest
from PIL import Image

from distill.data.cifar10_5k import CLASSES, MANIFEST, main, read_manifest


def write_fake_archive(path, per_batch=1019, seed=0):
    """CIFAR-10's python archive with random pixels: ``{batch: (data, labels)}`` it holds."""
    rng = np.random.default_rng(seed)
    batches = {}
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        names = [f"data_batch_{b}" for b in range(1, 6)] + ["test_batch", "batches.meta"]
        for b, name in enumerate(names, start=1):
            if name == "batches.meta":
                entry = {"label_names": list(CLASSES), "num_cases_per_batch": per_batch}
            else:
                data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
                entry = {"data": data, "labels": rng.integers(0, 10, per_batch).tolist()}
                batches[b] = (data, entry["labels"])
            payload = pickle.dumps(entry)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return batches


def expected_subset(batches):
    """``{path: pixel sha256}`` by the rule: the first 1,017 of batches 1-4 (train), 5 (val)."""
    expected = {}
    for b in range(1, 6):
        data, labels = batches[b]
        split, first = ("train", 1017 * (b - 1)) if b <= 4 else ("val", 0)
        for i in range(1017):
            pixels = data[i].reshape(3, 32, 32).transpose(1, 2, 0)  # R, G, B planes -> HWC
            path = f"{split}/{CLASSES[labels[i]]}/{split}_{first + i:05d}.png"
            expected[path] = hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()
    return expected


def test_build_writes_the_subset_with_its_names_labels_and_pixels(tmp_path, capsys):
    batches = write_fake_archive(tmp_path / "cifar-10-python.tar.gz")
    expected = expected_subset(batches)
    manifest = tmp_path / "expected.sha256"
    manifest.write_text("".join(f"{digest}  {path}\n" for path, digest in expected.items()))
    out = tmp_path / "cifar10-5k"
    archive = str(tmp_path / "cifar-10-python.tar.gz")
    code = main(["--archive", archive, "--out", str(out), "--manifest", str(manifest)])
    assert code == 0, capsys.readouterr().out
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == sorted(expected) and len(written) == 5085
    data, labels = batches[2]  # train_01017 is batch 2's first image
    image = np.asarray(Image.open(out / f"train/{CLASSES[labels[0]]}/train_01017.png"))
    assert image.dtype == np.uint8 and image.shape == (32, 32, 3)
    assert np.array_equal(image, data[0].reshape(3, 32, 32).transpose(1, 2, 0))


@pytest.fixture
def tiny_folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "tiny"
    for relative in ("train/cat/train_00000.png", "train/dog/train_00001.png", "val/cat/val_0.png"):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / relative)
    manifest = tmp_path / "tiny.sha256"
    assert main(["--write-manifest", str(root), "--manifest", str(manifest)]) == 0
    return root, manifest


def test_verify_passes_for_the_same_pixels_in_another_png_encoding(tiny_folder, capsys):
    root, manifest = tiny_folder
    path = root / "train/cat/train_00000.png"
    Image.open(path).save(path, compress_level=0)  # other file bytes, same pixels
    assert main(["--verify", str(root), "--manifest", str(manifest)]) == 0
    assert "OK" in capsys.readouterr().out


def test_verify_reports_a_modified_pixel_by_path(tiny_folder, capsys):
    root, manifest = tiny_folder
    path = root / "train/dog/train_00001.png"
    pixels = np.asarray(Image.open(path)).copy()
    pixels[5, 7, 1] ^= 1
    Image.fromarray(pixels).save(path)
    assert main(["--verify", str(root), "--manifest", str(manifest)]) == 1
    out = capsys.readouterr().out
    assert "pixels differ: train/dog/train_00001.png" in out and "train_00000" not in out


def test_verify_reports_missing_and_unlisted_images(tiny_folder, capsys):
    root, manifest = tiny_folder
    (root / "val/cat/val_0.png").rename(root / "val/cat/val_1.png")
    assert main(["--verify", str(root), "--manifest", str(manifest)]) == 1
    out = capsys.readouterr().out
    assert "missing: val/cat/val_0.png" in out and "not in the manifest: val/cat/val_1.png" in out


def test_committed_manifest_names_every_image_of_the_rule():
    paths = read_manifest(MANIFEST)
    names = {split: [] for split in ("train", "val")}
    for path in paths:
        split, label, name = re.fullmatch(r"(train|val)/(\w+)/(\1_\d{5}\.png)", path).groups()
        assert label in CLASSES
        names[split].append(name)
    assert sorted(names["train"]) == [f"train_{i:05d}.png" for i in range(4068)]
    assert sorted(names["val"]) == [f"val_{i:05d}.png" for i in range(1017)]


def test_a_file_that_is_not_the_archive_is_named(tmp_path, capsys):
    archive = tmp_path / "other.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.addfile(tarfile.TarInfo("readme.txt"), io.BytesIO(b""))
    with pytest.raises(SystemExit):
        main(["--archive", str(archive), "--out", str(tmp_path / "out")])
    assert "is not CIFAR-10's python archive: it has no cifar-10-batches-py/data_batch_1" in (
        capsys.readouterr().err
    )
