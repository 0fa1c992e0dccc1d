"""Why VID's step costs more than the other methods' at the CRD paper's pair: its regressors.

    OMP_NUM_THREADS=1 python benchmarks/vid_cost.py      # resnet32x4 -> resnet8x4, batch 64

Times, on one thread, the forward and backward of VID's ``VIDLoss`` modules alone (one per
paired stage, stage1 to stage3, on random maps of those stages' shapes, as
``VIDLoss(s, t, t)`` RepDistiller builds them), median of ``--repeats`` after two warm-up
runs, and counts with torch's FLOP counter their FLOPs beside the baseline step's: the
teacher's forward and the student's forward and backward on the batch. GFLOP/s is FLOPs
over time for the regressors, and for the baseline over ``--baseline-ms`` (the baseline row
of ``step.py`` on the same machine) when given.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from distill.backbones import create_backbone, forward_stages
from distill.losses import VIDLoss

STAGES = ["stage1", "stage2", "stage3"]


def gflop(step) -> float:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / 1e9


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", default="resnet32x4")
    parser.add_argument("--student", default="resnet8x4")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline-ms", type=float, help="step.py's baseline row, if known")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    images = torch.randn(args.batch_size, 3, 32, 32)
    teacher, student = create_backbone(args.teacher), create_backbone(args.student)
    with torch.no_grad():
        maps = [forward_stages(net, images, STAGES)[1] for net in (student, teacher)]
    pairs = [
        (VIDLoss(s.shape[1], t.shape[1], t.shape[1]), s.clone().requires_grad_(), t)
        for s, t in ((maps[0][n], maps[1][n]) for n in STAGES)
    ]

    def regressors() -> None:
        sum(loss(s, t) for loss, s, t in pairs).backward()

    for _ in range(2):
        regressors()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        regressors()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    vid = gflop(regressors)
    teacher_forward = gflop(lambda: teacher(images))
    student_step = gflop(lambda: student(images).sum().backward())
    baseline = teacher_forward + student_step
    print(f"{args.teacher} -> {args.student}, batch {args.batch_size}, one thread")
    print("| part | GFLOP | ms | GFLOP/s |\n| --- | ---: | ---: | ---: |")
    print(f"| VID regressors, forward + backward | {vid:.1f} | {1000 * seconds:.0f} | "
          f"{vid / seconds:.0f} |")  # fmt: skip
    rate = f"{baseline / (args.baseline_ms / 1000):.0f}" if args.baseline_ms else "-"
    ms = f"{args.baseline_ms:.0f}" if args.baseline_ms else "-"
    print(f"| teacher forward + student step | {baseline:.1f} ({teacher_forward:.1f} + "
          f"{student_step:.1f}) | {ms} | {rate} |")  # fmt: skip
    print(f"\nthe regressors' share of the FLOPs: {100 * vid / baseline:.1f}%")


if __name__ == "__main__":
    main()
