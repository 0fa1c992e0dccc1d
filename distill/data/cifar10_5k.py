"""cifar10-5k, the CIFAR-10 subset of README's measurements: build it, or verify a copy.

    python -m distill.data.cifar10_5k --archive cifar-10-python.tar.gz --out data/cifar10-5k
    python -m distill.data.cifar10_5k --verify ../shared/data/cifar10-5k

From CIFAR-10's official python archive (``cifar-10-python.tar.gz``, 170 MB,
https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz), in ImageFolder layout:
``train/<class>/train_NNNNN.png`` holds the first 1,017 images of each of the training
batches 1-4, numbered ``NNNNN = 1017·(batch - 1) + position in the batch`` (4,068 images);
``val/<class>/val_NNNNN.png`` the first 1,017 of batch 5. Nothing comes from the test batch.
The archive's batches are pickles (read as torchvision reads them): use the official file.

``cifar10_5k.sha256`` beside this file lists every image's path and the SHA-256 of its
decoded pixels (32×32×3 uint8 RGB, row-major): PNG encoders differ between Pillow versions,
so the file bytes are not hashed. The build checks its output against that list.
"""

from __future__ import annotations

import argparse
import hashlib
import pickle
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from distill.errors import ConfigError

MANIFEST = Path(__file__).with_name("cifar10_5k.sha256")
CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
PER_BATCH = 1017
SPLITS = {"train": (1, 2, 3, 4), "val": (5,)}


def subset_images(archive: str) -> Iterator[tuple[str, np.ndarray]]:
    """``(relative path, [32, 32, 3] uint8 image)`` of every image of the subset, in order.

    Raises:
        ConfigError: The file is not CIFAR-10's python archive.
    """
    # Read from the tar directly: torchvision's CIFAR10 would need it extracted first.
    try:
        tar = tarfile.open(archive)
    except (OSError, tarfile.TarError) as error:
        raise ConfigError(f"cannot open {archive!r} as a tar archive: {error}") from error
    with tar:
        for split, batches in SPLITS.items():
            for batch in batches:
                member = f"cifar-10-batches-py/data_batch_{batch}"
                try:
                    entry = pickle.load(tar.extractfile(member), encoding="latin1")
                except KeyError as error:
                    raise ConfigError(
                        f"{archive!r} is not CIFAR-10's python archive: it has no {member}"
                    ) from error
                pixels = entry["data"][:PER_BATCH].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
                labels = entry["labels"][:PER_BATCH]
                for position, (image, label) in enumerate(zip(pixels, labels, strict=True)):
                    number = PER_BATCH * (batch - batches[0]) + position
                    yield f"{split}/{CLASSES[label]}/{split}_{number:05d}.png", image


def build(archive: str, out: str) -> int:
    """Writes the subset's PNGs under ``out``; returns how many."""
    count = 0
    for relative, image in subset_images(archive):
        path = Path(out, relative)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        count += 1
    return count


def pixel_sha256(path: Path) -> str:
    """SHA-256 of an image's decoded RGB pixels (row-major ``[H, W, 3]`` uint8 bytes)."""
    with Image.open(path) as image:
        return hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()


def hash_folder(root: str) -> dict[str, str]:
    """``{relative path: pixel hash}`` of every PNG under ``root`` (hidden entries skipped)."""
    relative = sorted(p.relative_to(root) for p in Path(root).rglob("*.png"))
    visible = [p for p in relative if not any(part.startswith(".") for part in p.parts)]
    return {p.as_posix(): pixel_sha256(Path(root, p)) for p in visible}


def write_manifest(root: str, manifest: Path = MANIFEST) -> int:
    """Writes the manifest of the PNGs under ``root``; returns how many it lists."""
    hashes = hash_folder(root)
    lines = [
        "# cifar10-5k: SHA-256 of each image's decoded RGB pixels (not of the file), and its path.",
        "# Check a folder with: python -m distill.data.cifar10_5k --verify DIR",
        *(f"{digest}  {relative}" for relative, digest in hashes.items()),
    ]
    manifest.write_text("\n".join(lines) + "\n")
    return len(hashes)


def read_manifest(manifest: Path = MANIFEST) -> dict[str, str]:
    """``{relative path: pixel hash}`` listed in a manifest."""
    entries = {}
    for line in manifest.read_text().splitlines():
        if line and not line.startswith("#"):
            digest, relative = line.split(maxsplit=1)
            entries[relative] = digest
    return entries


def verify(root: str, manifest: Path = MANIFEST) -> list[str]:
    """What differs between the PNGs under ``root`` and the manifest, one line per file.

    Empty when every listed image is there with the listed pixels and no other image is.
    """
    expected, found = read_manifest(manifest), hash_folder(root)
    problems = [f"missing: {p}" for p in expected if p not in found]
    problems += [f"pixels differ: {p}" for p in expected if p in found and found[p] != expected[p]]
    problems += [f"not in the manifest: {p}" for p in found if p not in expected]
    return problems


def main(args: list[str] | None = None) -> int:
    """Command line: build the subset (and verify it), or verify a folder; exit code 0 if OK."""
    parser = argparse.ArgumentParser(
        prog="python -m distill.data.cifar10_5k", description=__doc__.split("\n")[0]
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--archive", help="CIFAR-10's cifar-10-python.tar.gz: build from it")
    action.add_argument("--verify", metavar="DIR", help="check DIR against the manifest")
    action.add_argument(
        "--write-manifest", metavar="DIR", help="write DIR's hashes to --manifest (maintainers)"
    )
    parser.add_argument("--out", default="data/cifar10-5k", help="where --archive builds")
    parser.add_argument(
        "--manifest", type=Path, default=MANIFEST, help="pixel hash list (default: committed)"
    )
    options = parser.parse_args(args)
    if options.write_manifest:
        count = write_manifest(options.write_manifest, options.manifest)
        print(f"wrote {options.manifest}: {count} images of {options.write_manifest}")
        return 0
    root = options.verify or options.out
    if options.verify and not Path(root).is_dir():
        parser.error(f"--verify {root!r}: not a directory")
    if options.archive:
        try:
            count = build(options.archive, options.out)
        except ConfigError as error:
            parser.error(str(error))
        print(f"wrote {count} images to {options.out}")
    problems = verify(root, options.manifest)
    for line in problems[:20]:
        print(line)
    if problems:
        more = " (first 20 shown)" if len(problems) > 20 else ""
        print(f"FAILED: {len(problems)} difference(s) from {options.manifest}{more}")
        return 1
    print(f"OK: {root} matches {options.manifest} ({len(read_manifest(options.manifest))} images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
