"""One rank of the 2-process CPU DDP check of the evaluation callbacks (run by test_ddp.py).

Usage: python ddp_eval_worker.py OUT_DIR  (with LOCAL_RANK, MASTER_ADDR, MASTER_PORT set;
a world size of 1 when WORLD_SIZE=1). Writes rank{r}.pt with the k-NN metrics after
validate and the probe's weights after a short fit.
"""

import os
import sys

import lightning as L
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests_support import ColourDataModule, FrozenModel  # noqa: E402

from distill.eval import KNNEval, LinearProbe  # noqa: E402


def main(out_dir: str) -> None:
    world = int(os.environ.get("WORLD_SIZE", "2"))
    torch.manual_seed(0)
    knn, probe = KNNEval(k=[3]), LinearProbe(lr=0.05)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=world,
        strategy="ddp" if world > 1 else "auto",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[knn, probe],
        use_distributed_sampler=True,
    )
    model = FrozenModel()
    # Shuffled labels make the k-NN value depend on exactly which samples are in the bank.
    # 35 images in batches of 4 without drop_last: each rank ends on a smaller batch.
    data = ColourDataModule(per_class=7, shuffle_labels=True, batch_size=4, drop_last=False)
    trainer.validate(model, datamodule=data, verbose=False)
    metrics = dict(knn.last_metrics)
    trainer.fit(model, datamodule=data)
    torch.save(
        {"knn": metrics, "probe": probe.classifier.state_dict(), "world": trainer.world_size},
        os.path.join(out_dir, f"rank{trainer.global_rank}_of{world}.pt"),
    )


if __name__ == "__main__":
    main(sys.argv[1])
