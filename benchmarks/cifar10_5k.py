"""Real-data comparison on ``../shared/data/cifar10-5k``: runs configs, then prints a table.

    python benchmarks/cifar10_5k.py distillation    # teacher, student alone, KD, RKD, CRD, CRD+KD
    python benchmarks/cifar10_5k.py distillation --report    # table only, from runs/ already there
    python benchmarks/cifar10_5k.py distillation --threads 1 --parallel 2

Each row is one ``distill fit --config ...`` run (in a subprocess, in the order listed, so
the teacher exists before its students need it); extra arguments after ``--`` go to every
run, e.g. ``-- --trainer.max_epochs 10``. The table reads each run's newest TensorBoard log:
the last and best value of every metric column, and the run's wall time (first to last
event); ``--curves val/knn_top1 train/mined_precision`` also prints those metrics over
training. Compare wall times only within one invocation on one machine. ``--figures``
writes ``benchmarks/figures/<suite>_curves.png`` (each metric column against the epoch,
one line per run) and ``<suite>_final.png`` (the final values, with error bars of one
binomial standard error on the 1,017 val images).

    python benchmarks/cifar10_5k.py selfsupervised --report --curves val/knn_top1
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ROOT / "benchmarks" / "figures"
VAL_IMAGES = 1017  # cifar10-5k's val split


@dataclass(frozen=True)
class Run:
    """One row: ``distill <command> --config <config> [args]``.

    ``validate`` evaluates the config's model as initialised (seeded, untrained), with its
    logs under ``runs/cifar10-5k/init/``: the random-init baseline of a backbone. A run
    with a ``tag`` (e.g. ``seed1`` with ``args=("--seed_everything", "1")``) writes to the
    config's ``default_root_dir`` plus ``_<tag>``, so variants of a config keep their logs.
    """

    label: str
    config: str
    command: str = "fit"
    args: tuple[str, ...] = ()
    tag: str = ""

    def root_dir(self) -> Path:
        """Where this run's ``lightning_logs/`` go."""
        if self.command == "validate":
            return ROOT / "runs/cifar10-5k/init" / Path(self.config).stem
        with open(ROOT / self.config) as f:
            root = ROOT / yaml.safe_load(f)["trainer"]["default_root_dir"]
        return root.with_name(f"{root.name}_{self.tag}") if self.tag else root


#: Suites: stages of runs in dependency order; a stage starts when the one before it ends.
SUITES: dict[str, list[list[Run]]] = {
    "distillation": [
        [
            Run("teacher resnet20", "configs/supervised/cifar10-5k_resnet20.yaml"),
            Run("student resnet8 alone", "configs/supervised/cifar10-5k_resnet8.yaml"),
        ],
        [
            Run("KD", "configs/kd/cifar10-5k_resnet20_resnet8.yaml"),
            Run("RKD", "configs/rkd/cifar10-5k_resnet20_resnet8.yaml"),
            Run("CRD", "configs/crd/cifar10-5k_resnet20_resnet8.yaml"),
            Run("CRD+KD", "configs/crd/cifar10-5k_resnet20_resnet8_kd.yaml"),
        ],
    ],
    # The same methods with a bigger teacher and student: about 3x the CPU time.
    "distillation56": [
        [
            Run("teacher resnet56", "configs/supervised/cifar10-5k_resnet56.yaml"),
            Run("student resnet20 alone", "configs/supervised/cifar10-5k_resnet20.yaml"),
        ],
        [
            Run("KD", "configs/kd/cifar10-5k_resnet56_resnet20.yaml"),
            Run("RKD", "configs/rkd/cifar10-5k_resnet56_resnet20.yaml"),
            Run("CRD", "configs/crd/cifar10-5k_resnet56_resnet20.yaml"),
            Run("CRD+KD", "configs/crd/cifar10-5k_resnet56_resnet20_kd.yaml"),
        ],
    ],
    "selfsupervised": [
        [
            Run("resnet8 at random init", "configs/dino/cifar10-5k_resnet8.yaml", "validate"),
            Run("DINO resnet8 (teacher)", "configs/dino/cifar10-5k_resnet8.yaml"),
            Run("MoCo-v2 resnet8", "configs/moco/cifar10-5k_resnet8.yaml"),
            Run("ReKD resnet20 -> resnet8", "configs/rekd/cifar10-5k_resnet20_resnet8.yaml"),
        ],
    ],
}

METRICS = {
    "distillation": ["val/top1", "val/knn_top1"],
    "distillation56": ["val/top1", "val/knn_top1"],
    "selfsupervised": ["val/knn_top1", "val/teacher_knn_top1"],
}


def newest_version(run: Run) -> Path | None:
    versions = sorted(
        (run.root_dir() / "lightning_logs").glob("version_*"),
        key=lambda p: int(p.name.split("_")[1]),
    )
    return versions[-1] if versions else None


