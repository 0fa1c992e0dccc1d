"""Small synthetic models and data shared by the tests (generated in memory)."""

from __future__ import annotations

import copy
import importlib.util
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DistributedSampler
from torchvision import transforms as T

from distill.data import DigitsDataModule, ViewRecipe
from distill.data.base import ViewDataModule

ROOT = Path(__file__).resolve().parents[1]

COLOURS = [(230, 30, 30), (30, 230, 30), (30, 30, 230), (230, 230, 30), (30, 230, 230)]


class ColourImages(torch.utils.data.Dataset):
    """Solid-colour 32x32 images with noise: the class is the colour (unless shuffled)."""

    def __init__(self, per_class: int, seed: int, shuffle_labels: bool = False) -> None:
        rng = np.random.default_rng(seed)
        self.images, self.targets = [], []
        for label, colour in enumerate(COLOURS):
            for _ in range(per_class):
                pixels = np.clip(np.array(colour) + rng.normal(0, 20, (32, 32, 3)), 0, 255)
                self.images.append(Image.fromarray(pixels.astype(np.uint8)))
                self.targets.append(label)
        if shuffle_labels:
            self.targets = rng.permutation(self.targets).tolist()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], self.targets[index]


class ColourDataModule(ViewDataModule):
    """Five colour classes; ``shuffle_labels`` breaks the link between colour and label."""

    mean = (0.5, 0.5, 0.5)
    std = (0.25, 0.25, 0.25)

    def __init__(self, per_class: int = 12, shuffle_labels: bool = False, **kwargs) -> None:
        kwargs.setdefault("batch_size", 10)
        kwargs.setdefault("num_workers", 0)
        super().__init__(**kwargs)
        self.per_class = per_class
        self.shuffle_labels = shuffle_labels

    @property
    def num_classes(self) -> int:
        return len(COLOURS)

    def train_dataset(self):
        return ColourImages(self.per_class, 0, self.shuffle_labels)

    def val_dataset(self):
        return ColourImages(self.per_class // 2, 1, self.shuffle_labels)


class ChannelMeans(nn.Module):
    """A 'backbone' whose features are the per-channel means plus a BN-tracked projection."""

    num_features = 3

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))
        self.norm = nn.BatchNorm1d(3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.norm(images.mean(dim=(2, 3)) * self.scale)


class Student(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = ChannelMeans()


class FrozenModel(L.LightningModule):
    """A method that trains nothing: only callbacks act on it."""

    monitor = "val/knn_top1"

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.student = Student()

    def training_step(self, batch, batch_idx):
        return None

    def validation_step(self, batch, batch_idx):
        return None

    def configure_optimizers(self):
        return []  # no optimiser, said explicitly (None makes Lightning warn that it has none)


def quiet_trainer(root, **kwargs) -> L.Trainer:
    """A CPU trainer without logger, checkpoints or progress output unless asked for."""
    defaults = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root),
    )
    return L.Trainer(**{**defaults, **kwargs})


def teacher_file_weights(checkpoint: str) -> dict[str, torch.Tensor]:
    """The classifier a ``Supervised`` checkpoint file holds (its ``student.*`` entries), as
    the state dict of a teacher read from it."""
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    return {k.removeprefix("student."): v for k, v in state.items() if k.startswith("student.")}


