import os
import warnings

import pytest
import torch

from distill.backbones import create_backbone
from distill.errors import ConfigError
from distill.methods import Supervised
from distill.modules import Classifier, load_weights
from distill.modules.weights import HEAD_HINT, resolve_checkpoint


def test_loads_student_weights_from_a_lightning_checkpoint(tmp_path):
    source = Supervised(backbone="resnet8", num_classes=10)
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": source.state_dict(), "epoch": 3}, path)
    target = load_weights(Classifier(create_backbone("resnet8"), 10), str(path))
    for name, value in source.student.state_dict().items():
        assert torch.equal(target.state_dict()[name], value)


def test_loads_a_plain_state_dict(tmp_path):
    source = Classifier(create_backbone("resnet8"), 7)
    path = tmp_path / "weights.pt"
    torch.save(source.state_dict(), path)
    target = load_weights(Classifier(create_backbone("resnet8"), 7), str(path))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(target.eval()(x), source.eval()(x))


def test_mismatch_lists_missing_unexpected_and_shape_keys(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(Classifier(create_backbone("resnet8"), 10).state_dict(), path)
    with pytest.raises(ConfigError) as error:
        load_weights(Classifier(create_backbone("resnet14"), 100), str(path))
    message = str(error.value)
    assert "missing keys [backbone.layer1.1" in message
    assert "head.weight (10, 64) vs (100, 64)" in message
    assert str(path) in message
    assert message.endswith("Check the backbone name and num_classes.")


def test_a_mismatch_of_the_head_alone_names_its_widths(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(Classifier(create_backbone("resnet8"), 10).state_dict(), path)
    with pytest.raises(ConfigError) as error:
        load_weights(Classifier(create_backbone("resnet8"), 100), str(path))
    assert str(error.value).endswith(HEAD_HINT)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.ckpt"):
        load_weights(Classifier(create_backbone("resnet8"), 10), str(tmp_path / "nope.ckpt"))


def test_classifier_returns_embedding_and_logits():
    model = Classifier(create_backbone("resnet8"), 5).eval()
    x = torch.randn(3, 3, 32, 32)
    features, logits = model.forward_features(x)
    assert features.shape == (3, model.backbone.num_features) and logits.shape == (3, 5)
    torch.testing.assert_close(logits, model.head(model.backbone(x)))


def test_compiled_module_prefixes_are_stripped(tmp_path):
    source = Supervised(backbone="resnet8", num_classes=10)
    # What a checkpoint of torch.compile(model.student) holds: keys under "_orig_mod.".
    compiled = {
        k.replace("student.", "student._orig_mod.", 1): v for k, v in source.state_dict().items()
    }
    path = tmp_path / "compiled.ckpt"
    torch.save({"state_dict": compiled}, path)
    target = load_weights(Classifier(create_backbone("resnet8"), 10), str(path))
    for name, value in source.student.state_dict().items():
        assert torch.equal(target.state_dict()[name], value)
    plain = tmp_path / "compiled.pt"
    torch.save({f"_orig_mod.{k}": v for k, v in source.student.state_dict().items()}, plain)
    load_weights(Classifier(create_backbone("resnet8"), 10), str(plain))


def test_run_directory_resolves_to_the_highest_version_with_a_last_ckpt(write_run):
    write_run(2)
    newest = write_run(10)
    (newest.parents[2] / "version_11").mkdir()  # a later `validate`: no checkpoints
    older = newest.parents[2] / "version_2" / "checkpoints" / "last.ckpt"
    os.utime(older, (newest.stat().st_mtime + 60,) * 2)  # file times must not matter
    assert resolve_checkpoint(str(newest.parents[3])) == str(newest)


def test_a_file_path_is_used_as_given(write_run):
    path = str(write_run(0))
    assert resolve_checkpoint(path) == path


def test_resolution_logs_the_file_epoch_step_and_best_metric(write_run, lightning_log):
    path = write_run(1, epoch=39)
    resolve_checkpoint(str(path.parents[3]))
    assert (
        f"Loading weights from {path}: epoch=39, global step 400, "
        "best val/top1 0.6250 (epoch=2-step=30.ckpt)"
    ) in lightning_log.text


def test_unfinished_last_checkpoint_file_warns_with_its_epochs(write_run):
    path = write_run(0, epoch=11, max_epochs=40)
    with pytest.warns(UserWarning, match="unfinished run: 12 of 40 epochs, global step 120"):
        assert resolve_checkpoint(str(path)) == str(path)


def test_directory_without_a_finished_run_takes_the_newest_with_a_warning(write_run):
    write_run(0, epoch=39, max_epochs=40, interrupted={"signal": "SIGTERM"})
    newest = write_run(1, epoch=11, max_epochs=40)
    with pytest.warns(UserWarning) as caught:
        assert resolve_checkpoint(str(newest.parents[3])) == str(newest)
    message = str(caught[0].message)
    assert "has no finished run; taking the newest, version_1 (12 of 40 epochs" in message
    assert (
        "Runs: version_0 (interrupted by SIGTERM, 39 of 40 epochs, global step 400, "
        "unfinished); version_1 (12 of 40 epochs, global step 120, unfinished)"
    ) in message
    assert f"Finish it with --ckpt_path {newest}" in message


def test_directory_takes_its_newest_finished_run_and_logs_the_candidates(
    write_run, tmp_path, lightning_log
):
    finished = write_run(0, epoch=39, max_epochs=40)
    write_run(1, epoch=5, interrupted={"signal": "SIGTERM"})  # a resume, interrupted
    write_run(2, epoch=11, max_epochs=40)  # still training, or stopped early
    write_run(3).write_bytes(b"PK\x03\x04 cut short")  # a write the disk did not finish
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the longest run is taken: nothing to warn about
        assert resolve_checkpoint(str(tmp_path / "run")) == str(finished)
    assert (
        f"run directory {tmp_path / 'run'}: taking its newest finished run, version_0. Runs: "
        "version_0 (40 of 40 epochs, global step 400, finished); version_1 (interrupted by "
        "SIGTERM, 5 of 40 epochs, global step 60, unfinished); version_2 (12 of 40 epochs, "
        "global step 120, unfinished); version_3 (unreadable last.ckpt)."
    ) in lightning_log.text


def test_a_much_shorter_newest_finished_run_is_taken_with_a_warning(write_run, tmp_path):
    real = write_run(0, epoch=39, max_epochs=40)
    smoke = write_run(1, epoch=0, max_epochs=1)  # a 1-epoch smoke run added later
    with pytest.warns(UserWarning) as caught:
        assert resolve_checkpoint(str(tmp_path / "run")) == str(smoke)
    message = str(caught[0].message)
    assert (
        "taking its newest finished run, version_1 (1 of 1 epochs, global step 10), although "
        "version_0 trained far longer (40 of 40 epochs, global step 400)"
    ) in message
    assert f"give its file instead of the directory: {real}" in message


def test_max_steps_and_lightnings_default_length_decide_what_is_finished(
    write_run, tmp_path, lightning_log
):
    by_steps = write_run(0, epoch=9, max_epochs=None, max_steps=100, global_step=100)
    write_run(1, epoch=5, max_epochs=None, max_steps=100, global_step=60)
    write_run(2, epoch=4, max_epochs=None)  # no limit given: Lightning stops at 1000 epochs
    assert resolve_checkpoint(str(tmp_path / "run")) == str(by_steps)
    assert (
        "version_0 (10 epochs, global step 100 of 100, finished); version_1 (6 epochs, global "
        "step 60 of 100, unfinished); version_2 (5 of 1000 epochs, global step 50, unfinished)"
    ) in lightning_log.text


def test_run_without_a_recorded_plan_is_finished_unless_interrupted(write_run, tmp_path):
    plain = write_run(0, epoch=2, config=False)  # e.g. a Trainer built in Python
    write_run(1, epoch=3, config=False, interrupted={"signal": "SIGINT"})
    assert resolve_checkpoint(str(tmp_path / "run")) == str(plain)


def test_finished_run_does_not_warn(write_run):
    path = write_run(0, epoch=39, max_epochs=40)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve_checkpoint(str(path.parents[3]))


def test_directory_without_last_ckpt_names_what_was_searched(tmp_path):
    run = tmp_path / "run"
    (run / "lightning_logs" / "version_0").mkdir(parents=True)
    searched = os.path.join(str(run), "lightning_logs", "version_*", "checkpoints", "last.ckpt")
    with pytest.raises(ConfigError) as error:
        resolve_checkpoint(str(run))
    assert f"run directory {str(run)!r} has no last.ckpt" in str(error.value)
    assert f"searched {searched} (found version_0)" in str(error.value)
    with pytest.raises(ConfigError, match="found no version_\\* folder"):
        resolve_checkpoint(str(tmp_path))


def test_missing_path_names_both_accepted_forms(tmp_path):
    with pytest.raises(ConfigError, match="'.*nowhere' does not exist: give a run directory"):
        resolve_checkpoint(str(tmp_path / "nowhere"))


def test_folder_and_truncated_file_are_named_as_such(tmp_path):
    network = Classifier(create_backbone("resnet8"), 10)
    with pytest.raises(ConfigError, match=f"^cannot read weights: {tmp_path} is a folder, not a"):
        load_weights(network, str(tmp_path))
    path = tmp_path / "weights.pt"
    torch.save(network.state_dict(), path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ConfigError) as error:
        load_weights(network, str(path))
    assert str(error.value).startswith(
        f"cannot read weights: {path} is truncated, corrupt or not a torch.save file (5000 bytes"
    )
