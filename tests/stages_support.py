"""Float64 references for the methods on intermediate feature maps (FitNets, AT, SP, VID): a
CIFAR ResNet's stages by its own modules, and cross-entropy and KD by their formulas."""

from __future__ import annotations

import torch
from torch import Tensor, nn

SGD = lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)  # noqa: E731


def make_method(method: type, checkpoint: str | None, **kwargs) -> nn.Module:
    """A resnet8 student of a resnet14 teacher (``checkpoint``) on 5 classes."""
    defaults = dict(
        student_backbone="resnet8", teacher_backbone="resnet14", teacher_checkpoint=checkpoint,
        num_classes=5, optimizer=SGD,
    )  # fmt: skip
    return method(**{**defaults, **kwargs})


def with_statistics(module: nn.Module, seed: int = 3) -> nn.Module:
    """``module`` with batch-norm statistics and affine weights away from their start (as
    after some training), so that a wrong or missing normalisation shows in the values."""
    generator = torch.Generator().manual_seed(seed)
    for norm in module.modules():
        if isinstance(norm, nn.BatchNorm2d):
            for tensor, low, high in (
                (norm.running_mean, -0.5, 0.5),
                (norm.running_var, 0.5, 2.0),
                (norm.weight.data, 0.5, 1.5),
                (norm.bias.data, -0.5, 0.5),
            ):
                tensor.copy_(torch.empty(tensor.shape).uniform_(low, high, generator=generator))
    return module


def float64_batch(size: int = 6, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(size, 3, 32, 32, generator=generator, dtype=torch.float64)
    return images, torch.randint(0, 5, (size,), generator=generator), torch.arange(size)


def resnet_stages(classifier: nn.Module, images: Tensor) -> tuple[dict[str, Tensor], Tensor]:
    """A CIFAR ResNet classifier's stages (RepDistiller's ``feat``, after each ReLU), run
    module by module, and its logits (the head on the spatial mean of the last stage)."""
    backbone = classifier.backbone
    stem = torch.relu(backbone.bn1(backbone.conv1(images)))
    stages = {"stem": stem}
    previous = stem
    for k in (1, 2, 3):
        previous = stages[f"stage{k}"] = getattr(backbone, f"layer{k}")(previous)
    return stages, classifier.head(previous.mean(dim=(2, 3)))


def batch_norm(norm: nn.BatchNorm2d, x: Tensor) -> Tensor:
    """An eval-mode batch norm by its formula."""
    scale = norm.weight / (norm.running_var + norm.eps).sqrt()
    return (x - norm.running_mean[:, None, None]) * scale[:, None, None] + norm.bias[:, None, None]


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """``mean_b −log softmax(z_b)[y_b]``."""
    log_probs = logits - logits.exp().sum(dim=1, keepdim=True).log()
    return -log_probs[torch.arange(len(targets)), targets].mean()


def kd(logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T² · mean_b Σ_c p_t (log p_t − log p_s)`` with ``p = softmax(z / T)``."""
    log_student = torch.log_softmax(logits / temperature, dim=1)
    log_teacher = torch.log_softmax(teacher_logits / temperature, dim=1)
    kl = (log_teacher.exp() * (log_teacher - log_student)).sum(dim=1).mean()
    return temperature**2 * kl


def ce_and_kd(model: nn.Module, logits: Tensor, targets: Tensor, teacher_logits: Tensor) -> Tensor:
    """``γ·CE + α·KD`` with the model's weights (KD left out when ``α = 0``)."""
    total = model.ce_weight * cross_entropy(logits, targets)
    if model.kd_weight:
        total = total + model.kd_weight * kd(logits, teacher_logits, model.temperature)
    return total
