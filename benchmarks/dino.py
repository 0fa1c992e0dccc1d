"""DINO throughput: the multi-crop data pipeline per worker against the training step, as a table.

    python benchmarks/dino.py                          # CPU, the cifar10-5k config's sizes
    python benchmarks/dino.py --device cuda --batch-size 256 \
        --variants fp32 bf16 channels_last compile

Data: one process (what one DataLoader worker does) reads and decodes images of ``--data``
(an ImageFolder tree; random images when it is missing) and makes the multi-crop views
(``MultiCropViews``, 2 globals + ``--num-local`` locals). Training: ``DINO.training_step``
(teacher forward on the globals, student forward on all views, loss, monitors), backward,
AdamW step and ``on_train_batch_end`` (center and EMA update), on random views of the same
sizes. Images/s count source images (each with all its views). With ``W`` workers the data
side delivers about ``W`` times the per-worker figure; the smaller side bounds a fit.
Figures are medians of ``--repeats`` runs; compare them only within one run on one machine.
"""

from __future__ import annotations

import argparse
import os
from unittest import mock

import numpy as np
import torch
from PIL import Image
from timing import add_timing_arguments, seconds_per_step
from torchvision.datasets import ImageFolder

from distill.data import MultiCropViews
from distill.methods import DINO

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def views_recipe(args: argparse.Namespace) -> MultiCropViews:
    return MultiCropViews(
        num_global=2, num_local=args.num_local, global_size=args.global_size,
        local_size=args.local_size, blur_probs=(0.0, 0.0, 0.0),
    )  # fmt: skip


def data_images_per_s(args: argparse.Namespace) -> tuple[float, str]:
    """Images/s of one process reading, decoding and multi-cropping ``--data-images`` images."""
    transform = views_recipe(args).build(CIFAR_MEAN, CIFAR_STD)
    if os.path.isdir(args.data):
        folder = ImageFolder(args.data)
        rows = np.random.default_rng(0).permutation(len(folder))[: args.data_images]
        load, source = (lambda i: folder[int(rows[i])][0]), f"{args.data} (PNG decode)"
    else:
        pixels = np.random.default_rng(0).integers(0, 256, (args.data_images, 32, 32, 3))
        images = [Image.fromarray(p.astype(np.uint8)) for p in pixels]
        load, source = (lambda i: images[i]), "random 32 px images in memory"

    def run() -> None:
        for i in range(args.data_images):
            transform(load(i))

    run()  # warm-up
    seconds = seconds_per_step({"data": run}, 1, 0, args.repeats, torch.device("cpu"))["data"]
    return args.data_images / seconds, source


def train_variant(args: argparse.Namespace, variant: str, device: torch.device) -> float:
    """Images/s of the DINO training step in one variant (fp32, bf16, channels_last, compile)."""
    torch.manual_seed(0)
    method = DINO(
        backbone=args.backbone, backbone_kwargs=args.backbone_kwargs, output_dim=args.output_dim,
        hidden_dim=args.hidden_dim, bottleneck_dim=args.bottleneck_dim,
    ).to(device)  # fmt: skip
    memory_format = torch.channels_last if variant == "channels_last" else torch.contiguous_format
    method = method.to(memory_format=memory_format)
    if variant == "compile":
        method.student.backbone = torch.compile(method.student.backbone)
        method.teacher.backbone = torch.compile(method.teacher.backbone)
    sizes = [args.global_size] * 2 + [args.local_size] * args.num_local
    views = [
        torch.randn(args.batch_size, 3, s, s, device=device).contiguous(memory_format=memory_format)
        for s in sizes
    ]
    batch = (views, None, None)
    optimizer = torch.optim.AdamW(method.student.parameters(), lr=1e-4)
    # A trainer stand-in: one process, no logger.
    trainer = mock.MagicMock(
        world_size=1, estimated_stepping_batches=10_000, num_training_batches=100,
        accumulate_grad_batches=1, max_epochs=100, global_step=0, current_epoch=1,
        optimizers=[optimizer],
    )  # fmt: skip
    method._trainer = trainer
    method.log = lambda *a, **k: None
    method.train()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=variant == "bf16")

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = method.training_step(batch, 0)
        loss.backward()
        method.on_before_optimizer_step(optimizer)
        optimizer.step()
        trainer.global_step += 1
        method.on_train_batch_end(None, batch, 0)

    timing = seconds_per_step({"step": step}, args.steps, args.warmup, args.repeats, device)
    return args.batch_size / timing["step"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet20")
    parser.add_argument("--vit-patch-size", type=int, default=4, help="for vit_* backbones")
    parser.add_argument("--num-local", type=int, default=6)
    parser.add_argument("--global-size", type=int, default=32)
    parser.add_argument("--local-size", type=int, default=16)
    parser.add_argument("--output-dim", type=int, default=4096)
    parser.add_argument("--hidden-dim", type=int, default=512)
    parser.add_argument("--bottleneck-dim", type=int, default=128)
    parser.add_argument("--data", default="../shared/data/cifar10-5k/train")
    parser.add_argument("--data-images", type=int, default=256)
    parser.add_argument("--variants", nargs="+", default=["fp32"])
    add_timing_arguments(parser, steps=3, warmup=2, repeats=3)
    args = parser.parse_args()
    args.backbone_kwargs = (
        {"image_size": args.global_size, "patch_size": args.vit_patch_size}
        if args.backbone.startswith("vit")
        else {}
    )
    device = torch.device(args.device)
    data, source = data_images_per_s(args)
    train = {v: train_variant(args, v, device) for v in args.variants}
    print(
        f"device={device} threads={torch.get_num_threads()} backbone={args.backbone} "
        f"batch={args.batch_size} views=2x{args.global_size}px+{args.num_local}x"
        f"{args.local_size}px K={args.output_dim} torch={torch.__version__}"
    )
    print(f"data: {source}")
    print("| stage | images/s | data workers it needs | ratio to fp32 step |")
    print("| --- | ---: | ---: | ---: |")
    base = train.get("fp32", next(iter(train.values())))
    print(f"| data pipeline, 1 worker | {data:.0f} | | |")
    for variant, rate in train.items():
        print(f"| train step, {variant} | {rate:.0f} | {rate / data:.1f} | {rate / base:.2f} |")
    # On a CPU-only machine workers and the step share the cores: compare CPU time per image.
    data_share = (1 / data) / (1 / data + 1 / base)
    print(
        f"CPU time per image: data {100 * data_share:.0f}%, fp32 step {100 - 100 * data_share:.0f}%"
        f"; the step needs {base / data:.1f} workers, the machine has {os.cpu_count()} cores"
    )


if __name__ == "__main__":
    main()
