"""One rank of the 2-process StreamingDataModule fits (run by test_streaming.py).

Usage: python ddp_streaming_worker.py SHARDS OUT_DIR. Three fits, one after the other in the
same two processes: "whole" fits Supervised for two epochs; "first" stops the same fit after
its first batch, as a SIGTERM would (distill's MethodCheckpoint writes
OUT_DIR/first/last.ckpt); "rest" resumes from that checkpoint. For each, every rank writes
the dataset indices and batch sizes it trained on, in order, to OUT_DIR/MODE_rank{r}.json.
"""

import json
import os
import sys

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests_support import StopFlagAfter  # noqa: E402

from distill.callbacks import MethodCheckpoint  # noqa: E402
from distill.data import StreamingDataModule  # noqa: E402
from distill.methods import Supervised  # noqa: E402


class RecordBatches(L.Callback):
    def __init__(self) -> None:
        self.indices: list[int] = []
        self.batch_sizes: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.indices += batch[2].tolist()
        self.batch_sizes.append(len(batch[2]))


def fit(shards: str, out_dir: str, mode: str) -> None:
    L.seed_everything(0)
    record = RecordBatches()
    callbacks = [MethodCheckpoint(dirpath=os.path.join(out_dir, mode), monitor=None), record]
    if mode == "first":
        callbacks.append(StopFlagAfter(1))
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, limit_val_batches=0,
        logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=out_dir, callbacks=callbacks,
    )  # fmt: skip
    data = StreamingDataModule(data_dir=shards, batch_size=4, num_workers=0, drop_last=False)
    ckpt_path = os.path.join(out_dir, "first", "last.ckpt") if mode == "rest" else None
    try:
        trainer.fit(Supervised(backbone="resnet8", num_classes=2), datamodule=data,
                    ckpt_path=ckpt_path)  # fmt: skip
    except SIGTERMException:
        assert mode == "first"
    path = os.path.join(out_dir, f"{mode}_rank{trainer.global_rank}.json")
    with open(path, "w") as file:
        json.dump({"indices": record.indices, "batch_sizes": record.batch_sizes}, file)


if __name__ == "__main__":
    for mode in ("whole", "first", "rest"):
        fit(*sys.argv[1:], mode)
