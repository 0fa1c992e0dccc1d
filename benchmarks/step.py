"""Training-step time of KD, RKD and CRD relative to a supervised student step plus a
teacher forward on the same batch (the distillation overhead ratio), as a table.

    python benchmarks/step.py                                   # CPU, resnet32x4 -> resnet8x4
    python benchmarks/step.py --device cuda --batch-size 64 --teacher resnet32x4 --student resnet8x4

The baseline is what any teacher-student step must do: the student's forward, backward and
SGD step, and the frozen teacher's forward under ``no_grad``. Each method step is its
``training_step`` plus backward, SGD step and ``on_train_batch_end`` (CRD's bank update).
Times are medians of ``--repeats`` runs of ``--steps`` steps after ``--warmup`` steps, the
runs of all rows interleaved so that a varying background load affects them alike.
Compare figures only within one run on one machine.
"""

from __future__ import annotations

import argparse
import tempfile
from unittest import mock

import torch
import torch.nn.functional as F
from timing import add_timing_arguments, seconds_per_step

from distill.methods import CRD, KD, RKD, Supervised


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="resnet32x4")
    parser.add_argument("--student", default="resnet8x4")
    parser.add_argument("--num-classes", type=int, default=100)
    add_timing_arguments(parser, steps=5, warmup=2, repeats=3)
    parser.add_argument("--num-rows", type=int, default=50_000, help="CRD bank rows (dataset size)")
    args = parser.parse_args()
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
        methods = {
            "KD": KD(**common),
            "RKD (DA)": RKD(**common),
            "CRD": CRD(**common, sampler="uniform"),
            "CRD+KD": CRD(**common, sampler="uniform", kd_weight=1.0),
        }

    # A trainer stand-in: one process, no logger.
    trainer = mock.MagicMock(world_size=1)

    baseline = methods["KD"]
    baseline.to(device).train()
    optimizer = torch.optim.SGD(baseline.student.parameters(), lr=0.01, momentum=0.9)

    def baseline_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(baseline.student(images), targets)
        with torch.no_grad():
            baseline.teacher(images)
        loss.backward()
        optimizer.step()

    steps = {"student step + teacher forward": baseline_step}
    for name, method in methods.items():
        method.to(device).train()
        method.log = lambda *a, **k: None  # noqa: B023 (no trainer to log to)
        method._trainer = trainer
        if isinstance(method, CRD):
            method.crd = None
            datamodule = mock.MagicMock()
            datamodule.train_set.__len__.return_value = args.num_rows
            trainer.datamodule = datamodule
            with mock.patch.object(type(method), "check_num_classes"):
                method.setup("fit")
            method.crd.to(device)
        params = [p for m in method.trainable_modules() for p in m.parameters()]
        method_optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)

        def step(method=method, method_optimizer=method_optimizer) -> None:
            method_optimizer.zero_grad(set_to_none=True)
            method.training_step(batch, 0).backward()
            method_optimizer.step()
            method.on_train_batch_end(None, batch, 0)

        steps[name] = step

    results = seconds_per_step(steps, args.steps, args.warmup, args.repeats, device)

    base = results["student step + teacher forward"]
    print(
        f"device={device} threads={torch.get_num_threads()} batch={args.batch_size} "
        f"{args.teacher} -> {args.student} torch={torch.__version__}"
    )
    print("| step | ms | ratio to student step + teacher forward |")
    print("| --- | ---: | ---: |")
    for name, seconds in results.items():
        print(f"| {name} | {1000 * seconds:.1f} | {seconds / base:.2f} |")


if __name__ == "__main__":
    main()
