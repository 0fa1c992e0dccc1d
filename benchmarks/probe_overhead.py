"""Step time of a method with and without the online ``LinearProbe``, as a table.

    OMP_NUM_THREADS=1 python benchmarks/probe_overhead.py            # the cifar10-5k sizes
    python benchmarks/probe_overhead.py --methods moco --backbone resnet18 --device cuda

A step is the method's ``training_step``, backward, SGD step and ``on_train_batch_end``
(queue, EMA and center updates) on random views of the cifar10-5k configs' sizes (batch 64,
32 px; DINO 2 globals and 6 locals of 16 px). "+ probe" adds the probe's batch hooks as
Lightning calls them, the probe taking the backbone features the step handed over
(``Method.step_features``); "+ probe, own forward" withholds them, so the probe embeds the
first view with its own eval-mode backbone forward, as it did before. "probe hooks alone"
is the probe's part of "+ probe" by itself: the overhead least blurred by a busy machine.
The probe watches the network the configs evaluate (DINO: the teacher). Times are medians
of ``--repeats`` runs of ``--steps`` steps, the rows interleaved (``timing.py``) so that a
varying background load affects them alike; compare ratios, within one run.
"""

from __future__ import annotations

import argparse

import torch
from timing import add_timing_arguments, seconds_per_step, without_trainer

from distill.eval import LinearProbe
from distill.methods import DINO, MoCo, Supervised


def build(name: str, backbone: str, batch_size: int, device: torch.device):
    """The method, its batch and the submodule the probe watches."""

    def images(size: int = 32) -> torch.Tensor:
        return torch.randn(batch_size, 3, size, size, device=device)

    targets = torch.randint(0, 10, (batch_size,), device=device)
    indices = torch.arange(batch_size, device=device)
    if name == "supervised":
        return (
            Supervised(backbone=backbone, num_classes=10),
            (images(), targets, indices),
            "student",
        )
    if name == "moco":
        method = MoCo(backbone=backbone, proj_hidden_dim=512, queue_size=2048, key_momentum=0.99)
        return method, ([images(), images()], targets, indices), "student"
    method = DINO(
        backbone=backbone, output_dim=4096, hidden_dim=512, bottleneck_dim=128,
        head_batch_norm=True, momentum_start=0.99,
    )  # fmt: skip
    views = [images(), images()] + [images(16) for _ in range(6)]
    return method, (views, targets, indices), "teacher"


def steps_of(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    """The three step functions of one method, sharing the method, optimiser and batch."""
    method, batch, submodule = build(name, args.backbone, args.batch_size, device)
    method.to(device).train()
    optimizer, trainer = without_trainer(method, args.batch_size)
    probe = LinearProbe(submodule=submodule)
    probe.setup(trainer, method, "fit")

    def step(with_probe: bool = False, own_forward: bool = False) -> None:
        if with_probe:
            probe.on_train_batch_start(trainer, method, batch, 0)
        optimizer.zero_grad(set_to_none=True)
        method.training_step(batch, 0).backward()
        optimizer.step()
        trainer.global_step += 1
        if with_probe:  # callbacks run before the module's own hook
            if own_forward:
                method.step_features.clear()
            probe.on_train_batch_end(trainer, method, None, batch, 0)
        method.on_train_batch_end(None, batch, 0)

    step()
    handed = dict(method.step_features)  # one step's features, for the probe alone

    def probe_alone() -> None:
        probe.on_train_batch_start(trainer, method, batch, 0)
        method.step_features.update(handed)
        probe.on_train_batch_end(trainer, method, None, batch, 0)

    return {
        f"{name}": step,
        f"{name} + probe": lambda: step(with_probe=True),
        f"{name} + probe, own forward": lambda: step(with_probe=True, own_forward=True),
        f"{name}: probe hooks alone": probe_alone,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["supervised", "moco", "dino"])
    parser.add_argument("--backbone", default="resnet8")
    add_timing_arguments(parser, steps=5, warmup=2, repeats=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(
        f"device={device} threads={torch.get_num_threads()} batch={args.batch_size} "
        f"backbone={args.backbone} torch={torch.__version__}"
    )
    print("| step | ms | ratio to the method's step |")
    print("| --- | ---: | ---: |")
    for name in args.methods:
        steps = steps_of(name, args, device)
        results = seconds_per_step(steps, args.steps, args.warmup, args.repeats, device)
        for row, seconds in results.items():
            print(f"| {row} | {1000 * seconds:.1f} | {seconds / results[name]:.3f} |")


if __name__ == "__main__":
    main()
