"""distill's MoCo-v2 and DINO beside the same methods assembled from lightly's building blocks.

    python benchmarks/lightly_side_by_side.py                             # 4 runs, then the table
    python benchmarks/lightly_side_by_side.py --methods moco --epochs 1   # a quick check
    python benchmarks/lightly_side_by_side.py --report                    # table only

Four runs on ``../shared/data/cifar10-5k`` with distill's ``resnet8``: ``distill MoCo`` and
``distill DINO`` are ``distill fit --config configs/{moco,dino}/cifar10-5k_resnet8.yaml``
(distill's CLI, the config as it is); ``lightly MoCo`` and ``lightly DINO`` are
LightningModules written the way lightly's examples and benchmarks write them, with every
setting (head, loss, EMA, optimiser, schedule, views, trainer, seed, distill's DataModule and
KNNEval callback) read from the same config. ``--epochs`` overrides the configs' 30 epochs.
Each run is a subprocess with ``OMP_NUM_THREADS=1``; distill and lightly of one method train
at the same time (``--parallel 2``), MoCo first, then DINO, so both see the same machine
load: compare times within a method only. A run writes its logs, ``train.log`` (console) and
``summary.json`` to ``runs/lightly_side_by_side/<name>/``: val k-NN top-1 (k = 20; the
un-augmented train set as bank) at each evaluation, the seconds of each training epoch
(start to last batch: no validation, k-NN or checkpoint) and the total wall time. The table
gives final and best k-NN top-1, median seconds per training epoch and distill's over lightly's.

lightly MoCo is lightly's CIFAR-10 benchmark: the resnet8's BatchNorm2d layers become
lightly's ``SplitBatchNorm`` with 8 splits (queries and keys normalised in 8 groups of 8),
keys pass through ``batch_shuffle``/``batch_unshuffle``, ``NTXentLoss`` with
``memory_bank_size=(queue, dim)`` holds the queue, ``update_momentum`` runs at the top of
``training_step``, views are ``MoCoV2Transform``. That benchmark uses a symmetric loss,
temperature 0.1, queue 4096 and a per-epoch cosine; here, as distill's config: asymmetric,
0.2, 2048 and a per-step cosine after 1 warm-up epoch (lightly's ``CosineWarmupScheduler``,
the values of distill's ``lr_factor``).

lightly DINO is lightly's DINO example and ImageNet benchmarks: ``DINOProjectionHead``,
``DINOLoss`` (centre updated in the loss), ``DINOTransform``, ``update_momentum`` on
``cosine_schedule`` at the top of ``training_step``, ``cancel_last_layer_gradients``, the
weight-decay cosine set by ``update_param_groups`` on ``get_weight_decay_parameters``' groups.
As in lightly's ImageNet benchmarks (and distill) the globals share one backbone pass and
the locals another, where the docs example passes each view alone; the teacher starts as a
copy of the student, where the example initialises its head apart. Gradients are clipped to
3.0 per parameter tensor, as DINO's ``clip_gradients``. What differs is implementation: e.g.
lightly shuffles keys with ``randperm``, distill with a permutation balanced over the splits;
lightly's EMA runs before each optimiser step (``λ`` of step t), distill's after (of t − 1).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lightning as L
import torch
import yaml
from cifar10_5k import print_markdown
from lightly.loss import DINOLoss, NTXentLoss
from lightly.models import utils
from lightly.models.batchnorm import SplitBatchNorm
from lightly.models.modules.heads import DINOProjectionHead, MoCoProjectionHead
from lightly.transforms import DINOTransform, MoCoV2Transform
from lightly.utils.optim import update_param_groups
from lightly.utils.scheduler import CosineWarmupScheduler, cosine_schedule
from lightning.pytorch.callbacks import LearningRateMonitor
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from timing import EpochTimer, seconds_per_step, training_step, without_trainer
from torch import Tensor, nn

from distill.backbones import create_backbone
from distill.cli import build_cli
from distill.data import ImageFolderDataModule, ViewRecipe
from distill.eval import KNNEval

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "runs/lightly_side_by_side"
CONFIGS = {m: f"configs/{m}/cifar10-5k_resnet8.yaml" for m in ("moco", "dino")}
LABELS = {"moco": "MoCo", "dino": "DINO"}
RUNS = [f"{impl}_{method}" for method in CONFIGS for impl in ("distill", "lightly")]


class LightlyViews(ViewRecipe):
    """A lightly transform (``functools.partial`` of its class) as distill's view recipe.

    What it adds: the DataModule's mean and std, passed as lightly's ``normalize``.
    """

    def __init__(self, transform: Callable[..., Callable], num_views: int) -> None:
        self.transform = transform
        self.num_views = num_views

    def build(self, mean: Sequence[float], std: Sequence[float]) -> Callable:
        return self.transform(normalize={"mean": list(mean), "std": list(std)})


def split_batch_norm(module: nn.Module, num_splits: int) -> nn.Module:
    """Swaps each ``BatchNorm2d`` for lightly's ``SplitBatchNorm`` (both start at identity)."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            setattr(module, name, SplitBatchNorm(child.num_features, num_splits))
        else:
            split_batch_norm(child, num_splits)
    return module


