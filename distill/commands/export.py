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
import torch
from torch import nn

from distill.backbones import create_backbone
from distill.commands.checkpoint import checkpoint_file
from distill.data.base import ViewDataModule
from distill.errors import ConfigError
from distill.eval.features import resolve_submodule
from distill.modules.weights import load_state_strict, read_state_dict, sub_state_dict


def backbone_spec(model: L.LightningModule, submodule: str) -> tuple[str, dict[str, Any]]:
    """The backbone name and keyword arguments of ``model``'s ``submodule``.

    Read from the model's hyper-parameters: ``{submodule}_backbone`` and its ``_kwargs``
    (KD, RKD, CRD, ReKD) or else ``backbone`` and ``backbone_kwargs`` (Supervised, MoCo,
    DINO, whose networks share one backbone name).

    Raises:
        ConfigError: Neither is there.
    """
    hparams = model.hparams
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
) -> tuple[Path, Path]:
    """Writes a checkpoint's backbone as a state dict, with a JSON sidecar to rebuild it.

    The weights are the checkpoint's ``{submodule}.backbone.*`` entries with that prefix
    (and ``torch.compile``'s ``_orig_mod.``) stripped, so the keys are the backbone's own
    (for ``resnet18`` and ``resnet50``, torchvision's, without ``fc``); they are loaded
    strictly into the backbone the model's config names before anything is written. The
    sidecar holds the backbone name, its keyword arguments, ``num_features`` and the
    normalisation the DataModule applied (mean, std, image size, eval resize).

    Args:
        ckpt_path: Checkpoint to read.
        submodule: Network whose backbone is exported (student, teacher).
        output: Weights file (default: <checkpoint stem>.<submodule>-backbone.pt beside the
            checkpoint); the sidecar is the same path with .json.

    Returns:
        The weights and sidecar paths.
    """
    path = checkpoint_file(ckpt_path)
    module = resolve_submodule(model, submodule)
    if not isinstance(getattr(module, "backbone", None), nn.Module):
        raise ConfigError(f"{type(model).__name__}.{submodule} has no backbone to export")
    name, kwargs = backbone_spec(model, submodule)
    prefix = f"{submodule}.backbone."
    state = sub_state_dict(read_state_dict(str(path)), prefix)
    if not state:
        raise ConfigError(f"{ckpt_path} holds no {prefix}* weights to export")
    backbone = create_backbone(name, **kwargs)
    load_state_strict(backbone, state, f"{ckpt_path} ({prefix}*)")
    weights = Path(output) if output else path.with_name(f"{path.stem}.{submodule}-backbone.pt")
    sidecar = weights.with_suffix(".json")
    info = {
        "backbone": name,
        "kwargs": kwargs,
        "num_features": backbone.num_features,
        "mean": list(datamodule.mean),
        "std": list(datamodule.std),
        "image_size": datamodule.image_size,
        "eval_resize": datamodule.eval_resize,
        "checkpoint": str(ckpt_path),
        "submodule": submodule,
        "model": config.get("model", {}).get("class_path", type(model).__name__),
    }
    # Plain (contiguous) tensors: channels_last training leaves NHWC-strided conv weights.
    torch.save({k: v.contiguous() for k, v in backbone.state_dict().items()}, weights)
    sidecar.write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {weights} ({name}, {len(state)} tensors) and {sidecar}")
    return weights, sidecar
