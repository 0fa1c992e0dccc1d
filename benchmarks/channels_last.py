"""Training-step time of convolutional backbones in the channels-last memory format against
the default contiguous (NCHW) one, as a table.

    OMP_NUM_THREADS=1 python benchmarks/channels_last.py           # CPU, 32 px, batch 64
    python benchmarks/channels_last.py --device cuda --batch-size 256

A step is forward + backward + SGD step of backbone and a linear head on random data, as in
``benchmarks/backbones.py``; the channels-last model is a copy of the contiguous one put in
that format by ``distill.backbones.to_channels_last`` (what ``Method(channels_last=True)``
does at the start of a fit). Before timing, both models' logits and gradients on one batch
are compared: the relative difference (norm of the difference over the norm) is printed.
Each time is the median of ``--repeats`` runs of ``--steps`` steps after ``--warmup`` steps,
the runs of the two formats interleaved so that a varying background load affects both
alike. Compare figures only within one run on one machine.
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F
from timing import add_timing_arguments, seconds_per_step

from distill.backbones import create_backbone, to_channels_last
from distill.modules import Classifier

DEFAULT = ["resnet8", "resnet20", "vgg8", "resnet18"]
KWARGS = {"resnet18": {"cifar_stem": True}}  # the CIFAR configs' resnet18


def first_step_difference(models: dict, images: torch.Tensor, targets: torch.Tensor) -> dict:
    """Relative differences (norm of the difference / norm) of the two models' logits and of
    their gradients (all parameters, concatenated) on one batch."""
    results = []
    for model in models.values():
        model.zero_grad(set_to_none=True)
        logits = model(images)
        F.cross_entropy(logits, targets).backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        results.append((logits.detach(), grads))
    (logits, grads), (cl_logits, cl_grads) = results
    return {
        "logits_diff": ((cl_logits - logits).norm() / logits.norm()).item(),
        "grads_diff": ((cl_grads - grads).norm() / grads.norm()).item(),
    }


def measure(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = Classifier(create_backbone(name, **KWARGS.get(name, {})), 10).to(device)
    models = {"contiguous": model, "channels_last": copy.deepcopy(model)}
    to_channels_last(models["channels_last"])
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    targets = torch.randint(0, 10, (args.batch_size,), device=device)
    differences = first_step_difference(models, images, targets)

    def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), targets).backward()
        optimizer.step()

    steps = {}
    for layout, net in models.items():
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        steps[layout] = lambda net=net, optimizer=optimizer: train_step(net, optimizer)
    times = seconds_per_step(steps, args.steps, args.warmup, args.repeats, device)
    return {"name": name, **times, **differences}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backbones", nargs="*", default=DEFAULT)
    parser.add_argument("--image-size", type=int, default=32)
    add_timing_arguments(parser, steps=3, warmup=1, repeats=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = [measure(name, args, device) for name in args.backbones]
    print(
        f"device={device} threads={torch.get_num_threads()} batch={args.batch_size} "
        f"image={args.image_size}px torch={torch.__version__} steps={args.steps} "
        f"repeats={args.repeats}"
    )
    print(
        "| backbone | contiguous ms/step | channels_last ms/step | speed-up "
        "| logits rel. diff | gradients rel. diff |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(
            f"| {row['name']} | {1000 * row['contiguous']:.0f} | "
            f"{1000 * row['channels_last']:.0f} | "
            f"{row['contiguous'] / row['channels_last']:.2f}x | {row['logits_diff']:.1e} | "
            f"{row['grads_diff']:.1e} |"
        )


if __name__ == "__main__":
    main()