def warmup_cosine(optimizer, trainer: L.Trainer, warmup_epochs: float, min_lr_ratio: float):
    """lightly's ``CosineWarmupScheduler`` stepped per optimiser step, as distill's configs."""
    total = int(trainer.estimated_stepping_batches)
    warmup = min(round(warmup_epochs * total / trainer.max_epochs), total)  # as distill
    scheduler = CosineWarmupScheduler(optimizer, warmup, total, end_value=min_lr_ratio)
    return {"scheduler": scheduler, "interval": "step", "name": "lr"}


class LightlyMoCo(L.LightningModule):
    """MoCo-v2 from lightly's parts, as lightly's CIFAR-10 benchmark (asymmetric loss here).

    ``student`` (backbone + head) is the query encoder, whose backbone k-NN evaluates;
    ``key_encoder`` is its EMA. Arguments are distill's MoCo's, SGD's and the schedule's.
    """

    def __init__(
        self,
        backbone: str,
        proj_hidden_dim: int,
        proj_dim: int,
        queue_size: int,
        temperature: float,
        key_momentum: float,
        lr: float,
        momentum: float,
        weight_decay: float,
        warmup_epochs: float,
        min_lr_ratio: float = 0.0,
        num_splits: int = 8,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        net = split_batch_norm(create_backbone(backbone), num_splits)
        head = MoCoProjectionHead(net.num_features, proj_hidden_dim, proj_dim)
        self.student = nn.Sequential(OrderedDict(backbone=net, head=head))
        self.key_encoder = copy.deepcopy(self.student)
        utils.deactivate_requires_grad(self.key_encoder)
        self.criterion = NTXentLoss(temperature, memory_bank_size=(queue_size, proj_dim))

    def training_step(self, batch, batch_idx: int) -> Tensor:
        utils.update_momentum(self.student, self.key_encoder, self.hparams.key_momentum)
        (x_query, x_key), _, _ = batch
        query = self.student(x_query)
        x_key, shuffle = utils.batch_shuffle(x_key)
        key = utils.batch_unshuffle(self.key_encoder(x_key), shuffle)
        loss = self.criterion(query, key)  # the queue's negatives, then the keys are queued
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        """Nothing: the KNNEval callback evaluates ``student.backbone``."""

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.SGD(
            self.student.parameters(), hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay
        )
        schedule = warmup_cosine(optimizer, self.trainer, hp.warmup_epochs, hp.min_lr_ratio)
        return [optimizer], [schedule]


class LightlyDINO(L.LightningModule):
    """DINO from lightly's parts, as lightly's DINO example and ImageNet benchmarks.

    ``student`` and ``teacher`` are backbone + ``DINOProjectionHead``; k-NN evaluates
    ``teacher.backbone``. Arguments are distill's DINO's, AdamW's lr and the per-device batch
    size that scales it (``lr × batch / lr_reference_batch``, as lightly's benchmarks).
    """

    def __init__(
        self,
        backbone: str,
        output_dim: int,
        hidden_dim: int,
        bottleneck_dim: int,
        head_batch_norm: bool,
        norm_last_layer: bool,
        freeze_last_layer: int,
        student_temp: float,
        teacher_temp: float,
        warmup_teacher_temp: float,
        center_momentum: float,
        momentum_start: float,
        momentum_end: float,
        weight_decay_start: float,
        weight_decay_end: float,
        lr: float,
        lr_reference_batch: int,
        batch_size: int,
        warmup_epochs: float,
        min_lr_ratio: float,
        warmup_teacher_temp_epochs: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()

        def network() -> nn.Sequential:
            net = create_backbone(backbone)
            head = DINOProjectionHead(
                net.num_features, hidden_dim, bottleneck_dim, output_dim,
                batch_norm=head_batch_norm, freeze_last_layer=freeze_last_layer,
                norm_last_layer=norm_last_layer,
            )  # fmt: skip
            return nn.Sequential(OrderedDict(backbone=net, head=head))

        self.student = network()
        self.teacher = network()  # weight-normalised heads cannot be deep-copied: load
        self.teacher.load_state_dict(self.student.state_dict())
        utils.deactivate_requires_grad(self.teacher)
        self.criterion = DINOLoss(
            output_dim, warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs,
            student_temp, center_momentum,
        )  # fmt: skip

    def schedule(self, start: float, end: float) -> float:
        """``cosine_schedule`` from ``start`` to ``end`` over all optimiser steps."""
        total = int(self.trainer.estimated_stepping_batches)
        return cosine_schedule(self.global_step, total, start, end)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        momentum = self.schedule(self.hparams.momentum_start, self.hparams.momentum_end)
        utils.update_momentum(self.student, self.teacher, momentum)
        views = batch[0]
        global_views, local_views = torch.cat(views[:2]), torch.cat(views[2:])
        with torch.no_grad():
            teacher_out = self.teacher(global_views).chunk(2)
        student_out = torch.cat([self.student(global_views), self.student(local_views)])
        loss = self.criterion(teacher_out, student_out.chunk(len(views)), epoch=self.current_epoch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        self.student.head.cancel_last_layer_gradients(self.current_epoch)
        weight_decay = self.schedule(self.hparams.weight_decay_start, self.hparams.weight_decay_end)
        update_param_groups(optimizer, updates=[{"name": "decay", "weight_decay": weight_decay}])

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        # DINO's clip_gradients: each gradient tensor to norm <= gradient_clip_val on its own.
        for param in self.student.parameters():
            if param.grad is not None:
                torch.nn.utils.clip_grad_norm_(param, gradient_clip_val)

    def validation_step(self, batch, batch_idx: int) -> None:
        """Nothing: the KNNEval callback evaluates ``teacher.backbone``."""

    def configure_optimizers(self):
        hp = self.hparams
        decay, no_decay = utils.get_weight_decay_parameters([self.student])
        groups = [
            {"name": "decay", "params": decay, "weight_decay": hp.weight_decay_start},
            {"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
        ]
        lr = hp.lr * hp.batch_size * self.trainer.world_size / hp.lr_reference_batch
        optimizer = torch.optim.AdamW(groups, lr=lr)
        schedule = warmup_cosine(optimizer, self.trainer, hp.warmup_epochs, hp.min_lr_ratio)
        return [optimizer], [schedule]


def lightly_moco(config: dict) -> tuple[L.LightningModule, ViewRecipe]:
    """lightly MoCo and its views, with the settings of distill's MoCo config."""
    model = dict(config["model"]["init_args"])
    optimizer, view = model.pop("optimizer"), config["data"]["init_args"]["views"]["init_args"]
    if (
        model.pop("symmetric")
        or model.pop("lr_schedule") != "cosine"
        or model.pop("shuffle_bn", "auto") not in ("auto", "split")
        or optimizer["class_path"] != "torch.optim.SGD"
    ):
        raise SystemExit("lightly MoCo here: asymmetric loss, split BN, SGD, cosine schedule")
    transform = functools.partial(
        MoCoV2Transform, input_size=view["crop_size"], min_scale=view["min_scale"],
        cj_bright=view["color_jitter"], cj_contrast=view["color_jitter"],
        cj_sat=view["color_jitter"], cj_hue=view["color_jitter"] / 4,
        random_gray_scale=view["gray_prob"], gaussian_blur=view["blur_prob"],
    )  # fmt: skip
    num_splits = model.pop("bn_groups", 8)
    module = LightlyMoCo(**model, **optimizer["init_args"], num_splits=num_splits)
    return module, LightlyViews(transform, 2)


def lightly_dino(config: dict) -> tuple[L.LightningModule, ViewRecipe]:
    """lightly DINO and its views, with the settings of distill's DINO config."""
    model = dict(config["model"]["init_args"])
    optimizer, views = model.pop("optimizer"), config["data"]["init_args"]["views"]["init_args"]
    if (
        model.pop("lr_schedule") != "cosine"
        or optimizer["class_path"] != "torch.optim.AdamW"
        or model.pop("num_global_views") != 2  # as lightly's DINOTransform
    ):
        raise SystemExit("lightly DINO here: AdamW, cosine schedule, 2 global views")
    transform = functools.partial(
        DINOTransform, global_crop_size=views["global_size"],
        global_crop_scale=tuple(views["global_scale"]), local_crop_size=views["local_size"],
        local_crop_scale=tuple(views["local_scale"]), n_local_views=views["num_local"],
        gaussian_blur=tuple(views["blur_probs"]), solarization_prob=views["solarization_prob"],
    )  # fmt: skip
    batch_size = config["data"]["init_args"]["batch_size"]
    module = LightlyDINO(**model, **optimizer["init_args"], batch_size=batch_size)
    return module, LightlyViews(transform, 2 + views["num_local"])


def fit_distill(method: str, out: Path, epochs: int | None, timer: EpochTimer) -> L.Trainer:
    """``distill fit --config <config>`` with the timer added (what ``distill.cli.main`` runs)."""
    args = ["fit", "--config", CONFIGS[method], "--trainer.default_root_dir", str(out)]
    if epochs:
        args += ["--trainer.max_epochs", str(epochs)]
    return build_cli(args, trainer_defaults={"callbacks": [timer]}).trainer


def fit_lightly(method: str, out: Path, epochs: int | None, timer: EpochTimer) -> L.Trainer:
    """The lightly module trained with the config's seed, data, trainer settings and k-NN."""
    with open(ROOT / CONFIGS[method]) as f:
        config = yaml.safe_load(f)
    L.seed_everything(config["seed_everything"], workers=True)
    model, views = lightly_moco(config) if method == "moco" else lightly_dino(config)
    data = {k: v for k, v in config["data"]["init_args"].items() if k != "views"}
    datamodule = ImageFolderDataModule(**data, views=views)
    settings = dict(config["trainer"])
    callbacks = []
    for callback in settings.pop("callbacks"):
        if callback["class_path"] != "distill.eval.KNNEval":
            raise SystemExit(f"unexpected callback {callback['class_path']} in the config")
        callbacks.append(KNNEval(**callback["init_args"]))
    settings["default_root_dir"] = str(out)
    if epochs:
        settings["max_epochs"] = epochs
    callbacks += [LearningRateMonitor("step"), timer]  # distill's methods log train/lr themselves
    trainer = L.Trainer(**settings, callbacks=callbacks)
    trainer.fit(model, datamodule=datamodule)
    return trainer


def run(name: str, epochs: int | None) -> None:
    """Trains one run (in this process) and writes its ``summary.json``."""
    implementation, method = name.split("_")
    out, timer = OUT / name, EpochTimer()
    start = time.perf_counter()
    fit = fit_distill if implementation == "distill" else fit_lightly
    trainer = fit(method, out, epochs, timer)
    wall = time.perf_counter() - start
    events = EventAccumulator(trainer.logger.log_dir, size_guidance={"scalars": 0})
    events.Reload()
    knn = [e.value for e in events.Scalars("val/knn_top1")]
    summary = {
        "label": f"{implementation} {LABELS[method]}",
        "epochs": len(timer.seconds),
        "knn_top1": knn,
        "final_knn_top1": knn[-1],
        "best_knn_top1": max(knn),
        "epoch_seconds": timer.seconds,
        "median_epoch_seconds": statistics.median(timer.seconds),
        "wall_seconds": wall,
        "log_dir": Path(trainer.logger.log_dir).relative_to(ROOT).as_posix(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def launch(name: str, epochs: int | None) -> None:
    """Runs ``--run name`` in a subprocess on one thread, its console to ``train.log``."""
    out = OUT / name
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").unlink(missing_ok=True)
    command = [sys.executable, "benchmarks/lightly_side_by_side.py", "--run", name]
    if epochs:
        command += ["--epochs", str(epochs)]
    log = out / "train.log"
    # One write per line: the two runs of a method start from two threads.
    sys.stdout.write(
        f"$ OMP_NUM_THREADS=1 python {' '.join(command[1:])} > {log.relative_to(ROOT)}\n"
    )
    sys.stdout.flush()
    with open(log, "w") as f:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        code = subprocess.run(command, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    if code.returncode:
        raise RuntimeError(f"{name} failed (exit {code.returncode}); see {log}")


def print_table(methods: list[str]) -> None:
    """One Markdown row per run from its ``summary.json``; the ratio is on distill's row."""
    rows = [["method", "implementation", "epochs", "k-NN top-1 final", "k-NN top-1 best",
             "s / epoch (median)", "distill / lightly"]]  # fmt: skip
    for method in methods:
        paths = {impl: OUT / f"{impl}_{method}/summary.json" for impl in ("distill", "lightly")}
        runs = {impl: json.loads(p.read_text()) for impl, p in paths.items() if p.exists()}
        for impl in paths:
            s = runs.get(impl)
            row = [LABELS[method], impl] + ["-"] * 5
            if s:
                row[2:6] = [str(s["epochs"]), f"{100 * s['final_knn_top1']:.1f}%",
                            f"{100 * s['best_knn_top1']:.1f}%",
                            f"{s['median_epoch_seconds']:.1f}"]  # fmt: skip
            if s and impl == "distill" and "lightly" in runs:
                ratio = s["median_epoch_seconds"] / runs["lightly"]["median_epoch_seconds"]
                row[6] = f"{ratio:.2f}"
            rows.append(row)
    print_markdown(rows[0], rows[1:])


def step_times(methods: list[str], repeats: int) -> None:
    """Milliseconds per training step of distill's module and lightly's on one random batch
    of the config's views, the two interleaved (``timing.seconds_per_step``)."""
    print("| method | distill ms / step | lightly ms / step | distill / lightly |")
    print("| --- | ---: | ---: | ---: |")
    for method in methods:
        with open(ROOT / CONFIGS[method]) as f:
            config = yaml.safe_load(f)
        L.seed_everything(config["seed_everything"])
        cli = build_cli(["--config", CONFIGS[method]], run=False)
        ours, batch_size = cli.model, cli.datamodule.batch_size
        ours.configure_model()  # channels_last, as at the start of a fit
        theirs = (lightly_moco if method == "moco" else lightly_dino)(config)[0]
        views = [torch.randn(batch_size, 3, v.size, v.size) for v in cli.datamodule.views.specs()]
        batch = (views, torch.full((batch_size,), -1), torch.arange(batch_size))
        clip = config["trainer"].get("gradient_clip_val")
        steps = {}
        for name, module in (("distill", ours), ("lightly", theirs)):
            module.train()
            optimizer, trainer = without_trainer(module, batch_size, own_optimizer=True)
            steps[name] = functools.partial(training_step, module, optimizer, trainer, batch, clip)
        seconds = seconds_per_step(steps, 1, 2, repeats, torch.device("cpu"))
        ratio = seconds["distill"] / seconds["lightly"]
        print(
            f"| {LABELS[method]} | {1000 * seconds['distill']:.0f} | "
            f"{1000 * seconds['lightly']:.0f} | {ratio:.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--epochs", type=int, help="epochs of every run (default: the configs')")
    parser.add_argument("--parallel", type=int, default=2, help="runs at once (one method's two)")
    parser.add_argument("--report", action="store_true", help="print the table only")
    parser.add_argument("--steps", action="store_true", help="time training steps only")
    parser.add_argument("--repeats", type=int, default=20, help="timed steps with --steps")
    parser.add_argument("--run", choices=RUNS, help=argparse.SUPPRESS)  # one run, in-process
    args = parser.parse_args()
    if args.run:
        run(args.run, args.epochs)
        return
    if args.steps:
        step_times(args.methods, args.repeats)
        return
    if not args.report:
        for method in args.methods:
            names = [f"distill_{method}", f"lightly_{method}"]
            with ThreadPoolExecutor(args.parallel) as pool:
                list(pool.map(lambda name: launch(name, args.epochs), names))
    print_table(args.methods)


if __name__ == "__main__":
    main()
