"""ReKD's gain over MoCo-v2 on cifar10-5k, against the strength of the teacher's relations.

    python benchmarks/rekd_study.py --parallel 2 --threads 1      # train every row, then report
    python benchmarks/rekd_study.py --report                      # table and figures from runs/
    python benchmarks/rekd_study.py --rows moco rekd_vgg8 --seeds 0   # only these rows and seeds

Every row trains the same resnet8 student (views, queue, optimiser and epochs of
``configs/moco/cifar10-5k_resnet8.yaml``) and is scored by the val k-NN top-1 (k = 20) of
its final epoch, mean ± standard deviation over its seeds (the gain over MoCo-v2: difference
of the means ± its standard error). ReKD rows differ only in where
the relation comes from: an online teacher trained with the student (resnet20, and one that
ends stronger than the student), an offline teacher loaded from a run of the first stage
and frozen (a longer MoCo-v2 run, a supervised run), or the true labels (``oracle``: a
diagnostic upper bound, not a self-supervised result). ``mined precision`` is the mean of
``train/mined_precision`` (same-class fraction of the mined positives) over the last
``--precision-epochs`` epochs, the teacher's relation strength.

Stages run in order (the offline teachers exist before their students need them); each
run is ``distill fit --config ...`` in a subprocess (see ``cifar10_5k.py``), its logs in
``<runs-root>/cifar10-5k/<config's run>_<tag>`` (``--runs-root``, default the repository's
``runs/``, stands for the configs' ``runs/``, teachers' paths included). Rows never run are
left out of the table and figures and named below the table; a run that stopped early, or
of another length than planned, is marked as in ``cifar10_5k.py`` (``unfinished: 3 of 30
epochs``), its seeds averaged only with runs of that length and compared with a MoCo-v2 run
of that length. Writes ``rekd_gain.png`` (student gain over MoCo-v2 against mined precision),
``distillation_gain.png`` (SEED, DisCo and offline ReKD with each frozen teacher) and
``rekd_knn_curves.png`` (each row's first seed) to ``--figures-dir`` (default
``<runs-root>/cifar10-5k/figures``; README's in ``benchmarks/figures`` are replaced only when
that folder is named); a figure without data is not written.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cifar10_5k import (
    RUNS,
    Run,
    final_values,
    load_scalars,
    mean_std,
    note,
    print_markdown,
    run_stage,
    save,
    shown,
)

SEEDS = (0, 1, 2)
# Offline teachers are taken as they end: without a monitor last.ckpt is the final epoch.
LAST_EPOCH = ("--checkpoint.monitor", "null")


@dataclass(frozen=True)
class Row:
    """One line of the table: a config, its extra arguments and the seeds it is run with."""

    name: str
    label: str
    config: str
    seeds: tuple[int, ...] = SEEDS
    args: tuple[str, ...] = ()
    stage: int = 2
    relation: str = ""  # "online", "offline", "oracle" or "" (no relation: a baseline)
    variant: str = ""  # names the logs of a config run with other arguments
    labels: bool = False  # the row used labels: a teacher trained on them, or the oracle
    teacher: str = ""  # the frozen teacher a distillation row shares with others (its figure)
    method: str = ""  # the method of such a row, in that figure

    def runs(self, runs_root: Path = RUNS, seeds: Sequence[int] | None = None) -> list[Run]:
        """The row's runs, one per seed (of ``seeds`` only, when given)."""
        prefix = f"{self.variant}_" if self.variant else ""
        return [
            Run(
                self.label,
                self.config,
                args=("--seed_everything", str(s), *self.args),
                tag=f"{prefix}seed{s}",
                runs_root=runs_root,
            )  # fmt: skip
            for s in self.seeds
            if not seeds or s in seeds
        ]


