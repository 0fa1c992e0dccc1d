"""How far each cifar10-5k student's attention maps are from its teacher's, after training.

    python benchmarks/attention_gap.py            # every finished run of the suite, seeds 0 1 2
    python benchmarks/attention_gap.py --seeds 0 --methods AT KD
    python benchmarks/attention_gap.py --suite distillation_checks --seeds 0 1 2 3 4
    python benchmarks/attention_gap.py --data ../shared/data/cifar10-5k --runs-root runs

Reads the runs of ``cifar10_5k.py distillation`` (or of ``--suite distillation_checks``: AT
at a tenth of its weight, more seeds; ``--runs-root``, default the repository's
``runs/``): each run's newest ``last.ckpt`` gives the student (``student.backbone.*``), the
teacher run's the teacher every method loaded (its final weights). Every network sees the
val images at full size, unaugmented, normalised with the config's mean
and std. The gap of a stage is AT's term there, scaled by AT's ``β = 1000``:
``β · mean_{b,k} (Q_s[b, k] − Q_t[b, k])²`` (``distill.losses.at_loss`` on that stage alone,
``Q`` the L2-normalised channel mean of ``f²``), so that the AT row shows what its
``train/at`` term ends at on val images and the other rows how close a student gets to the
teacher's attention without being asked to. The table gives each method's mean over seeds
(runs not finished are left out and named), next to its final val top-1.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
from cifar10_5k import ROOT, RUNS, SUITES, Run, final_values, newest_version, note, print_markdown
from torchvision import datasets, transforms

from distill.backbones import create_backbone, forward_stages
from distill.losses import at_loss

STAGES = ["stage1", "stage2", "stage3"]
BETA = 1000.0  # AT's configured weight (configs/at/cifar10-5k_resnet20_resnet8.yaml)


def backbone_from(state: dict, prefix: str, name: str) -> torch.nn.Module:
    """``name``'s backbone with the checkpoint's ``<prefix>backbone.*`` weights, in eval mode."""
    backbone = create_backbone(name)
    weights = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    backbone.load_state_dict(weights)
    return backbone.eval()


@torch.no_grad()
def stage_maps(backbone: torch.nn.Module, images: torch.Tensor, batch: int = 256) -> list:
    """The ``STAGES`` feature maps of ``images``, batch by batch (concatenated per stage)."""
    parts = [forward_stages(backbone, chunk, STAGES)[1] for chunk in images.split(batch)]
    return [torch.cat([p[name] for p in parts]) for name in STAGES]


def val_images(run: Run, data_dir: Path | None) -> torch.Tensor:
    """The val split of ``data_dir`` (default: the run config's), unaugmented, normalised as
    the config says."""
    data = run.config_value("data", "init_args")
    transform = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(data["mean"], data["std"])]
    )
    folder = datasets.ImageFolder(str((data_dir or ROOT / data["data_dir"]) / "val"), transform)
    return torch.stack([image for image, _ in folder])


def gaps(student: list, teacher: list) -> list[float]:
    return [BETA * at_loss([s], [t]).item() for s, t in zip(student, teacher, strict=True)]


def last_checkpoint(run: Run) -> dict | None:
    """The ``state_dict`` of the run's newest ``last.ckpt``; ``None`` for a run not finished."""
    version = newest_version(run)
    checkpoint = version / "checkpoints" / "last.ckpt" if version else None
    if checkpoint is None or not checkpoint.is_file() or note(run):
        return None
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--suite", choices=["distillation", "distillation_checks"], default="distillation"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", help="suite labels (default: every one)")
    parser.add_argument("--runs-root", type=Path, default=RUNS)
    parser.add_argument("--data", type=Path, help="data folder (default: the configs')")
    args = parser.parse_args(argv)

    teacher_run, *students = (
        replace(run, runs_root=args.runs_root) for stage in SUITES[args.suite] for run in stage
    )
    teacher_state = last_checkpoint(teacher_run)
    if teacher_state is None:
        raise SystemExit(f"no finished teacher run under {teacher_run.root_dir()}")
    images = val_images(teacher_run, args.data)
    teacher_name = teacher_run.config_value("model", "init_args", "backbone")
    teacher = stage_maps(backbone_from(teacher_state, "student.backbone.", teacher_name), images)
    lines, left_out = [], []
    for base in students:
        if args.methods and base.label not in args.methods:
            continue
        per_seed, top1 = [], []
        for run in filter(None, (base.with_seed(seed) for seed in args.seeds)):
            state = last_checkpoint(run)
            if state is None:
                left_out.append(f"{base.label} ({run.root_dir().name})")
                continue
            init = run.config_value("model", "init_args")
            student = backbone_from(
                state, "student.backbone.", init.get("student_backbone") or init["backbone"]
            )
            per_seed.append(gaps(stage_maps(student, images), teacher))
            top1.append(100 * final_values(run, "val/top1"))
        if per_seed:
            means = [statistics.mean(column) for column in zip(*per_seed, strict=True)]
            total = statistics.mean(sum(g) for g in per_seed)
            lines.append(
                [
                    base.label,
                    str(len(per_seed)),
                    *(f"{m:.3f}" for m in means),
                    f"{total:.3f}",
                    f"{statistics.mean(top1):.1f}",
                ]
            )
    print_markdown(["method", "seeds", *STAGES, "sum", "val/top1 %"], lines)
    if left_out:
        print(f"\nleft out (no finished run): {'; '.join(left_out)}")


if __name__ == "__main__":
    main()
