"""Training-step time of every teacher→student method relative to a supervised student step
plus a teacher forward on the same batch (the distillation overhead ratio), as a table.

    python benchmarks/step.py                                   # CPU, resnet32x4 -> resnet8x4
    python benchmarks/step.py --teacher resnet20 --student resnet8 --num-classes 10 --num-rows 4068
    python benchmarks/step.py --device cuda --batch-size 64 --teacher resnet32x4 --student resnet8x4

Two pairs are measured: the default, resnet32x4 -> resnet8x4 on 100 classes with a 50,000-row
CRD bank (the CRD paper's CIFAR-100 pair and dataset size), and cifar10-5k's resnet20 ->
resnet8 (10 classes, 4,068 rows: the second line). The baseline is what any teacher-student
step must do: the student's forward, backward and SGD step, and the frozen teacher's forward
under ``no_grad``. Each method step is its ``training_step`` plus backward, SGD step and
``on_train_batch_end`` (CRD's bank update), each method with its defaults: the reference
hyper-parameters and stage pairs of RepDistiller, mdistiller and torchdistill (CRD with the
uniform sampler). The rows are in the order of ``cifar10_5k.py``'s table: on logits, then on
features and embeddings (RepDistiller's order). Times are medians of ``--repeats`` runs of
``--steps`` steps after ``--warmup`` steps, the runs of all rows interleaved so that a varying
background load affects them alike. Compare figures only within one run on one machine.

``teacher forwards`` counts the teacher's forwards in a step, from one step run before the
timings with every layer of the teacher counted: 1 when no layer runs more often than in one
plain forward of the teacher (a method reading stages may stop before the teacher's head).
Reading intermediate stages must not cost a second teacher forward: a row with another count
is named below the table, and the script exits with status 1.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from unittest import mock

import torch
import torch.nn.functional as F
from timing import add_timing_arguments, seconds_per_step
from torch import nn

from distill.backbones import layer_calls
from distill.methods import AT, CRD, DIST, DKD, KD, PKT, RKD, SP, VID, FitNets, Method, Supervised

BASELINE = "student step + teacher forward"

#: The rows: each method with its reference defaults, given the pair (backbones, teacher
#: file, classes). Logits-based first, then those on features and embeddings.
METHODS: dict[str, Callable[..., Method]] = {
    "KD": KD,
    "DKD": DKD,
    "DIST": DIST,
    "FitNets": FitNets,
    "AT": AT,
    "SP": SP,
    "VID": VID,
    "RKD (DA)": RKD,
    "PKT": PKT,
    "CRD": functools.partial(CRD, sampler="uniform"),
    "CRD+KD": functools.partial(CRD, sampler="uniform", kd_weight=1.0),
}


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    first_sentence = " ".join(__doc__.split("\n\n")[0].split())
    parser = argparse.ArgumentParser(prog="step.py", description=first_sentence)
    parser.add_argument("--teacher", default="resnet32x4")
    parser.add_argument("--student", default="resnet8x4")
    parser.add_argument("--num-classes", type=int, default=100)
    add_timing_arguments(parser, steps=5, warmup=2, repeats=3)
    parser.add_argument("--num-rows", type=int, default=50_000, help="CRD bank rows (dataset size)")
    return parser.parse_args(argv)


def teacher_forwards(teacher: nn.Module, images: torch.Tensor, step: Callable[[], None]) -> float:
    """The teacher's forwards in one ``step``: the most any of its layers runs there, in units
    of the times it runs in one plain forward of the teacher on ``images``."""
    with torch.no_grad():
        once = layer_calls(teacher, lambda: teacher(images))
    in_step = layer_calls(teacher, step)
    return max(in_step[name] / count for name, count in once.items())


def method_step(method: Method, batch: tuple, num_rows: int, device: torch.device) -> Callable:
    """One training step of ``method`` outside ``Trainer.fit``: set up against a stand-in
    trainer (one process, no logger, epoch 0, a dataset of ``num_rows`` for CRD's bank), with
    SGD over its trainable modules (the student and what trains beside it)."""
    trainer = mock.MagicMock(world_size=1, global_step=0, current_epoch=0)
    trainer.datamodule = SimpleNamespace(num_classes=method.num_classes, train_set=range(num_rows))
    method._trainer = trainer
    method.log = lambda *a, **k: None  # no trainer to log to
    method.setup("fit")  # CRD's memory bank and critic
    method.to(device).train()
    params = [p for m in method.trainable_modules() for p in m.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        method.training_step(batch, 0).backward()
        optimizer.step()
        method.on_train_batch_end(None, batch, 0)

    return step


def baseline_step(method: Method, images: torch.Tensor, targets: torch.Tensor) -> Callable:
    """The student step plus teacher forward of ``method``'s networks."""
    optimizer = torch.optim.SGD(method.student.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(method.student(images), targets)
        with torch.no_grad():
            method.teacher(images)
        loss.backward()
        optimizer.step()

    return step


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    images = torch.randn(args.batch_size, 3, 32, 32, device=device)
    targets = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
    indices = torch.randint(0, args.num_rows, (args.batch_size,), device=device)
    batch = (images, targets, indices)

    with tempfile.TemporaryDirectory() as folder:
        teacher_path = f"{folder}/teacher.pt"
        teacher = Supervised(backbone=args.teacher, num_classes=args.num_classes)
        torch.save({"state_dict": teacher.state_dict()}, teacher_path)
        common = dict(
            student_backbone=args.student, teacher_backbone=args.teacher,
            teacher_checkpoint=teacher_path, num_classes=args.num_classes,
        )  # fmt: skip
        baseline = KD(**common).to(device).train()
        methods = {name: build(**common) for name, build in METHODS.items()}

    steps = {BASELINE: baseline_step(baseline, images, targets)}
    teachers = {BASELINE: baseline.teacher}
    for name, method in methods.items():
        steps[name] = method_step(method, batch, args.num_rows, device)
        teachers[name] = method.teacher
    forwards = {name: teacher_forwards(teachers[name], images, s) for name, s in steps.items()}
    results = seconds_per_step(steps, args.steps, args.warmup, args.repeats, device)

    base = results[BASELINE]
    print(
        f"device={device} threads={torch.get_num_threads()} batch={args.batch_size} "
        f"{args.teacher} -> {args.student} classes={args.num_classes} rows={args.num_rows} "
        f"torch={torch.__version__}"
    )
    print(f"| step | ms | ratio to {BASELINE} | teacher forwards |")
    print("| --- | ---: | ---: | ---: |")
    for name, seconds in results.items():
        print(f"| {name} | {1000 * seconds:.1f} | {seconds / base:.2f} | {forwards[name]:g} |")
    if others := [f"{name} ({count:g})" for name, count in forwards.items() if count != 1]:
        sys.exit(f"teacher forwards per step other than 1: {', '.join(others)}")


if __name__ == "__main__":
    main()
