"""Real-data comparison on ``../shared/data/cifar10-5k``: runs configs, then prints a table.

    python benchmarks/cifar10_5k.py distillation    # teacher, student alone, KD, RKD, CRD, CRD+KD
    python benchmarks/cifar10_5k.py distillation --report    # table only, from runs/ already there
    python benchmarks/cifar10_5k.py distillation --threads 1 --parallel 2

Each row is one ``distill fit --config ...`` run (in a subprocess, in the order listed, so
the teacher exists before its students need it); extra arguments after ``--`` go to every
run, e.g. ``-- --trainer.max_epochs 10``. The table reads each run's newest TensorBoard log:
the last and best value of every metric column, and the run's wall time (first to last
event). Compare wall times only within one invocation on one machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parent.parent

#: Suites: (label, config) in dependency order; a run waits for the runs before its stage.
SUITES: dict[str, list[list[tuple[str, str]]]] = {
    "distillation": [
        [
            ("teacher resnet20", "configs/supervised/cifar10-5k_resnet20.yaml"),
            ("student resnet8 alone", "configs/supervised/cifar10-5k_resnet8.yaml"),
        ],
        [
            ("KD", "configs/kd/cifar10-5k_resnet20_resnet8.yaml"),
            ("RKD", "configs/rkd/cifar10-5k_resnet20_resnet8.yaml"),
            ("CRD", "configs/crd/cifar10-5k_resnet20_resnet8.yaml"),
            ("CRD+KD", "configs/crd/cifar10-5k_resnet20_resnet8_kd.yaml"),
        ],
    ],
    # The same methods with a bigger teacher and student: about 3x the CPU time.
    "distillation56": [
        [
            ("teacher resnet56", "configs/supervised/cifar10-5k_resnet56.yaml"),
            ("student resnet20 alone", "configs/supervised/cifar10-5k_resnet20.yaml"),
        ],
        [
            ("KD", "configs/kd/cifar10-5k_resnet56_resnet20.yaml"),
            ("RKD", "configs/rkd/cifar10-5k_resnet56_resnet20.yaml"),
            ("CRD", "configs/crd/cifar10-5k_resnet56_resnet20.yaml"),
            ("CRD+KD", "configs/crd/cifar10-5k_resnet56_resnet20_kd.yaml"),
        ],
    ],
}

METRICS = ["val/top1", "val/knn_top1"]


def run_dir(config: str) -> Path:
    """``default_root_dir`` of a config (where its ``lightning_logs/`` go)."""
    with open(ROOT / config) as f:
        return ROOT / yaml.safe_load(f)["trainer"]["default_root_dir"]


def newest_version(config: str) -> Path | None:
    versions = sorted(
        (run_dir(config) / "lightning_logs").glob("version_*"),
        key=lambda p: int(p.name.split("_")[1]),
    )
    return versions[-1] if versions else None


def fit(config: str, extra: list[str], threads: int | None) -> float:
    """Runs ``distill fit --config config`` and returns its wall time in seconds."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    command = [sys.executable, "-m", "distill", "fit", "--config", config, *extra]
    print("$", " ".join(command[1:]), flush=True)
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True)
    return time.perf_counter() - start


def summary(config: str) -> dict[str, str]:
    """Last and best of each metric and the wall time of a config's newest run."""
    version = newest_version(config)
    if version is None:
        return {"run": "-"}
    events = EventAccumulator(str(version), size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()["scalars"]
    row = {"run": version.relative_to(ROOT).as_posix()}
    times = [e.wall_time for tag in tags for e in events.Scalars(tag)]
    row["wall"] = f"{(max(times) - min(times)) / 60:.1f} min" if times else "-"
    epochs = [e.value for e in events.Scalars("epoch")] if "epoch" in tags else []
    row["epochs"] = str(int(max(epochs)) + 1) if epochs else "-"
    for metric in METRICS:
        values = [e.value for e in events.Scalars(metric)] if metric in tags else []
        row[metric] = f"{values[-1]:.3f} (best {max(values):.3f})" if values else "-"
    return row


def print_table(rows: list[tuple[str, dict[str, str]]]) -> None:
    columns = ["epochs", *METRICS, "wall", "run"]
    header = ["method", *columns]
    lines = [[label, *(row.get(c, "-") for c in columns)] for label, row in rows]
    widths = [max(len(x) for x in col) for col in zip(header, *lines, strict=True)]
    fmt = "| " + " | ".join(f"{{:<{w}}}" for w in widths) + " |"
    print(fmt.format(*header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in lines:
        print(fmt.format(*line))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=sorted(SUITES))
    parser.add_argument("--report", action="store_true", help="print the table only")
    parser.add_argument(
        "--stages", type=int, nargs="+", help="run only these stages (1-based; default all)"
    )
    parser.add_argument("--parallel", type=int, default=1, help="runs at once within a stage")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS per run")
    parser.add_argument("extra", nargs="*", help="arguments for every run (after --)")
    args = parser.parse_args()
    stages = SUITES[args.suite]
    if not args.report:
        for number, stage in enumerate(stages, 1):
            if args.stages and number not in args.stages:
                continue
            with ThreadPoolExecutor(args.parallel) as pool:
                list(pool.map(lambda c: fit(c[1], args.extra, args.threads), stage))
    print_table([(label, summary(config)) for stage in stages for label, config in stage])


if __name__ == "__main__":
    main()
