"""One teacher through four doors: a network distill trained, written out as torchvision, timm,
official MoCo-v2 and official DINO files, read back through the teacher spec; the same
network must come out of every door, and so the same k-NN accuracy.

    distill fit --config configs/supervised/cifar10-5k_torchvision-resnet18.yaml
    python benchmarks/four_doors.py                    # that run, scored on its own data
    python benchmarks/four_doors.py RUN --keep DIR     # any such run; the four files kept in DIR

``RUN`` is a distill run directory or checkpoint of ``distill.methods.Supervised`` with a
``torchvision:`` backbone whose model timm also has under the same name and keys (the ResNets).
The doors, each a teacher spec (``embedding: backbone``; ``mean``, ``std`` and ``image_size``
the run's data's: the network was trained on those, not on torchvision's ImageNet inputs):

- ``distill``: the run itself (the reference);
- ``torchvision``: ``torchvision.models.<model>().state_dict()`` saved with ``torch.save``,
  read as ``torchvision:<model>``;
- ``timm``: the same weights as timm keeps them (``model.safetensors``), read as
  ``timm:<model>``: through timm's network, not torchvision's;
- ``MoCo``: an official MoCo-v2 ``checkpoint_0009.pth.tar``: the network as ``encoder_q``
  with a MoCo-v2 MLP head as ``fc``, a perturbed copy as ``encoder_k``, a queue;
- ``DINO``: an official DINO ``checkpoint.pth``: the network as the EMA ``teacher``
  (``backbone.*`` with a DINO head), a perturbed copy as the DDP ``student``.

The perturbed copies make a wrong choice visible: a loader that took MoCo's key encoder or
DINO's student would give other features. Each door prints its load report; the table says
what it read and whether its features equal the reference's bit for bit (the same network and
the same kernels in one process: nothing less is a pass). The k-NN is ``distill.eval``'s
(weighted, temperature 0.07) on the un-augmented train and val splits. The four files go to a
temporary folder, or to ``--keep DIR`` (a folder that must not exist yet: nothing of the
user's is overwritten).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import Tensor

from distill.backbones import create_backbone
from distill.data import ImageFolderDataModule
from distill.errors import ConfigError
from distill.eval.knn import knn_accuracies
from distill.modules.heads import backbone_features
from distill.modules.weights import resolve_checkpoint
from distill.teachers import TeacherSpec, build_teacher
from distill.teachers.layouts import read_weights_file

ROOT = Path(__file__).resolve().parents[1]
RUN = "runs/cifar10-5k/supervised_torchvision-resnet18"
KS = (20, 200)
#: The data settings of the run's config that the un-augmented evaluation splits need.
DATA_KEYS = ("data_dir", "train_dir", "val_dir", "mean", "std", "image_size", "num_workers")


@dataclass(frozen=True)
class Door:
    """One way in: a file (or the run) and the architecture name it is read as."""

    name: str
    weights: str
    architecture: str


def trained_network(checkpoint: dict) -> tuple[str, dict[str, Tensor]]:
    """The run's architecture (``torchvision:<model>``) and its full torchvision state dict:
    the student's backbone with its classifier back under the model's own key (``fc``).

    Raises:
        ConfigError: Not a Supervised run with a ``torchvision:`` backbone.
    """
    hparams = checkpoint.get("hyper_parameters") or {}
    backbone = hparams.get("backbone")
    method = str(hparams.get("_class_path") or "Supervised")  # set by LightningCLI
    if not method.endswith("Supervised") or not str(backbone).startswith("torchvision:"):
        raise ConfigError(
            f"four_doors needs a distill.methods.Supervised run with a torchvision: backbone "
            f"(configs/supervised/cifar10-5k_torchvision-resnet18.yaml); this checkpoint is of "
            f"{method!r} with backbone {backbone!r}"
        )
    classifier = create_backbone(backbone).classifier_key
    state = checkpoint["state_dict"]
    network = {k.removeprefix("student.backbone."): v for k, v in state.items()
               if k.startswith("student.backbone.")}  # fmt: skip
    network.update({f"{classifier}.{k.removeprefix('student.head.')}": v
                    for k, v in state.items() if k.startswith("student.head.")})  # fmt: skip
    return backbone, network


def perturbed(state: dict[str, Tensor], seed: int) -> dict[str, Tensor]:
    """``state`` with every float tensor moved by 10% of its own spread: another network."""
    generator = torch.Generator().manual_seed(seed)
    moved = {}
    for key, value in state.items():
        if value.is_floating_point():
            noise = torch.randn(value.shape, generator=generator, dtype=value.dtype)
            value = value + 0.1 * (value.std() if value.numel() > 1 else 1.0) * noise
        moved[key] = value.clone()
    return moved


def mlp_head(width: int, dim: int, prefix: str, seed: int) -> dict[str, Tensor]:
    """A MoCo-v2 projection head ``Linear(width, width), ReLU, Linear(width, dim)``."""
    generator = torch.Generator().manual_seed(seed)
    return {
        f"{prefix}0.weight": torch.randn(width, width, generator=generator) * width**-0.5,
        f"{prefix}0.bias": torch.zeros(width),
        f"{prefix}2.weight": torch.randn(dim, width, generator=generator) * width**-0.5,
        f"{prefix}2.bias": torch.zeros(dim),
    }


def write_doors(run: str, architecture: str, network: dict[str, Tensor], out: Path) -> list[Door]:
    """The run and the four files written to ``out`` as the doors they open."""
    from safetensors.torch import save_file

    model = architecture.removeprefix("torchvision:")
    classifier = create_backbone(architecture).classifier_key
    backbone = {k: v for k, v in network.items() if not k.startswith(f"{classifier}.")}
    width = next(v for k, v in network.items() if k == f"{classifier}.weight").shape[1]
    out.mkdir(parents=True)
    torch.save(network, out / f"{model}.pth")
    save_file({k: v.contiguous() for k, v in network.items()}, out / "model.safetensors")
    query = {**backbone, **mlp_head(width, 128, "fc.", seed=1)}
    key = perturbed(query, seed=2)
    moco = {f"module.encoder_q.{k}": v for k, v in query.items()}
    moco.update({f"module.encoder_k.{k}": v for k, v in key.items()})
    moco.update({"module.queue": torch.randn(128, 4096), "module.queue_ptr": torch.zeros(1)})
    torch.save({"epoch": 10, "arch": model, "state_dict": moco, "optimizer": {}},
               out / "checkpoint_0009.pth.tar")  # fmt: skip
    dino_head = mlp_head(width, 256, "head.mlp.", seed=3)
    teacher = {**{f"backbone.{k}": v for k, v in backbone.items()}, **dino_head}
    student = {f"module.{k}": v for k, v in perturbed(teacher, seed=4).items()}
    torch.save({"teacher": teacher, "student": student, "optimizer": {}, "epoch": 10,
                "dino_loss": {"center": torch.zeros(1, 256)}}, out / "checkpoint.pth")  # fmt: skip
    return [
        Door("distill", run, architecture),
        Door("torchvision", str(out / f"{model}.pth"), architecture),
        Door("timm", str(out / "model.safetensors"), f"timm:{model}"),
        Door("MoCo", str(out / "checkpoint_0009.pth.tar"), architecture),
        Door("DINO", str(out / "checkpoint.pth"), architecture),
    ]


def run_config(checkpoint_path: str) -> Path:
    """The ``config.yaml`` LightningCLI wrote beside a checkpoint's run (``version_N/``)."""
    return Path(checkpoint_path).resolve().parents[1] / "config.yaml"


