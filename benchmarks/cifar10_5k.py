"""Real-data comparison on ``../shared/data/cifar10-5k``: runs configs, then prints a table.

    python benchmarks/cifar10_5k.py distillation    # teacher, student alone, KD, RKD, CRD, CRD+KD
    python benchmarks/cifar10_5k.py distillation --report    # table only, from runs/ already there
    python benchmarks/cifar10_5k.py distillation --threads 1 --parallel 2

Each row is one ``distill fit --config ...`` run (in a subprocess, in the order listed, so
the teacher exists before its students need it); extra arguments after ``--`` go to every
run, e.g. ``-- --trainer.max_epochs 10``. The table reads each run's newest TensorBoard log:
the last and best value of every metric column, and the run's wall time (first to last
event); ``--curves val/knn_top1 train/mined_precision`` also prints those metrics over
training. Compare wall times only within one invocation on one machine. ``--seeds 0 1 2``
runs (or, with ``--report``, reports) every run with each seed, ``--seed_everything N`` and
logs tagged ``seed<N>`` (the config's own seed keeps the untagged logs); a teacher that other
runs load keeps its config's seed, so ``--seeds 1 2`` adds students only. With several seeds
a second table gives each method's final values as mean ± standard deviation over seeds.
``--figures`` writes ``benchmarks/figures/<suite>_curves.png`` (each metric column against
the epoch, one line per method, the mean of its seeds) and ``<suite>_final.png`` (the final
values, with error bars of one standard deviation over seeds, or of one binomial standard
error on the 1,017 val images for a single run).

    python benchmarks/cifar10_5k.py distillation --parallel 2 --threads 1 --seeds 0 1 2 --figures

    python benchmarks/cifar10_5k.py selfsupervised --report --curves val/knn_top1
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
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
    seeded: bool = True  # False: a run others load (a teacher) runs with its config's seed only

    def config_value(self, *keys: str):
        """A value of the run's config file, e.g. ``config_value("trainer", "max_epochs")``."""
        with open(ROOT / self.config) as f:
            value = yaml.safe_load(f)
        for key in keys:
            value = value[key]
        return value

    def setting(self, option: str, *keys: str):
        """The value after ``option`` in the run's arguments, else the config's at ``keys``."""
        if option in self.args:
            return self.args[self.args.index(option) + 1]
        return self.config_value(*keys)

    def planned_epochs(self) -> int:
        return int(self.setting("--trainer.max_epochs", "trainer", "max_epochs"))

    def seed(self) -> int:
        return int(self.setting("--seed_everything", "seed_everything"))

    def with_seed(self, seed: int) -> Run | None:
        """This run under ``--seed_everything seed``, its logs tagged ``seed<N>``: the run itself
        for its config's own seed, ``None`` for an unseeded run (or ``validate``) at another."""
        if seed == self.seed():
            return self
        if not self.seeded or self.command == "validate":
            return None
        return replace(self, args=("--seed_everything", str(seed), *self.args), tag=f"seed{seed}")

    def root_dir(self) -> Path:
        """Where this run's ``lightning_logs/`` go."""
        if self.command == "validate":
            return ROOT / "runs/cifar10-5k/init" / Path(self.config).stem
        root = ROOT / self.config_value("trainer", "default_root_dir")
        return root.with_name(f"{root.name}_{self.tag}") if self.tag else root


