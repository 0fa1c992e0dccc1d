import warnings

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tests_support import ColourDataModule, FrozenModel, StopAfter, quiet_trainer

from distill.callbacks import EmbeddingProjector, MethodCheckpoint, ViewGrid
from distill.data import MultiCropViews, SupervisedViews
from distill.errors import ConfigError


def fit(root, callbacks, model=None, max_epochs=1, **data):
    logger = TensorBoardLogger(str(root), name="logs")
    trainer = quiet_trainer(
        root,
        max_epochs=max_epochs,
        limit_train_batches=2,
        logger=logger,
        enable_checkpointing=any(isinstance(c, MethodCheckpoint) for c in callbacks),
        callbacks=callbacks,
    )
    trainer.fit(model or FrozenModel(), datamodule=ColourDataModule(**data))
    return trainer, logger


def test_view_grid_shows_every_view_once_denormalised(tmp_path):
    views = MultiCropViews(num_global=2, num_local=2, global_size=32, local_size=16)
    _, logger = fit(tmp_path, [ViewGrid(num_images=4)], views=views)
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0}).Reload()
    images = events.Images("train/views")
    assert len(images) == 1  # once per fit, not per batch
    # 4 views as rows of 4 images of 32 px with make_grid's 2 px padding.
    assert (images[0].height, images[0].width) == (4 * 34 + 2, 4 * 34 + 2)


def test_checkpoint_monitors_the_methods_metric(tmp_path):
    from distill.methods import Supervised

    checkpoint = MethodCheckpoint(dirpath=str(tmp_path / "ckpt"))
    trainer, _ = fit(tmp_path, [checkpoint], model=Supervised(backbone="resnet8", num_classes=5))
    assert checkpoint.monitor == Supervised.monitor == "val/top1"
    assert checkpoint.best_model_score == trainer.callback_metrics["val/top1"]
    assert checkpoint.best_model_score is not None and 0 <= checkpoint.best_model_score <= 1
    names = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert "last.ckpt" in names and len(names) == 2


def test_checkpoint_waits_for_a_metric_computed_every_few_epochs(tmp_path):
    from distill.eval import KNNEval
    from distill.methods import Supervised

    class KNNMonitored(Supervised):
        monitor = "val/knn_top1"

    checkpoint = MethodCheckpoint(dirpath=str(tmp_path / "ckpt"))
    knn = KNNEval(k=[3], every_n_epochs=2)
    model = KNNMonitored(backbone="resnet8", num_classes=5)
    # k-NN runs after epochs 1 and 2 (the last); epoch 0 must not fail the checkpoint.
    fit(tmp_path, [knn, checkpoint], model=model, max_epochs=3)
    assert checkpoint.best_model_score is not None
    best_epoch = int(checkpoint.best_model_path.split("epoch=")[1].split("-")[0])
    assert best_epoch in (1, 2)
    assert "last.ckpt" in [p.name for p in (tmp_path / "ckpt").iterdir()]


def test_projector_writes_val_embeddings_with_labels(tmp_path):
    _, logger = fit(tmp_path, [EmbeddingProjector(num_samples=20)])
    config = next((tmp_path / "logs").rglob("projector_config.pbtxt")).read_text()
    assert "val/student_embedding" in config
    metadata = next((tmp_path / "logs").rglob("metadata.tsv")).read_text().split()
    tensors = next((tmp_path / "logs").rglob("tensors.tsv")).read_text().strip().splitlines()
    assert len(metadata) == 20 and len(tensors) == 20
    assert len(tensors[0].split("\t")) == 3  # the ChannelMeans backbone's width
    assert set(metadata) <= {str(c) for c in range(5)}
    assert torch.tensor([float(v) for v in tensors[0].split("\t")]).isfinite().all()