def assert_teacher_is(teacher: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """``teacher`` holds exactly ``weights`` (every entry, batch-norm buffers included, and no
    other) and is in eval mode."""
    state = teacher.state_dict()
    assert set(state) == set(weights)
    for name, value in state.items():
        assert torch.equal(value, weights[name]), name
    assert not teacher.training


def moved_entries(module: nn.Module, before: dict[str, torch.Tensor]) -> list[str]:
    """The names of ``module``'s state entries that differ from ``before``, a copy of its
    state dict."""
    return [
        name for name, value in module.state_dict().items() if not torch.equal(value, before[name])
    ]


def optimised_parameters(trainer: L.Trainer) -> set[int]:
    """The ids of the parameters the trainer's (first) optimiser updates."""
    return {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}


def fit_teacher_student(
    model: L.LightningModule, checkpoint: str, root, datamodule=None, **trainer_kwargs
) -> L.Trainer:
    """Fits ``model``, a ``TeacherStudent`` taught by the ``Supervised`` file ``checkpoint``
    (3 steps without validation on ``ColourDataModule`` unless told otherwise), and checks the
    state such a fit leaves: the teacher as the file held it before the fit, in eval mode; the
    student's first convolution and head moved; the student's parameters, and no other,
    optimised. Returns the trainer, for the method's own checks."""
    teacher_before = teacher_file_weights(checkpoint)
    student_before = copy.deepcopy(model.student.state_dict())
    trainer = quiet_trainer(root, **{"max_steps": 3, "limit_val_batches": 0, **trainer_kwargs})
    trainer.fit(model, datamodule=datamodule or ColourDataModule())
    assert_teacher_is(model.teacher, teacher_before)
    moved = moved_entries(model.student, student_before)
    assert "head.weight" in moved and "backbone.conv1.weight" in moved
    assert optimised_parameters(trainer) == {id(p) for p in model.student.parameters()}
    return trainer


def assert_float32_under_bf16_autocast(loss_fn, student, teacher, *args) -> None:
    """``loss_fn(student, teacher, *args)`` of bf16 inputs under CPU bf16 autocast is the
    float32 loss of the same values, to the bit (a float32 island), and the bf16 student's
    gradient is that loss's float32 gradient rounded to bf16. ``student`` and ``teacher`` are
    float tensors, rounded to bf16 here; ``args`` go to ``loss_fn`` unchanged."""
    student = student.detach().bfloat16().requires_grad_(True)
    teacher = teacher.detach().bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_fn(student, teacher, *args)
    loss.backward()
    plain = student.detach().float().requires_grad_(True)
    plain_loss = loss_fn(plain, teacher.float(), *args)
    plain_loss.backward()
    assert loss.dtype == torch.float32 and torch.equal(loss, plain_loss)
    assert student.grad.dtype == torch.bfloat16
    assert torch.equal(student.grad, plain.grad.bfloat16())


#: For a test that calls a method's ``training_step`` directly, outside a Trainer: its
#: ``self.log`` calls have nowhere to go, which Lightning says in a warning per call.
OUTSIDE_TRAINER = pytest.mark.filterwarnings(
    r"ignore:You are trying to `self.log\(\)` but the `self.trainer` reference is not "
    r"registered:UserWarning:lightning.pytorch.core.module"
)


def refused(build, **arguments) -> str:
    """The message of the ``ConfigError`` that ``build(**arguments)`` raises (it must raise)."""
    from distill.errors import ConfigError

    try:
        build(**arguments)
    except ConfigError as error:
        return str(error)
    raise AssertionError(f"{build.__name__}(**{arguments}) was accepted")


def run_validate(model, datamodule, callback, root) -> dict[str, float]:
    trainer = quiet_trainer(root, callbacks=[callback])
    trainer.validate(model, datamodule=datamodule, verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def load_worker(script: Path):
    """A DDP worker script as a module, for its one-process run in the test's own process
    (saves starting another interpreter)."""
    spec = importlib.util.spec_from_file_location(Path(script).stem, script)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    return worker


def launch_ddp(script, args, world: int) -> None:
    """Runs ``script args`` as ``world`` CPU DDP ranks (env:// rendezvous) and checks they pass."""
    port = str(free_port())
    procs = []
    for rank in range(world):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "LOCAL_RANK": str(rank),
            "NODE_RANK": "0",
            "WORLD_SIZE": str(world),
            "PYTHONPATH": str(ROOT),
            "OMP_NUM_THREADS": "1",
        }
        if world == 1:
            for key in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "NODE_RANK"):
                env.pop(key)
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), *map(str, args)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )  # fmt: skip
        )
    for proc in procs:
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output