def execute(run: Run, extra: list[str], threads: int | None) -> float:
    """Runs ``distill <command> --config <config>`` and returns its wall time in seconds."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    command = [sys.executable, "-m", "distill", run.command, "--config", run.config]
    command += [*run.args, *extra]
    if run.command == "validate" or run.tag:
        command += ["--trainer.default_root_dir", str(run.root_dir())]
    print("$", " ".join(command[1:]), flush=True)
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True)
    return time.perf_counter() - start


def load_scalars(run: Run) -> tuple[Path | None, dict[str, list]]:
    """The newest log of ``run`` and its scalar events by tag."""
    version = newest_version(run)
    if version is None:
        return None, {}
    events = EventAccumulator(str(version), size_guidance={"scalars": 0})
    events.Reload()
    return version, {tag: events.Scalars(tag) for tag in events.Tags()["scalars"]}


def summary(run: Run, metrics: list[str]) -> dict[str, str]:
    """Last and best of each metric and the wall time of a run's newest log."""
    version, scalars = load_scalars(run)
    if version is None:
        return {"run": "-"}
    row = {"run": version.relative_to(ROOT).as_posix()}
    times = [e.wall_time for events in scalars.values() for e in events]
    row["wall"] = f"{(max(times) - min(times)) / 60:.1f} min" if len(times) > 1 else "-"
    epochs = [e.value for e in scalars.get("epoch", [])]
    row["epochs"] = str(int(max(epochs)) + 1) if epochs else "0"
    for metric in metrics:
        values = [e.value for e in scalars.get(metric, [])]
        row[metric] = f"{values[-1]:.3f} (best {max(values):.3f})" if values else "-"
    return row


def print_curves(runs: list[Run], metrics: list[str], points: int = 12) -> None:
    """Each run's values of ``metrics`` over training (at most ``points`` per curve)."""
    for run in runs:
        _, scalars = load_scalars(run)
        for metric in metrics:
            events = scalars.get(metric, [])
            if not events:
                continue
            stride = max(1, round(len(events) / points))
            shown = events[::stride]
            if shown[-1] is not events[-1]:
                shown.append(events[-1])
            values = " ".join(f"{e.value:.3f}@{e.step}" for e in shown)
            print(f"{run.label} {metric} (value@step): {values}")


def plot(suite: str, runs: list[Run], metrics: list[str]) -> None:
    """The suite's curves and final values as two small PNG files (see the docstring)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    FIGURES.mkdir(parents=True, exist_ok=True)
    logged = [(run, load_scalars(run)[1]) for run in runs]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), dpi=100)
    for ax, metric in zip([axes] if len(metrics) == 1 else axes, metrics, strict=True):
        for run, scalars in logged:
            epochs = {e.step: e.value for e in scalars.get("epoch", [])}
            events = scalars.get(metric, [])
            if events:
                xs = [epochs.get(e.step, 0) + 1 for e in events]
                ax.plot(xs, [100 * e.value for e in events], marker=".", label=run.label)
        ax.set(xlabel="epoch", ylabel=f"{metric} (%)")
    (axes if len(metrics) == 1 else axes[0]).legend(fontsize=7)
    fig.suptitle(f"cifar10-5k, {suite}", fontsize=10)
    fig.tight_layout()
    fig.savefig(FIGURES / f"{suite}_curves.png")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(runs), 3.4), dpi=100)
    width = 0.8 / len(metrics)
    for column, metric in enumerate(metrics):
        finals = [s[metric][-1].value if s.get(metric) else 0.0 for _, s in logged]
        errors = [100 * (p * (1 - p) / VAL_IMAGES) ** 0.5 for p in finals]
        xs = [i + (column - (len(metrics) - 1) / 2) * width for i in range(len(runs))]
        ax.bar(xs, [100 * p for p in finals], width, yerr=errors, capsize=3, label=metric)
    ax.set_xticks(range(len(runs)), [run.label for run, _ in logged], rotation=30, ha="right")
    ax.set(ylabel="final value (%)", ylim=(0, 100))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(FIGURES / f"{suite}_final.png")
    plt.close(fig)
    print(f"wrote {FIGURES / f'{suite}_curves.png'} and {suite}_final.png")


def print_markdown(header: list[str], lines: list[list[str]]) -> None:
    """A Markdown table with aligned columns."""
    widths = [max(len(x) for x in col) for col in zip(header, *lines, strict=True)]
    fmt = "| " + " | ".join(f"{{:<{w}}}" for w in widths) + " |"
    print(fmt.format(*header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in lines:
        print(fmt.format(*line))


def print_table(rows: list[tuple[str, dict[str, str]]], metrics: list[str]) -> None:
    columns = ["epochs", *metrics, "wall", "run"]
    lines = [[label, *(row.get(c, "-") for c in columns)] for label, row in rows]
    print_markdown(["method", *columns], lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=sorted(SUITES))
    parser.add_argument("--report", action="store_true", help="print the table only")
    parser.add_argument(
        "--stages", type=int, nargs="+", help="run only these stages (1-based; default all)"
    )
    parser.add_argument("--parallel", type=int, default=1, help="runs at once within a stage")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS per run")
    parser.add_argument(
        "--curves", nargs="*", default=[], help="also print these metrics over training"
    )
    parser.add_argument("--figures", action="store_true", help="also write the two PNGs")
    parser.add_argument("extra", nargs="*", help="arguments for every run (after --)")
    args = parser.parse_args()
    stages, metrics = SUITES[args.suite], METRICS[args.suite]
    if not args.report:
        for number, stage in enumerate(stages, 1):
            if args.stages and number not in args.stages:
                continue
            with ThreadPoolExecutor(args.parallel) as pool:
                list(pool.map(lambda run: execute(run, args.extra, args.threads), stage))
    runs = [run for stage in stages for run in stage]
    print_table([(run.label, summary(run, metrics)) for run in runs], metrics)
    print_curves(runs, args.curves)
    if args.figures:
        plot(args.suite, runs, metrics)


if __name__ == "__main__":
    main()
