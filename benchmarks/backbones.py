"""Training-step and inference throughput of the registered backbones, as a table.

    python benchmarks/backbones.py                      # CPU, CIFAR-size defaults
    python benchmarks/backbones.py --device cuda --batch-size 256 --image-size 32

A training step is forward + backward + SGD step of backbone and a linear head on random
data; inference is a forward pass under ``torch.no_grad`` in eval mode. Each figure is the
median of ``--repeats`` timed runs of ``--steps`` steps after ``--warmup`` untimed steps.
Compare figures only within one run on one machine.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from timing import add_timing_arguments, seconds_per_step

from distill.backbones import create_backbone
from distill.modules import Classifier

DEFAULT = ["resnet8", "resnet20", "resnet56", "resnet8x4", "wrn_16_2", "wrn_40_2", "vgg8"]


def measure(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    kwargs = {"image_size": args.image_size, "patch_size": 4} if name.startswith("vit") else {}
    model = Classifier(create_backbone(name, **kwargs), 10).to(device)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    targets = torch.randint(0, 10, (args.batch_size,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), targets).backward()
        optimizer.step()

    def infer_step() -> None:
        with torch.no_grad():
            model(images)

    timing = (args.steps, args.warmup, args.repeats)
    model.train()
    train = seconds_per_step({"train": train_step}, *timing, device)["train"]
    model.eval()
    infer = seconds_per_step({"infer": infer_step}, *timing, device)["infer"]
    params = sum(p.numel() for p in model.backbone.parameters())
    return {
        "name": name,
        "params": params,
        "train": args.batch_size / train,
        "infer": args.batch_size / infer,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backbones", nargs="*", default=DEFAULT)
    parser.add_argument("--image-size", type=int, default=32)
    add_timing_arguments(parser, steps=5, warmup=2, repeats=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    rows = [measure(name, args, device) for name in args.backbones]
    base = rows[0]["train"]
    print(
        f"device={device} threads={torch.get_num_threads()} batch={args.batch_size} "
        f"image={args.image_size}px torch={torch.__version__}"
    )
    print(f"| backbone | params | train img/s | infer img/s | train time vs {rows[0]['name']} |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(
            f"| {row['name']} | {row['params'] / 1e6:.2f}M | {row['train']:.0f} | "
            f"{row['infer']:.0f} | {base / row['train']:.1f}x |"
        )


if __name__ == "__main__":
    main()
