"""Real-data comparison on ``../shared/data/cifar10-5k``: runs configs, then prints a table.

    python benchmarks/cifar10_5k.py distillation    # teacher, student alone, then each method
    python benchmarks/cifar10_5k.py distillation --report    # table only, from runs/ already there
    python benchmarks/cifar10_5k.py distillation --threads 1 --parallel 2
    python benchmarks/cifar10_5k.py distillation --figures -- --trainer.max_epochs 2  # a trial
    python benchmarks/cifar10_5k.py distillation --missing    # only the runs not finished yet

The ``distillation`` suite trains the teacher resnet20 and the student resnet8 alone, then
the student from that teacher with each method's ``cifar10-5k_resnet20_resnet8`` config (one
recipe, 40 epochs): on the teacher's logits KD, DKD and DIST, on its features FitNets, AT,
SP, VID, RKD, PKT, CRD and CRD+KD (RepDistiller's order). ``distillation56`` runs KD, RKD
and CRD with resnet56 -> resnet20; ``distillation_checks`` the runs behind RESULTS.md's
account of AT and DIST (seeds 3 and 4 of the student alone, DIST and AT, and AT at a tenth
of its weight);
``selfsupervised`` DINO, MoCo-v2 and ReKD.

Each row is one ``distill fit --config ...`` run (in a subprocess, in the order listed, so
the teacher exists before its students need it); arguments after ``--`` go to every run,
e.g. ``-- --trainer.max_epochs 10``. The table reads each run's newest TensorBoard log:
the last and best value of every metric column, and the run's wall time (first to last
event); ``--curves val/knn_top1 train/mined_precision`` also prints those metrics over
training. Compare wall times only within one invocation on one machine. ``--seeds 0 1 2``
runs (or, with ``--report``, reports) every run with each seed, ``--seed_everything N`` and
logs tagged ``seed<N>`` (the config's own seed keeps the untagged logs); a teacher that other
runs load keeps its config's seed, so ``--seeds 1 2`` adds students only. With several seeds
a second table gives each method's final values as mean ± standard deviation over seeds,
and its gain over the student alone ± the standard error of the difference of the means.
``--missing`` starts only the runs without a finished log of their planned length (see below:
those never run, unfinished or of another length), so a suite grown by a method, or stopped
by a failure, is completed without training again what is done; the tables report them all.

Logs are under ``--runs-root`` (default: the repository's ``runs/``): the configs' ``runs/...``
paths, their teachers' included, are taken under it. Runs never started are left out of the
tables and figures and named below the table. A run that stopped before the ``max_epochs`` it
was started with (the ``config.yaml`` of its log) is marked ``unfinished: 3 of 40 epochs``,
and one of another length than the suite plans (the config's ``max_epochs``, or the run's own
arguments; not those after ``--``) ``2 epochs, not 40``: in the tables' ``epochs`` column and
in the figures' legends, where runs of different lengths are never averaged together. The
distillation suites' tables have a ``kind`` column: what each method distils (logits or
features).

``--figures`` writes ``<suite>_curves.png`` (each metric column against the epoch, one line
per method, the mean of its seeds) and ``<suite>_final.png`` (the final values, with error
bars of one standard deviation over seeds, or of one binomial standard error on the 1,017
val images for a single run) to ``--figures-dir`` (default ``<runs-root>/cifar10-5k/figures``).
Each method's curve has its own colour, each kind of method its own line style (logits
dashed, features solid; the teacher and the student alone solid black and grey), one legend
beside the axes; the final figure marks off the kinds and draws the student alone's mean
across as a dotted line.
README's figures in ``benchmarks/figures`` are replaced only when that folder is named. A
figure without data is not written.

    python benchmarks/cifar10_5k.py distillation --parallel 2 --threads 1 --seeds 0 1 2 --figures

    python benchmarks/cifar10_5k.py selfsupervised --report --curves val/knn_top1
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs"  # where the configs' ``runs/...`` paths point (the runs start in ROOT)
VAL_IMAGES = 1017  # cifar10-5k's val split
TEACHER = "--model.init_args.teacher_checkpoint"


@dataclass(frozen=True)
class Run:
    """One row: ``distill <command> --config <config> [args]``.

    ``validate`` evaluates the config's model as initialised (seeded, untrained), with its
    logs under ``<runs_root>/cifar10-5k/init/``: the random-init baseline of a backbone. A run
    with a ``tag`` (e.g. ``seed1`` with ``args=("--seed_everything", "1")``) writes to the
    config's ``default_root_dir`` plus ``_<tag>``, so variants of a config keep their logs.
    """

    label: str
    config: str
    command: str = "fit"
    args: tuple[str, ...] = ()
    tag: str = ""
    seeded: bool = True  # False: a run others load (a teacher) runs with its config's seed only
    runs_root: Path = RUNS  # the configs' ``runs/`` paths are taken under it
    kind: str = ""  # what a method distils (LOGITS, FEATURES): a table column, a figure span
    baseline: bool = False  # the row the methods should beat: a line across the final figure

    def config_value(self, *keys: str):
        """A value of the run's config file, e.g. ``config_value("trainer", "max_epochs")``;
        ``None`` where a key is absent."""
        with open(ROOT / self.config) as f:
            value = yaml.safe_load(f)
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
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

    def under_runs_root(self, path: str) -> Path:
        """A path of the config or the arguments: under the runs root for ``runs/...``, else
        as the run sees it (relative to the repository)."""
        parts = Path(path).parts
        if parts[:1] == ("runs",):
            return self.runs_root.joinpath(*parts[1:])
        return ROOT / path

    def root_dir(self) -> Path:
        """Where this run's ``lightning_logs/`` go."""
        if self.command == "validate":
            return self.runs_root / "cifar10-5k/init" / Path(self.config).stem
        root = self.under_runs_root(
            self.setting("--trainer.default_root_dir", "trainer", "default_root_dir")
        )
        return root.with_name(f"{root.name}_{self.tag}") if self.tag else root

    def command_line(self, extra: Sequence[str] = ()) -> list[str]:
        """The arguments of ``distill`` for this run, ``extra`` after the run's own."""
        command = [self.command, "--config", self.config, *self.args]
        moved = self.runs_root != RUNS
        teacher = self.setting(TEACHER, "model", "init_args", "teacher_checkpoint")
        if moved and teacher:
            command += [TEACHER, str(self.under_runs_root(teacher))]
        command += extra
        if self.command == "validate" or self.tag or moved:
            command += ["--trainer.default_root_dir", str(self.root_dir())]
        return command


