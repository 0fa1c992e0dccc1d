"""What the k-NN evaluation costs, as a fraction of the training it watches, as a table.

    python benchmarks/knn_cost.py                    # the three self-supervised cifar10-5k configs
    python benchmarks/knn_cost.py configs/moco/cifar10-5k_resnet8.yaml --epochs 2

Each config is fitted as ``distill fit --config <config>`` would (its data, loaders, workers
and ``KNNEval`` settings), for ``--epochs`` epochs (default 1) in ``--out``; the k-NN runs at
the last epoch whatever its ``every_n_epochs``. The table gives the seconds of a training
epoch (first batch to last, ``timing.EpochTimer``), of one k-NN evaluation (``KNNEval.evaluate``:
embedding the un-augmented train set as the bank and the val set, then the vote) and the cost
per training epoch: evaluation seconds / (``every_n_epochs`` x epoch seconds). Both are
measured in one process, one after the other, so a background load affects them alike.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

from timing import EpochTimer

from distill.cli import build_cli
from distill.eval import KNNEval

DEFAULT = [
    "configs/moco/cifar10-5k_resnet8.yaml",
    "configs/dino/cifar10-5k_resnet8.yaml",
    "configs/rekd/cifar10-5k_resnet20_resnet8.yaml",
]


def measure(config: str, epochs: int, out: Path) -> dict:
    """Seconds per training epoch and per k-NN evaluation of one config's fit."""
    timer, evaluations = EpochTimer(), []
    evaluate = KNNEval.evaluate

    def timed(callback: KNNEval, trainer, pl_module) -> dict:
        start = time.perf_counter()
        metrics = evaluate(callback, trainer, pl_module)
        evaluations.append((time.perf_counter() - start, callback.every_n_epochs))
        return metrics

    args = ["fit", "--config", config, "--trainer.max_epochs", str(epochs)]
    args += ["--trainer.default_root_dir", str(out), "--trainer.enable_progress_bar", "false"]
    with mock.patch.object(KNNEval, "evaluate", timed):
        build_cli(args, trainer_defaults={"callbacks": [timer]})
    if not evaluations:
        raise SystemExit(f"{config}: no KNNEval ran (does the config have one?)")
    epoch = statistics.median(timer.seconds)
    seconds, every = evaluations[-1]
    return {"config": config, "epoch": epoch, "knn": seconds, "every": every}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", default=DEFAULT)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--out", help="run directory (default: a temporary one)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for index, config in enumerate(args.configs):
            rows.append(measure(config, args.epochs, Path(args.out or scratch) / str(index)))
    print("| config | s / training epoch | s / k-NN evaluation | every n epochs | cost |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        cost = row["knn"] / (row["every"] * row["epoch"])
        print(
            f"| {row['config']} | {row['epoch']:.1f} | {row['knn']:.1f} | {row['every']} | "
            f"{100 * cost:.1f}% |"
        )


if __name__ == "__main__":
    main()