SUPERVISED_4EP = "runs/cifar10-5k/supervised_resnet20_4ep_seed0"  # the run's last.ckpt
MOCO_VGG8, SUPERVISED_RESNET20 = "MoCo-v2 vgg8, 60 epochs", "supervised resnet20, 40 epochs"
ROWS = [
    # Stage 1: the MoCo-v2 baseline (with and without shuffle-BN) and the offline teachers.
    Row("moco", "MoCo-v2 resnet8", "configs/moco/cifar10-5k_resnet8.yaml", stage=1),
    Row("moco_no_shuffle_bn", "MoCo-v2 resnet8, shuffle-BN off",
        "configs/moco/cifar10-5k_resnet8.yaml", stage=1,
        args=("--model.init_args.shuffle_bn", "off"), variant="no_shuffle_bn"),
    # The control of the shuffle-BN ablation: split's 8 groups, keys not shuffled (each key
    # normalised with its own query's group): the leak alone, at split's group size.
    Row("moco_split_unshuffled", "MoCo-v2 resnet8, 8 BN groups, keys not shuffled",
        "configs/moco/cifar10-5k_resnet8.yaml", stage=1,
        args=("--model.init_args.shuffle_bn", "split_unshuffled"), variant="split_unshuffled"),
    Row("teacher_supervised", "teacher: supervised resnet20, 40 epochs",
        "configs/supervised/cifar10-5k_resnet20.yaml", seeds=(0,), stage=1, args=LAST_EPOCH,
        labels=True),
    Row("teacher_supervised_4ep", "teacher: supervised resnet20, 4 epochs",
        "configs/supervised/cifar10-5k_resnet20.yaml", seeds=(0,), stage=1,
        args=(*LAST_EPOCH, "--trainer.max_epochs", "4"), variant="4ep", labels=True),
    Row("teacher_moco", "teacher: MoCo-v2 vgg8, 60 epochs",
        "configs/moco/cifar10-5k_vgg8.yaml", seeds=(0,), stage=1, args=LAST_EPOCH),
    # Stage 2: the same resnet8 student with relations from teachers of rising strength.
    Row("rekd_resnet20", "ReKD, online resnet20 teacher",
        "configs/rekd/cifar10-5k_resnet20_resnet8.yaml", relation="online"),
    Row("rekd_vgg8", "ReKD, online vgg8 teacher",
        "configs/rekd/cifar10-5k_vgg8_resnet8.yaml", relation="online"),
    Row("rekd_resnet20_k400", "ReKD, online resnet20 teacher, K = 400",
        "configs/rekd/cifar10-5k_resnet20_resnet8.yaml", relation="online",
        args=("--model.init_args.num_prototypes", "400"), variant="k400"),
    Row("rekd_vgg8_k400", "ReKD, online vgg8 teacher, K = 400",
        "configs/rekd/cifar10-5k_vgg8_resnet8.yaml", relation="online",
        args=("--model.init_args.num_prototypes", "400"), variant="k400"),
    Row("rekd_offline_moco", "ReKD, offline MoCo-v2 vgg8 teacher (frozen)",
        "configs/rekd/cifar10-5k_moco-vgg8_resnet8.yaml", relation="offline",
        teacher=MOCO_VGG8, method="ReKD"),
    Row("rekd_offline_supervised_4ep", "ReKD, offline supervised resnet20 teacher, 4 epochs",
        "configs/rekd/cifar10-5k_supervised-resnet20_resnet8.yaml", relation="offline",
        args=("--model.init_args.teacher_checkpoint", SUPERVISED_4EP), variant="4ep",
        labels=True),
    Row("rekd_offline_supervised", "ReKD, offline supervised resnet20 teacher, 40 epochs",
        "configs/rekd/cifar10-5k_supervised-resnet20_resnet8.yaml", relation="offline",
        labels=True, teacher=SUPERVISED_RESNET20, method="ReKD"),
    # The self-supervised distillation methods ReKD's paper compares with, same teachers.
    Row("seed_moco", "SEED, MoCo-v2 vgg8 teacher (frozen)",
        "configs/seed/cifar10-5k_moco-vgg8_resnet8.yaml", teacher=MOCO_VGG8, method="SEED"),
    Row("seed_supervised", "SEED, supervised resnet20 teacher, 40 epochs",
        "configs/seed/cifar10-5k_supervised-resnet20_resnet8.yaml", labels=True,
        teacher=SUPERVISED_RESNET20, method="SEED"),
    Row("disco_moco", "DisCo, MoCo-v2 vgg8 teacher (frozen)",
        "configs/disco/cifar10-5k_moco-vgg8_resnet8.yaml", teacher=MOCO_VGG8, method="DisCo"),
    Row("disco_supervised", "DisCo, supervised resnet20 teacher, 40 epochs",
        "configs/disco/cifar10-5k_supervised-resnet20_resnet8.yaml", labels=True,
        teacher=SUPERVISED_RESNET20, method="DisCo"),
    Row("rekd_oracle", "ReKD, oracle relation (true labels; diagnostic)",
        "configs/rekd/cifar10-5k_oracle_resnet8.yaml", relation="oracle", labels=True),
]  # fmt: skip


