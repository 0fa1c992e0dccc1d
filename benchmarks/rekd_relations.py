"""How precise are ReKD's mined relations? A table from a trained ReKD checkpoint.

    python benchmarks/rekd_relations.py \
        runs/cifar10-5k/rekd_resnet20_resnet8/lightning_logs/version_0/checkpoints/last.ckpt

Embeds the un-augmented training split (the checkpoint's data config) with the teacher's
and the student's key encoders and relates every image to every other one, as ReKD's
relation miner would relate an anchor to queue candidates: through the checkpoint's
prototype bank, or through prototypes fitted anew by spherical k-means on the embeddings
(``--clusters``), each at the thresholds ``--thresholds``. For each row: the fraction of
images assigned (``Q ≠ -1``), the mean number of positives per anchor scaled to the
checkpoint's queue size, and their precision against the true labels (labels only score
the relations, as ``train/mined_precision`` does during training). ``chance`` is the
precision of unrelated random pairs, ``k-NN`` rows the precision of each image's ``k``
nearest neighbours, an upper reference for any clustering of the same embeddings.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from jsonargparse import ArgumentParser

from distill.data.base import ViewDataModule
from distill.methods import ReKD
from distill.modules import PrototypeBank


@torch.no_grad()
def embed(model: ReKD, loader) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Key-encoder embeddings ``[N, dim]`` of teacher and student, and labels ``[N]``."""
    model.eval()
    teacher, student, labels = [], [], []
    for images, targets, _ in loader:
        teacher.append(model.teacher.keys(images))
        student.append(model.student.keys(images))
        labels.append(targets)
    return {"teacher": torch.cat(teacher), "student": torch.cat(student)}, torch.cat(labels)


def relation_row(assignment: torch.Tensor, labels: torch.Tensor, queue_size: int) -> dict:
    """Assigned fraction, positives per anchor (per ``queue_size`` candidates), precision."""
    related = PrototypeBank.relation_of(assignment, assignment)
    related.fill_diagonal_(False)
    pairs = related.sum().item()
    correct = (related & (labels.unsqueeze(0) == labels.unsqueeze(1))).sum().item()
    return {
        "assigned": (assignment >= 0).float().mean().item(),
        "positives": pairs / len(labels) * queue_size / (len(labels) - 1),
        "precision": correct / pairs if pairs else float("nan"),
    }


def knn_precision(embeddings: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Fraction of each image's ``k`` nearest neighbours (cosine) that share its label."""
    similarity = embeddings @ embeddings.T
    similarity.fill_diagonal_(-2.0)
    neighbours = similarity.topk(k, dim=1).indices
    return (labels[neighbours] == labels.unsqueeze(1)).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a ReKD checkpoint (.../checkpoints/last.ckpt)")
    parser.add_argument(
        "--config", help="the run's config.yaml (default: the one two levels above the checkpoint)"
    )
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.3, 0.5, 0.7, 0.8, 0.9])
    parser.add_argument("--clusters", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--knn", type=int, nargs="+", default=[1, 20])
    args = parser.parse_args()

    checkpoint = Path(args.checkpoint)
    config_path = Path(args.config) if args.config else checkpoint.parent.parent / "config.yaml"
    if not checkpoint.is_file():
        parser.error(f"checkpoint {checkpoint} not found; give a ReKD run's .ckpt file")
    if not config_path.is_file():
        parser.error(f"config {config_path} not found; give the run's config.yaml with --config")
    try:
        model = ReKD.load_from_checkpoint(checkpoint, map_location="cpu")
    except (TypeError, KeyError, RuntimeError, ValueError) as error:
        parser.error(f"checkpoint {checkpoint} is not a ReKD checkpoint ({error})")
    with open(config_path) as f:
        data_config = {"data": yaml.safe_load(f)["data"]}
    data_parser = ArgumentParser()
    data_parser.add_subclass_arguments(ViewDataModule, "data")
    data = data_parser.instantiate_classes(data_parser.parse_object(data_config)).data
    embeddings, labels = embed(model, data.train_eval_dataloader())
    queue_size = len(model.teacher.queue.keys)
    counts = torch.bincount(labels[labels >= 0]).double()
    chance = ((counts / counts.sum()) ** 2).sum().item()

    header = ["embedding", "prototypes", "Θ", "assigned", f"positives/{queue_size}", "precision"]
    rows = []
    for name, z in embeddings.items():
        banks = [("checkpoint", model.prototypes)] if name == "teacher" else []
        for k in args.clusters:
            bank = PrototypeBank(k, z.shape[1], kmeans_iterations=30, kmeans_restarts=3)
            bank.init_from(z)
            banks.append((f"k-means K={k}", bank))
        for label, bank in banks:
            for threshold in args.thresholds:
                bank.threshold = threshold
                row = relation_row(bank.assign(z), labels, queue_size)
                rows.append([name, label, f"{threshold:.1f}", f"{row['assigned']:.2f}",
                             f"{row['positives']:.1f}", f"{row['precision']:.3f}"])  # fmt: skip
        for k in args.knn:
            precision = knn_precision(F.normalize(z, dim=1), labels, k)
            rows.append([name, f"{k}-NN", "-", "1.00", str(k), f"{precision:.3f}"])
    rows.append(["-", "chance", "-", "-", "-", f"{chance:.3f}"])

    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    for line in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)))


if __name__ == "__main__":
    main()