#: Suites: stages of runs in dependency order; a stage starts when the one before it ends.
SUITES: dict[str, list[list[Run]]] = {
    "distillation": [
        [
            Run("teacher resnet20", "configs/supervised/cifar10-5k_resnet20.yaml", seeded=False),
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
            Run("teacher resnet56", "configs/supervised/cifar10-5k_resnet56.yaml", seeded=False),
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


@functools.cache
def load_scalars(run: Run) -> tuple[Path | None, dict[str, list]]:
    """The newest log of ``run`` and its scalar events by tag, read once per process (the
    tables and figures read it after the runs end)."""
    version = newest_version(run)
    if version is None:
        return None, {}
    events = EventAccumulator(str(version), size_guidance={"scalars": 0})
    events.Reload()
    return version, {tag: events.Scalars(tag) for tag in events.Tags()["scalars"]}


def final_values(run: Run, tag: str, last_epochs: int = 0) -> float | None:
    """The last logged value of ``tag`` (or the mean over its last ``last_epochs`` epochs) of a
    finished run; ``None`` for a run that is missing or still training."""
    _, scalars = load_scalars(run)
    events, evaluations = scalars.get(tag, []), scalars.get("val/knn_top1", [])
    if not events or not evaluations:
        return None
    # Finished: the last k-NN evaluation ran in the planned last epoch (the epoch counter
    # reaches it as soon as that epoch starts, before its evaluation).
    last = evaluations[-1].step
    evaluated = max((e.value for e in scalars.get("epoch", []) if e.step <= last), default=-1)
    if evaluated + 1 < run.planned_epochs():
        return None
    if not last_epochs:
        return events[-1].value
    epochs = scalars.get("epoch", [])
    last = max(e.value for e in epochs) if epochs else 0
    steps = {e.step for e in epochs if e.value > last - last_epochs}
    recent = [e.value for e in events if e.step >= min(steps, default=0)]
    return statistics.mean(recent)


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def by_label(runs: list[Run]) -> dict[str, list[Run]]:
    """The runs grouped by label (a label's seeds together), in the suite's order."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.label, []).append(run)
    return groups


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
    """The suite's curves and final values as two small PNG files (see the docstring).

    A label run with several seeds is drawn as its mean; its final value's error bar is the
    seeds' standard deviation (one binomial standard error on the val images for one seed).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    FIGURES.mkdir(parents=True, exist_ok=True)
    groups = by_label(runs)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), dpi=100)
    for ax, metric in zip([axes] if len(metrics) == 1 else axes, metrics, strict=True):
        for label, group in groups.items():
            curves = []  # per seed: {epoch: value}
            for scalars in (load_scalars(run)[1] for run in group):
                epochs = {e.step: e.value for e in scalars.get("epoch", [])}
                curves.append({epochs.get(e.step, 0) + 1: e.value for e in scalars.get(metric, [])})
            shared = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
            if shared:
                means = [100 * statistics.mean(c[x] for c in curves) for x in shared]
                ax.plot(shared, means, marker=".", label=f"{label} (n={len(curves)})")
        ax.set(xlabel="epoch", ylabel=f"{metric} (%)")
    (axes if len(metrics) == 1 else axes[0]).legend(fontsize=7)
    fig.suptitle(f"cifar10-5k, {suite}", fontsize=10)
    fig.tight_layout()
    fig.savefig(FIGURES / f"{suite}_curves.png")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(groups), 4.2), dpi=100)
    offset = 0.25 / max(len(metrics) - 1, 1)
    for column, metric in enumerate(metrics):
        points = []  # (x, mean %, error %)
        for i, group in enumerate(groups.values()):
            finals = [v for run in group if (v := final_values(run, metric)) is not None]
            if finals:
                mean, std = mean_std(finals)
                error = std if len(finals) > 1 else (mean * (1 - mean) / VAL_IMAGES) ** 0.5
                points.append(
                    (i + (column - (len(metrics) - 1) / 2) * offset, 100 * mean, 100 * error)
                )
        if points:
            xs, ys, errors = zip(*points, strict=True)
            ax.errorbar(xs, ys, yerr=errors, fmt="o", capsize=3, label=metric)
    names = [f"{label} (n={len(group)})" for label, group in groups.items()]
    ax.set_xticks(range(len(groups)), names, rotation=30, ha="right")
    ax.set(ylabel="final value (%)")
    ax.set_title("error bars: s.d. over n seeds; n = 1: binomial s.e. on val", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
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


def print_seed_table(runs: list[Run], metrics: list[str]) -> None:
    """Per label: finished seeds and each metric's final value, mean ± standard deviation."""
    lines = []
    for label, group in by_label(runs).items():
        finals = {m: [v for r in group if (v := final_values(r, m)) is not None] for m in metrics}
        cells = []
        for values in finals.values():
            mean, std = mean_std(values) if values else (0.0, 0.0)
            spread = f" ± {100 * std:.1f}" if len(values) > 1 else ""
            cells.append(f"{100 * mean:.1f}{spread}" if values else "-")
        lines.append([label, str(len(finals[metrics[0]])), *cells])
    print_markdown(["method", "seeds", *(f"{m} %" for m in metrics)], lines)


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
    parser.add_argument(
        "--seeds", type=int, nargs="+",
        help="run (and report) each run with each of these seeds; a teacher keeps its own",
    )  # fmt: skip
    parser.add_argument("--figures", action="store_true", help="also write the two PNGs")
    parser.add_argument("extra", nargs="*", help="arguments for every run (after --)")
    args = parser.parse_args()
    stages, metrics = SUITES[args.suite], METRICS[args.suite]
    if args.seeds:
        stages = [
            [r for run in stage for s in args.seeds if (r := run.with_seed(s))] for stage in stages
        ]
    if not args.report:
        for number, stage in enumerate(stages, 1):
            if args.stages and number not in args.stages:
                continue
            with ThreadPoolExecutor(args.parallel) as pool:
                list(pool.map(lambda run: execute(run, args.extra, args.threads), stage))
    runs = [run for stage in stages for run in stage]
    seeded = args.seeds and len(args.seeds) > 1
    rows = [
        (f"{r.label}, seed {r.seed()}" if seeded else r.label, summary(r, metrics)) for r in runs
    ]
    print_table(rows, metrics)
    if seeded:
        print()
        print_seed_table(runs, metrics)
    print_curves(runs, args.curves)
    if args.figures:
        plot(args.suite, runs, metrics)


if __name__ == "__main__":
    main()
