"""Training-step time of backbones eager and compiled with ``torch.compile`` (what
``Method(compile=True)`` does), the compilation's time, and each step's achieved FLOP/s beside
a large float32 matmul's, as a table.

    OMP_NUM_THREADS=1 python benchmarks/compile.py               # CPU, one core, 32 px, batch 64
    OMP_NUM_THREADS=1 python benchmarks/compile.py resnet8 --mode max-autotune-no-cudagraphs
    python benchmarks/compile.py --device cuda --batch-size 256

A step is forward + backward + SGD step of a backbone and a linear head on random data, as in
``benchmarks/channels_last.py``, in channels-last (a fit's default; the ViT stays as it is).
The compiled model is a copy of the eager one whose backbone ``distill.backbones.compiled.
compile_backbones`` compiled, as a fit does when it sets the model up. ``compile s`` is the
time of tracing, code generation and the C++ compiler's work (the first compiled forward +
backward less a compiled step), in a fresh inductor cache (``--warm-cache`` keeps the user's,
as a second run of the same network finds it); ``break-even steps`` is how many compiled
steps earn it back. The FLOPs of a step are those ``torch.utils.flop_counter.
FlopCounterMode`` counts in an eager step (convolutions and matrix products, forward and
backward; not the elementwise work nor the SGD update): the same arithmetic in both models.
Each step's FLOP/s is given beside the FLOP/s of a ``--matmul-size``² float32 matrix product
on the same threads, the practical limit of the device: the percentage says how far from it
a step is. Before timing, the two models' logits and gradients on one batch are compared
(relative difference: norm of the difference over the norm). Each time is the median of
``--repeats`` runs of ``--steps`` steps after ``--warmup`` steps, the runs of the two models
interleaved so that a varying background load affects both alike. Compare figures only
within one run on one machine.
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from unittest import mock

import torch
import torch.nn.functional as F
from channels_last import first_step_difference
from timing import add_timing_arguments, seconds_per_step
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from distill.backbones import create_backbone, to_channels_last
from distill.backbones.compiled import COMPILE_MODES, compile_backbones
from distill.modules import Classifier

DEFAULT = ["resnet8", "resnet20", "vit_tiny"]
KWARGS = {"vit_tiny": {"image_size": 32, "patch_size": 4}}  # CIFAR's patches: 64 tokens


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    first_sentence = " ".join(__doc__.split("\n\n")[0].split())
    parser = argparse.ArgumentParser(prog="compile.py", description=first_sentence)
    parser.add_argument("backbones", nargs="*", default=DEFAULT)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--mode", choices=COMPILE_MODES, default=None)
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--warm-cache", action="store_true", help="keep inductor's cache")
    add_timing_arguments(parser, steps=5, warmup=2, repeats=5)
    return parser.parse_args(argv)


def train_step(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> Callable:
    """Forward, backward and SGD step of ``model`` on one batch, as a function."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), targets).backward()
        optimizer.step()

    return step


def step_flops(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> int:
    """FLOPs of one forward and backward of ``model`` on the batch, as ``FlopCounterMode``
    counts them (matrix products and convolutions; no gradient for the images)."""
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(images), targets).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def matmul_flops_per_second(size: int, device: torch.device, args: argparse.Namespace) -> float:
    """FLOP/s of a ``size × size`` float32 matrix product (``2·size³`` FLOPs), timed like the
    steps: the practical limit of arithmetic on these threads."""
    a, b = (torch.randn(size, size, device=device) for _ in range(2))
    seconds = seconds_per_step({"matmul": lambda: a @ b}, args.steps, args.warmup, args.repeats,
                               device)["matmul"]  # fmt: skip
    return 2 * size**3 / seconds


def measure(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    torch.manual_seed(0)
    torch._dynamo.reset()  # no graph of an earlier row reused
    model = Classifier(create_backbone(name, **KWARGS.get(name, {})), 10).to(device)
    to_channels_last(model)
    compiled = copy.deepcopy(model)
    compile_backbones(compiled, args.mode, args.backend)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    targets = torch.randint(0, 10, (args.batch_size,), device=device)
    flops = step_flops(model, images, targets)
    start = time.perf_counter()
    F.cross_entropy(compiled(images), targets).backward()  # compiles forward and backward
    first = time.perf_counter() - start
    differences = first_step_difference({"eager": model, "compiled": compiled}, images, targets)
    steps = {"eager": train_step(model, images, targets)}
    steps["compiled"] = train_step(compiled, images, targets)
    times = seconds_per_step(steps, args.steps, args.warmup, args.repeats, device)
    compile_seconds = max(first - times["compiled"], 0.0)
    saved = times["eager"] - times["compiled"]
    break_even = compile_seconds / saved if saved > 0 else float("inf")
    return {"name": name, "flops": flops, **times, "compile": compile_seconds,
            "break_even": break_even, **differences}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as cache, mock.patch.dict(os.environ):
        if not args.warm_cache:  # what a first run of a network compiles
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        limit = matmul_flops_per_second(args.matmul_size, device, args)
        rows = [measure(name, args, device) for name in args.backbones]
    print(
        f"device={device} threads={torch.get_num_threads()} batch={args.batch_size} "
        f"image={args.image_size}px torch={torch.__version__} backend={args.backend} "
        f"mode={args.mode or 'default'} steps={args.steps} repeats={args.repeats} "
        f"matmul {args.matmul_size}² float32: {limit / 1e9:.1f} GFLOP/s"
    )
    print(
        "| backbone | GFLOP/step | eager ms/step | compiled ms/step | speed-up | compile s "
        "| break-even steps | eager GFLOP/s (% of matmul) | compiled GFLOP/s (% of matmul) "
        "| logits rel. diff | gradients rel. diff |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        rates = [row["flops"] / row[model] for model in ("eager", "compiled")]
        finite = row["break_even"] < float("inf")
        break_even = f"{row['break_even']:.0f}" if finite else "never"
        achieved = " | ".join(f"{rate / 1e9:.2f} ({100 * rate / limit:.0f}%)" for rate in rates)
        print(
            f"| {row['name']} | {row['flops'] / 1e9:.3f} | {1000 * row['eager']:.1f} | "
            f"{1000 * row['compiled']:.1f} | {row['eager'] / row['compiled']:.2f}x | "
            f"{row['compile']:.1f} | {break_even} | {achieved} | "
            f"{row['logits_diff']:.1e} | {row['grads_diff']:.1e} |"
        )


if __name__ == "__main__":
    main()
