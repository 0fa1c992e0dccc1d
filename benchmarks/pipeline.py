"""Images/s per core of the view pipelines: lightly's transforms, distill's host-side and
device-side recipes, as a table.

    OMP_NUM_THREADS=1 python benchmarks/pipeline.py            # about 80 s on a busy 2-core CPU
    OMP_NUM_THREADS=1 python benchmarks/pipeline.py --quick    # the same table in about 15 s

Real images: the training PNGs of ``../shared/data/cifar10-5k`` (``--data``), decoded once
and read in place; 32 px settings use them as they are, 96 and 224 px settings upscale them
in memory (PIL bicubic). A batch of ``--batch-size`` images (``--batch-size-large`` at 96 and
224 px) is one step, from the decoded image to the collated views:

- lightly: ``DINOTransform`` / ``MoCoV2Transform`` as a lightly user builds them, per PIL
  image, then ``default_collate``;
- host: distill's recipe as ``IndexedDataset`` runs it in a loader worker (``prepare`` per
  image, ``apply`` per batch: uint8 crops per view, photometric ops batched; the views come
  out collated);
- device: ``DeviceViews`` on the CPU: the loader's canvas per image, collated, then
  ``apply`` (what ``on_after_batch_transfer`` runs on the training device);
- kornia (when installed): kornia.augmentation pipelines of the same settings on the
  collated uint8 batch, the reference for writing distill's own batched ops.

A second table compares where the images come from, per core, for a batch of
``--batch-size`` 32 px images: decode + views as a loader worker runs them for
``ImageFolderDataModule`` (open each PNG, decode, prepare under the sample's seed, views
per batch) and for ``StreamingDataModule`` (litdata reads the shards, then the same decode
and views), on the same folder; the shards are written once to a temporary folder by
``distill stream-convert`` (needs the stream extra; ``--no-stream`` leaves the table out).

A third table adds the training step: views of a batch of 64 cifar10-5k images made by each
pipeline, then ``training_step``, backward, SGD step and ``on_train_batch_end`` of distill's
``MoCo`` and ``DINO`` on them (resnet8 and the heads of the cifar10-5k configs, as
``probe_overhead.py`` builds them): images/s of the whole step on one core, what one core
achieves when it both makes the views and trains (in a real fit loader workers make them on
other cores, in parallel).

Per-sample seeding (the same for every row in a real loader) is left out. One thread
(``torch.set_num_threads(1)``): images/s per core. Rows are interleaved (``timing.py``),
so a varying background load affects them alike; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import glob
import io
import itertools
import os
import tempfile
import time

import torch
from PIL import Image
from probe_overhead import build
from timing import seconds_per_step, training_step, without_trainer
from torch.utils.data import default_collate
from torchvision.io import decode_image

from distill.data import DeviceViews, MultiCropViews, TwoViews
from distill.data.views import ViewRecipe

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def settings() -> list[tuple[str, int, ViewRecipe, object]]:
    """(name, source side, distill recipe, lightly transform) of every row."""
    from lightly.transforms import DINOTransform, MoCoV2Transform

    normalize = {"mean": list(MEAN), "std": list(STD)}
    return [
        (
            "multi-crop 2x32 + 6x16",
            32,
            MultiCropViews(global_size=32, local_size=16, num_local=6),
            DINOTransform(global_crop_size=32, local_crop_size=16, normalize=normalize),
        ),
        (
            "multi-crop 2x224 + 6x96",
            224,
            MultiCropViews(global_size=224, local_size=96, num_local=6),
            DINOTransform(normalize=normalize),
        ),
        ("two-view 32", 32, TwoViews(crop_size=32), MoCoV2Transform(32, normalize=normalize)),
        ("two-view 96", 96, TwoViews(crop_size=96), MoCoV2Transform(96, normalize=normalize)),
        ("two-view 224", 224, TwoViews(crop_size=224), MoCoV2Transform(224, normalize=normalize)),
    ]


def kornia_pipeline(recipe: ViewRecipe):
    """The recipe's views with kornia.augmentation, per view spec, on a uint8 batch."""
    import kornia.augmentation as K

    def view(spec):
        b, c, s, h = spec.jitter
        blur = (2 * min(6, spec.size // 2 - 1) + 1,) * 2
        return K.AugmentationSequential(
            K.RandomResizedCrop(
                (spec.size, spec.size), spec.scale, spec.ratio, spec.interpolation,
                align_corners=False, cropping_mode="resample",
            ),
            K.RandomHorizontalFlip(p=spec.hflip_prob),
            K.ColorJitter(b, c, s, h, p=spec.jitter_prob),
            K.RandomGrayscale(p=spec.gray_prob),
            K.RandomGaussianBlur(blur, spec.blur_sigma, p=spec.blur_prob),
            K.RandomSolarize(0.0, 0.0, p=spec.solarize_prob),
        )  # fmt: skip

    views = [view(spec) for spec in recipe.specs()]
    normalize = K.Normalize(torch.tensor(MEAN), torch.tensor(STD))

    def run(images: torch.Tensor) -> list[torch.Tensor]:
        images = images.float().div_(255)
        return [normalize(augment(images)) for augment in views]

    return run


def steps_of(images: list[Image.Image], recipe: ViewRecipe, lightly, use_kornia: bool) -> dict:
    """The pipelines of one setting, each mapping the batch ``images`` to collated views."""
    host = recipe.build(MEAN, STD)
    device = DeviceViews(recipe)
    canvas = device.build(MEAN, STD)
    steps = {
        "lightly": lambda: default_collate([lightly(image) for image in images]),
        "host": lambda: host.apply([host.prepare(image) for image in images]),  # collated
        "device": lambda: device.apply(default_collate([canvas(i) for i in images]), MEAN, STD),
    }
    if use_kornia:
        run = kornia_pipeline(recipe)
        tensors = [canvas(image).image for image in images]
        steps["kornia"] = lambda: run(torch.stack(tensors))
    return steps


def training_steps(images: list[Image.Image], repeats: int) -> tuple[list[str], list[dict]]:
    """Images/s of views + training step of MoCo and DINO with each pipeline."""
    recipes = {name: (recipe, lightly) for name, _, recipe, lightly in settings()}
    names, rows = [], []
    for method_name, setting in (("moco", "two-view 32"), ("dino", "multi-crop 2x32 + 6x16")):
        torch.manual_seed(0)
        method, (_, targets, indices), _ = build(method_name, "resnet8", len(images), "cpu")
        method.train()
        optimizer, trainer = without_trainer(method, len(images))
        views = steps_of(images, *recipes[setting], use_kornia=False)

        def step(make_views, labels=(targets, indices), context=(method, optimizer, trainer)):
            training_step(*context, (make_views(), *labels))

        steps = {name: functools.partial(step, make) for name, make in views.items()}
        seconds = seconds_per_step(steps, 1, 1, repeats, torch.device("cpu"))
        rows.append({key: len(images) / value for key, value in seconds.items()})
        names.append(f"{method_name} step, {setting} (batch {len(images)})")
    return names, rows


def source_steps(data: str, batch_size: int, repeats: int) -> tuple[list[str], list[dict]]:
    """Images/s of decode + views of a batch from the image folder and from its shards."""
    from distill.commands import stream_convert
    from distill.data import ImageFolderDataModule, StreamingDataModule
    from distill.data.sampling import sample_seed

    recipes = {name: recipe for name, side, recipe, _ in settings() if side == 32}
    names, rows = [], []
    with tempfile.TemporaryDirectory() as shards:
        with contextlib.redirect_stdout(io.StringIO()):  # its summary line, not the table's
            for split in ("train", "val"):
                stream_convert(data, split, os.path.join(shards, split))
        for name, recipe in recipes.items():
            common = dict(views=recipe, mean=MEAN, std=STD, batch_size=batch_size, num_workers=0)
            folder = ImageFolderDataModule(data_dir=data, **common)
            folder.setup("fit")
            order = torch.randperm(len(folder.train_set)).tolist()
            batches = itertools.cycle(
                [
                    order[i : i + batch_size]
                    for i in range(0, len(order) - batch_size + 1, batch_size)
                ]
            )
            loader = StreamingDataModule(data_dir=shards, **common).train_dataloader()
            stream = {"iterator": iter(loader)}

            def from_folder(dataset=folder.train_set, batches=batches):
                dataset.__getitems__([(sample_seed(0, 0, i), i) for i in next(batches)])

            def from_shards(loader=loader, stream=stream):
                try:
                    next(stream["iterator"])
                except StopIteration:  # the next epoch
                    stream["iterator"] = iter(loader)
                    next(stream["iterator"])

            steps = {"image folder": from_folder, "streaming": from_shards}
            seconds = seconds_per_step(steps, 1, 1, repeats, torch.device("cpu"))
            rows.append({key: batch_size / value for key, value in seconds.items()})
            names.append(f"{name} (batch {batch_size})")
    return names, rows


def print_table(
    names: list[str], rows: list[dict], columns: list[str], reference: str = "lightly"
) -> None:
    """A Markdown table: images/s per column, with the ratio to ``reference``'s in brackets."""
    print("| setting | " + " | ".join(columns) + " |")
    print("| --- |" + " ---: |" * len(columns))
    for name, row in zip(names, rows, strict=True):
        cells = [f"{row[reference]:.0f}"]
        cells += [f"{row[c]:.0f} ({row[c] / row[reference]:.1f}x)" for c in columns[1:]]
        print(f"| {name} | " + " | ".join(cells) + " |")


def decode_times(paths: list[str]) -> tuple[float, float]:
    """Microseconds per PNG: PIL open + RGB conversion, torchvision's decode_image."""
    start = time.perf_counter()
    for path in paths:
        with Image.open(path) as image:
            image.convert("RGB")
    pil = time.perf_counter() - start
    start = time.perf_counter()
    for path in paths:
        decode_image(path)
    return pil / len(paths) * 1e6, (time.perf_counter() - start) / len(paths) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/cifar10-5k")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--batch-size-large", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="small batches, 3 repeats")
    parser.add_argument("--no-kornia", action="store_true")
    parser.add_argument("--no-steps", action="store_true", help="views only, no step table")
    parser.add_argument("--no-stream", action="store_true", help="no image folder vs shards")
    args = parser.parse_args()
    if args.quick:
        args.batch_size, args.batch_size_large, args.repeats = 128, 16, 3
    torch.set_num_threads(1)
    use_kornia = not args.no_kornia
    try:
        import kornia  # noqa: F401
    except ImportError:
        use_kornia = False
    paths = sorted(glob.glob(os.path.join(args.data, "train", "*", "*.png")))
    if not paths:
        raise SystemExit(f"no PNGs under {args.data}/train: pass --data")
    paths = paths[:: max(1, len(paths) // args.batch_size)][: args.batch_size]
    originals = [Image.open(path).convert("RGB") for path in paths]
    rows, names = [], []
    for name, side, recipe, lightly in settings():
        count = args.batch_size if side == 32 else args.batch_size_large
        images = [image.resize((side, side), Image.BICUBIC) for image in originals[:count]]
        steps = steps_of(images, recipe, lightly, use_kornia)
        seconds = seconds_per_step(steps, 1, 1, args.repeats, torch.device("cpu"))
        rows.append({key: count / value for key, value in seconds.items()})
        names.append(f"{name} (batch {count})")
    columns = ["lightly", "host", "device"] + (["kornia"] if use_kornia else [])
    print_table(names, rows, columns)
    pil, tv = decode_times(paths)
    print(
        f"\nimages/s on one thread (torch threads {torch.get_num_threads()}, OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}), median of {args.repeats} interleaved "
        f"runs; in brackets the ratio to lightly. Decoding a cifar10-5k PNG (not in the "
        f"table): PIL {pil:.0f} us, torchvision.io.decode_image {tv:.0f} us.\n"
    )
    if not args.no_stream:
        names, rows = source_steps(args.data, args.batch_size, args.repeats)
        print_table(names, rows, ["image folder", "streaming"], reference="image folder")
        print(
            "\nimages/s of decode + views on one thread, from the PNG files and from litdata "
            "shards of the same folder (see the docstring); in brackets the ratio to the "
            "image folder.\n"
        )
    if not args.no_steps:
        print_table(*training_steps(originals[:64], args.repeats), ["lightly", "host", "device"])
        print("\nimages/s of views + training step on one thread, resnet8 (see the docstring).")


if __name__ == "__main__":
    main()