def summarise(
    rows: list[Row], precision_epochs: int, runs_root: Path = RUNS, seeds: Sequence[int] = ()
) -> list[dict]:
    """Per row and run length (see ``cifar10_5k.note``): the runs with logs, student and
    teacher k-NN, mined precision and val top-1 (one value per run); a row never run is one
    entry without runs."""
    table = []
    for row in rows:
        groups: dict[str, list[Run]] = {}
        for run in row.runs(runs_root, seeds):
            if load_scalars(run)[0] is not None:
                groups.setdefault(note(run), []).append(run)
        for mark, runs in (groups or {"": []}).items():  # a row never run: no runs
            table.append({
                "row": row, "note": mark, "runs": runs,
                "knn": finals(runs, "val/knn_top1"),
                "teacher_knn": finals(runs, "val/teacher_knn_top1"),
                "precision": finals(runs, "train/mined_precision", precision_epochs),
                "top1": finals(runs, "val/top1"),
            })  # fmt: skip
    return table


def finals(runs: list[Run], tag: str, last_epochs: int = 0) -> list[float]:
    """``final_values`` of the runs that logged ``tag``."""
    return [v for run in runs if (v := final_values(run, tag, last_epochs)) is not None]


#: Marks a row that used labels, in the table and the figures' legends.
LABELS_MARK = " (labels)"
LABELS_NOTE = (
    "(labels): the row used labels (its teacher was trained on them, or the oracle takes "
    "the true classes): not a self-supervised result"
)


def name(entry: dict) -> str:
    """A table entry's row label, marked if it used labels, with its note in brackets if any."""
    label = entry["row"].label + (LABELS_MARK if entry["row"].labels else "")
    return f"{label} [{entry['note']}]" if entry["note"] else label


