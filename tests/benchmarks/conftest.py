"""The benchmark scripts loaded by path, and fake run folders as LightningCLI leaves them.

The scripts are not a package (``python benchmarks/<script>.py`` puts ``benchmarks/`` on the
path, and ``rekd_study`` imports ``cifar10_5k``, ``step`` imports ``timing``, by those
names), so they are loaded from their files and registered under their own names; nothing is
added to ``sys.path``. The helpers reach the tests as fixtures of the same name (``step.py``
as ``step_script``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from torch.utils.tensorboard import SummaryWriter

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"


def load_script(name: str):
    """``benchmarks/<name>.py`` as the module ``name`` (once per session)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def cifar10_5k():
    return load_script("cifar10_5k")


@pytest.fixture(scope="session")
def rekd_study(cifar10_5k):
    return load_script("rekd_study")


@pytest.fixture(scope="session")
def four_doors():
    return load_script("four_doors")


@pytest.fixture(scope="session")
def step_script():
    load_script("timing")  # step.py imports it by that name
    return load_script("step")


def _write_run(
    root_dir: Path,
    *,
    epochs: int,
    max_epochs: int,
    final: dict[str, float],
    seed: int = 0,
    version: int = 0,
    steps_per_epoch: int = 3,
    then_steps: int = 0,
) -> Path:
    """``root_dir/lightning_logs/version_<version>`` as a ``distill fit`` leaves it after
    ``epochs`` validated epochs of a run started with ``max_epochs``: its ``config.yaml`` and
    TensorBoard events, ``epoch`` logged with every metric as Lightning does, ``train/*``
    tags at every step and ``val/*`` at each epoch's last step. Each tag of ``final`` rises
    by 0.01 per epoch to its value there at the last epoch. ``then_steps`` training steps of
    the next epoch follow, as in a run stopped before that epoch's validation.
    """
    folder = root_dir / "lightning_logs" / f"version_{version}"
    writer = SummaryWriter(str(folder))
    for epoch in range(epochs + 1):
        values = {tag: value - 0.01 * (epochs - 1 - epoch) for tag, value in final.items()}
        steps = steps_per_epoch if epoch < epochs else then_steps
        for step in range(epoch * steps_per_epoch, epoch * steps_per_epoch + steps):
            writer.add_scalar("epoch", epoch, step)
            writer.add_scalar("train/loss", 2.0 - 0.01 * step, step)
            for tag in (t for t in values if t.startswith("train/")):
                writer.add_scalar(tag, values[tag], step)
        if epoch < epochs:
            writer.add_scalar("epoch", epoch, step)
            for tag in (t for t in values if t.startswith("val/")):
                writer.add_scalar(tag, values[tag], step)
    writer.close()
    config = {
        "seed_everything": seed,
        "trainer": {"max_epochs": max_epochs, "default_root_dir": str(root_dir)},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


def _figure_hashes() -> dict[str, str]:
    """SHA-256 of each committed figure, to show a test left them alone."""
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted((BENCHMARKS / "figures").glob("*"))
    }


def _documented_commands(script: str) -> list[str]:
    """Every command line ``python benchmarks/<script>`` in the script's docstring and in
    the repository's Markdown files (README and any document beside it or in benchmarks/)."""
    texts = [(BENCHMARKS / script).read_text()]
    texts += [p.read_text() for p in sorted([*ROOT.glob("*.md"), *BENCHMARKS.glob("*.md")])]
    prefix = f"python benchmarks/{script}"
    return [
        line.strip()
        for text in texts
        for line in text.splitlines()
        if line.strip().startswith(prefix + " ") or line.strip() == prefix
    ]


def _arguments(command: str, *options: str) -> list[str]:
    """The script's arguments in ``command`` (comments dropped), ``options`` added before
    any ``--`` (after which everything goes to the runs)."""
    argv = shlex.split(command, comments=True)[2:]
    cut = argv.index("--") if "--" in argv else len(argv)
    return [*argv[:cut], *options, *argv[cut:]]


@pytest.fixture
def started(monkeypatch) -> list[list[str]]:
    """The commands the scripts start, each faked as a run that exits 0 without logs."""
    commands = []

    def fake_run(command, **kwargs):
        commands.append(command)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    return commands


@pytest.fixture
def drawn(monkeypatch, cifar10_5k, rekd_study) -> dict[str, dict[str, list]]:
    """What each figure the scripts save shows, by file name: the texts of its legends (the
    figure's, then its axes'), x ticks and other labels, and per axis each labelled line's
    label, colour and line style."""
    from matplotlib.colors import to_hex

    seen = {}
    save = cifar10_5k.save

    def record(fig, path):
        legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
        seen[path.name] = {
            "legend": [text.get_text() for legend in legends for text in legend.get_texts()],
            "xticks": [text.get_text() for ax in fig.axes for text in ax.get_xticklabels()],
            "texts": [text.get_text() for ax in fig.axes for text in ax.texts],
            "lines": [
                [
                    (line.get_label(), to_hex(line.get_color()), line.get_linestyle())
                    for line in ax.get_lines()
                    if not line.get_label().startswith("_")
                ]
                for ax in fig.axes
            ],
        }
        return save(fig, path)

    monkeypatch.setattr(cifar10_5k, "save", record)
    monkeypatch.setattr(rekd_study, "save", record)
    return seen


@pytest.fixture(scope="session")
def compile_script():
    load_script("timing")  # compile.py imports it and channels_last by those names
    load_script("channels_last")
    return load_script("compile")


# The helpers as fixtures: a test module cannot import a conftest by name.
@pytest.fixture
def write_run():
    return _write_run


@pytest.fixture
def figure_hashes():
    return _figure_hashes


@pytest.fixture
def documented_commands():
    return _documented_commands


@pytest.fixture
def arguments():
    return _arguments


@pytest.fixture(scope="session")
def attention_gap(cifar10_5k):
    return load_script("attention_gap")


@pytest.fixture(scope="session")
def vid_cost():
    return load_script("vid_cost")