class StopAfter(L.Callback):
    """Interrupts a fit after ``epochs`` epochs, as a crash or a time limit would."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


def resumable_fit(make_model, make_data, root, stop_after=None, ckpt_path=None, batches=2):
    """A seeded 4-epoch fit saving ``last.ckpt`` in ``root``: the resume tests' three runs.

    ``stop_after`` interrupts it after that many epochs; ``ckpt_path`` resumes from a
    checkpoint. Returns ``(model, trainer)``.
    """
    L.seed_everything(0)
    model = make_model()
    callbacks = [L.pytorch.callbacks.ModelCheckpoint(dirpath=str(root), save_last=True)]
    if stop_after:
        callbacks.append(StopAfter(stop_after))
    trainer = quiet_trainer(
        root, max_epochs=4, limit_train_batches=batches, limit_val_batches=1,
        enable_checkpointing=True, callbacks=callbacks,
    )  # fmt: skip
    trainer.fit(model, datamodule=make_data(), ckpt_path=ckpt_path)
    return model, trainer


class InOrderDigits(DigitsDataModule):
    """Digits in dataset order; under DDP each global batch is split across the ranks."""

    def train_dataloader(self):
        self.setup("fit")
        world = int(os.environ.get("WORLD_SIZE", "1"))
        sampler = None
        if world > 1:
            rank = int(os.environ["LOCAL_RANK"])
            sampler = DistributedSampler(self.train_set, world, rank, shuffle=False)
        return self._loader(self.train_set, self.batch_size, False, True, sampler=sampler)


def send_signal(signal_name: str, times: int = 1) -> None:
    """Sends ``signal_name`` to this very process ``times`` times, one after the other."""
    import signal

    for _ in range(times):
        os.kill(os.getpid(), getattr(signal, signal_name))


class SignalAt(L.Callback):
    """Sends ``signal_name`` to this very process after global step ``step``: a real signal,
    as a scheduler's SIGTERM or a user's Ctrl-C would arrive, at a known point of training.
    ``times=2`` is a user pressing Ctrl-C twice."""

    def __init__(self, step: int, signal_name: str = "SIGTERM", times: int = 1) -> None:
        self.step = step
        self.signal_name = signal_name
        self.times = times

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            send_signal(self.signal_name, self.times)


class SignalInValidation(L.Callback):
    """Sends ``signal_name`` to this very process after val batch ``batch`` of the validation
    at the end of epoch ``epoch`` (not the sanity check): an interruption during validation."""

    def __init__(self, epoch: int, batch: int = 0, signal_name: str = "SIGTERM") -> None:
        self.epoch = epoch
        self.batch = batch
        self.signal_name = signal_name

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *args):
        if (
            not trainer.sanity_checking
            and trainer.current_epoch == self.epoch
            and batch_idx == self.batch
        ):
            send_signal(self.signal_name)


class SignalAfterValidation(L.Callback):
    """Sends ``signal_name`` to this very process once the validation at the end of epoch
    ``epoch`` is over (its metrics computed), before the epoch's end."""

    def __init__(self, epoch: int, signal_name: str = "SIGTERM") -> None:
        self.epoch = epoch
        self.signal_name = signal_name

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking and trainer.current_epoch == self.epoch:
            send_signal(self.signal_name)


class SignalInSanityCheck(L.Callback):
    """Sends ``signal_name`` to this very process after the first batch of the sanity check
    (the validation batches a fit runs before it trains)."""

    def __init__(self, signal_name: str = "SIGTERM") -> None:
        self.signal_name = signal_name

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *args):
        if trainer.sanity_checking and batch_idx == 0:
            send_signal(self.signal_name)