class FirstEpoch(L.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        self.__dict__.setdefault("epoch", trainer.current_epoch)


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_last_checkpoint_is_the_final_state_when_the_metric_peaked_early(tmp_path):
    from distill.methods import Supervised

    def fit_supervised(epochs, ckpt_path=None):
        L.seed_everything(0)
        checkpoint = MethodCheckpoint(dirpath=str(tmp_path / "ckpt"), mode="min")  # best: epoch 0
        first = FirstEpoch()
        trainer = quiet_trainer(
            tmp_path, max_epochs=epochs, limit_train_batches=2, limit_val_batches=1,
            enable_checkpointing=True, callbacks=[checkpoint, first],
        )  # fmt: skip
        model = Supervised(backbone="resnet8", num_classes=5)
        trainer.fit(model, datamodule=ColourDataModule(), ckpt_path=ckpt_path)
        return checkpoint, first, trainer

    checkpoint, _, trainer = fit_supervised(3)
    assert "epoch=0" in checkpoint.best_model_path  # the (lowest-accuracy) first epoch
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert (last["epoch"], last["global_step"]) == (2, 6) == (trainer.current_epoch - 1, 6)
    with pytest.warns(UserWarning, match=r"trainer.max_epochs: 3 -> 4"):  # distill.resume
        _, first, resumed = fit_supervised(4, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert first.epoch == 3 and resumed.global_step == 8


def test_run_hparams_log_the_whole_config_and_follow_the_main_metric(tmp_path):
    from tensorboard.plugins.hparams import plugin_data_pb2

    from distill.callbacks import RunHParams, flatten_config
    from distill.methods import Supervised

    config = {"model": {"init_args": {"label_smoothing": 0.1, "milestones": [3, 5]}},
              "data": {"init_args": {"batch_size": 10}}, "config": ["a.yaml"]}  # fmt: skip
    assert flatten_config(config) == {
        "model.init_args.label_smoothing": 0.1, "model.init_args.milestones": "[3, 5]",
        "data.init_args.batch_size": 10, "config": "['a.yaml']",
    }  # fmt: skip
    trainer, logger = fit(
        tmp_path, [RunHParams(config)], model=Supervised(backbone="resnet8", num_classes=5),
        max_epochs=2,
    )  # fmt: skip
    events = EventAccumulator(logger.log_dir).Reload()
    hp_metric = [e.value for e in events.Scalars("hp_metric")]
    top1 = [e.value for e in events.Scalars("val/top1")]
    assert hp_metric == top1 and len(top1) == 2  # after each validation, no placeholder first
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    logged = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert {"model.init_args.label_smoothing", "data.init_args.batch_size"} <= set(logged)
    assert "config" not in logged


class BrokenScan(ColourDataModule):
    def setup(self, stage=None):
        raise OSError("[Errno 40] Too many levels of symbolic links: 'bird/loop'")


def test_an_error_before_setup_is_reported_as_itself(tmp_path):
    # The DataModule's setup runs before the callbacks' setup; on_exception must not fail on
    # state that setup would have made (it hid the real error behind an AttributeError).
    trainer = quiet_trainer(tmp_path, max_epochs=1, enable_checkpointing=True,
                            callbacks=[MethodCheckpoint(dirpath=str(tmp_path))])  # fmt: skip
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        trainer.fit(FrozenModel(), datamodule=BrokenScan())


@pytest.mark.parametrize(
    "monitor, nearest, every_n_epochs",
    [("val/top_1", "val/top1", 1), ("val/knn_top_1", "val/knn_top1", 1),
     ("val/knn_top_1", "val/knn_top1", 2)],
    ids=["method_metric", "knn_metric", "knn_metric_after_knn_first_ran"],
)  # fmt: skip
def test_a_monitor_the_run_does_not_log_stops_it_after_writing_last(
    tmp_path, monitor, nearest, every_n_epochs
):
    from distill.eval import KNNEval
    from distill.methods import Supervised

    checkpoint = MethodCheckpoint(dirpath=str(tmp_path / "ckpt"), monitor=monitor)
    knn = KNNEval(k=[3], every_n_epochs=every_n_epochs)
    model = Supervised(backbone="resnet8", num_classes=5)
    with pytest.raises(ConfigError) as error:
        # k-NN every 2 epochs: epoch 0 has no val/knn_* yet, so the name may still come.
        fit(tmp_path, [knn, checkpoint], model=model, max_epochs=3)
    message = str(error.value)
    assert f"checkpoint.monitor={monitor!r} is not a metric this run logs" in message
    assert f"Did you mean {nearest!r}?" in message and "val/top5" in message
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert last["epoch"] == every_n_epochs - 1  # stopped at the end of the first k-NN epoch


def test_the_methods_own_monitor_unlogged_is_a_warning_not_an_error(tmp_path):
    # A self-supervised method's k-NN accuracy without a KNNEval: no best checkpoint, said once.
    from distill.methods import Supervised

    class KNNMonitored(Supervised):
        monitor = "val/knn_top1"

    checkpoint = MethodCheckpoint(dirpath=str(tmp_path / "ckpt"))  # auto: val/knn_top1
    model = KNNMonitored(backbone="resnet8", num_classes=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer, _ = fit(tmp_path, [checkpoint], model=model, max_epochs=2)
    said = "checkpoint.monitor (auto: the method's main metric 'val/knn_top1') is not a metric"
    assert sum(said in str(w.message) for w in caught) == 1
    assert trainer.current_epoch == 2
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["last.ckpt"]


def test_a_run_without_validation_is_not_refused_for_its_val_monitor(tmp_path):
    from distill.methods import Supervised

    checkpoint = MethodCheckpoint(dirpath=str(tmp_path / "ckpt"))  # val/top1, never computed
    model = Supervised(backbone="resnet8", num_classes=5)
    trainer = quiet_trainer(tmp_path, max_epochs=2, limit_train_batches=2, limit_val_batches=0,
                            enable_checkpointing=True, callbacks=[checkpoint])  # fmt: skip
    trainer.fit(model, datamodule=ColourDataModule())
    assert trainer.current_epoch == 2 and checkpoint.best_model_path == ""
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["last.ckpt"]


def test_resume_with_other_settings_warns_once_naming_each_and_the_lr_jump(tmp_path):
    from distill.methods import Supervised

    def fit_supervised(max_epochs, ckpt_path=None, **data):
        L.seed_everything(0)
        model = Supervised(
            backbone="resnet8", num_classes=5, lr_schedule="constant", warmup_epochs=1,
            optimizer=lambda p: torch.optim.SGD(p, lr=0.05),
        )  # fmt: skip
        checkpoint = MethodCheckpoint(dirpath=str(tmp_path / f"ckpt{max_epochs}"))
        trainer = quiet_trainer(tmp_path, max_epochs=max_epochs, limit_val_batches=1,
                                enable_checkpointing=True, callbacks=[checkpoint])  # fmt: skip
        trainer.fit(model, datamodule=ColourDataModule(**data), ckpt_path=ckpt_path)

    fit_supervised(1)  # 60 samples, batches of 10: 6 steps, all of them warm-up
    last = str(tmp_path / "ckpt1" / "last.ckpt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit_supervised(
            2, ckpt_path=last, batch_size=5, data_dir="elsewhere",
            views=SupervisedViews(crop_size=32, padding=2),
        )  # fmt: skip
    reports = [str(w.message) for w in caught if "differ from its run's" in str(w.message)]
    assert len(reports) == 1, reports
    report = reports[0]
    for change in ("trainer.max_epochs: 1 -> 2", "data.init_args.batch_size: 10 -> 5",
                   "data.init_args.data_dir: 'data' -> 'elsewhere'",
                   "data.init_args.views.init_args.padding: 4 -> 2",
                   "samples per optimiser step (batch size x world size x gradient "
                   "accumulation): 10 -> 5"):  # fmt: skip
        assert report.count(change) == 1, (change, report)
    assert "crop_size" not in report and "world size (trainer" not in report  # unchanged
    # Warm-up over one epoch: 6 steps in the checkpoint's run, 12 now. At step 6 the
    # checkpoint's lr was the full 0.05; the new warm-up gives 0.05 * (6 + 1) / 12.
    assert "total steps (6 -> 24): at step 6 the lr was 0.05 and is now " in report
    assert f"is now {0.05 * 7 / 12:.4g} (the checkpoint's run had finished its schedule)" in report


def test_resume_with_the_same_settings_reports_nothing(tmp_path):
    checkpoint = MethodCheckpoint(dirpath=str(tmp_path / "first"), monitor=None)
    fit(tmp_path, [checkpoint, StopAfter(1)], max_epochs=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = MethodCheckpoint(dirpath=str(tmp_path / "second"), monitor=None)
        trainer = quiet_trainer(tmp_path, max_epochs=2, limit_train_batches=2,
                                enable_checkpointing=True, callbacks=[resumed])  # fmt: skip
        trainer.fit(FrozenModel(), datamodule=ColourDataModule(),
                    ckpt_path=str(tmp_path / "first" / "last.ckpt"))  # fmt: skip
    assert trainer.current_epoch == 2  # the second epoch was trained
    assert not [w for w in caught if "differ from its run's" in str(w.message)]


class ScriptedScore(L.LightningModule):
    """Logs ``val/score`` = ``scores[epoch]`` (binary fractions: exact in float32): which epoch
    is the best is known in advance."""

    monitor = "val/score"

    def __init__(self, scores: list[float]) -> None:
        super().__init__()
        self.scores = scores
        self.weight = torch.nn.Parameter(torch.ones(1))

    def training_step(self, batch, batch_idx):
        return self.weight.square().sum()  # an optimiser step, so each epoch has its own step

    def validation_step(self, batch, batch_idx):
        self.log("val/score", self.scores[self.current_epoch])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit_scored(root, folder, max_epochs, ckpt_path=None, mode="max") -> MethodCheckpoint:
    """A fit of ``ScriptedScore`` (0.5, 0.75, 0.25, 0.875 by epoch) writing into ``root/folder``, as
    each distill fit and resume writes into a new version folder."""
    checkpoint = MethodCheckpoint(dirpath=str(root / folder), mode=mode)
    trainer = quiet_trainer(root, max_epochs=max_epochs, limit_train_batches=2,
                            limit_val_batches=1, enable_checkpointing=True,
                            callbacks=[checkpoint])  # fmt: skip
    model = ScriptedScore([0.5, 0.75, 0.25, 0.875])
    trainer.fit(model, datamodule=ColourDataModule(), ckpt_path=ckpt_path)
    return checkpoint


@pytest.mark.filterwarnings("ignore:resuming from")  # max_epochs raised on purpose
def test_a_resumed_fit_keeps_the_best_of_the_run_it_resumes(tmp_path):
    fit_scored(tmp_path, "version_0", max_epochs=2)
    best = tmp_path / "version_0" / "epoch=1-step=4.ckpt"  # 0.75
    before = {path: path.read_bytes() for path in (tmp_path / "version_0").iterdir()}
    assert sorted(path.name for path in before) == [best.name, "last.ckpt"]
    # Epoch 2 scores 0.25: the best is still epoch 1's file, in the folder of the run resumed.
    resumed = fit_scored(tmp_path, "version_1", 3, ckpt_path=tmp_path / "version_0" / "last.ckpt")
    assert (resumed.best_model_path, float(resumed.best_model_score)) == (str(best), 0.75)
    assert [path.name for path in (tmp_path / "version_1").iterdir()] == ["last.ckpt"]
    # Epoch 3 scores 0.875: the new best is written in the new folder; the earlier one stays.
    again = fit_scored(tmp_path, "version_2", 4, ckpt_path=tmp_path / "version_1" / "last.ckpt")
    newest = tmp_path / "version_2" / "epoch=3-step=8.ckpt"
    assert (again.best_model_path, float(again.best_model_score)) == (str(newest), 0.875)
    assert {path: path.read_bytes() for path in (tmp_path / "version_0").iterdir()} == before


@pytest.mark.filterwarnings("ignore:resuming from")  # max_epochs raised on purpose
# Lightning's own account: the state of a callback configured otherwise is not restored.
@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`, callbacks used")
def test_a_resumed_fit_with_another_mode_starts_its_best_afresh_and_says_so(
    tmp_path, lightning_log
):
    fit_scored(tmp_path, "version_0", max_epochs=2)
    resumed = fit_scored(
        tmp_path, "version_1", 3, ckpt_path=tmp_path / "version_0" / "last.ckpt", mode="min"
    )
    assert (
        "checkpoint settings differ from those of the run resumed (mode: 'max' -> 'min'): its "
        "best checkpoints are not carried over; this fit's start afresh in "
        f"{tmp_path / 'version_1'}"
    ) in lightning_log.messages
    assert resumed.best_model_path == str(tmp_path / "version_1" / "epoch=2-step=6.ckpt")


def checkpoint_state(saved: dict) -> dict:
    (key,) = [key for key in saved["callbacks"] if key.startswith("MethodCheckpoint")]
    return saved["callbacks"][key]


def test_resuming_a_finished_run_marked_interrupted_writes_its_final_state(tmp_path, lightning_log):
    # distill once marked a checkpoint interrupted when the signal came after the last epoch:
    # resuming it trains nothing, and the new folder gets the final state, unmarked.
    fit_scored(tmp_path, "version_0", max_epochs=2)
    saved = torch.load(tmp_path / "version_0" / "last.ckpt", weights_only=True)
    checkpoint_state(saved)["interrupted"] = {
        "signal": "SIGTERM", "epoch": 1, "batch": 2, "global_step": 4,
    }  # fmt: skip
    marked = tmp_path / "marked.ckpt"
    torch.save(saved, marked)
    fit_scored(tmp_path, "version_1", max_epochs=2, ckpt_path=marked)
    final = torch.load(tmp_path / "version_1" / "last.ckpt", weights_only=True)
    assert checkpoint_state(final)["interrupted"] is None
    checkpoint_state(final)["interrupted"] = checkpoint_state(saved)["interrupted"]
    assert final.keys() == saved.keys()
    for key in saved:  # the run's own final last.ckpt otherwise: nothing was trained
        assert str(final[key]) == str(saved[key]), key
    assert (
        f"{marked} is of a run that had finished (epoch 1, global step 4) when SIGTERM arrived: "
        f"wrote it as {tmp_path / 'version_1' / 'last.ckpt'}, not marked interrupted"
    ) in lightning_log.messages


def test_resume_with_other_batch_limits_names_them(tmp_path):
    checkpoint = MethodCheckpoint(dirpath=str(tmp_path / "first"), monitor=None)
    fit(tmp_path, [checkpoint, StopAfter(1)], max_epochs=2)  # 2 train batches, all val ones
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = MethodCheckpoint(dirpath=str(tmp_path / "second"), monitor=None)
        trainer = quiet_trainer(tmp_path, max_epochs=2, limit_train_batches=3,
                                limit_val_batches=1, enable_checkpointing=True,
                                callbacks=[resumed])  # fmt: skip
        trainer.fit(FrozenModel(), datamodule=ColourDataModule(),
                    ckpt_path=str(tmp_path / "first" / "last.ckpt"))  # fmt: skip
    reports = [str(w.message) for w in caught if "differ from its run's" in str(w.message)]
    assert len(reports) == 1, reports
    changes = "trainer.limit_train_batches: 2 -> 3; trainer.limit_val_batches: 1.0 -> 1"
    assert changes in reports[0]
