"""Forward+backward time and peak memory of each loss, as a table.

    python benchmarks/losses.py                        # CPU, B in {64,128,256}, D in {128,512,2048}
    python benchmarks/losses.py --device cuda
    python benchmarks/losses.py --batch-sizes 256 --dims 2048 --losses rkd_angle rkd_angle_direct

Each case runs in two fresh processes, one for time and one for memory, each after one
warm-up pass. Time is the median of ``--repeats`` forward+backward passes. Peak memory is
the case's own: on CUDA ``max_memory_allocated`` above what the inputs hold; on CPU the
peak resident set size (``VmHWM``, reset before the pass) above the resident size before
it, with glibc's mmap threshold fixed so that freed tensors leave the resident set.
``rkd_angle_direct`` is the reference's ``[B, B, D]`` difference-tensor form;
``crd_gather`` is the reference's ``[B, 1+K, 128]`` gather of bank rows, beside distill's
score-then-gather ``crd``.
Compare figures only within one run on one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

LOSSES = ["kd", "rkd_distance", "rkd_angle", "rkd_angle_direct", "crd", "crd_gather"]


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def run_case(loss: str, batch: int, dim: int, device: str, repeats: int, what: str) -> dict:
    """Runs one case in this process and returns its time (``what="time"``) or peak memory."""
    import torch
    import torch.nn.functional as F

    from distill.losses import CRDLoss, kd_loss, rkd_angle_loss, rkd_distance_loss
    from distill.losses.rkd import rkd_angle_loss_direct

    torch.manual_seed(0)
    dev = torch.device(device)
    student = torch.randn(batch, dim, device=dev, requires_grad=True)
    teacher = torch.randn(batch, dim, device=dev)
    if loss == "kd":
        fn = lambda: kd_loss(student, teacher, 4.0)
    elif loss.startswith("rkd"):
        fn = {
            "rkd_distance": lambda: rkd_distance_loss(student, teacher),
            "rkd_angle": lambda: rkd_angle_loss(student, teacher),
            "rkd_angle_direct": lambda: rkd_angle_loss_direct(student, teacher),
        }[loss]
    else:
        crd = CRDLoss(dim, dim, num_rows=50_000, num_negatives=16_384, sampler="uniform").to(dev)
        indices = torch.randint(0, 50_000, (batch,), device=dev)

        def fn():
            z_s, z_t = crd.embed(student, teacher)
            if loss == "crd":
                return sum(crd(z_s, z_t, indices))
            rows = crd.sample(indices)  # the reference: gather [B, 1+K, 128] rows, then bmm
            out = torch.bmm(crd.teacher_memory(rows), z_s.unsqueeze(2)).squeeze(2)
            out_t = torch.bmm(crd.student_memory(rows), z_t.unsqueeze(2)).squeeze(2)
            return F.softplus(out).mean() + F.softplus(out_t).mean()

    def step():
        fn().backward()
        student.grad = None
        if dev.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up: lazily loaded kernels and thread pools are not the case's memory
    if what == "time":
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        return {"ms": 1000 * statistics.median(times)}
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # resets VmHWM to the current resident size
        base = _rss_kib("VmRSS")
        step()
        peak = (_rss_kib("VmHWM") - base) / 1024
    return {"peak_mib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--losses", nargs="+", default=LOSSES, choices=LOSSES)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[64, 128, 256])
    parser.add_argument("--dims", nargs="+", type=int, default=[128, 512, 2048])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--case", nargs=4, help=argparse.SUPPRESS)  # child process mode
    args = parser.parse_args()
    if args.case:
        loss, batch, dim, what = args.case[0], int(args.case[1]), int(args.case[2]), args.case[3]
        print(json.dumps(run_case(loss, batch, dim, args.device, args.repeats, what)))
        return
    import torch

    print(f"device={args.device} threads={torch.get_num_threads()} torch={torch.__version__}")
    print("| loss | B | D | fwd+bwd ms | peak MiB |")
    print("| --- | ---: | ---: | ---: | ---: |")
    results = {}
    # Memory runs fix glibc's mmap threshold, so that freed tensors leave the resident set
    # at once and the peak after the warm-up is what the measured pass holds; time runs
    # keep the default allocator, whose reuse of freed blocks is part of real speed.
    memory_env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    for batch in args.batch_sizes:
        for dim in args.dims:
            for loss in args.losses:
                result = {}
                for what, env in (("time", os.environ), ("memory", memory_env)):
                    case = ["--case", loss, str(batch), str(dim), what]
                    options = ["--device", args.device, "--repeats", str(args.repeats)]
                    command = [sys.executable, __file__, *options, *case]
                    out = subprocess.run(command, capture_output=True, text=True, env=env)
                    if out.returncode:
                        error = out.stderr.strip()[-80:]
                        print(f"| {loss} | {batch} | {dim} | failed: {error} | |")
                        break
                    result.update(json.loads(out.stdout.strip().splitlines()[-1]))
                else:
                    results[loss, batch, dim] = result
                    print(
                        f"| {loss} | {batch} | {dim} | {result['ms']:.1f} | "
                        f"{result['peak_mib']:.1f} |"
                    )
    pairs = [("rkd_angle_direct", "rkd_angle"), ("crd_gather", "crd")]
    print("\n| reference form / distill form | B | D | time ratio | memory ratio |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for slow, fast in pairs:
        for batch in args.batch_sizes:
            for dim in args.dims:
                if (slow, batch, dim) in results and (fast, batch, dim) in results:
                    a, b = results[slow, batch, dim], results[fast, batch, dim]
                    memory = a["peak_mib"] / max(b["peak_mib"], 0.1)
                    print(f"| {slow} / {fast} | {batch} | {dim} | "
                          f"{a['ms'] / b['ms']:.1f}x | {memory:.1f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
