"""``--ckpt_path`` of fit, validate and test, checked before anything is built or written: one
message for a missing file, a folder, a truncated file, a file that is not a Lightning
checkpoint and weights that do not fit; Lightning's own values still reach Lightning."""

import shutil
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from distill.backbones import create_backbone
from distill.cli import main

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")


def run_cli(args, capsys) -> tuple[int, str]:
    """Runs the CLI; returns (exit code, stderr)."""
    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as exit_:
        code = exit_.code or 0
    return code, capsys.readouterr().err


def command(subcommand: str, root: Path, *extra) -> list:
    return [
        subcommand, "--config", QUICKSTART, "--trainer.default_root_dir", root,
        "--trainer.max_epochs", 1, "--trainer.limit_train_batches", 2,
        "--trainer.limit_val_batches", 1, "--trainer.limit_test_batches", 1,
        "--trainer.enable_progress_bar", "false", *extra,
    ]  # fmt: skip


def error_line(err: str) -> str:
    """The one line ``main`` printed, checked to be the last and without a traceback."""
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A quickstart run of 2 steps: its default_root_dir."""
    root = tmp_path_factory.mktemp("trained")
    try:
        main([str(a) for a in command("fit", root)])
    except SystemExit as exit_:
        assert not exit_.code
    return root


def last_checkpoint(root: Path) -> Path:
    return root / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test"])
def test_truncated_checkpoint_is_refused_before_any_log_folder(
    trained, tmp_path, capsys, subcommand
):
    whole = last_checkpoint(trained).read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(whole[: len(whole) // 2])
    code, err = run_cli(command(subcommand, tmp_path / "run", "--ckpt_path", cut), capsys)
    assert code == 2
    assert error_line(err).startswith(
        f"distill: error: --ckpt_path {cut} is truncated, corrupt or not a torch.save file "
        f"({len(whole) // 2} bytes; torch.load: RuntimeError PytorchStreamReader failed"
    )
    assert not (tmp_path / "run").exists()


def test_folder_suggests_the_last_checkpoint_of_its_newest_version(tmp_path, capsys):
    for version in (2, 10):  # 10 is newer than 2 (a number, not a string order)
        folder = tmp_path / "lightning_logs" / f"version_{version}" / "checkpoints"
        folder.mkdir(parents=True)
        (folder / "last.ckpt").touch()
    code, err = run_cli(command("fit", tmp_path, "--ckpt_path", tmp_path), capsys)
    newest = tmp_path / "lightning_logs" / "version_10" / "checkpoints" / "last.ckpt"
    assert code == 2
    assert error_line(err) == (
        f"distill: error: --ckpt_path {tmp_path} is a folder, not a checkpoint file; did you "
        f"mean --ckpt_path {newest}?"
    )
    assert sorted(p.name for p in (tmp_path / "lightning_logs").iterdir()) == [
        "version_10", "version_2",
    ]  # fmt: skip


@pytest.mark.parametrize("subcommand", ["fit", "validate"])
def test_plain_state_dict_is_named_with_what_to_use_it_for(tmp_path, capsys, subcommand):
    weights = tmp_path / "backbone.pt"
    torch.save(create_backbone("resnet8").state_dict(), weights)
    run = tmp_path / "run"
    code, err = run_cli(command(subcommand, run, "--ckpt_path", weights), capsys)
    assert code == 2
    line = error_line(err)
    assert line.startswith(
        f"distill: error: --ckpt_path {weights} holds a plain state dict (54 tensors; keys like "
        f"conv1.weight, bn1.weight, bn1.bias, ... (+51)), not a Lightning checkpoint: distill "
        f"{subcommand} restores one written by distill fit"
    )
    assert "distill.backbones.load_pretrained(path)" in line
    assert "model.init_args.teacher_checkpoint" in line
    assert not run.exists()


def test_weights_only_checkpoint_cannot_resume_a_fit(trained, tmp_path, capsys):
    saved = torch.load(last_checkpoint(trained), weights_only=True)
    kept = ("epoch", "global_step", "pytorch-lightning_version", "state_dict", "loops")
    weights_only = tmp_path / "weights-only.ckpt"
    torch.save({key: saved[key] for key in kept}, weights_only)  # save_weights_only's layout
    code, err = run_cli(command("fit", tmp_path / "run", "--ckpt_path", weights_only), capsys)
    assert code == 2
    assert error_line(err).startswith(
        f"distill: error: --ckpt_path {weights_only} holds weights only (saved with "
        "save_weights_only: no optimiser or loop state), so a fit cannot resume from it"
    )


def test_resume_after_the_checkpoints_folder_was_deleted_leaves_no_new_version(
    trained, tmp_path, capsys
):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    checkpoints = last_checkpoint(run).parent
    shutil.rmtree(checkpoints)
    code, err = run_cli(command("fit", run, "--ckpt_path", checkpoints / "last.ckpt"), capsys)
    assert code == 2
    assert error_line(err) == (
        f"distill: error: --ckpt_path {checkpoints / 'last.ckpt'}: no such checkpoint file (its "
        f"folder {checkpoints} is gone too: moved or deleted?)"
    )
    assert [p.name for p in (run / "lightning_logs").iterdir()] == ["version_0"]


@pytest.mark.filterwarnings("ignore:model arguments differ")  # changed on purpose
def test_resume_with_another_backbone_lists_the_keys_that_do_not_fit(trained, tmp_path, capsys):
    last = last_checkpoint(trained)
    args = command("fit", tmp_path, "--ckpt_path", last, "--model.init_args.backbone", "resnet14")
    code, err = run_cli(args, capsys)
    assert code == 2
    assert error_line(err).startswith(
        f"distill: error: the weights in {last} do not fit the configured model (same method, "
        "backbone and sizes as the run that wrote it?): missing keys "
        "[student.backbone.layer1.1.conv1.weight, student.backbone.layer1.1.bn1.weight, "
    )
    assert error_line(err).endswith(", ... (+26)]")  # resnet14's extra block in each stage: 36
    assert list(tmp_path.iterdir()) == []  # the new version folder, made before the restore


@pytest.mark.filterwarnings("ignore:resuming from")  # max_epochs raised on purpose
def test_last_resumes_the_newest_versions_last_checkpoint(trained, tmp_path, capsys, lightning_log):
    # Lightning looks for "last" in the new fit's own, empty version folder and trains from
    # scratch; distill takes the newest version's last.ckpt under the run's root.
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    validated = run / "lightning_logs" / "version_1"  # e.g. a distill validate: no checkpoint
    validated.mkdir()
    (validated / "config.yaml").write_text("{}\n")
    newest = last_checkpoint(run)
    args = command("fit", run, "--ckpt_path", "last", "--trainer.max_epochs", 2)
    code, err = run_cli(args, capsys)
    assert code == 0, err
    said = f"--ckpt_path last: {newest} (the newest version's under {run / 'lightning_logs'})"
    assert said in lightning_log.messages
    resumed = run / "lightning_logs" / "version_2"
    assert yaml.safe_load((resumed / "config.yaml").read_text())["ckpt_path"] == str(newest)
    final = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    assert (final["epoch"], final["global_step"]) == (1, 4)  # epoch 1 only: resumed, not anew


def test_last_under_a_loggers_own_folder(tmp_path):
    # Where a TensorBoardLogger or CSVLogger of the config keeps its versions; none for a
    # shared checkpoint folder (Lightning finds "last" there itself) or without a logger.
    from distill.runs import logs_folder

    logger = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(tmp_path / "logs"), "name": "kd"},
    }
    assert logs_folder({"default_root_dir": str(tmp_path), "logger": logger}, None) == (
        tmp_path / "logs" / "kd"
    )
    assert logs_folder({"default_root_dir": str(tmp_path)}, None) == tmp_path / "lightning_logs"
    assert logs_folder({"default_root_dir": str(tmp_path)}, str(tmp_path / "ckpts")) is None
    assert logs_folder({"default_root_dir": str(tmp_path), "logger": False}, None) is None


def test_last_without_any_checkpoint_starts_a_fresh_fit_and_says_so(
    tmp_path, capsys, lightning_log
):
    with warnings.catch_warnings(record=True) as caught:  # pytest.warns re-emits the rest
        warnings.simplefilter("always")
        code, err = run_cli(command("fit", tmp_path, "--ckpt_path", "last"), capsys)
    assert code == 0, err
    looked_for = tmp_path / "lightning_logs" / "version_*" / "checkpoints" / "last.ckpt"
    assert f"--ckpt_path last: no {looked_for} yet; starting a fresh fit" in lightning_log.messages
    assert not [w for w in caught if "there is no last checkpoint available" in str(w.message)]
    assert last_checkpoint(tmp_path).is_file()


def test_checkpoint_records_its_optimiser(trained):
    saved = torch.load(last_checkpoint(trained), weights_only=True)
    record = saved["optimizer_settings"]
    assert record["class_path"] == "torch.optim.SGD"  # the quickstart's, by its public path
    assert {key: record["defaults"][key] for key in ("lr", "momentum", "weight_decay")} == {
        "lr": 0.1, "momentum": 0.9, "weight_decay": 5.0e-4,
    }  # fmt: skip


@pytest.mark.parametrize("recorded", [True, False], ids=["recorded", "before-records"])
def test_resume_with_another_optimiser_class_is_one_message_naming_both(
    trained, tmp_path, capsys, recorded
):
    last = last_checkpoint(trained)
    if not recorded:  # a checkpoint of an earlier distill: the class told by its param group
        saved = torch.load(last, weights_only=True)
        saved.pop("optimizer_settings", None)
        last = tmp_path / "earlier.ckpt"
        torch.save(saved, last)
    run = tmp_path / "run"
    adam = ["--model.init_args.optimizer", "torch.optim.Adam"]
    code, err = run_cli(command("fit", run, "--ckpt_path", last, *adam), capsys)
    assert code == 2
    saved_class = (
        "torch.optim.SGD"
        if recorded
        else "another optimiser (its arguments include dampening, momentum, nesterov)"
    )
    assert error_line(err).startswith(
        f"distill: error: --ckpt_path {last} holds the state of {saved_class}, but the "
        "configured optimiser is torch.optim.Adam (model.init_args.optimizer): a resumed fit "
        "restores the checkpoint's optimiser state, which another optimiser cannot take."
    )
    assert not run.exists()  # refused before anything was built


def test_changed_optimiser_argument_warns_that_the_checkpoints_value_applies(
    trained, tmp_path, capsys
):
    last = last_checkpoint(trained)
    args = command("fit", tmp_path, "--ckpt_path", last, "--trainer.max_epochs", 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, err = run_cli([*args, "--model.init_args.optimizer.init_args.lr", 0.5], capsys)
    assert code == 0, err
    said = [str(w.message) for w in caught if "optimiser arguments differ" in str(w.message)]
    assert said == [
        f"optimiser arguments differ from the checkpoint's ({last}): lr: 0.1 -> 0.5. The "
        "checkpoint's values apply: a resumed fit restores its optimiser state (arguments, "
        "buffers and the lr schedule's base lr)"
    ]
    final = torch.load(last_checkpoint(tmp_path), weights_only=True)
    assert final["global_step"] == 4
    assert final["optimizer_states"][0]["param_groups"][0]["initial_lr"] == 0.1
    assert final["optimizer_settings"]["defaults"]["lr"] == 0.1  # what applied, for the next
