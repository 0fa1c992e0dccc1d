"""The checkpoint ``distill eval`` and ``distill export`` read: one message for a truncated
file, a folder and a plain state dict, before anything is computed or written."""

from pathlib import Path

import pytest
import torch

from distill.backbones import create_backbone

QUICKSTART = str(Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml")


def run(cli, command: str, ckpt_path: Path, output: Path) -> tuple[int, str, str]:
    return cli([command, "--config", QUICKSTART, "--ckpt_path", ckpt_path, "--output", output])


def message(err: str) -> str:
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("command", ["eval", "export"])
def test_truncated_checkpoint(supervised_ckpt, tmp_path, cli, command):
    cut = tmp_path / "cut.ckpt"
    whole = supervised_ckpt.read_bytes()
    cut.write_bytes(whole[: len(whole) // 2])
    code, _, err = run(cli, command, cut, tmp_path / "out")
    assert code == 2
    assert message(err).startswith(
        f"distill: error: --ckpt_path {cut} is truncated, corrupt or not a torch.save file "
        f"({len(whole) // 2} bytes; torch.load: RuntimeError PytorchStreamReader failed"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.ckpt"]


@pytest.mark.parametrize("command", ["eval", "export"])
def test_run_folder_suggests_its_last_checkpoint(supervised_ckpt, tmp_path, cli, command):
    run_dir = supervised_ckpt.parents[3]  # the run's default_root_dir
    code, _, err = run(cli, command, run_dir, tmp_path / "out")
    assert code == 2
    assert message(err) == (
        f"distill: error: --ckpt_path {run_dir} is a folder, not a checkpoint file; did you "
        f"mean --ckpt_path {supervised_ckpt}?"
    )


@pytest.mark.parametrize("command", ["eval", "export"])
def test_plain_state_dict_says_what_it_is_and_what_reads_it(tmp_path, cli, command):
    weights = tmp_path / "backbone.pt"
    torch.save(create_backbone("resnet8").state_dict(), weights)
    code, _, err = run(cli, command, weights, tmp_path / "out")
    assert code == 2
    assert message(err) == (
        f"distill: error: --ckpt_path {weights} holds no student.backbone.* weights: it holds "
        "a plain state dict (54 tensors; keys like conv1.weight, bn1.weight, bn1.bias, ... "
        "(+51)). distill eval and export read a checkpoint of a distill run "
        "(lightning_logs/version_*/checkpoints/*.ckpt). A backbone written by distill export "
        "loads with distill.backbones.load_pretrained(path); a trained network's weights "
        "become a teacher through model.init_args.teacher_checkpoint."
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backbone.pt"]
