"""``distill eval``: weighted k-NN and linear probe of a checkpoint's frozen backbone.

    distill eval --config configs/moco/cifar10-5k_resnet8.yaml --ckpt_path runs/.../last.ckpt
    distill eval --config ... --ckpt_path ... --submodule teacher --knn_k 20 200 \\
        --linear_optimizer lbfgs --linear_epochs 200
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch import nn

from distill.arguments import (
    require_choice,
    require_int,
    require_ints,
    require_non_negative,
    require_positive,
    require_positive_int,
)
from distill.backbones import to_channels_last
from distill.checkpoint_io import write_atomically
from distill.commands.checkpoint import (
    backbone_state,
    check_outputs,
    checkpoint_file,
    submodule_backbone,
)
from distill.data.base import ViewDataModule
from distill.errors import OutputError
from distill.eval.features import FeatureCache, resolve_submodule
from distill.eval.knn import knn_accuracies
from distill.eval.linear import fit_linear_classifier
from distill.eval.metrics import top_k_accuracies
from distill.modules.weights import load_state_strict
from distill.teachers import TeacherInputs

#: Learning rate of each linear-probe optimiser when ``--linear_lr`` is not given.
DEFAULT_LINEAR_LR = {"sgd": 0.1, "lbfgs": 1.0, "adam": 0.01}


class BackboneOnly(L.LightningModule):
    """What ``distill eval`` runs through the trainer: one backbone, as ``network.backbone``.

    Not the method: its heads never see the data and its setup checks (``num_classes``,
    view recipe) do not apply, so a backbone is probed on data with any number of classes.
    ``FeatureCache("network")`` extracts its features at the end of validation.
    """

    def __init__(self, backbone: nn.Module, channels_last: bool = False) -> None:
        super().__init__()
        self.network = nn.Module()
        self.network.backbone = backbone
        self.channels_last = channels_last

    def configure_model(self) -> None:
        if self.channels_last:  # as the method ran it (the same kernels, the same features)
            to_channels_last(self)

    def validation_step(self, batch, batch_idx: int) -> None:
        return None  # the features are FeatureCache's, from its own loaders


def evaluate(
    trainer: L.Trainer,
    model: L.LightningModule,
    datamodule: ViewDataModule,
    config: dict[str, Any],
    ckpt_path: str,
    submodule: str = "student",
    knn_k: Sequence[int] = (20, 200),
    knn_temperature: float = 0.07,
    linear_optimizer: Literal["sgd", "lbfgs", "adam"] = "sgd",
    linear_epochs: int = 100,
    linear_lr: float | None = None,
    linear_weight_decay: float = 0.0,
    linear_batch_size: int = 256,
    output: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """k-NN and linear probe of a checkpoint's backbone on frozen, un-augmented features.

    The backbone is the one the config's model names, with the checkpoint's
    ``{submodule}.backbone.*`` weights loaded strictly; the data comes from the config. Only
    the backbone runs (the trainer's devices and precision, eval mode) over the un-augmented
    train and val splits, so the method's own head and number of classes play no part: the
    probes are fitted on the data's classes, however many. The k-NN is ``KNNEval``'s; the
    linear probe is fitted on the train features and scored on val. Prints a table, then
    writes the results as JSON; if that write fails, the JSON goes to stdout and the exit
    code is 74.

    Args:
        ckpt_path: Checkpoint to evaluate.
        submodule: Network whose backbone is evaluated (student, teacher).
        knn_k: Neighbourhood sizes of the weighted k-NN, e.g. --knn_k 20 200.
        knn_temperature: Vote temperature of the k-NN.
        linear_optimizer: sgd (momentum 0.9, cosine schedule), lbfgs (full batch) or adam.
        linear_epochs: Epochs of the linear probe (lbfgs: iterations).
        linear_lr: Learning rate of the linear probe (default: sgd 0.1, lbfgs 1, adam 0.01).
        linear_weight_decay: Weight decay of the linear probe (lbfgs: L2 penalty on weights).
        linear_batch_size: Mini-batch size of the linear probe (sgd, adam).
        output: Results file (default: <ckpt_path>.<submodule>.eval.json).
        overwrite: Replace an existing results file at the output path (never a checkpoint).

    Returns:
        The results.
    """
    check_options(
        knn_k, knn_temperature, linear_optimizer, linear_epochs, linear_lr,
        linear_weight_decay, linear_batch_size,
    )  # fmt: skip
    path = checkpoint_file(ckpt_path)
    resolve_submodule(model, submodule)
    backbone = submodule_backbone(model, submodule)
    results_path = Path(output or f"{ckpt_path}.{submodule}.eval.json")
    check_outputs([results_path], str(path), overwrite)  # before minutes of work, not after
    state = backbone_state(ckpt_path, submodule)
    load_state_strict(backbone, state, f"{ckpt_path} ({submodule}.backbone.*)")
    for inputs in model.modules():  # a teacher fed its own inputs: from the data's statistics
        if isinstance(inputs, TeacherInputs):
            inputs.configure(datamodule.mean, datamodule.std)
    cache = FeatureCache("network")
    trainer.callbacks.append(cache)
    trainer.limit_val_batches = 1  # the cache reads the splits through its own loaders
    probed = BackboneOnly(backbone, getattr(model, "channels_last", False))
    trainer.validate(probed, datamodule=datamodule, verbose=False)
    # Made under the validation loop's inference mode: clones are ordinary tensors.
    train_x, train_y = (t.clone() for t in cache.train)
    val_x, val_y = (t.clone() for t in cache.val)
    num_classes = datamodule.num_classes
    knn = knn_accuracies(train_x, train_y, val_x, val_y, num_classes, knn_k, knn_temperature)
    lr = DEFAULT_LINEAR_LR[linear_optimizer] if linear_lr is None else linear_lr
    classifier = fit_linear_classifier(
        train_x, train_y, num_classes, linear_epochs, lr, linear_weight_decay,
        linear_batch_size, optimizer=linear_optimizer,
    )  # fmt: skip
    with torch.no_grad():
        linear = top_k_accuracies(classifier(val_x), val_y, num_classes)
    results = {
        "checkpoint": str(ckpt_path),
        "model": config.get("model", {}).get("class_path", type(model).__name__),
        "submodule": submodule,
        "num_features": train_x.shape[1],
        "data": config.get("data"),
        "num_classes": num_classes,
        "train_images": len(train_x),
        "val_images": len(val_x),
        "knn": {str(k): knn[k] for k in knn_k},
        "linear": linear,
        "settings": {
            "features": "frozen backbone in eval mode, un-augmented train and val splits",
            "knn_k": list(knn_k), "knn_temperature": knn_temperature,
            "linear_optimizer": linear_optimizer, "linear_epochs": linear_epochs,
            "linear_lr": lr, "linear_weight_decay": linear_weight_decay,
            "linear_batch_size": linear_batch_size, "linear_seed": 0,
        },
    }  # fmt: skip
    if trainer.is_global_zero:
        write_results(results, results_path)
    return results


def check_options(
    knn_k: Sequence[int],
    knn_temperature: float,
    linear_optimizer: str,
    linear_epochs: int,
    linear_lr: float | None,
    linear_weight_decay: float,
    linear_batch_size: int,
) -> None:
    """Refuses a bad ``distill eval`` option before any feature is extracted, so a mistake
    costs no minutes of work and loses no result computed before it."""
    require_ints("--knn_k", list(knn_k) if isinstance(knn_k, Sequence) else knn_k, 1)
    require_positive("--knn_temperature", knn_temperature)
    require_choice("--linear_optimizer", linear_optimizer, tuple(DEFAULT_LINEAR_LR))
    require_positive_int("--linear_epochs", linear_epochs)  # 0 would score an untrained probe
    if linear_lr is not None:
        require_positive("--linear_lr", linear_lr)
    require_non_negative("--linear_weight_decay", linear_weight_decay)
    require_int("--linear_batch_size", linear_batch_size, 1)


def write_results(results: dict[str, Any], path: Path) -> None:
    """Prints the table, then writes the JSON; a failed write loses nothing computed.

    Raises:
        OutputError: The file could not be written; the JSON was printed to stdout first.
    """
    print(results_table(results), flush=True)
    text = json.dumps(results, indent=2, default=str) + "\n"
    try:
        write_atomically({path: lambda file: file.write(text.encode())}, "results")
    except OutputError as error:
        print(text, end="", flush=True)
        raise OutputError(
            f"{error}; the results are printed above (table and JSON on stdout). Save them "
            "with another --output"
        ) from error
    print(f"wrote {path}")


def results_table(results: dict[str, Any]) -> str:
    """The results as a short Markdown table with a two-line header."""

    def percent(accuracies: dict[str, float], name: str) -> str:
        return f"{100 * accuracies[name]:.2f}" if name in accuracies else "-"

    settings = results["settings"]
    rows = [
        f"{results['submodule']} backbone of {results['checkpoint']} ({results['model']}, "
        f"{results['num_features']} features)",
        f"{results['train_images']} train / {results['val_images']} val images, "
        f"{results['num_classes']} classes",
        "| probe | top-1 % | top-5 % |",
        "| --- | ---: | ---: |",
    ]
    probes = [(f"k-NN, k = {k}", accuracies) for k, accuracies in results["knn"].items()]
    linear = f"linear, {settings['linear_optimizer']}, {settings['linear_epochs']} epochs"
    probes.append((linear, results["linear"]))
    for name, accuracies in probes:
        rows.append(f"| {name} | {percent(accuracies, 'top1')} | {percent(accuracies, 'top5')} |")
    return "\n".join(rows)
