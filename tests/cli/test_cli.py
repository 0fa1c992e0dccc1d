"""The CLI as a user drives it: config files, overrides, print_config, errors."""

import errno
import io
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.tensorflow_stub.io import gfile

from distill.cli import main
from distill.methods import Supervised

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")


def run_cli(args, capsys):
    """Runs the CLI; returns (exit code, stdout, stderr)."""
    code = 0
    try:
        main(args)
    except SystemExit as exit_:
        code = exit_.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def test_quickstart_fit_writes_checkpoints_config_and_scalars(tmp_path, capsys):
    code, _, err = run_cli(
        [
            "fit", "--config", QUICKSTART,
            "--trainer.default_root_dir", str(tmp_path),
            "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3",
            "--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "1",
        ],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    version = tmp_path / "lightning_logs" / "version_0"
    checkpoints = sorted(p.name for p in (version / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints and any(c.startswith("epoch=0") for c in checkpoints)
    saved = yaml.safe_load((version / "config.yaml").read_text())
    assert saved["model"]["init_args"]["backbone"] == "resnet8"
    events = EventAccumulator(str(version), size_guidance={"images": 0}).Reload()
    scalars = set(events.Tags()["scalars"])
    expected = {
        "train/loss",
        "val/top1",
        "val/top5",
        "val/knn_top1",
        "val/linear_top1",
        "train/lr",
        "train/wd",
        "hp_metric",
    }
    assert expected <= scalars, scalars
    assert "train/views" in events.Tags()["images"]
    knn = events.Scalars("val/knn_top1")[-1].value
    assert 0.0 <= knn <= 1.0


def test_print_config_round_trips(tmp_path, capsys):
    code, printed, err = run_cli(["fit", "--config", QUICKSTART, "--print_config"], capsys)
    assert code == 0, err
    saved = tmp_path / "printed.yaml"
    saved.write_text(printed)
    code, again, err = run_cli(["fit", "--config", str(saved), "--print_config"], capsys)
    assert code == 0, err
    assert yaml.safe_load(again) == yaml.safe_load(printed)
    assert yaml.safe_load(printed)["model"]["class_path"] == "distill.methods.Supervised"


def test_stacked_configs_and_dotted_overrides(tmp_path, capsys):
    override = tmp_path / "more.yaml"
    override.write_text("trainer:\n  max_epochs: 2\nmodel:\n  init_args:\n    backbone: resnet14\n")
    code, printed, err = run_cli(
        [
            "fit", "--config", QUICKSTART, "--config", str(override),
            "--model.init_args.label_smoothing", "0.1", "--data.init_args.batch_size", "16",
            "--print_config",
        ],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    config = yaml.safe_load(printed)
    assert config["trainer"]["max_epochs"] == 2
    assert config["model"]["init_args"]["backbone"] == "resnet14"
    assert config["model"]["init_args"]["label_smoothing"] == 0.1
    assert config["data"]["init_args"]["batch_size"] == 16
    assert config["model"]["init_args"]["optimizer"]["init_args"]["lr"] == 0.1


def test_misspelt_option_is_not_guessed(tmp_path, capsys):
    args = ["fit", "--config", QUICKSTART, "--trainer.default_root_dir", str(tmp_path)]
    code, _, err = run_cli(args + ["--trainer.max_epoch", "3"], capsys)
    assert code == 2 and "max_epoch" in err
    assert not (tmp_path / "lightning_logs").exists()


def test_unknown_key_in_config_file_is_named(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  init_args:\n    temprature: 2.0\n")
    code, _, err = run_cli(["fit", "--config", QUICKSTART, "--config", str(bad)], capsys)
    assert code == 2 and "temprature" in err


@pytest.mark.parametrize(
    "text, key, nearest",
    [
        ("trainer:\n  max_epoch: 3\n", "trainer.max_epoch", "trainer.max_epochs"),
        ("data:\n  init_args:\n    batch_sise: 16\n", "batch_sise", "batch_size"),
        ("data:\n  init_args:\n    views:\n      init_args:\n        crop_sise: 24\n",
         "crop_sise", "crop_size"),
        ("model:\n  init_args:\n    optimizer:\n      init_args:\n        lrr: 0.1\n",
         "lrr", "lr"),
    ],
    ids=["trainer", "data", "views", "optimizer"],
)  # fmt: skip
def test_misspelt_key_in_a_config_file_comes_first_with_the_nearest_valid_key(
    tmp_path, capsys, text, key, nearest
):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    code, _, err = run_cli(["fit", "--config", QUICKSTART, "--config", str(bad)], capsys)
    first = err.splitlines()[0]
    assert code == 2
    assert first.startswith("distill: error: unknown ") and f"{key!r}" in first, err
    assert f"did you mean {nearest!r}?" in first
    assert "usage:" not in err


def test_wrong_type_is_named(capsys):
    code, _, err = run_cli(["fit", "--config", QUICKSTART, "--trainer.max_epochs", "many"], capsys)
    assert code == 2 and "max_epochs" in err and "many" in err


def test_unknown_backbone_lists_choices(tmp_path, capsys):
    args = ["fit", "--config", QUICKSTART, "--model.init_args.backbone", "resnet21"]
    code, _, err = run_cli(args + ["--trainer.default_root_dir", str(tmp_path)], capsys)
    assert code == 2
    assert "resnet21" in err and "resnet20" in err and "wrn_40_2" in err
    assert "Traceback" not in err
    assert not (tmp_path / "lightning_logs").exists()  # nothing written on a bad config


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("optimizer.init_args.lr", "-1", "optimizer.init_args.lr: Invalid learning rate: -1.0; "
         "valid: a finite number >= 0"),
        ("warmup_epochs", "-1", "warmup_epochs=-1.0; valid: a finite number >= 0 (epochs)"),
        # A RuntimeError from cross_entropy at the first step, once.
        ("label_smoothing", "1.5", "label_smoothing=1.5; valid: a number in [0, 1)"),
    ],
)  # fmt: skip
def test_invalid_numbers_are_one_message_naming_the_key(tmp_path, capsys, option, value, message):
    args = ["fit", "--config", QUICKSTART, "--trainer.default_root_dir", str(tmp_path)]
    code, _, err = run_cli(args + [f"--model.init_args.{option}", value], capsys)
    assert code == 2 and f"distill: error: model.init_args.{message}" in err
    assert "Traceback" not in err
    assert not (tmp_path / "lightning_logs").exists()  # refused before anything is written


def test_invalid_callback_number_is_one_message_naming_the_key(tmp_path, capsys):
    probe = tmp_path / "probe.yaml"  # the quickstart's callbacks, with a negative probe lr
    probe.write_text(
        "trainer:\n  callbacks:\n    - class_path: distill.eval.LinearProbe\n"
        "      init_args: {lr: -1}\n"
    )
    args = ["fit", "--config", QUICKSTART, "--config", str(probe)]
    code, _, err = run_cli([*args, "--trainer.default_root_dir", str(tmp_path / "run")], capsys)
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "distill: error: trainer.callbacks.LinearProbe.init_args.lr=-1.0; valid: a number > 0"
    )
    assert not (tmp_path / "run").exists()


def test_missing_dataset_folder_is_named(tmp_path, capsys):
    args = [
        "fit", "--config", QUICKSTART,
        "--data", "distill.data.ImageFolderDataModule",
        "--data.init_args.data_dir", str(tmp_path / "missing"),
    ]  # fmt: skip
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "train_dir" in err and "missing" in err


def test_missing_config_file_is_named(capsys):
    code, _, err = run_cli(["fit", "--config", "configs/nope.yaml"], capsys)
    assert code == 2 and "nope.yaml" in err


@pytest.mark.filterwarnings("ignore:resuming from")  # settings changed on purpose
def test_resume_keeps_existing_run_intact(tmp_path, capsys):
    base = [
        "fit", "--config", QUICKSTART, "--trainer.default_root_dir", str(tmp_path),
        "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
    ]  # fmt: skip
    assert run_cli(base + ["--trainer.max_epochs", "1"], capsys)[0] == 0
    last = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    first_bytes = last.read_bytes()
    code, _, err = run_cli(base + ["--trainer.max_epochs", "2", "--ckpt_path", str(last)], capsys)
    assert code == 0, err
    assert last.read_bytes() == first_bytes  # the resumed run writes into version_1
    resumed = tmp_path / "lightning_logs" / "version_1" / "checkpoints" / "last.ckpt"
    import torch

    assert torch.load(resumed, weights_only=False)["epoch"] == 1


def test_validate_and_test_subcommands_report_from_a_checkpoint(tmp_path, capsys):
    short = ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2"]
    fit = ["fit", "--config", QUICKSTART, "--trainer.default_root_dir", str(tmp_path)]
    assert run_cli(fit + short + ["--trainer.max_epochs", "1"], capsys)[0] == 0
    last = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    for subcommand, key, limit in (("validate", "val/top1", "val"), ("test", "test/top1", "test")):
        args = [subcommand, "--config", QUICKSTART, "--ckpt_path", str(last)]
        args += ["--trainer.default_root_dir", str(tmp_path / subcommand)]
        code, out, err = run_cli(args + [f"--trainer.limit_{limit}_batches", "2"], capsys)
        assert code == 0, err
        assert key in out  # Lightning's results table


def test_module_entry_point_runs():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "distill", "fit", "--help"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "--model" in result.stdout and "--checkpoint.monitor" in result.stdout


@pytest.mark.parametrize("script", ["distill", "lightning"])
def test_console_scripts_point_at_the_cli(script):
    from importlib.metadata import entry_points

    found = [e for e in entry_points(group="console_scripts") if e.name == script]
    if not found:
        pytest.skip("package not installed (pip install -e .) in this environment")
    assert found[0].value == "distill.cli:main"


def test_importing_distill_shows_no_warning():
    # Import-time warnings (e.g. a decorator on the wrong object) happen once per process,
    # before any in-process test can record them: a fresh interpreter turns them into errors.
    modules = "distill.cli, distill.methods, distill.data, distill.eval, distill.commands"
    result = subprocess.run(
        [sys.executable, "-W", "error::FutureWarning", "-W", "error::UserWarning",
         "-c", f"import {modules}"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_a_quickstart_run_shows_no_warning(tmp_path, capsys, monkeypatch):
    # A user's run should be clean: no warning Python shows by default (Lightning's LeafSpec
    # FutureWarning under torch 2.14 included) and no deprecated call of distill's own.
    hidden = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)
    monkeypatch.setattr(sys, "argv", ["distill"])  # not pytest's arguments
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, err = run_cli(
            [
                "fit", "--config", QUICKSTART, "--trainer.default_root_dir", str(tmp_path),
                "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
                "--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "1",
            ],
            capsys,
        )  # fmt: skip
    assert code == 0, err
    shown = [
        f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}"
        for w in caught
        if not issubclass(w.category, hidden) or Path(w.filename).is_relative_to(ROOT / "distill")
    ]
    assert shown == [], "\n".join(shown)


def test_a_run_prints_no_advertisement_and_no_empty_flops_column(tmp_path):
    # What a user reads at the start of every run: the model summary, without Lightning's
    # litlogger tip and without a FLOPs column that counted nothing (all zeros).
    result = subprocess.run(
        [sys.executable, "-m", "distill", "fit", "--config", QUICKSTART,
         "--trainer.default_root_dir", str(tmp_path), "--trainer.max_epochs", "1",
         "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
         "--trainer.enable_progress_bar", "false"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Trainable params" in output  # the summary is still there
    assert "litlogger" not in output and "FLOPs" not in output and "Total Flops" not in output


def kd_spec_config(tmp_path, teacher: dict) -> str:
    config = tmp_path / "kd.yaml"
    model = {"student_backbone": "resnet8", "num_classes": 10, "teacher": teacher}
    config.write_text(yaml.safe_dump({
        "seed_everything": 0,
        "model": {"class_path": "distill.methods.KD", "init_args": model},
        "data": {"class_path": "distill.data.DigitsDataModule"},
        "trainer": {"default_root_dir": str(tmp_path / "run"), "enable_progress_bar": False},
    }))  # fmt: skip
    return str(config)


def test_a_misspelt_teacher_key_is_named_with_the_nearest(tmp_path, capsys):
    config = kd_spec_config(tmp_path, {"architecture": "resnet14", "weigths": "t.ckpt"})
    code, _, err = run_cli(["fit", "--config", config], capsys)
    assert code == 2
    assert err.splitlines()[0] == (
        "distill: error: unknown key 'weigths' in model.init_args.teacher; did you mean 'weights'?"
    )


def test_a_missing_teacher_file_is_refused_before_any_log_folder(tmp_path, capsys):
    missing = tmp_path / "r50.pth"
    config = kd_spec_config(
        tmp_path, {"architecture": "torchvision:resnet50", "weights": str(missing)}
    )
    code, _, err = run_cli(["fit", "--config", config], capsys)
    assert code == 2
    assert f"distill: error: model.init_args.teacher.weights: '{missing}' does not exist" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.filterwarnings("ignore:resuming from")  # settings changed on purpose
def test_resuming_a_run_that_left_its_teacher_out_says_the_teacher_is_read_again(tmp_path, capsys):
    torch.manual_seed(0)
    teacher_file = tmp_path / "teacher.ckpt"
    torch.save({"state_dict": Supervised(backbone="resnet14", num_classes=10).state_dict()},
               teacher_file)  # fmt: skip
    teacher = {"architecture": "resnet14", "weights": str(teacher_file), "in_checkpoint": False}
    config = kd_spec_config(tmp_path, teacher)
    code, _, err = run_cli(["fit", "--config", config, "--trainer.max_steps", "1"], capsys)
    assert code == 0, err
    last = tmp_path / "run" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    moved = tmp_path / "moved.ckpt"
    teacher_file.rename(moved)  # the same weights, somewhere else
    args = ["fit", "--config", config, "--trainer.max_steps", "2", "--ckpt_path", str(last),
            "--model.init_args.teacher", f"{{architecture: resnet14, weights: {moved}, "
            "in_checkpoint: false}"]  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, err = run_cli(args, capsys)
    assert code == 0, err
    (message,) = [str(w.message) for w in caught if "model arguments differ" in str(w.message)]
    assert (
        "(read: the checkpoint left the teacher out; its weights must be the ones it recorded)"
        in message
    )


@pytest.mark.parametrize("written, batches", [("1", 1), ("1.0", 2), ("0.5", 1)])
def test_a_whole_number_limits_batches_by_count_and_a_float_by_fraction(
    tmp_path, capsys, written, batches
):
    # Lightning types limit_*_batches Union[float, int]: jsonargparse made "1" a float, 1.0,
    # every batch instead of one. The quickstart's digits val split is 2 batches.
    config = tmp_path / "limits.yaml"
    config.write_text(f"trainer:\n  limit_val_batches: {written}\n")
    code, _, err = run_cli(["fit", "--config", QUICKSTART, "--config", str(config),
                            "--trainer.default_root_dir", str(tmp_path), "--trainer.max_epochs",
                            "1", "--trainer.limit_train_batches", "1",
                            "--trainer.enable_progress_bar", "false"], capsys)  # fmt: skip
    assert code == 0, err
    version = tmp_path / "lightning_logs" / "version_0"
    saved = torch.load(version / "checkpoints" / "last.ckpt", weights_only=False)
    progress = saved["loops"]["fit_loop"]["epoch_loop.val_loop.batch_progress"]["total"]
    assert progress["completed"] == batches
    limits = yaml.safe_load((version / "config.yaml").read_text())["trainer"]
    assert repr(limits["limit_val_batches"]) == written  # an int stays an int, a float a float
    assert limits["limit_train_batches"] == 1 and isinstance(limits["limit_train_batches"], int)


def short_fit(root, *extra) -> list[str]:
    return [
        "fit", "--config", QUICKSTART, "--trainer.default_root_dir", str(root),
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
        "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(
    "value, class_path, suggestion",
    [
        ("--model=distill.methods.Supervized", "distill.methods.Supervized",
         "module 'distill.methods' has no 'Supervized'; did you mean "
         "'distill.methods.Supervised'?"),
        ("--model=distill.method.Supervised", "distill.method.Supervised",
         "module 'distill' has no 'method'; did you mean 'distill.methods.Supervised'?"),
        ("--model.init_args.optimizer=torch.optim.SDG", "torch.optim.SDG",
         "module 'torch.optim' has no 'SDG'; did you mean 'torch.optim.SGD'?"),
    ],
    ids=["class", "module", "optimizer"],
)  # fmt: skip
def test_unknown_class_is_one_line_with_the_nearest_name(
    tmp_path, capsys, value, class_path, suggestion
):
    where = value[2:].split("=")[0]
    code, _, err = run_cli([*short_fit(tmp_path / "run"), value], capsys)
    assert code == 2
    assert err.splitlines()[0] == (
        f"distill: error: unknown class {class_path!r} in {where}: {suggestion}"
    )
    (pointer,) = err.splitlines()[1:]  # and not jsonargparse's account
    assert pointer.startswith("(every option: ") and pointer.endswith(" fit --help)")
    assert not (tmp_path / "run").exists()


def test_a_value_lightning_refuses_is_one_message(tmp_path, capsys):
    code, _, err = run_cli([*short_fit(tmp_path / "run"), "--trainer.max_epochs", "-5"], capsys)
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "distill: error: `max_epochs` must be a non-negative integer or -1. You passed in -5."
    )
    assert not (tmp_path / "run").exists()


def test_a_fit_that_fails_before_training_leaves_no_folder_it_made(png_folder, tmp_path, capsys):
    (png_folder / "train" / "cat" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    data = [
        "--data", "distill.data.ImageFolderDataModule",
        "--data.init_args.data_dir", str(png_folder), "--model.init_args.num_classes", "3",
    ]  # fmt: skip
    fresh = tmp_path / "runs" / "fresh"
    code, _, err = run_cli([*short_fit(fresh), *data], capsys)
    assert code == 2 and "cannot be followed" in err  # refused in the DataModule's setup
    assert not (tmp_path / "runs").exists()  # nor the version folder nor the folders above it
    earlier = tmp_path / "earlier" / "lightning_logs" / "version_0"
    earlier.mkdir(parents=True)
    (earlier / "notes.txt").write_text("an earlier run")
    code, _, err = run_cli([*short_fit(earlier.parents[1]), *data], capsys)
    assert code == 2 and "cannot be followed" in err
    assert [p.name for p in earlier.parent.iterdir()] == ["version_0"]  # version_1 is gone
    assert (earlier / "notes.txt").read_text() == "an earlier run"


@pytest.fixture
def read_only_mount(tmp_path, monkeypatch):
    """A folder on which every folder creation fails with EROFS, as on a read-only mount
    (chmod would not stop root)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):
        if Path(path).resolve().is_relative_to(folder):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    return folder


def test_a_run_on_a_read_only_folder_is_one_message(read_only_mount, capsys):
    run = read_only_mount / "run"
    code, _, err = run_cli(short_fit(run), capsys)
    assert code == 74 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"distill: error: cannot write {run}: read-only file system (Read-only file system)"
    )


def test_a_full_disk_under_tensorboards_writer_thread_is_one_message(tmp_path, capsys, monkeypatch):
    # TensorBoard writes its event file in a thread of its own, which dies with the error (a
    # thread traceback) and hands it to the training thread's next write.
    class FullDisk(io.FileIO):
        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def write_to_a_full_disk(self, filename, file_content, mode):  # TensorBoard's, on a full disk
        with FullDisk(filename, mode) as file:
            file.write(file_content)

    monkeypatch.setattr(gfile.LocalFileSystem, "_write", write_to_a_full_disk)
    code, _, err = run_cli(short_fit(tmp_path), capsys)
    assert code == 74
    assert "Traceback" not in err and "Exception in thread" not in err
    events = re.escape(str(tmp_path / "lightning_logs" / "version_0" / "events.out.tfevents."))
    assert re.fullmatch(
        f"distill: error: cannot write {events}[^/ ]+: disk full \\(No space left on device\\)",
        err.strip().splitlines()[-1],
    ), err