#: What a method distils, in the suites' ``kind`` column: the teacher's logits, or its
#: features (intermediate maps or the pooled embedding), as the DKD paper's table divides them.
LOGITS, FEATURES = "logits", "features"

#: The first stage of the resnet20 -> resnet8 suites: the teacher and the student alone.
RESNET20_RESNET8 = [
    Run("teacher resnet20", "configs/supervised/cifar10-5k_resnet20.yaml", seeded=False),
    Run("student resnet8 alone", "configs/supervised/cifar10-5k_resnet8.yaml", baseline=True),
]

#: Suites: stages of runs in dependency order; a stage starts when the one before it ends.
#: Methods on logits come first, then those on features in RepDistiller's (the CRD paper's) order.
SUITES: dict[str, list[list[Run]]] = {
    "distillation": [
        RESNET20_RESNET8,
        [
            Run("KD", "configs/kd/cifar10-5k_resnet20_resnet8.yaml", kind=LOGITS),
            Run("DKD", "configs/dkd/cifar10-5k_resnet20_resnet8.yaml", kind=LOGITS),
            Run("DIST", "configs/dist/cifar10-5k_resnet20_resnet8.yaml", kind=LOGITS),
            Run("FitNets", "configs/fitnets/cifar10-5k_resnet20_resnet8.yaml", kind=FEATURES),
            Run("AT", "configs/at/cifar10-5k_resnet20_resnet8.yaml", kind=FEATURES),
            Run("SP", "configs/sp/cifar10-5k_resnet20_resnet8.yaml", kind=FEATURES),
            Run("VID", "configs/vid/cifar10-5k_resnet20_resnet8.yaml", kind=FEATURES),
            Run("RKD", "configs/rkd/cifar10-5k_resnet20_resnet8.yaml", kind=FEATURES),
            Run("PKT", "configs/pkt/cifar10-5k_resnet20_resnet8.yaml", kind=FEATURES),
            Run("CRD", "configs/crd/cifar10-5k_resnet20_resnet8.yaml", kind=FEATURES),
            Run("CRD+KD", "configs/crd/cifar10-5k_resnet20_resnet8_kd.yaml", kind=FEATURES),
        ],
    ],
    # KD, RKD and CRD with a bigger teacher and student: about 3x the CPU time.
    "distillation56": [
        [
            Run("teacher resnet56", "configs/supervised/cifar10-5k_resnet56.yaml", seeded=False),
            Run(
                "student resnet20 alone",
                "configs/supervised/cifar10-5k_resnet20.yaml",
                baseline=True,
            ),
        ],
        [
            Run("KD", "configs/kd/cifar10-5k_resnet56_resnet20.yaml", kind=LOGITS),
            Run("RKD", "configs/rkd/cifar10-5k_resnet56_resnet20.yaml", kind=FEATURES),
            Run("CRD", "configs/crd/cifar10-5k_resnet56_resnet20.yaml", kind=FEATURES),
            Run("CRD+KD", "configs/crd/cifar10-5k_resnet56_resnet20_kd.yaml", kind=FEATURES),
        ],
    ],
    # The runs behind RESULTS.md's account of AT and DIST, with ``--seeds 0 1 2 3 4``: the
    # student alone, DIST and AT with two seeds more than the distillation suite's, and AT
    # with a tenth of its weight (a variant's logs go to a folder of its own).
    "distillation_checks": [
        RESNET20_RESNET8,
        [
            Run("DIST", "configs/dist/cifar10-5k_resnet20_resnet8.yaml", kind=LOGITS),
            Run("AT", "configs/at/cifar10-5k_resnet20_resnet8.yaml", kind=FEATURES),
            Run(
                "AT, β 100",
                "configs/at/cifar10-5k_resnet20_resnet8.yaml",
                args=(
                    "--model.init_args.at_weight",
                    "100",
                    "--trainer.default_root_dir",
                    "runs/cifar10-5k/at_beta100_resnet20_resnet8",
                ),
                kind=FEATURES,
            ),
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
    "distillation_checks": ["val/top1", "val/knn_top1"],
    "selfsupervised": ["val/knn_top1", "val/teacher_knn_top1"],
}


def newest_version(run: Run) -> Path | None:
    versions = sorted(
        (run.root_dir() / "lightning_logs").glob("version_*"),
        key=lambda p: int(p.name.split("_")[1]),
    )
    return versions[-1] if versions else None


def execute(run: Run, extra: Sequence[str], threads: int | None) -> int:
    """Runs ``distill <command> --config <config> ...`` and returns its exit status."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    command = [sys.executable, "-m", "distill", *run.command_line(extra)]
    print("$", " ".join(command[1:]), flush=True)
    return subprocess.run(command, cwd=ROOT, env=env).returncode


def run_stage(runs: list[Run], extra: Sequence[str], threads: int | None, parallel: int) -> None:
    """Runs ``runs`` (``parallel`` at a time); exits with a message naming any that failed,
    so that no later stage starts without what it loads."""
    with ThreadPoolExecutor(parallel) as pool:
        codes = list(pool.map(lambda run: execute(run, extra, threads), runs))
    failed = [f"{r.label} (exit status {c})" for r, c in zip(runs, codes, strict=True) if c]
    if failed:
        sys.exit(
            f"failed: {', '.join(failed)}; distill's output is above. Later stages were not "
            "started; --report shows the runs that have logs."
        )


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


@dataclass(frozen=True)
class Progress:
    """Epochs a run's newest log validated, against the ``max_epochs`` the run was started
    with (``own``: its log's ``config.yaml``) and the suite's plan for it (``planned``)."""

    done: int
    own: int
    planned: int

    def note(self) -> str:
        """How the run differs from the plan, for tables and legends; ``""`` for none."""
        if self.done < self.own:
            return f"unfinished: {self.done} of {self.own} epochs"
        if self.done != self.planned:
            return f"{self.done} epochs, not {self.planned}"
        return ""


def started_epochs(version: Path) -> int | None:
    """The ``max_epochs`` in the ``config.yaml`` a run left in its log folder, if recorded."""
    try:
        config = yaml.safe_load((version / "config.yaml").read_text())
        epochs = config["trainer"]["max_epochs"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    return epochs if isinstance(epochs, int) and epochs > 0 else None


@functools.cache
def progress(run: Run) -> Progress | None:
    """``None`` for a run without logs, and for ``validate`` (one evaluation, no epochs)."""
    version, scalars = load_scalars(run)
    if version is None or run.command == "validate":
        return None
    validations = [e.step for tag, es in scalars.items() if tag.startswith("val/") for e in es]
    # Lightning logs ``epoch`` with every metric, and an epoch's validation at a step before
    # the next epoch's first: the epochs up to the last validation's step are those done.
    last = max(validations, default=-1)
    done = 1 + int(max((e.value for e in scalars.get("epoch", []) if e.step <= last), default=-1))
    planned = run.planned_epochs()
    return Progress(done, started_epochs(version) or planned, planned)


def finished(run: Run) -> bool:
    """Whether ``run`` has a log of all its planned epochs (``validate``: any log)."""
    return load_scalars(run)[0] is not None and not note(run)


def note(run: Run) -> str:
    """``unfinished: 3 of 40 epochs``, ``2 epochs, not 40``, or ``""`` (see the docstring)."""
    state = progress(run)
    return state.note() if state else ""


def final_values(run: Run, tag: str, last_epochs: int = 0) -> float | None:
    """The last logged value of ``tag`` (or the mean over its last ``last_epochs`` epochs),
    finished or not (see ``note``); ``None`` where the run logged no ``tag``."""
    _, scalars = load_scalars(run)
    events = scalars.get(tag, [])
    if not events:
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
    """The runs with logs grouped by label and length (a label's seeds of one length
    together), in the suite's order; a group's name is its label, plus its note if any."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        if load_scalars(run)[0] is not None:
            mark = note(run)
            groups.setdefault(f"{run.label} [{mark}]" if mark else run.label, []).append(run)
    return groups


def shown(path: Path) -> str:
    """``path`` relative to the repository when inside it."""
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


def summary(run: Run, metrics: list[str]) -> dict[str, str]:
    """Epochs, last and best of each metric and the wall time of a run's newest log."""
    version, scalars = load_scalars(run)
    row = {"run": shown(version), "kind": run.kind or "-"}
    times = [e.wall_time for events in scalars.values() for e in events]
    row["wall"] = f"{(max(times) - min(times)) / 60:.1f} min" if len(times) > 1 else "-"
    state = progress(run)
    row["epochs"] = (state.note() or str(state.done)) if state else "-"
    for metric in metrics:
        values = [e.value for e in scalars.get(metric, [])]
        row[metric] = f"{values[-1]:.3f} (best {max(values):.3f})" if values else "-"
    return row


def print_curves(runs: list[Run], metrics: list[str], points: int = 12) -> None:
    """Each run's values of ``metrics`` over training (at most ``points`` per curve)."""
    for run in runs:
        _, scalars = load_scalars(run)
        mark = f" [{note(run)}]" if note(run) else ""
        for metric in metrics:
            events = scalars.get(metric, [])
            if not events:
                continue
            stride = max(1, round(len(events) / points))
            shown_events = events[::stride]
            if shown_events[-1] is not events[-1]:
                shown_events.append(events[-1])
            values = " ".join(f"{e.value:.3f}@{e.step}" for e in shown_events)
            print(f"{run.label}{mark} {metric} (value@step): {values}")


def mean_curve(group: list[Run], metric: str) -> tuple[list[int], list[float]]:
    """The epochs (from 1) at which every run of ``group`` logged ``metric``, and the runs'
    mean there in %."""
    curves = []  # per run: {epoch: value}
    for scalars in (load_scalars(run)[1] for run in group):
        epochs = {e.step: e.value for e in scalars.get("epoch", [])}
        curves.append({int(epochs.get(e.step, 0)) + 1: e.value for e in scalars.get(metric, [])})
    shared = sorted(set.intersection(*(set(c) for c in curves)))
    return shared, [100 * statistics.mean(c[x] for c in curves) for x in shared]


#: The curves' line styles by kind of method (``Run.kind``), in the order the kinds appear.
KIND_LINES = ("--", "-", "-.", ":")


def line_styles(groups: dict[str, list[Run]]) -> dict[str, dict[str, str]]:
    """The colour and line style of each group's curves: every group its own colour (tab10's
    but its grey, in order) and every kind of method its own line style, so that a dozen
    curves stay apart; in a suite with kinds, the rows of none (teacher, student alone) are
    solid black and greys."""
    import matplotlib

    kinds = list(dict.fromkeys(group[0].kind for group in groups.values() if group[0].kind))
    tab10 = matplotlib.colormaps["tab10"].colors
    colours = itertools.cycle(tab10[:7] + tab10[8:])  # tab10[7] is grey
    greys = itertools.cycle(("black", "0.55", "0.75"))
    styles = {}
    for name, group in groups.items():
        kind = group[0].kind
        if kinds and not kind:
            styles[name] = {"color": next(greys), "linestyle": "-"}
        else:
            line = KIND_LINES[kinds.index(kind) % len(KIND_LINES)] if kind else "-"
            styles[name] = {"color": next(colours), "linestyle": line}
    return styles


def plot(suite: str, runs: list[Run], metrics: list[str], folder: Path) -> list[Path]:
    """The suite's curves and final values as two small PNG files in ``folder`` (see the
    docstring); returns those written. A figure without data is not written.

    A label run with several seeds is drawn as its mean; its final value's error bar is the
    seeds' standard deviation (one binomial standard error on the val images for one seed).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = by_label(runs)
    written = []
    lines = {}  # metric: {group name: (epochs, mean %)}, for the metrics some group logged
    for metric in metrics:
        curves = {name: mean_curve(group, metric) for name, group in groups.items()}
        if drawn := {name: curve for name, curve in curves.items() if curve[0]}:
            lines[metric] = drawn
    path = folder / f"{suite}_curves.png"
    if lines:
        styles = line_styles(groups)
        fig, _ = plt.subplots(
            1, len(lines), figsize=(4.6 * len(lines) + 2.6, 3.8), dpi=100, layout="constrained"
        )
        legend = {}  # label: line, in the groups' order
        for ax, (metric, drawn) in zip(fig.axes, lines.items(), strict=True):
            for name, (epochs, means) in drawn.items():
                label = f"{name} (n={len(groups[name])})"
                legend[label] = ax.plot(epochs, means, marker=".", markersize=4, linewidth=1.2,
                                        label=label, **styles[name])[0]  # fmt: skip
            ax.set(xlabel="epoch", ylabel=f"{metric} (%)")
            ax.grid(alpha=0.3)
        # One legend for all axes, beside them: inside, a dozen names would hide the curves.
        order = [f"{name} (n={len(group)})" for name, group in groups.items()]
        labels = [label for label in order if label in legend]
        fig.legend([legend[label] for label in labels], labels, loc="outside right upper",
                   fontsize=7)  # fmt: skip
        fig.suptitle(f"cifar10-5k, {suite}", fontsize=10)
        written.append(save(fig, path))
    else:
        print(f"{shown(path)} not written: no run logged {' or '.join(metrics)}")
    finals = {}  # name: {metric: final values of the group's runs}
    for name, group in groups.items():
        values = {m: [v for r in group if (v := final_values(r, m)) is not None] for m in metrics}
        if any(values.values()):
            finals[name] = values
    path = folder / f"{suite}_final.png"
    if not finals:
        print(f"{shown(path)} not written: no run logged {' or '.join(metrics)}")
        return written
    written.append(save(final_figure(plt, groups, finals, metrics), path))
    return written


def final_figure(plt, groups: dict[str, list[Run]], finals: dict, metrics: list[str]):
    """The final values of each group in ``finals`` ({name: {metric: values}}) with error bars,
    the kinds of method marked off, and the baseline row's mean as a line across."""
    fig, ax = plt.subplots(figsize=(1.5 + 0.8 * len(finals), 4.4), dpi=100, layout="constrained")
    offset = 0.25 / max(len(metrics) - 1, 1)
    # The baseline row at its planned length (a group named by its label alone).
    baseline = next((n for n in finals if groups[n][0].baseline and n == groups[n][0].label), None)
    handles = []
    for column, metric in enumerate(metrics):
        points = []  # (x, mean %, error %)
        for i, values in enumerate(finals.values()):
            if values[metric]:
                mean, std = mean_std(values[metric])
                error = std if len(values[metric]) > 1 else (mean * (1 - mean) / VAL_IMAGES) ** 0.5
                x = i + (column - (len(metrics) - 1) / 2) * offset
                points.append((x, 100 * mean, 100 * error))
        if not points:
            continue
        xs, ys, errors = zip(*points, strict=True)
        bars = ax.errorbar(xs, ys, yerr=errors, fmt="o", capsize=3, label=metric)
        handles.append(bars)
        if baseline and finals[baseline][metric]:
            level = 100 * statistics.mean(finals[baseline][metric])
            handles.append(ax.axhline(level, color=bars.lines[0].get_color(), linestyle=":",
                                      linewidth=1, label=f"{metric} of {baseline}"))  # fmt: skip
    names = [f"{name} (n={len(groups[name])})" for name in finals]
    ax.set_xticks(range(len(finals)), names, rotation=30, ha="right", fontsize=8)
    kinds = [groups[name][0].kind for name in finals]
    starts = [i for i, kind in enumerate(kinds) if i == 0 or kind != kinds[i - 1]]
    for start, end in zip(starts, [*starts[1:], len(kinds)], strict=True):
        if start:
            ax.axvline(start - 0.5, color="0.6", linewidth=0.8)
        if kinds[start]:
            ax.text((start + end - 1) / 2, 0.98, f"on {kinds[start]}", ha="center", va="top",
                    fontsize=8, color="0.3", transform=ax.get_xaxis_transform())  # fmt: skip
    ax.margins(y=0.12)  # room for the kinds' names above the points
    ax.set(ylabel="final value (%)")
    ax.set_title("error bars: s.d. over n seeds; n = 1: binomial s.e. on val", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(handles=handles, fontsize=7)
    return fig


def save(fig, path: Path) -> Path:
    """Writes ``fig`` to ``path`` (creating its folder), closes it and says so; exits with
    a message naming the path if it cannot be written (the tables are printed by then)."""
    import matplotlib.pyplot as plt

    if fig.get_layout_engine() is None:  # a figure laid out on creation keeps its layout
        fig.tight_layout()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    except OSError as error:
        sys.exit(f"cannot write {shown(path)}: {error.strerror or error}")
    finally:
        plt.close(fig)
    print(f"wrote {shown(path)}")
    return path


def print_markdown(header: list[str], lines: list[list[str]]) -> None:
    """A Markdown table with aligned columns."""
    widths = [max(len(x) for x in col) for col in zip(header, *lines, strict=True)]
    fmt = "| " + " | ".join(f"{{:<{w}}}" for w in widths) + " |"
    print(fmt.format(*header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in lines:
        print(fmt.format(*line))


def print_table(rows: list[tuple[str, dict[str, str]]], metrics: list[str], kinds: bool) -> None:
    """One line per run; with ``kinds``, what each method distils (``Run.kind``) beside it."""
    columns = [*(["kind"] if kinds else []), "epochs", *metrics, "wall", "run"]
    lines = [[label, *(row.get(c, "-") for c in columns)] for label, row in rows]
    print_markdown(["method", *columns], lines)


def print_seed_table(runs: list[Run], metrics: list[str], kinds: bool) -> None:
    """Per label and length: its seeds and each metric's final value, mean ± s.d., and each
    method's gain over the baseline (the student alone) ± the standard error of the difference
    of the means, ``√(s²/n + s_b²/n_b)``; with ``kinds``, what the method distils. A method
    run with another length than the baseline, or with one seed, gets no gain."""
    groups = by_label(runs)
    finals = {
        name: {m: [v for r in group if (v := final_values(r, m)) is not None] for m in metrics}
        for name, group in groups.items()
    }
    base = next((n for n, g in groups.items() if g[0].baseline and not note(g[0])), None)
    lines = []
    for name, group in groups.items():
        cells = []
        for metric, values in finals[name].items():
            mean, std = mean_std(values) if values else (0.0, 0.0)
            spread = f" ± {100 * std:.1f}" if len(values) > 1 else ""
            cells.append(f"{100 * mean:.1f}{spread}" if values else "-")
            cells.append(gain(values, finals[base][metric]) if base and group[0].kind
                          and not note(group[0]) else "")  # fmt: skip
        kind = [group[0].kind or "-"] if kinds else []
        lines.append([name, *kind, str(len(group)), *cells])
    header = ["method", *(["kind"] if kinds else []), "seeds"]
    header += [column for m in metrics for column in (f"{m} %", "gain")]
    print_markdown(header, lines)


def gain(values: list[float], baseline: list[float]) -> str:
    """``+1.3 ± 0.5`` (points): the difference of the means ± its standard error."""
    if len(values) < 2 or len(baseline) < 2:
        return ""
    (mean, std), (base, base_std) = mean_std(values), mean_std(baseline)
    error = (std**2 / len(values) + base_std**2 / len(baseline)) ** 0.5
    return f"{100 * (mean - base):+.1f} ± {100 * error:.1f}"


def report(
    suite: str, runs: list[Run], seeded: bool, curves: list[str], figures: Path | None
) -> None:
    """The tables (and the figures in ``figures``) of the runs that have logs."""
    metrics = METRICS[suite]
    logged = [run for run in runs if load_scalars(run)[0] is not None]
    if not logged:
        root = runs[0].runs_root if runs else RUNS
        print(f"no logs of the {suite} runs under {shown(root)}: no table, no figures")
        return
    name = (lambda r: f"{r.label}, seed {r.seed()}") if seeded else (lambda r: r.label)
    kinds = any(run.kind for run in runs)
    print_table([(name(r), summary(r, metrics)) for r in logged], metrics, kinds)
    missing = [name(r) for r in runs if r not in logged]
    if missing:
        print(f"\nnot run yet (no logs): {'; '.join(missing)}")
    if seeded:
        print()
        print_seed_table(logged, metrics, kinds)
    print_curves(logged, curves)
    if figures:
        plot(suite, logged, metrics, figures)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=Path(__file__).name,
        usage="%(prog)s SUITE [options] [-- arguments for every run]",
        description=__doc__.splitlines()[0],
    )
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
    parser.add_argument(
        "--missing", action="store_true",
        help="start only the runs without a finished log of their planned length",
    )  # fmt: skip
    parser.add_argument("--figures", action="store_true", help="also write the two PNGs")
    parser.add_argument(
        "--figures-dir", type=Path,
        help="folder of the PNGs, replacing files of the same name in it (implies --figures; "
        "default: <runs-root>/cifar10-5k/figures)",
    )  # fmt: skip
    parser.add_argument(
        "--runs-root", type=Path, default=RUNS,
        help="folder that stands for the configs' runs/ (default: the repository's runs/)",
    )  # fmt: skip
    return parser


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options, with what follows the first ``--`` as ``extra`` (argparse itself does not
    match a positional list after ``--`` once an option came between, hence the split)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args = build_parser().parse_args(argv[:cut])
    args.extra = argv[cut + 1 :]
    args.runs_root = args.runs_root.resolve()
    args.figures = args.figures or args.figures_dir is not None
    args.figures_dir = (args.figures_dir or args.runs_root / "cifar10-5k" / "figures").resolve()
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    stages = [[replace(run, runs_root=args.runs_root) for run in s] for s in SUITES[args.suite]]
    if args.seeds:
        stages = [
            [r for run in stage for s in args.seeds if (r := run.with_seed(s))] for stage in stages
        ]
    if not args.report:
        for number, stage in enumerate(stages, 1):
            if args.stages and number not in args.stages:
                continue
            if starting := [run for run in stage if not (args.missing and finished(run))]:
                run_stage(starting, args.extra, args.threads, args.parallel)
        # ``--missing`` read logs that the runs since changed: the report reads them afresh.
        load_scalars.cache_clear()
        progress.cache_clear()
    runs = [run for stage in stages for run in stage]
    seeded = bool(args.seeds) and len(args.seeds) > 1
    report(args.suite, runs, seeded, args.curves, args.figures_dir if args.figures else None)


if __name__ == "__main__":
    main()
