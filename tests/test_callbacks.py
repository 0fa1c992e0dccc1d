import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tests_support import ColourDataModule, FrozenModel, quiet_trainer

from distill.callbacks import EmbeddingProjector, MethodCheckpoint, ViewGrid
from distill.data import MultiCropViews


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