class PoisonBatch(L.Callback):
    """Fills the images of the batch at ``global_step`` with NaN before the step runs."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            views = batch[0] if isinstance(batch[0], list | tuple) else [batch[0]]
            for view in views:
                view.fill_(float("nan"))


class StopFlagAfter(L.Callback):
    """Raises Lightning's stop flag after ``batches`` training batches of this fit, as its
    SIGTERM handler does: the fit stops with a ``SIGTERMException`` (and ``MethodCheckpoint``
    writes the interrupted ``last.ckpt``)."""

    def __init__(self, batches: int) -> None:
        self.batches = batches
        self.seen = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen += 1
        if self.seen == self.batches:
            trainer._signal_connector.received_sigterm = True


class RecordIndices(L.Callback):
    """Keeps the dataset indices of every training batch of the fit, in order."""

    def __init__(self) -> None:
        self.indices: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.indices += batch[2].tolist()


# Float tolerances, derived from the computation rather than from what one CPU's kernels give.
# A float32 result is compared with a float64 reference of the same inputs. Its error is
# bounded by counting roundings, each worth EPS32 (twice the worst case of one rounding,
# 2**-24 of the value), in the worst case over any summation order, vector width or fusion a
# kernel may choose, and by how the computation amplifies them (a temperature, an exp).
EPS32 = torch.finfo(torch.float32).eps
TRANSCENDENTAL = 4 * EPS32  # exp, log, sqrt: elementwise kernels (glibc, Sleef u10) err < 1 ulp
# Whole networks compared two ways (batch splits, layouts, statistics groups) run in float64
# instead, where no per-network analysis is needed: an output of these small networks gathers
# ~1e4 roundings of 2**-53 (depth × fan-in), amplified at most ~100 times by batch norms and
# cancellations, so 1e6·eps64 ≈ 2e-10 bounds it, and a wrong group, layout or statistic moves
# outputs by more than 1e-3.
NETWORK64_TOL = 1e6 * torch.finfo(torch.float64).eps


def dot_error(dim: int, norms: float = 1.0) -> float:
    """Bound on the absolute error of a float32 dot product in dimension ``dim`` of vectors
    whose norms multiply to at most ``norms`` (Higham's γ_dim: ``dim`` roundings of
    Σ|a_i b_i| ≤ ‖a‖‖b‖, whatever the order of the sum)."""
    return dim * EPS32 * norms


def score_error(dim: int, temperature: float, norms: float = 1.0) -> float:
    """Bound on the absolute error of a float32 logit ``⟨a, b⟩/τ`` (``a``, ``b`` as in
    ``dot_error``): the dot product's error and the division's rounding, over ``τ``."""
    return (dot_error(dim, norms) + EPS32 * norms) / temperature


def exp_score_rtol(dim: int, temperature: float, norms: float = 1.0) -> float:
    """Bound on the relative error of float32 ``exp(⟨a, b⟩/τ)``: the logit's absolute error
    (``score_error``) becomes the exponential's relative error; then exp's own rounding."""
    return score_error(dim, temperature, norms) + TRANSCENDENTAL


def softmax_rtol(logit_error: float, max_abs_logit: float, num_classes: int) -> float:
    """Bound on the relative error of float32 ``softmax`` over ``num_classes`` logits of size at
    most ``max_abs_logit`` that err by at most ``logit_error``: the shift by the largest logit
    (a rounding of up to 2·max|z|), the entry's and the sum's share of the logits' error
    (twice), the exps, their sum and the division."""
    shifted = logit_error + EPS32 * max_abs_logit
    return 2 * shifted + TRANSCENDENTAL + (num_classes + 1) * EPS32


def log_softmax_error(logit_error: float, max_abs_logit: float, num_classes: int) -> float:
    """Bound on the absolute error of float32 ``log_softmax`` (logits as in ``softmax_rtol``):
    the shifted logits' errors (twice, as there), the sum of exps and its log, and the final
    subtraction, of values up to ``|log p| ≤ 2·max|z| + log C``."""
    shifted = logit_error + EPS32 * max_abs_logit
    log_sum_exp = (num_classes + 1) * EPS32 + TRANSCENDENTAL * (1 + math.log(num_classes))
    return 2 * shifted + log_sum_exp + EPS32 * (2 * max_abs_logit + math.log(num_classes))


def normalize_error(dim: int) -> float:
    """Bound on the absolute error of the entries (at most 1) of a float32 L2-normalised vector
    in dimension ``dim``: its norm (``dim`` squares summed, a sqrt) and the division."""
    return (dim + 2) * EPS32 + TRANSCENDENTAL


def assert_within(actual: torch.Tensor, expected: torch.Tensor, error, name: str = "") -> None:
    """Asserts ``|actual − expected| ≤ error`` entry by entry (``error`` a bound per entry or
    one for all), naming the worst entry and its share of the bound."""
    difference = (actual.detach().double() - expected.detach().double()).abs()
    bound = torch.as_tensor(error, dtype=torch.float64).expand_as(difference)
    share = difference / bound
    worst = int(share.flatten().argmax())
    assert (difference <= bound).all(), (
        f"{name} entry {worst}: |{actual.flatten()[worst].item()!r} − "
        f"{expected.flatten()[worst].item()!r}| = {difference.flatten()[worst].item():.3g} "
        f"exceeds its bound {bound.flatten()[worst].item():.3g} "
        f"({share.flatten()[worst].item():.3g} times)"
    )


def ema_error(momentum: float, average: torch.Tensor, online: torch.Tensor) -> torch.Tensor:
    """Bound per entry on the error of float32 ``m·average + (1 − m)·online`` (fused or not):
    ``m`` and ``1 − m`` rounded to float32, two products and a sum, of values up to
    ``m|average| + (1 − m)|online|``."""
    average, online = average.detach().double(), online.detach().double()
    return 2 * EPS32 * (momentum * average.abs() + (1 - momentum) * online.abs())


def pixel_normalisation_error(mean, std) -> float:
    """Bound on the error of a float32 normalised pixel ``(x − m)/s`` for ``x = p/255`` in
    [0, 1]: three roundings (the scaling, the subtraction, the division) of values up to
    ``(1 + m)/s``, in the normalised units."""
    return 3 * EPS32 * (1 + max(mean)) / min(std)


HUE_LIPSCHITZ = 4.0  # a hue rotation moves its output by ≤ 4 times its input's change (∞-norm)


def photometric_batch_error(size: int, jitter: float = 0.4) -> float:
    """Bound on how far one ``size``² image's float32 colour jitter and blur, in [0, 1], can
    move when computed in another batch, where reductions and products may round otherwise:
    the contrast's mean of size² lumas (weighed |1 − f| ≤ ``jitter``, then scaled by the later
    ops' Lipschitz constants: brightness 1 + j, saturation 1 + 2j, the hue), and the blur's
    two products of up to 2·size terms. Twice that: each run is within it of the exact value."""
    contrast = jitter * size**2 * EPS32 * (1 + jitter) * (1 + 2 * jitter) * HUE_LIPSCHITZ
    return 2 * (contrast + 2 * 2 * size * EPS32)


class SaveRankState(L.Callback):
    """Saves this process's state at the end of fit to ``<folder>/rank<global rank>.pt``: the
    LightningModule's state dict (weights and buffers: EMA teachers, queues, their pointers),
    the optimiser's state, the ranks and world size Lightning gave it, its pid and step. For
    multi-process tests, which compare the ranks' states."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_fit_end(self, trainer, pl_module):
        state = {
            "global_rank": trainer.global_rank,
            "local_rank": trainer.local_rank,
            "node_rank": trainer.node_rank,
            "world_size": trainer.world_size,
            "pid": os.getpid(),
            "global_step": trainer.global_step,
            "model": pl_module.state_dict(),
            "optimizer": trainer.optimizers[0].state_dict(),
        }
        Path(self.folder).mkdir(parents=True, exist_ok=True)
        torch.save(state, Path(self.folder, f"rank{trainer.global_rank}.pt"))


class FixedViews(ViewRecipe):
    """The first ``num_views`` of: the image, its mirror (32 px), a 16 px centre crop and the
    image resized to 16 px (DINO's locals), without randomness: DDP ranks and one process
    see the same views of a sample."""

    def __init__(self, num_global: int, num_views: int) -> None:
        self.num_global, self.num_views = num_global, num_views

    def build(self, mean, std):
        tensor = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
        views = [
            tensor,
            T.Compose([T.RandomHorizontalFlip(1.0), tensor]),
            T.Compose([T.CenterCrop(16), tensor]),
            T.Compose([T.Resize(16), tensor]),
        ][: self.num_views]
        return lambda image: [view(image) for view in views]