def data_module(config: Path, data_dir: str | None = None) -> ImageFolderDataModule:
    """The ImageFolder data of the run's config (its folder taken from the repository root,
    as the run's ``distill fit`` did), or of ``data_dir``.

    Raises:
        ConfigError: No config there, or its data is no ImageFolderDataModule.
    """
    if not config.is_file():
        raise ConfigError(f"{config}: no run config here; give the run's config with --config")
    data = (yaml.safe_load(config.read_text()) or {}).get("data") or {}
    if not str(data.get("class_path", "")).endswith("ImageFolderDataModule"):
        raise ConfigError(f"{config}: data is {data.get('class_path')!r}, not an "
                          "ImageFolderDataModule")  # fmt: skip
    settings = {key: value for key, value in data.get("init_args", {}).items() if key in DATA_KEYS}
    if data_dir is not None:
        settings["data_dir"] = data_dir
    elif not Path(settings.get("data_dir", ".")).is_absolute():
        settings["data_dir"] = str(ROOT / settings.get("data_dir", "."))
    return ImageFolderDataModule(**settings)


@torch.no_grad()
def features(network: torch.nn.Module, datamodule: ImageFolderDataModule, split: str) -> tuple:
    """The network's backbone features and the labels of ``split``, un-augmented."""
    feats, labels = [], []
    for images, targets, _ in datamodule.eval_dataloader(split):
        feats.append(backbone_features(network, images).float())
        labels.append(targets)
    return torch.cat(feats), torch.cat(labels)


