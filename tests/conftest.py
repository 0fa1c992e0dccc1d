"""Shared fixtures: generated datasets in tmp_path (never downloads), fake training runs and
Lightning's log."""

from __future__ import annotations

import logging
import os
import pickle
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

os.environ.setdefault("PYTHONHASHSEED", "0")


def _share_cores_between_workers() -> None:
    """Under pytest-xdist (``pytest -n auto``: a worker a core), each worker gets its share of
    the cores for PyTorch's intra-op threads, and the processes tests start inherit it; more
    threads than cores would make the workers wait on each other. ``OMP_NUM_THREADS`` set by
    the user wins."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        # The cores this process may use (sched_getaffinity is Linux's; elsewhere all of them).
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        threads = max(1, (cores or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


_share_cores_between_workers()


def _inductor_cache_per_cpu_capability() -> None:
    """Under ``ATEN_CPU_CAPABILITY`` (.ci/run reruns the numerics tests under other kernel
    choices), torch.compile's inductor gets a cache of its own for that capability, which
    its generated kernels follow too: its on-disk cache does not tell them apart, and kernels
    cached under another capability fail to compile or compute NaN (torch 2.14). The tests'
    subprocesses inherit it. A ``TORCHINDUCTOR_CACHE_DIR`` of the user's wins (importing
    Lightning already set torch's default there)."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    capability = os.environ.get("ATEN_CPU_CAPABILITY")
    default = os.path.abspath(default_cache_dir())
    if capability and os.environ.get("TORCHINDUCTOR_CACHE_DIR", default) == default:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = f"{default}_{capability}"


_inductor_cache_per_cpu_capability()


def pytest_report_header(config) -> str:
    """The CPU kernels the numerics ran on (``ATEN_CPU_CAPABILITY`` forces others), for reports."""
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as file:
            cpu = next(line.split(":", 1)[1].strip() for line in file if "model name" in line)
    except (OSError, StopIteration):
        pass
    forced = os.environ.get("ATEN_CPU_CAPABILITY")
    return (
        f"torch {torch.__version__}, CPU kernels: {torch.backends.cpu.get_cpu_capability()}"
        + (f" (ATEN_CPU_CAPABILITY={forced})" if forced else "")
        + f", {cpu}"
    )


@pytest.fixture(autouse=True, scope="session")
def _no_pytest_arguments_in_argv():
    """The tests hand the CLI its arguments (``main(args)``); pytest's own command line in
    ``sys.argv`` would make LightningCLI warn that both were given."""
    argv, sys.argv = sys.argv, sys.argv[:1]
    yield
    sys.argv = argv


@pytest.fixture
def lightning_log(caplog, monkeypatch):
    """Lightning's (and distill's) rank-zero messages in ``caplog``: Lightning's logger does
    not propagate to the root logger when it has a handler of its own."""
    monkeypatch.setattr(logging.getLogger("lightning.pytorch"), "propagate", True)
    caplog.set_level(logging.INFO)
    return caplog


def write_png_folder(root, classes=("cat", "dog", "frog"), per_class=6, size=40, seed=0):
    """An ImageFolder tree of random PNGs; each class has its own mean colour."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("val", max(2, per_class // 2))):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                base = np.zeros((size, size, 3)) + 60 * c
                pixels = np.clip(base + rng.integers(0, 80, (size, size, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return root


def write_fake_cifar(root, num_classes=10, per_batch=8, seed=0):
    """CIFAR-10/100 pickles in torchvision's layout with ``per_batch`` images per file."""
    rng = np.random.default_rng(seed)
    if num_classes == 10:
        folder, train, test = (
            root / "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)],
            ["test_batch"],
        )
        meta, meta_key, label_key = "batches.meta", "label_names", "labels"
    else:
        folder, train, test = root / "cifar-100-python", ["train"], ["test"]
        meta, meta_key, label_key = "meta", "fine_label_names", "fine_labels"
    folder.mkdir(parents=True)
    for name in train + test:
        entry = {
            "data": rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8),
            label_key: rng.integers(0, num_classes, per_batch).tolist(),
        }
        with open(folder / name, "wb") as file:
            pickle.dump(entry, file)
    with open(folder / meta, "wb") as file:
        pickle.dump({meta_key: [f"class{i}" for i in range(num_classes)]}, file)
    return root


def write_fake_stl10(root, per_split=6, seed=0):
    """STL-10 binaries in torchvision's layout (96x96, column-major, labels 1..10)."""
    rng = np.random.default_rng(seed)
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    for split in ("train", "test", "unlabeled"):
        count = per_split * (2 if split == "unlabeled" else 1)
        rng.integers(0, 256, count * 3 * 96 * 96, dtype=np.uint8).tofile(folder / f"{split}_X.bin")
        if split != "unlabeled":
            (rng.integers(0, 10, count, dtype=np.uint8) + 1).tofile(folder / f"{split}_y.bin")
    (folder / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(10)))
    return root


@pytest.fixture
def png_folder(tmp_path):
    return write_png_folder(tmp_path / "images")


@pytest.fixture
def fake_cifar10(tmp_path):
    return write_fake_cifar(tmp_path / "cifar10", 10)


@pytest.fixture
def fake_cifar100(tmp_path):
    return write_fake_cifar(tmp_path / "cifar100", 100)


@pytest.fixture
def fake_stl10(tmp_path):
    return write_fake_stl10(tmp_path / "stl10")


@pytest.fixture
def write_run(tmp_path):
    """``write_run(version, epoch=..., ...)`` writes one version of ``tmp_path/run``.

    The checkpoint has what Lightning and ``MethodCheckpoint`` save (``epoch``,
    ``global_step``: 10 per epoch unless given, the callback's monitor, best score and
    ``interrupted``); the version's ``config.yaml`` has ``trainer.max_epochs`` and
    ``trainer.max_steps`` (none with ``config=False``).
    """

    def write(
        version: int,
        epoch: int = 39,
        max_epochs: int | None = 40,
        state_dict: dict | None = None,
        best_score: float | None = 0.625,
        interrupted: dict | None = None,
        global_step: int | None = None,
        max_steps: int = -1,
        config: bool = True,
    ):
        folder = tmp_path / "run" / "lightning_logs" / f"version_{version}"
        (folder / "checkpoints").mkdir(parents=True)
        callback = {
            "monitor": "val/top1",
            "best_model_score": None if best_score is None else torch.tensor(best_score),
            "best_model_path": str(folder / "checkpoints" / "epoch=2-step=30.ckpt"),
            "interrupted": interrupted,
        }
        checkpoint = {
            "state_dict": state_dict or {},
            "epoch": epoch,
            "global_step": 10 * (epoch + 1) if global_step is None else global_step,
            "callbacks": {"MethodCheckpoint{'monitor': 'val/top1', 'mode': 'max'}": callback},
        }
        torch.save(checkpoint, folder / "checkpoints" / "last.ckpt")
        if config:
            trainer = {"max_epochs": max_epochs, "max_steps": max_steps}
            (folder / "config.yaml").write_text(yaml.safe_dump({"trainer": trainer}))
        return folder / "checkpoints" / "last.ckpt"

    return write
