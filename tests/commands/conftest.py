"""Tiny runs the command tests read: a Supervised (quickstart), a DINO and KD checkpoints (one
taught by a distill run, two by a torchvision teacher given as a teacher spec)."""

from __future__ import annotations

import builtins
import errno
import io
import os
import shutil
from pathlib import Path

import pytest
import torch
import torchvision

from distill.cli import main
from distill.data import DigitsDataModule

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")

DINO_CONFIG = """
seed_everything: 0
model:
  class_path: distill.methods.DINO
  init_args: {backbone: resnet8, output_dim: 64, hidden_dim: 32, bottleneck_dim: 16,
              lr_reference_batch: null}
data:
  class_path: distill.data.DigitsDataModule
  init_args:
    batch_size: 32
    views:
      class_path: distill.data.MultiCropViews
      init_args: {num_local: 0, blur_probs: [0.0, 0.0, 0.0]}
"""

KD_CONFIG = """
seed_everything: 0
model:
  class_path: distill.methods.KD
  init_args: {student_backbone: resnet8, teacher_backbone: resnet8, num_classes: 10,
              teacher_checkpoint: TEACHER_RUN}
data:
  class_path: distill.data.DigitsDataModule
  init_args: {batch_size: 32}
"""


def run_cli(args: list[str], capsys=None) -> tuple[int, str, str]:
    """Runs the CLI; returns (exit code, stdout, stderr) (empty strings without capsys)."""
    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as exit_:
        code = exit_.code or 0
    out, err = capsys.readouterr() if capsys is not None else ("", "")
    return code, out, err


def tiny_fit(config: str, root: Path, steps: int, *extra: str) -> Path:
    """``distill fit`` for ``steps`` steps and one val batch; the path of its last.ckpt."""
    code, _, _ = run_cli(
        [
            "fit", "--config", config, "--trainer.default_root_dir", root,
            "--trainer.max_epochs", 1, "--trainer.limit_train_batches", steps,
            "--trainer.limit_val_batches", 1, "--trainer.enable_progress_bar", "false", *extra,
        ]
    )  # fmt: skip
    assert code == 0
    return root / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="session")
def supervised_ckpt(tmp_path_factory) -> Path:
    """The quickstart (Supervised resnet8 on digits, k-NN and probe callbacks), 3 steps."""
    return tiny_fit(QUICKSTART, tmp_path_factory.mktemp("supervised"), steps=3)


@pytest.fixture(scope="session")
def compiled_supervised_ckpt(tmp_path_factory) -> Path:
    """The quickstart with its backbone compiled (``model.init_args.compile: true``), 3 steps."""
    root = tmp_path_factory.mktemp("compiled")
    return tiny_fit(QUICKSTART, root, 3, "--model.init_args.compile", "true")


@pytest.fixture(scope="session")
def dino_config(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("dino_config") / "dino.yaml"
    path.write_text(DINO_CONFIG)
    return str(path)


@pytest.fixture(scope="session")
def dino_ckpt(tmp_path_factory, dino_config) -> Path:
    """DINO resnet8 on digits (2 global crops), 2 steps: the teacher is an EMA, not the student."""
    # No KNNEval here: last.ckpt only (the method's monitor is k-NN accuracy).
    return tiny_fit(dino_config, tmp_path_factory.mktemp("dino"), 2, "--checkpoint.monitor", "null")


@pytest.fixture(scope="session")
def kd_run(tmp_path_factory, supervised_ckpt) -> tuple[str, Path]:
    """``(config, last.ckpt)`` of a KD student taught by (a copy of) the quickstart's run
    directory, 2 steps; the teacher's run directory is deleted once the student is trained."""
    root = tmp_path_factory.mktemp("kd")
    teacher_run = shutil.copytree(supervised_ckpt.parents[3], root / "teacher")
    config = root / "kd.yaml"
    config.write_text(KD_CONFIG.replace("TEACHER_RUN", str(teacher_run)))
    checkpoint = tiny_fit(str(config), root / "student", steps=2)
    shutil.rmtree(teacher_run)
    return str(config), checkpoint


SPEC_KD_CONFIG = """
seed_everything: 0
model:
  class_path: distill.methods.KD
  init_args:
    student_backbone: resnet8
    num_classes: 10
    teacher: {architecture: torchvision:resnet18, weights: WEIGHTS, image_size: 32,
              in_checkpoint: IN_CHECKPOINT}
data:
  class_path: distill.data.DigitsDataModule
  init_args: {batch_size: 32}
"""


def spec_kd(root: Path, in_checkpoint: bool) -> tuple[str, Path, Path]:
    """``(config, last.ckpt, teacher weights)`` of a KD student taught for 2 steps by a
    torchvision ResNet-18 file (ImageNet statistics from torchvision's metadata, 32 px)."""
    torch.manual_seed(0)
    weights = root / "resnet18_digits.pth"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), weights)
    config = root / "kd.yaml"
    text = SPEC_KD_CONFIG.replace("WEIGHTS", str(weights))
    config.write_text(text.replace("IN_CHECKPOINT", str(in_checkpoint).lower()))
    return str(config), tiny_fit(str(config), root / "student", steps=2), weights


@pytest.fixture(scope="session")
def spec_kd_run(tmp_path_factory) -> tuple[str, Path, Path]:
    """``spec_kd`` with the teacher in the student's checkpoints."""
    return spec_kd(tmp_path_factory.mktemp("spec_kd"), in_checkpoint=True)


@pytest.fixture(scope="session")
def left_out_kd_run(tmp_path_factory) -> tuple[str, Path, Path]:
    """``spec_kd`` with the teacher left out of them (``in_checkpoint: false``)."""
    return spec_kd(tmp_path_factory.mktemp("left_out_kd"), in_checkpoint=False)


@pytest.fixture
def cli(capsys):
    """``cli(args)`` runs the CLI and returns (exit code, stdout, stderr)."""
    return lambda args: run_cli(args, capsys)


@torch.no_grad()
def digits_features(backbone: torch.nn.Module, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode backbone features and labels of the digits' un-augmented ``split``, directly."""
    backbone.eval()
    features, labels = [], []
    for images, targets, _ in DigitsDataModule().eval_dataloader(split):
        features.append(backbone(images))
        labels.append(targets)
    return torch.cat(features), torch.cat(labels)


@pytest.fixture(scope="session")
def split_features():
    """``split_features(backbone, "train" | "val")``: digits features computed directly."""
    return digits_features


@pytest.fixture
def read_only_folder(tmp_path, monkeypatch):
    """A folder in which no file can be created: mode 0o555, and where the user ignores modes
    (root), creating a file there fails with EROFS as on a read-only mount."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    probe = folder / "probe"
    try:
        probe.touch()
    except PermissionError:
        pass  # the mode holds
    else:
        probe.unlink()
        real_os_open, real_open = os.open, builtins.open

        def refuse(path) -> None:
            if Path(path).resolve().parent == folder.resolve():
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

        def os_open(path, flags, *args, **kwargs):
            if flags & os.O_CREAT:
                refuse(path)
            return real_os_open(path, flags, *args, **kwargs)

        def open_(file, mode="r", *args, **kwargs):
            if isinstance(file, str | os.PathLike) and set(mode) & set("wax+"):
                refuse(file)
            return real_open(file, mode, *args, **kwargs)

        monkeypatch.setattr(os, "open", os_open)
        monkeypatch.setattr(builtins, "open", open_)
        monkeypatch.setattr(io, "open", open_)
    yield folder
    folder.chmod(0o755)
