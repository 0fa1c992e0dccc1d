"""The streaming extra is optional: distill imports without litdata, and using it without
litdata is one message naming the install line (these tests need no litdata)."""

import subprocess
import sys

import pytest
from tests_support import ROOT

from distill.cli import main
from distill.data import StreamingDataModule
from distill.data.shards import INSTALL, join
from distill.errors import ConfigError


def test_distill_imports_without_litdata():
    code = (
        "import sys; sys.modules['litdata'] = None\n"  # any import of litdata fails
        "import distill.cli, distill.data, distill.commands\n"
        "print(distill.data.StreamingDataModule.__name__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
        env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "StreamingDataModule"


def test_the_datamodule_without_litdata_names_the_install_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "litdata", None)
    with pytest.raises(ConfigError, match="StreamingDataModule") as error:
        StreamingDataModule(data_dir=str(tmp_path))
    assert INSTALL in str(error.value)


def test_the_command_without_litdata_is_one_message(monkeypatch, png_folder, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "litdata", None)
    with pytest.raises(SystemExit) as exit_:
        main(["stream-convert", "--root", str(png_folder), "--split", "train",
              "--output", str(tmp_path / "out")])  # fmt: skip
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("distill: error: distill stream-convert needs") and INSTALL in error
    assert error.count("\n") == 1 and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("root", "location", "joined"),
    [
        ("data", "train", "data/train"),
        ("data", "/abs/train", "/abs/train"),
        ("s3://bucket/cifar", "train", "s3://bucket/cifar/train"),
        ("data", "gs://bucket/train", "gs://bucket/train"),
    ],
)
def test_shard_locations_join_folders_and_urls(root, location, joined):
    assert join(root, location) == joined
