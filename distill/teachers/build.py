"""A teacher from its spec: the network, what it is fed, and what loads its weights."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from distill.backbones import create_backbone
from distill.errors import ConfigError
from distill.modules.momentum_encoder import MomentumEncoder
from distill.teachers.inputs import TeacherInputs
from distill.teachers.network import TeacherNetwork, fill_momentum_encoder, fill_network
from distill.teachers.spec import TeacherSpec
from distill.teachers.weights import TeacherWeights, torchvision_weights

#: The weights of a momentum encoder's state dict (its key queue is the run's own state).
MOMENTUM_WEIGHTS = ("backbone.", "head.", "key_backbone.", "key_head.")


@dataclass
class Teacher:
    """A teacher built from its spec (nothing read from disk yet).

    Attributes:
        network: The teacher (a ``TeacherNetwork`` or ReKD's ``MomentumEncoder``).
        inputs: What it is fed; installed in front of its backbone(s). The method holds it
            as a submodule (it follows the model to its device) and calls
            ``inputs.configure(mean, std)`` with the student's data statistics at setup.
        weights: Reads the spec's weights into ``network`` (``weights.load()``, or
            ``load_unless_given(trainer)`` at the start of a run) and keeps them out of the
            student's checkpoints with ``in_checkpoint: false``.
    """

    network: nn.Module
    inputs: TeacherInputs
    weights: TeacherWeights


def build_teacher(
    spec: TeacherSpec,
    num_classes: int | None = None,
    proj_hidden_dim: int | None = None,
    proj_dim: int = 128,
    frozen: bool = True,
) -> Teacher:
    """A ``TeacherNetwork`` for ``spec``, whose ``embedding`` is resolved (not ``auto``).

    Args:
        spec: The teacher.
        num_classes: Classes of its classifier (``embedding: logits``; e.g. KD's student's).
        proj_hidden_dim: Hidden width of its MoCo-v2 head (``embedding: head``).
        proj_dim: Output width of that head.
        frozen: Never trained (see ``TeacherNetwork``).

    Raises:
        ConfigError: An unknown architecture or weights name, a classifier of torchvision's
            or timm's weights with other classes than ``num_classes``, ``in_checkpoint:
            false`` for a teacher that trains, or an image size a ViT does not take.
    """
    if spec.embedding not in ("logits", "head", "backbone"):
        raise ValueError(f"resolve the teacher's embedding first (spec.resolve_embedding): {spec}")
    if spec.embedding == "logits" and num_classes is None:
        raise ValueError("a teacher read by its logits needs num_classes (its classifier's)")
    check_spec(spec, frozen, num_classes)
    backbone = create_backbone(spec.architecture, **spec.kwargs)
    inputs = teacher_inputs(spec, backbone)
    network = TeacherNetwork(backbone, spec.embedding, num_classes, proj_hidden_dim, proj_dim,
                             frozen, inputs)  # fmt: skip
    check_input_size(spec, network, inputs)
    inputs.install(network.backbone)

    def fill(found, source):
        return (*fill_network(network, found, spec, repr(source)), [])

    weights = TeacherWeights(network, spec, fill, inputs,
                             needs_classifier=spec.embedding == "logits")  # fmt: skip
    return Teacher(network, inputs, weights)


def build_momentum_teacher(
    spec: TeacherSpec,
    frozen: bool,
    proj_hidden_dim: int | None,
    proj_dim: int,
    queue_size: int,
    shuffle_bn: str = "auto",
    bn_groups: int = 8,
) -> Teacher:
    """ReKD's teacher: a ``MomentumEncoder`` (query and key encoder, a labelled key queue)
    whose embedding is its MoCo-v2 head (``embedding: head``) or its backbone's features
    (``backbone``), online (trained, from scratch without weights) or frozen.

    Raises:
        ConfigError: As ``build_teacher``.
    """
    if spec.embedding not in ("head", "backbone"):
        raise ValueError(f"resolve the teacher's embedding first (spec.resolve_embedding): {spec}")
    check_spec(spec, frozen, None)
    backbone = create_backbone(spec.architecture, **spec.kwargs)
    head_dim = proj_dim if spec.embedding == "head" else None
    encoder = MomentumEncoder(
        backbone, proj_hidden_dim, head_dim, queue_size, track_labels=True,
        shuffle_bn=shuffle_bn, bn_groups=bn_groups,
    )  # fmt: skip
    if frozen:
        encoder.requires_grad_(False)
        encoder.eval()
    inputs = teacher_inputs(spec, backbone)
    inputs.install(encoder.backbone, encoder.key_backbone)

    def fill(found, source):
        return fill_momentum_encoder(encoder, found, spec, frozen, repr(source))

    weights = TeacherWeights(
        encoder, spec, fill, inputs, paired=True, weight_parts=MOMENTUM_WEIGHTS,
        initialisation="random initialisation (online teacher)",
    )  # fmt: skip
    return Teacher(encoder, inputs, weights)


def check_spec(spec: TeacherSpec, frozen: bool, num_classes: int | None) -> None:
    """Refuses what cannot work, before anything is built or read.

    Raises:
        ConfigError: ``in_checkpoint: false`` for a trained teacher; unknown torchvision
            weights; a classifier with other classes than ``num_classes``.
    """
    if not spec.in_checkpoint and not frozen:
        raise ConfigError(
            f"{spec.key}.in_checkpoint=false needs a frozen teacher: a teacher that trains "
            "is part of the run's state and must be in its checkpoints"
        )
    if not spec.in_checkpoint and not spec.weights:
        raise ConfigError(f"{spec.key}.in_checkpoint=false needs {spec.weights_key}")
    classes = None
    if spec.weights_kind == "torchvision":
        weights = torchvision_weights(spec)  # refuses an unknown name now, not at fit start
        classes, origin = len(weights.meta["categories"]), f"torchvision's {weights}"
    elif spec.weights_kind == "timm":
        classes, origin = _timm_classes(spec), f"timm's pretrained {spec.model_name}"
    if spec.embedding == "logits" and classes is not None and classes != num_classes:
        raise ConfigError(
            f"{spec.key}: {origin} classifies {classes} classes, but model.init_args."
            f"num_classes={num_classes}: logits are compared class by class (KD). Read its "
            "features instead (embedding: backbone, with RKD or CRD), or train a classifier "
            "of these classes"
        )


def check_input_size(spec: TeacherSpec, network: TeacherNetwork, inputs: TeacherInputs) -> None:
    """Refuses inputs of another size than the one a network takes only (a timm ViT built
    without ``dynamic_img_size``), now rather than at its first batch.

    Raises:
        ConfigError: The sizes differ (the message says how to make them agree).
    """
    fixed, size = network.fixed_input_size, inputs.image_size
    if fixed is None or size is None or fixed == (size, size):
        return
    raise ConfigError(
        f"{spec.key}: {spec.architecture} takes {fixed[0]}x{fixed[1]} images only, but would "
        f"be fed {size}x{size} ({inputs.origin}); set image_size: {fixed[-1]} in the teacher "
        "spec (a square size), or build it for that size (kwargs: {img_size: ...}) or for any "
        "(kwargs: {dynamic_img_size: true})"
    )


def _timm_classes(spec: TeacherSpec) -> int | None:
    from distill.backbones.external import import_timm

    cfg = import_timm().models.get_pretrained_cfg(spec.model_name)
    return None if cfg is None else cfg.num_classes


def teacher_inputs(spec: TeacherSpec, backbone: nn.Module) -> TeacherInputs:
    """What the teacher is fed: the spec's mean, std and size; where the spec leaves them
    out, torchvision's metadata (of the weights named, else the model's ``DEFAULT``) or
    timm's pretrained config for ``torchvision:`` and ``timm:`` architectures, else the
    student's (distill's own teachers are trained on the student's data)."""
    meta = _library_inputs(spec, backbone)
    if meta is None:
        origin = "the teacher spec" if spec.mean or spec.image_size else "the student's"
        return TeacherInputs(spec.mean, spec.std, spec.image_size, origin)
    mean, std, size, interpolation, origin = meta
    given = [name for name in ("mean", "std", "image_size") if getattr(spec, name) is not None]
    if given:
        origin = f"{', '.join(given)} from the teacher spec, the rest from {origin}"
    return TeacherInputs(
        spec.mean or mean, spec.std or std, spec.image_size or size, origin, interpolation
    )


def _library_inputs(spec: TeacherSpec, backbone: nn.Module) -> tuple | None:
    """``(mean, std, size, interpolation, origin)`` from torchvision's or timm's metadata."""
    if spec.library == "torchvision":
        from torchvision.models import get_model_weights

        if spec.weights_kind == "torchvision":
            weights = torchvision_weights(spec)
        else:
            weights = get_model_weights(spec.model_name).DEFAULT
        transform = weights.transforms()
        return (transform.mean, transform.std, transform.crop_size[0],
                transform.interpolation.value, f"torchvision's {weights} metadata")  # fmt: skip
    if spec.library == "timm":
        from distill.backbones.external import import_timm

        config = import_timm().data.resolve_data_config({}, model=backbone)
        size = config["input_size"][-1]
        patches = getattr(backbone, "patch_embed", None)
        if patches is not None and not getattr(backbone, "dynamic_img_size", True):
            size = patches.img_size[-1]  # a ViT takes the image size it was built for only
        return (config["mean"], config["std"], size, config["interpolation"],
                f"timm's pretrained config of {spec.model_name}")  # fmt: skip
    return None
