"""``distill eval``: the numbers KNNEval logs, a linear probe counted directly, clear refusals."""

import importlib
import json
import warnings
from pathlib import Path

import pytest
import torch

from distill.cli import build_cli
from distill.data import ImageFolderDataModule
from distill.eval import fit_linear_classifier, knn_accuracies
from distill.methods import DINO, Supervised

QUICKSTART = str(Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml")


@pytest.fixture(scope="module")
def validated_and_evaluated(supervised_ckpt, tmp_path_factory):
    """``distill validate`` metrics and ``distill eval`` results (and output) of one checkpoint."""
    root = tmp_path_factory.mktemp("validate")
    validate = build_cli(
        [
            "validate", "--config", QUICKSTART, "--ckpt_path", str(supervised_ckpt),
            "--trainer.default_root_dir", str(root), "--trainer.limit_val_batches", "1",
            "--trainer.enable_progress_bar", "false",
        ]
    )  # fmt: skip
    logged = {name: float(value) for name, value in validate.trainer.callback_metrics.items()}
    build_cli(["eval", "--config", QUICKSTART, "--ckpt_path", str(supervised_ckpt)])
    default_output = supervised_ckpt.with_name("last.ckpt.student.eval.json")
    return logged, json.loads(default_output.read_text())


def test_knn_numbers_are_those_knn_eval_logs_during_validate(validated_and_evaluated):
    logged, results = validated_and_evaluated
    assert results["knn"]["20"]["top1"] == logged["val/knn_k20_top1"] == logged["val/knn_top1"]
    assert results["knn"]["20"]["top5"] == logged["val/knn_top5"]
    assert results["knn"]["200"]["top1"] == logged["val/knn_k200_top1"]
    assert results["knn"]["20"]["top1"] != results["knn"]["200"]["top1"]  # two real numbers


def test_linear_top1_is_a_direct_count_on_the_checkpoints_features(
    validated_and_evaluated, supervised_ckpt, split_features
):
    _, results = validated_and_evaluated
    model = Supervised(backbone="resnet8", num_classes=10)
    model.load_state_dict(torch.load(supervised_ckpt, weights_only=True)["state_dict"])
    train_x, train_y = split_features(model.student.backbone, "train")
    val_x, val_y = split_features(model.student.backbone, "val")
    classifier = fit_linear_classifier(train_x, train_y, 10, 100, 0.1, optimizer="sgd")
    with torch.no_grad():
        correct = int((classifier(val_x).argmax(1) == val_y).sum())
    assert results["linear"]["top1"] == pytest.approx(correct / 360, abs=1e-6)
    assert results["linear"]["top1"] > 0.5  # a probe that learnt, not chance (0.1)
    assert results["linear"]["top5"] >= results["linear"]["top1"]


def test_results_record_checkpoint_data_and_settings(validated_and_evaluated, supervised_ckpt):
    _, results = validated_and_evaluated
    assert results["checkpoint"] == str(supervised_ckpt)
    assert results["model"] == "distill.methods.Supervised"
    assert results["submodule"] == "student" and results["num_features"] == 64
    assert results["data"]["class_path"] == "distill.data.DigitsDataModule"
    assert (results["train_images"], results["val_images"], results["num_classes"]) == (
        1437, 360, 10
    )  # fmt: skip
    settings = results["settings"]
    assert settings["knn_k"] == [20, 200] and settings["knn_temperature"] == 0.07
    assert (settings["linear_optimizer"], settings["linear_epochs"]) == ("sgd", 100)
    assert settings["linear_lr"] == 0.1


def test_teacher_with_lbfgs_matches_direct_knn_and_probe(
    dino_ckpt, dino_config, split_features, tmp_path, cli
):
    output = tmp_path / "teacher.json"
    code, out, err = cli(
        [
            "eval", "--config", dino_config, "--ckpt_path", dino_ckpt, "--submodule", "teacher",
            "--knn_k", "5", "50", "--linear_optimizer", "lbfgs", "--linear_epochs", "30",
            "--output", output,
        ]
    )  # fmt: skip
    assert code == 0, err
    assert "| k-NN, k = 5 |" in out and "| linear, lbfgs, 30 epochs |" in out
    results = json.loads(output.read_text())
    model = DINO(backbone="resnet8", output_dim=64, hidden_dim=32, bottleneck_dim=16)
    model.load_state_dict(torch.load(dino_ckpt, weights_only=True)["state_dict"])
    train_x, train_y = split_features(model.teacher.backbone, "train")
    val_x, val_y = split_features(model.teacher.backbone, "val")
    knn = knn_accuracies(train_x, train_y, val_x, val_y, 10, [5, 50])
    assert results["knn"] == {"5": knn[5], "50": knn[50]}
    classifier = fit_linear_classifier(train_x, train_y, 10, 30, 1.0, optimizer="lbfgs")
    with torch.no_grad():
        correct = int((classifier(val_x).argmax(1) == val_y).sum())
    assert results["linear"]["top1"] == pytest.approx(correct / 360, abs=1e-6)
    # The student's features differ: the teacher, not the student, was evaluated.
    student_x, _ = split_features(model.student.backbone, "val")
    assert not torch.allclose(student_x, val_x)


def test_kd_teacher_is_evaluated_from_the_students_checkpoint_after_its_run_is_gone(
    kd_run, supervised_ckpt, split_features, tmp_path
):
    config, checkpoint = kd_run  # the teacher's run directory no longer exists
    output = tmp_path / "teacher.json"
    build_cli(
        [
            "eval", "--config", config, "--ckpt_path", str(checkpoint), "--submodule", "teacher",
            "--knn_k", "5", "--linear_epochs", "1", "--output", str(output),
        ]
    )  # fmt: skip
    results = json.loads(output.read_text())
    assert results["submodule"] == "teacher"
    # The student's checkpoint holds the quickstart run's network as its teacher ...
    teacher = Supervised.load_from_checkpoint(supervised_ckpt, map_location="cpu").student
    saved = torch.load(checkpoint, weights_only=True)["state_dict"]
    for name, value in teacher.state_dict().items():
        assert torch.equal(saved[f"teacher.{name}"], value), name
    # ... and that network's backbone is what was probed.
    train_x, train_y = split_features(teacher.backbone, "train")
    val_x, val_y = split_features(teacher.backbone, "val")
    assert results["knn"]["5"] == knn_accuracies(train_x, train_y, val_x, val_y, 10, [5])[5]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ckpt_path", "missing.ckpt"], "missing.ckpt: no such checkpoint file"),
        (["--submodule", "teacher"], "has no submodule 'teacher'; available: student"),
        (["--knn_k", "0"], "--knn_k=[0]; valid: one or more integers >= 1"),
        (
            ["--model.init_args.backbone", "resnet14"],
            "(student.backbone.*) do not fit the CifarResNet",
        ),
    ],
)
def test_mistakes_end_in_one_message_and_write_nothing(
    supervised_ckpt, tmp_path, cli, extra, message
):
    output = tmp_path / "never.json"
    args = ["eval", "--config", QUICKSTART, "--ckpt_path", supervised_ckpt, "--output", output]
    code, _, err = cli(args + extra)
    assert code == 2 and message in err and "Traceback" not in err
    assert not output.exists()


