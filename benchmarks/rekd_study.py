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
``runs/cifar10-5k/<config's run>_<tag>``. Writes ``benchmarks/figures/rekd_gain.png``
(student gain over MoCo-v2 against mined precision) and ``rekd_knn_curves.png``.
"""

from __future__ import annotations

import argparse
import statistics
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from cifar10_5k import ROOT, Run, execute, final_values, load_scalars, mean_std, print_markdown

FIGURES = ROOT / "benchmarks" / "figures"
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

    def runs(self) -> list[Run]:
        prefix = f"{self.variant}_" if self.variant else ""
        return [
            Run(
                self.label,
                self.config,
                args=("--seed_everything", str(s), *self.args),
                tag=f"{prefix}seed{s}",
            )  # fmt: skip
            for s in self.seeds
        ]


SUPERVISED_4EP = "runs/cifar10-5k/supervised_resnet20_4ep_seed0"  # the run's last.ckpt
ROWS = [
    # Stage 1: the MoCo-v2 baseline (with and without shuffle-BN) and the offline teachers.
    Row("moco", "MoCo-v2 resnet8", "configs/moco/cifar10-5k_resnet8.yaml", stage=1),
    Row("moco_no_shuffle_bn", "MoCo-v2 resnet8, shuffle-BN off",
        "configs/moco/cifar10-5k_resnet8.yaml", stage=1,
        args=("--model.init_args.shuffle_bn", "off"), variant="no_shuffle_bn"),
    Row("teacher_supervised", "teacher: supervised resnet20, 40 epochs",
        "configs/supervised/cifar10-5k_resnet20.yaml", seeds=(0,), stage=1, args=LAST_EPOCH),
    Row("teacher_supervised_4ep", "teacher: supervised resnet20, 4 epochs",
        "configs/supervised/cifar10-5k_resnet20.yaml", seeds=(0,), stage=1,
        args=(*LAST_EPOCH, "--trainer.max_epochs", "4"), variant="4ep"),
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
        "configs/rekd/cifar10-5k_moco-vgg8_resnet8.yaml", relation="offline"),
    Row("rekd_offline_supervised_4ep", "ReKD, offline supervised resnet20 teacher, 4 epochs",
        "configs/rekd/cifar10-5k_supervised-resnet20_resnet8.yaml", relation="offline",
        args=("--model.init_args.teacher_checkpoint", SUPERVISED_4EP), variant="4ep"),
    Row("rekd_offline_supervised", "ReKD, offline supervised resnet20 teacher, 40 epochs",
        "configs/rekd/cifar10-5k_supervised-resnet20_resnet8.yaml", relation="offline"),
    Row("rekd_oracle", "ReKD, oracle relation (true labels; diagnostic)",
        "configs/rekd/cifar10-5k_oracle_resnet8.yaml", relation="oracle"),
]  # fmt: skip


def summarise(rows: list[Row], precision_epochs: int) -> list[dict]:
    """Per row: seeds done, student and teacher k-NN and mined precision (mean, std)."""
    table = []
    for row in rows:
        runs = row.runs()
        knn = [v for r in runs if (v := final_values(r, "val/knn_top1")) is not None]
        teacher = [v for r in runs if (v := final_values(r, "val/teacher_knn_top1")) is not None]
        precision = [
            v
            for r in runs
            if (v := final_values(r, "train/mined_precision", precision_epochs)) is not None
        ]
        top1 = [v for r in runs if (v := final_values(r, "val/top1")) is not None]
        table.append({
            "row": row, "seeds": len(knn), "knn": knn, "teacher_knn": teacher,
            "precision": precision, "top1": top1,
        })  # fmt: skip
    return table


def fmt(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    if not values:
        return "-"
    mean, std = mean_std([v * scale for v in values])
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def gain_over(values: list[float], baseline: list[float]) -> tuple[float, float]:
    """Gain of the mean over the baseline's mean (points) and the standard error of that
    difference; a row of one seed borrows the baseline's seed-to-seed deviation."""
    row = [v * 100 for v in values]
    base = [v * 100 for v in baseline]
    base_mean, base_std = mean_std(base)
    std = statistics.stdev(row) if len(row) > 1 else base_std
    error = (base_std**2 / len(base) + std**2 / len(row)) ** 0.5
    return statistics.mean(row) - base_mean, error


