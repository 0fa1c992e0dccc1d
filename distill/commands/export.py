"""``distill export``: a checkpoint's backbone as a plain state dict and a JSON sidecar.

    distill export --config configs/dino/cifar10-5k_resnet8.yaml --ckpt_path runs/.../last.ckpt \\
        --submodule teacher

``distill.backbones.load_pretrained(path)`` rebuilds the backbone from the two files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
from torch import nn

from distill.backbones import create_backbone
from distill.checkpoint_io import torch_save, write_atomically
from distill.commands.checkpoint import backbone_state, check_outputs, checkpoint_file
from distill.data.base import ViewDataModule
from distill.errors import ConfigError
from distill.eval.features import resolve_submodule
from distill.modules.weights import load_state_strict
from distill.teachers import TeacherInputs


def backbone_spec(model: L.LightningModule, submodule: str) -> tuple[str, dict[str, Any]]:
    """The backbone name and keyword arguments of ``model``'s ``submodule``.

    Read from the model's hyper-parameters: a ``teacher`` spec's ``architecture`` and
    ``kwargs`` (``distill.teachers``), ``{submodule}_backbone`` and its ``_kwargs`` (KD, RKD,
    CRD, ReKD) or else ``backbone`` and ``backbone_kwargs`` (Supervised, MoCo, DINO, whose
    networks share one backbone name).

    Raises:
        ConfigError: Neither is there.
    """
    hparams = model.hparams
    spec = hparams.get(submodule) if submodule == "teacher" else None
    if isinstance(spec, dict) and isinstance(spec.get("architecture"), str):
        return spec["architecture"], dict(spec.get("kwargs") or {})
    for name_key in (f"{submodule}_backbone", "backbone"):
        if isinstance(hparams.get(name_key), str):
            return hparams[name_key], dict(hparams.get(f"{name_key}_kwargs") or {})
    raise ConfigError(
        f"cannot tell which backbone {type(model).__name__}.{submodule} is: its "
        f"hyper-parameters have neither {submodule}_backbone nor backbone"
    )


def export(
    model: L.LightningModule,
    datamodule: ViewDataModule,
    config: dict[str, Any],
    ckpt_path: str,
    submodule: str = "student",
    output: str | None = None,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Writes a checkpoint's backbone as a state dict, with a JSON sidecar to rebuild it.

    The weights are the checkpoint's ``{submodule}.backbone.*`` entries with that prefix
    (and ``torch.compile``'s ``_orig_mod.``) stripped, so the keys are the backbone's own
    (for ``resnet18`` and ``resnet50``, torchvision's, without ``fc``); they are loaded
    strictly into the backbone the model's config names before anything is written. The
    sidecar holds the backbone name, its keyword arguments, ``num_features`` and the
    normalisation the DataModule applied (mean, std, image size, eval resize; a teacher fed
    inputs of its own, ``distill.teachers.TeacherInputs``, records those). Both files
    are written beside each other and renamed into place together: a failed write (read-only
    folder, disk full) leaves nothing new and exits with code 74.

    Args:
        ckpt_path: Checkpoint to read.
        submodule: Network whose backbone is exported (student, teacher).
        output: Weights file (default: <checkpoint stem>.<submodule>-backbone.pt beside the
            checkpoint); the sidecar is the same path with .json, so the weights file may
            not end in .json.
        overwrite: Replace an earlier export at the output paths (never a checkpoint).

    Returns:
        The weights and sidecar paths.
    """
    path = checkpoint_file(ckpt_path)
    module = resolve_submodule(model, submodule)
    if not isinstance(getattr(module, "backbone", None), nn.Module):
        raise ConfigError(f"{type(model).__name__}.{submodule} has no backbone to export")
    weights = Path(output) if output else path.with_name(f"{path.stem}.{submodule}-backbone.pt")
    sidecar = weights.with_suffix(".json")
    if weights.suffix.lower() == ".json":
        raise ConfigError(
            f"--output {output} ends in .json, the sidecar's suffix: the weights and the "
            f"sidecar would be one file; name the weights e.g. {weights.with_suffix('.pt')}"
        )
    check_outputs([weights, sidecar], ckpt_path, overwrite)
    name, kwargs = backbone_spec(model, submodule)
    state = backbone_state(ckpt_path, submodule)
    backbone = create_backbone(name, **kwargs)
    load_state_strict(backbone, state, f"{ckpt_path} ({submodule}.backbone.*)")
    # A teacher fed its own inputs (distill.teachers) records them, not the student's data's.
    inputs = getattr(model, f"{submodule}_inputs", None)
    mean, std, size = datamodule.mean, datamodule.std, datamodule.image_size
    if isinstance(inputs, TeacherInputs):
        mean, std = (inputs.mean, inputs.std) if inputs.mean is not None else (mean, std)
        size = inputs.image_size or size
    info = {
        "backbone": name,
        "kwargs": kwargs,
        "num_features": backbone.num_features,
        "mean": list(mean),
        "std": list(std),
        "image_size": size,
        "eval_resize": datamodule.eval_resize,
        "checkpoint": str(ckpt_path),
        "submodule": submodule,
        "model": config.get("model", {}).get("class_path", type(model).__name__),
    }
    # Plain (contiguous) tensors: channels_last training leaves NHWC-strided conv weights.
    tensors = {k: v.contiguous() for k, v in backbone.state_dict().items()}
    sidecar_text = (json.dumps(info, indent=2) + "\n").encode()
    write_atomically(
        {
            weights: lambda file: torch_save(tensors, file),
            sidecar: lambda file: file.write(sidecar_text),
        },
        "export",
        "; nothing was exported. Choose another --output",
    )
    print(f"wrote {weights} ({name}, {len(state)} tensors) and {sidecar}")
    return weights, sidecar
