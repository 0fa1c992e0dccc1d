"""Weighted k-NN evaluation of frozen features (Wu et al. 2018, as used by DINO)."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from distill.arguments import callback_key, require_ints, require_positive, require_positive_int
from distill.eval.features import extract_features, resolve_submodule
from distill.eval.metrics import top_k_accuracies


@torch.no_grad()
def knn_class_scores(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    num_classes: int,
    ks: Sequence[int] = (20,),
    temperature: float = 0.07,
    chunk_size: int = 256,
) -> dict[int, Tensor]:
    """Weighted k-NN class scores for each ``k``.

    Features are L2-normalised; each test sample's ``k`` most cosine-similar training
    samples vote for their label with weight ``exp(sim / temperature)``. Test samples are
    processed in chunks, so memory is ``O(chunk_size * N_train)``.

    Args:
        train_features: ``[N, D]`` bank features.
        train_labels: ``[N]`` bank labels (negative labels, i.e. unlabelled rows, are skipped).
        test_features: ``[M, D]`` query features.
        num_classes: Number of classes ``C``.
        ks: Neighbourhood sizes.
        temperature: Vote temperature.
        chunk_size: Queries per chunk.

    Returns:
        ``{k: scores [M, C]}``.
    """
    labelled = train_labels >= 0
    bank = F.normalize(train_features[labelled].float(), dim=1)
    bank_labels = train_labels[labelled]
    queries = F.normalize(test_features.float(), dim=1)
    k_max = min(max(ks), len(bank))
    scores: dict[int, list[Tensor]] = {k: [] for k in ks}
    for chunk in queries.split(chunk_size):
        similarity, neighbours = (chunk @ bank.T).topk(k_max, dim=1)
        votes = (similarity / temperature).exp()
        labels = bank_labels[neighbours]
        for k in ks:
            k_used = min(k, k_max)
            chunk_scores = torch.zeros(len(chunk), num_classes, device=chunk.device)
            chunk_scores.scatter_add_(1, labels[:, :k_used], votes[:, :k_used])
            scores[k].append(chunk_scores)
    return {k: torch.cat(parts) for k, parts in scores.items()}


def knn_accuracies(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    num_classes: int,
    ks: Sequence[int] = (20,),
    temperature: float = 0.07,
    chunk_size: int = 256,
) -> dict[int, dict[str, float]]:
    """Top-1 (and top-5 with at least 5 classes) accuracy of the weighted k-NN for each ``k``.

    The arguments are those of ``knn_class_scores`` plus ``test_labels`` ``[M]``.

    Returns:
        ``{k: {"top1": ..., "top5": ...}}``, fractions in [0, 1].
    """
    scores = knn_class_scores(
        train_features, train_labels, test_features, num_classes, ks, temperature, chunk_size
    )
    return {k: top_k_accuracies(scores[k], test_labels, num_classes) for k in ks}


class KNNEval(L.Callback):
    """Weighted k-NN accuracy of a submodule's backbone, logged at the end of validation.

    The bank is the DataModule's un-augmented training set, the queries its val set. Logs
    ``{log_prefix}_top1`` and ``{log_prefix}_top5`` for the first ``k``, and
    ``{log_prefix}_k{k}_top1`` for every ``k``, as fractions in [0, 1]. Under DDP the
    features are gathered, so every rank logs the same value.

    Args:
        submodule: Which network to evaluate (``student``, ``teacher``, ...); its
            ``backbone`` is used when it has one.
        k: Neighbourhood sizes; the first is the headline metric.
        temperature: Vote temperature of ``exp(sim / T)``.
        every_n_epochs: Evaluate every this many epochs (and always at the last epoch).
        chunk_size: Queries per similarity chunk.
        log_prefix: Metric name prefix.
    """

    def __init__(
        self,
        submodule: str = "student",
        k: list[int] | None = None,
        temperature: float = 0.07,
        every_n_epochs: int = 1,
        chunk_size: int = 256,
        log_prefix: str = "val/knn",
    ) -> None:
        if k is not None:
            require_ints(callback_key(self, "k"), k, 1)
        require_positive(callback_key(self, "temperature"), temperature)
        require_positive_int(callback_key(self, "every_n_epochs"), every_n_epochs)
        require_positive_int(callback_key(self, "chunk_size"), chunk_size)
        self.submodule = submodule
        self.ks = [200, 20] if k is None else list(k)
        self.temperature = temperature
        self.every_n_epochs = every_n_epochs
        self.chunk_size = chunk_size
        self.log_prefix = log_prefix
        self.last_metrics: dict[str, float] = {}

    def _due(self, trainer: L.Trainer) -> bool:
        if trainer.sanity_checking:
            return False
        if trainer.state.fn != "fit":
            return True
        last = trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs
        return last or (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """Computes the metrics now and returns them (also used outside of fit)."""
        module = resolve_submodule(pl_module, self.submodule)
        train_x, train_y = extract_features(trainer, pl_module, module, "train")
        val_x, val_y = extract_features(trainer, pl_module, module, "val")
        accuracies = knn_accuracies(
            train_x, train_y, val_x, val_y, trainer.datamodule.num_classes,
            self.ks, self.temperature, self.chunk_size,
        )  # fmt: skip
        metrics = {}
        for k in self.ks:
            metrics[f"{self.log_prefix}_k{k}_top1"] = accuracies[k]["top1"]
        headline = accuracies[self.ks[0]]
        metrics[f"{self.log_prefix}_top1"] = headline["top1"]
        if "top5" in headline:
            metrics[f"{self.log_prefix}_top5"] = headline["top5"]
        return metrics

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._due(trainer):
            return
        self.last_metrics = self.evaluate(trainer, pl_module)
        for name, value in self.last_metrics.items():
            # Every rank holds the same gathered features, hence the same value.
            pl_module.log(name, value, prog_bar=name.endswith("_top1") and "_k" not in name)