def print_table(table: list[dict]) -> None:
    baseline = next((t["knn"] for t in table if t["row"].name == "moco"), [])
    header = ["row", "seeds", "student k-NN %", "gain vs MoCo-v2 ± s.e.", "teacher k-NN %",
              "mined precision", "val top-1 %"]  # fmt: skip
    lines, missing = [], []
    for t in table:
        if t["row"].name.startswith("teacher_"):  # an offline teacher's own run
            t = {**t, "teacher_knn": t["knn"], "knn": []}
        if not t["knn"] and not t["teacher_knn"]:
            missing.append(t["row"].name)
            continue
        gain = "-"
        if baseline and t["knn"] and t["row"].name != "moco":
            gain = "{:+.1f} ± {:.1f}".format(*gain_over(t["knn"], baseline))
        lines.append([
            t["row"].label, str(t["seeds"]), fmt(t["knn"]), gain, fmt(t["teacher_knn"]),
            fmt(t["precision"], 1.0, 3), fmt(t["top1"]),
        ])  # fmt: skip
    print_markdown(header, lines)
    if missing:
        print(f"\nnot run yet: {', '.join(missing)}")


def plot(table: list[dict]) -> None:
    """The gain-vs-precision figure and the k-NN curves, as small PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    FIGURES.mkdir(parents=True, exist_ok=True)
    baseline = next((t["knn"] for t in table if t["row"].name == "moco"), [])
    if baseline:
        fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=110)
        markers = {"online": "o", "offline": "s", "oracle": "*"}
        for t in table:
            if not t["row"].relation or not t["knn"] or not t["precision"]:
                continue
            gain, gain_std = gain_over(t["knn"], baseline)
            precision, precision_std = mean_std(t["precision"])
            ax.errorbar(precision, gain, xerr=precision_std, yerr=gain_std, capsize=3,
                        marker=markers[t["row"].relation], linestyle="none",
                        label=t["row"].label.removeprefix("ReKD, "))  # fmt: skip
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.axhline(3, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xlabel("mined precision (same-class fraction of mined positives)")
        ax.set_ylabel("student k-NN gain over MoCo-v2 (points)")
        ax.set_title("ReKD on cifar10-5k: resnet8 student, 30 epochs", fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        fig.savefig(FIGURES / "rekd_gain.png")
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=110)
    for t in table:
        if t["row"].stage != 2 and t["row"].name != "moco":
            continue
        _, scalars = load_scalars(t["row"].runs()[0])
        events = scalars.get("val/knn_top1", [])
        epochs = {e.step: e.value for e in scalars.get("epoch", [])}
        if events:
            xs = [epochs.get(e.step, 0) + 1 for e in events]
            ax.plot(xs, [e.value * 100 for e in events], marker=".", label=t["row"].label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("student val k-NN top-1 (%)")
    ax.set_title("cifar10-5k, seed 0", fontsize=10)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(FIGURES / "rekd_knn_curves.png")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", choices=[r.name for r in ROWS], help="default: all")
    parser.add_argument("--seeds", type=int, nargs="+", help="only these seeds of each row")
    parser.add_argument("--report", action="store_true", help="table and figures only")
    parser.add_argument("--parallel", type=int, default=1, help="runs at once")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS per run")
    parser.add_argument("--precision-epochs", type=int, default=5)
    args = parser.parse_args()
    rows = [r for r in ROWS if not args.rows or r.name in args.rows]
    if not args.report:
        for stage in (1, 2):
            runs = [
                run
                for row in rows
                if row.stage == stage
                for run, seed in zip(row.runs(), row.seeds, strict=True)
                if not args.seeds or seed in args.seeds
            ]
            with ThreadPoolExecutor(args.parallel) as pool:
                list(pool.map(lambda run: execute(run, [], args.threads), runs))
    table = summarise(rows, args.precision_epochs)
    print_table(table)
    plot(table)
    for path in sorted(FIGURES.glob("rekd_*.png")):
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