@pytest.mark.parametrize(
    ("option", "value", "valid"),
    [
        ("--linear_lr", "-1", "-1.0; valid: a number > 0"),
        ("--linear_weight_decay", "-1", "-1.0; valid: a number >= 0"),
        ("--linear_batch_size", "0", "0; valid: an integer >= 1"),  # a ZeroDivisionError once
        ("--linear_epochs", "0", "0; valid: an integer >= 1"),  # an untrained probe's score
        ("--linear_epochs", "-3", "-3; valid: an integer >= 1"),
        ("--knn_temperature", "0", "0.0; valid: a number > 0"),
        ("--knn_temperature", "-0.07", "-0.07; valid: a number > 0"),  # scored silently once
        ("--knn_k", "20 -1", "[20, -1]; valid: one or more integers >= 1"),
    ],
)
def test_bad_numbers_are_refused_before_any_feature_is_extracted(
    supervised_ckpt, tmp_path, cli, monkeypatch, option, value, valid
):
    def no_features(*args, **kwargs):
        raise AssertionError("features extracted before the options were checked")

    # The module, not the function distill.commands re-exports under the same name.
    monkeypatch.setattr(
        importlib.import_module("distill.commands.evaluate"), "FeatureCache", no_features
    )
    output = tmp_path / "never.json"
    args = ["eval", "--config", QUICKSTART, "--ckpt_path", supervised_ckpt, "--output", output]
    code, out, err = cli([*args, option, *value.split()])
    assert code == 2 and out == ""
    assert err.strip().splitlines()[-1] == f"distill: error: {option}={valid}"
    assert not output.exists()


def test_model_arguments_unlike_the_checkpoints_are_not_warned_about(
    supervised_ckpt, tmp_path, cli
):
    # Eval probes the backbone alone; the run's other arguments (here its loss) play no part.
    args = ["eval", "--config", QUICKSTART, "--ckpt_path", supervised_ckpt, "--linear_epochs", 1]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, err = cli([*args, "--output", tmp_path / "results.json",
                            "--model.init_args.label_smoothing", "0.3"])  # fmt: skip
    assert code == 0, err
    assert not [w for w in caught if "model arguments differ" in str(w.message)]
    assert (tmp_path / "results.json").is_file()