def fmt(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    if not values:
        return "-"
    mean, std = mean_std([v * scale for v in values])
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def by_seed(runs: list[Run]) -> str:
    """Each run's final student k-NN, by its seed: ``seed0 44.1, seed1 44.4``."""
    values = [(run.tag.rpartition("_")[2], final_values(run, "val/knn_top1")) for run in runs]
    return ", ".join(f"{tag} {100 * v:.1f}" for tag, v in values if v is not None) or "-"


def gain_over(values: list[float], baseline: list[float]) -> tuple[float, float]:
    """Gain of the mean over the baseline's mean (points) and the standard error of that
    difference; a row of one seed borrows the baseline's seed-to-seed deviation."""
    row = [v * 100 for v in values]
    base = [v * 100 for v in baseline]
    base_mean, base_std = mean_std(base)
    std = statistics.stdev(row) if len(row) > 1 else base_std
    error = (base_std**2 / len(base) + std**2 / len(row)) ** 0.5
    return statistics.mean(row) - base_mean, error


def baselines(table: list[dict]) -> dict[str, list[float]]:
    """MoCo-v2's final k-NN values by run length (note): the baseline of a gain."""
    return {t["note"]: t["knn"] for t in table if t["row"].name == "moco" and t["knn"]}


def print_table(table: list[dict]) -> None:
    baseline = baselines(table)
    header = ["row", "seeds", "student k-NN %", "gain vs MoCo-v2 ± s.e.", "teacher k-NN %",
              "mined precision", "val top-1 %", "student k-NN % by seed"]  # fmt: skip
    lines, missing = [], []
    for t in table:
        if not t["runs"]:
            missing.append(t["row"].name)
            continue
        if t["row"].name.startswith("teacher_"):  # an offline teacher's own run
            t = {**t, "teacher_knn": t["knn"], "knn": []}
        gain = "-"
        if t["note"] in baseline and t["knn"] and t["row"].name != "moco":
            gain = "{:+.1f} ± {:.1f}".format(*gain_over(t["knn"], baseline[t["note"]]))
        lines.append([
            name(t), str(len(t["runs"])), fmt(t["knn"]), gain, fmt(t["teacher_knn"]),
            fmt(t["precision"], 1.0, 3), fmt(t["top1"]), by_seed(t["runs"]),
        ])  # fmt: skip
    print_markdown(header, lines)
    if any(t["row"].labels and t["runs"] for t in table):
        print(f"\n{LABELS_NOTE}")
    if missing:
        print(f"\nnot run yet (no logs): {', '.join(missing)}")


def plot(table: list[dict], folder: Path) -> list[Path]:
    """The gain-vs-precision figure and the k-NN curves as small PNG files in ``folder``;
    returns those written. A figure without data is not written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    baseline = baselines(table)
    points = [
        t for t in table
        if t["row"].relation and t["knn"] and t["precision"] and t["note"] in baseline
    ]  # fmt: skip
    path = folder / "rekd_gain.png"
    if points:
        fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=110)
        markers = {"online": "o", "offline": "s", "oracle": "*"}
        for t in points:
            gain, gain_std = gain_over(t["knn"], baseline[t["note"]])
            precision, precision_std = mean_std(t["precision"])
            ax.errorbar(precision, gain, xerr=precision_std, yerr=gain_std, capsize=3,
                        marker=markers[t["row"].relation], linestyle="none",
                        label=name(t).removeprefix("ReKD, "))  # fmt: skip
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.axhline(3, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xlabel("mined precision (same-class fraction of mined positives)")
        ax.set_ylabel("student k-NN gain over MoCo-v2 (points)")
        epochs = points[0]["runs"][0].planned_epochs()
        ax.set_title(f"ReKD on cifar10-5k: resnet8 student, {epochs} epochs", fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
        written.append(save(fig, path))
    else:
        why = "a ReKD row with k-NN and mined precision" if baseline else "a MoCo-v2 k-NN"
        print(f"{shown(path)} not written: no logs of {why} (the gain needs both)")
    written += plot_by_teacher(table, baseline, folder, plt)
    curves = []  # (label, seed, epochs, k-NN %): the first logged seed of each row drawn
    for t in table:
        if (t["row"].stage == 2 or t["row"].name == "moco") and t["runs"]:
            run = t["runs"][0]
            scalars = load_scalars(run)[1]
            epochs = {e.step: e.value for e in scalars.get("epoch", [])}
            if events := scalars.get("val/knn_top1", []):
                xs = [int(epochs.get(e.step, 0)) + 1 for e in events]
                curves.append((name(t), run.seed(), xs, [e.value * 100 for e in events]))
    path = folder / "rekd_knn_curves.png"
    if not curves:
        print(f"{shown(path)} not written: no val/knn_top1 logged by MoCo-v2 or a ReKD row")
        return written
    seeds = {seed for _, seed, _, _ in curves}
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=110)
    for label, seed, xs, ys in curves:
        ax.plot(xs, ys, marker=".", label=label if len(seeds) == 1 else f"{label}, seed {seed}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("student val k-NN top-1 (%)")
    title = f"seed {seeds.pop()}" if len(seeds) == 1 else "first seed of each row"
    ax.set_title(f"cifar10-5k, {title}", fontsize=10)
    ax.legend(fontsize=6)
    written.append(save(fig, path))
    return written


def plot_by_teacher(table: list[dict], baseline: dict, folder: Path, plt) -> list[Path]:
    """``distillation_gain.png``: each distillation method's gain over MoCo-v2 (mean ± s.e.)
    with each frozen teacher, side by side; ``[]`` when no such row has logs."""
    entries = [
        t for t in table if t["row"].teacher and t["knn"] and t["note"] in baseline
    ]  # fmt: skip
    path = folder / "distillation_gain.png"
    if not entries:
        print(f"{shown(path)} not written: no logs of SEED, DisCo or offline ReKD with MoCo-v2's")
        return []
    teachers = list(dict.fromkeys(t["row"].teacher for t in entries))
    methods = list(dict.fromkeys(t["row"].method for t in entries))
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=110)
    for m, method in enumerate(methods):
        xs, gains, errors = [], [], []
        for x, teacher in enumerate(teachers):
            for t in entries:
                if (t["row"].method, t["row"].teacher) == (method, teacher):
                    gain, error = gain_over(t["knn"], baseline[t["note"]])
                    xs.append(x + (m - (len(methods) - 1) / 2) * width)
                    gains.append(gain)
                    errors.append(error)
        ax.bar(xs, gains, width, yerr=errors, capsize=3, label=method)
    labelled = {t["row"].teacher for t in entries if t["row"].labels}
    ax.set_xticks(
        range(len(teachers)),
        [f"{teacher}{LABELS_MARK if teacher in labelled else ''}" for teacher in teachers],
        fontsize=8,
    )
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("frozen teacher")
    ax.set_ylabel("student k-NN gain over MoCo-v2 (points)")
    ax.set_title("resnet8 students on cifar10-5k, mean ± s.e. over seeds", fontsize=10)
    ax.legend(fontsize=7)
    return [save(fig, path)]


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", choices=[r.name for r in ROWS], help="default: all")
    parser.add_argument("--seeds", type=int, nargs="+", help="only these seeds of each row")
    parser.add_argument("--report", action="store_true", help="table and figures only")
    parser.add_argument("--parallel", type=int, default=1, help="runs at once")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS per run")
    parser.add_argument("--precision-epochs", type=int, default=5)
    parser.add_argument(
        "--figures-dir", type=Path,
        help="folder of the PNGs, replacing files of the same name in it "
        "(default: <runs-root>/cifar10-5k/figures)",
    )  # fmt: skip
    parser.add_argument(
        "--runs-root", type=Path, default=RUNS,
        help="folder that stands for the configs' runs/ (default: the repository's runs/)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    args.runs_root = args.runs_root.resolve()
    args.figures_dir = (args.figures_dir or args.runs_root / "cifar10-5k" / "figures").resolve()
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    rows = [r for r in ROWS if not args.rows or r.name in args.rows]
    if not args.report:
        for stage in (1, 2):
            runs = [
                run
                for row in rows
                if row.stage == stage
                for run in row.runs(args.runs_root, args.seeds)
            ]  # fmt: skip
            run_stage(runs, [], args.threads, args.parallel)
    table = summarise(rows, args.precision_epochs, args.runs_root, args.seeds or ())
    if not any(t["runs"] for t in table):
        print(f"no logs of the study's rows under {shown(args.runs_root)}: no table, no figures")
        return
    print_table(table)
    plot(table, args.figures_dir)


if __name__ == "__main__":
    main()