def through(door: Door, datamodule: ImageFolderDataModule) -> dict:
    """Builds the door's teacher from its spec, loads it (its report is printed) and scores
    its backbone features with the k-NN."""
    spec = TeacherSpec.from_config({
        "architecture": door.architecture, "weights": door.weights, "embedding": "backbone",
        "mean": list(datamodule.mean), "std": list(datamodule.std),
        "image_size": datamodule.image_size,
    })  # fmt: skip
    teacher = build_teacher(spec)
    teacher.inputs.configure(datamodule.mean, datamodule.std)  # as a fit does, before loading
    report = teacher.weights.load()
    teacher.network.eval()
    train_x, train_y = features(teacher.network, datamodule, "train")
    val_x, val_y = features(teacher.network, datamodule, "val")
    knn = knn_accuracies(train_x, train_y, val_x, val_y, datamodule.num_classes, KS)
    return {"door": door, "report": report, "features": (train_x, val_x), "knn": knn}


def table(results: list[dict]) -> str:
    """The markdown table of the doors against the first (the reference)."""
    reference = results[0]["features"]
    lines = [
        "| door | file | format detected | network | tensors loaded | k-NN top-1, k=20 | "
        "k=200 | features = distill's |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        door, report = result["door"], result["report"]
        same = all(torch.equal(a, b) for a, b in zip(result["features"], reference, strict=True))
        knn = result["knn"]
        lines.append(
            f"| {door.name} ({door.architecture}) | {Path(door.weights).name} | {report.format} "
            f"| {report.network} | {sum(report.loaded.values())} | {100 * knn[20]['top1']:.2f}% "
            f"| {100 * knn[200]['top1']:.2f}% | {'yes' if same else 'NO'} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", nargs="?", default=RUN, help=f"run directory or checkpoint ({RUN})")
    parser.add_argument("--keep", type=Path, help="write the four files to this new folder")
    parser.add_argument("--config", type=Path, help="the run's config (default: its config.yaml)")
    parser.add_argument("--data-dir", help="the ImageFolder data (default: the config's)")
    args = parser.parse_args(argv)
    if args.keep is not None and args.keep.exists():
        parser.error(f"--keep {args.keep}: already exists; name a new folder (nothing is "
                     "overwritten)")  # fmt: skip
    try:
        path = resolve_checkpoint(args.run)
        checkpoint = read_weights_file(path)
        architecture, network = trained_network(checkpoint)
        datamodule = data_module(args.config or run_config(path), args.data_dir)
        with tempfile.TemporaryDirectory() as temporary:
            out = args.keep or Path(temporary) / "doors"
            doors = write_doors(args.run, architecture, network, out)
            results = [through(door, datamodule) for door in doors]
    except ConfigError as error:
        print(f"four_doors: {error}", file=sys.stderr)
        return 2
    print(table(results))
    same = all(
        torch.equal(a, b)
        for result in results
        for a, b in zip(result["features"], results[0]["features"], strict=True)
    )
    print("the same network through every door" if same else "the doors DIFFER (see above)")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