def test_help_lists_the_options(cli):
    code, out, _ = cli(["eval", "--help"])
    assert code == 0
    for option in (
        "--ckpt_path",
        "--submodule",
        "--knn_k",
        "--linear_optimizer",
        "--linear_epochs",
    ):
        assert option in out


def test_read_only_output_loses_nothing_computed(supervised_ckpt, read_only_folder, cli):
    output = read_only_folder / "results.json"
    args = ["eval", "--config", QUICKSTART, "--ckpt_path", supervised_ckpt, "--output", output]
    code, out, err = cli(args + ["--linear_epochs", "5"])
    assert code == 74 and "Traceback" not in err
    message = err.strip().splitlines()[-1]
    assert message.startswith(f"distill: error: cannot write results {output}: ")
    assert "read-only" in message  # EACCES under a 0o555 mode, EROFS on a read-only mount
    assert message.endswith(
        "; the results are printed above (table and JSON on stdout). Save them with another "
        "--output"
    )
    table, printed = out.split("\n{", 1)
    assert "| k-NN, k = 20 |" in table and "| linear, sgd, 5 epochs |" in table
    results = json.loads("{" + printed)
    assert results["checkpoint"] == str(supervised_ckpt) and results["linear"]["top1"] > 0
    assert list(read_only_folder.iterdir()) == []


def test_existing_results_are_replaced_only_when_asked(supervised_ckpt, tmp_path, cli):
    output = tmp_path / "results.json"
    output.write_text("earlier results\n")
    args = ["eval", "--config", QUICKSTART, "--ckpt_path", supervised_ckpt, "--output", output]
    code, out, err = cli(args)
    assert code == 2 and out == ""  # refused before any work
    assert f"{output} already exists; pass --overwrite true to replace it" in err
    assert output.read_text() == "earlier results\n"
    code, _, err = cli(args + ["--overwrite", "true", "--linear_epochs", "5"])
    assert code == 0, err
    assert json.loads(output.read_text())["settings"]["linear_epochs"] == 5
    code, _, err = cli(args[:-2] + ["--output", supervised_ckpt, "--overwrite", "true"])
    assert code == 2 and "is the checkpoint being read" in err


def test_backbone_of_a_10_class_checkpoint_is_probed_on_3_class_data(
    supervised_ckpt, png_folder, tmp_path, cli
):
    output = tmp_path / "three.json"
    code, _, err = cli(
        [
            "eval", "--config", QUICKSTART, "--ckpt_path", supervised_ckpt,
            "--data", "distill.data.ImageFolderDataModule",
            "--data.init_args.data_dir", png_folder, "--data.init_args.image_size", "32",
            "--knn_k", "5", "--linear_epochs", "30", "--output", output,
        ]
    )  # fmt: skip
    assert code == 0, err
    results = json.loads(output.read_text())
    assert results["num_classes"] == 3 and results["train_images"] == 18
    # Directly: the checkpoint's backbone on the folder's un-augmented splits, 3-class probes.
    model = Supervised(backbone="resnet8", num_classes=10)
    model.load_state_dict(torch.load(supervised_ckpt, weights_only=True)["state_dict"])
    data = ImageFolderDataModule(data_dir=str(png_folder), image_size=32, eval_resize=None)
    features = {}
    with torch.no_grad():
        backbone = model.student.backbone.eval()
        for split in ("train", "val"):
            batches = [(backbone(x), y) for x, y, _ in data.eval_dataloader(split)]
            features[split] = tuple(torch.cat(parts) for parts in zip(*batches, strict=True))
    (train_x, train_y), (val_x, val_y) = features["train"], features["val"]
    assert results["knn"]["5"] == knn_accuracies(train_x, train_y, val_x, val_y, 3, [5])[5]
    classifier = fit_linear_classifier(train_x, train_y, 3, 30, 0.1, optimizer="sgd")
    with torch.no_grad():
        correct = int((classifier(val_x).argmax(1) == val_y).sum())
    assert results["linear"]["top1"] == pytest.approx(correct / len(val_y), abs=1e-6)


def test_eval_feeds_a_teacher_its_own_inputs(spec_kd_run, tmp_path, cli):
    # The teacher takes ImageNet statistics (torchvision's metadata): the digits' batch is
    # re-normalised for it, which needs the data's statistics set before the features.
    config, checkpoint, _ = spec_kd_run
    output = tmp_path / "teacher.eval.json"
    code, _, err = cli([
        "eval", "--config", config, "--ckpt_path", checkpoint, "--submodule", "teacher",
        "--knn_k", "5", "--linear_epochs", "1", "--output", output,
    ])  # fmt: skip
    assert code == 0, err
    results = json.loads(output.read_text())
    assert results["submodule"] == "teacher" and results["num_features"] == 512
