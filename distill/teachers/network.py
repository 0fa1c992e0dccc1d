"""A teacher network, a frozen forward, and filling a teacher with a file's network."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from lightly.models.modules.heads import MoCoProjectionHead
from torch import Tensor, nn
from torch.utils._pytree import tree_map

from distill.backbones import POOL, feature_map, forward_stages, has_feature_map
from distill.backbones.common import global_pool
from distill.backbones.external import import_timm
from distill.errors import ConfigError
from distill.modules.momentum_encoder import MomentumEncoder
from distill.modules.weights import load_state_strict
from distill.teachers.inputs import TeacherInputs
from distill.teachers.layouts import Found, LeftOut, Network, sub
from distill.teachers.spec import TeacherSpec


def frozen_forward(function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` under ``torch.inference_mode``, its tensors cloned out of it.

    Inference mode records nothing for autograd and skips version counting: the cheapest way
    to run a network nothing is trained through. Its outputs would be inference tensors,
    which autograd refuses to save (a loss on a teacher's logits saves them), so they are
    cloned outside it into ordinary tensors.
    """
    with torch.inference_mode():
        outputs = function(*args)
    return tree_map(lambda x: x.clone() if isinstance(x, Tensor) else x, outputs)


class TeacherNetwork(nn.Module):
    """A teacher backbone with, as its ``embedding`` needs, a classifier or a projection head.

    ``forward_features`` gives ``(embedding [B, num_features], logits [B, num_classes] or
    None)``, as ``distill.modules.Classifier`` does: with ``embedding: logits`` the
    backbone's features and the classifier's logits; with ``head`` the MoCo-v2 projection
    head's output; with ``backbone`` the backbone's features. Its state dict has the keys of
    a ``Classifier`` (``backbone.*``, ``head.*``). ``forward_dense`` also gives the
    backbone's last feature map (feature distillation): a convolutional backbone's map
    before its pooling, a timm ViT's patch tokens on its patch grid; ``forward_stages`` its
    intermediate maps by stage name (``distill.backbones.forward_stages``).

    A frozen teacher never trains: its parameters have ``requires_grad=False`` (so no
    optimiser and no DDP gradient reduction sees them), it stays in eval mode when Lightning
    calls ``train()`` on the whole module, so its batch-norm statistics never move, and it
    runs under ``torch.inference_mode`` (``frozen_forward``).

    Args:
        backbone: Feature extractor with ``num_features``.
        embedding: ``logits``, ``head`` or ``backbone``.
        num_classes: Classes of the classifier (``logits``).
        proj_hidden_dim: Hidden width of the projection head (``head``; ``None``: the
            backbone's width, MoCo-v2).
        proj_dim: Output width of the projection head.
        frozen: Never train (see above).
        inputs: What the backbone is fed (``TeacherInputs``), if anything; ``build_teacher``
            installs it in front of the backbone's forward and gives it here for
            ``forward_dense`` and ``forward_stages``, which go around that forward.
    """

    def __init__(
        self,
        backbone: nn.Module,
        embedding: str = "logits",
        num_classes: int | None = None,
        proj_hidden_dim: int | None = None,
        proj_dim: int = 128,
        frozen: bool = True,
        inputs: TeacherInputs | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.embedding = embedding
        self.frozen = frozen
        self.inputs = inputs
        features = backbone.num_features
        self.num_features, self.num_classes = features, None
        self.head: nn.Module | None = None
        if embedding == "logits":
            self.head, self.num_classes = nn.Linear(features, num_classes), num_classes
        elif embedding == "head":
            self.head = MoCoProjectionHead(features, proj_hidden_dim or features, proj_dim)
            self.num_features = proj_dim
        if frozen:
            self.requires_grad_(False)
            self.eval()

    def train(self, mode: bool = True) -> TeacherNetwork:
        """As ``nn.Module.train``, except that a frozen teacher stays in eval mode."""
        return super().train(mode and not self.frozen)

    def forward_features(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """The embedding ``[B, num_features]`` and the logits ``[B, num_classes]`` (or None)."""
        if self.frozen:
            return frozen_forward(self._features, images)
        return self._features(images)

    def _features(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        features = self.backbone(images)
        if self.embedding == "logits":
            return features, self.head(features)
        if self.embedding == "head":
            return self.head(features), None
        return features, None

    def forward(self, images: Tensor) -> Tensor:
        """The logits with a classifier, else the embedding."""
        embedding, logits = self.forward_features(images)
        return embedding if logits is None else logits

    @property
    def has_feature_map(self) -> bool:
        """Whether ``forward_dense`` works: a distill backbone with a last feature map
        (``distill.backbones.has_feature_map``) or a timm model with intermediate features."""
        if hasattr(self.backbone, "timm_name"):
            return callable(getattr(self.backbone, "forward_intermediates", None))
        return has_feature_map(self.backbone)

    @property
    def feature_map_features(self) -> int:
        """Channels of ``forward_dense``'s map: a timm model's last stage (its
        ``feature_info``; a ViT's token width), else the backbone's ``num_features``."""
        feature_info = getattr(self.backbone, "feature_info", None)
        if hasattr(self.backbone, "timm_name") and feature_info:
            return feature_info[-1]["num_chs"]
        return self.backbone.num_features

    @property
    def fixed_input_size(self) -> tuple[int, int] | None:
        """The one image size ``(h, w)`` the backbone takes (a timm ViT built without
        ``dynamic_img_size``); ``None`` when it takes any."""
        patch_embed = getattr(self.backbone, "patch_embed", None)
        if getattr(patch_embed, "strict_img_size", False) and patch_embed.img_size:
            return tuple(patch_embed.img_size)
        return None

    def forward_dense(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """The last feature map ``[B, C, h, w]``, the embedding and the logits (or None), in
        one pass, as ``forward_features`` gives the last two.

        A distill backbone's map is the one its forward pools
        (``distill.backbones.feature_map``); a timm model's is timm's
        ``forward_intermediates`` of its last block, normalised as its ``forward_features``
        normalises it, in NCHW: a ViT's patch tokens without the prefix (class, register,
        distillation) tokens, row-major on the patch grid (token ``i·w + j`` at row ``i``,
        column ``j``). ``C`` is ``feature_map_features``.

        Raises:
            ConfigError: The backbone has no feature map.
        """
        if self.frozen:
            return frozen_forward(self._dense, images)
        return self._dense(images)

    def _dense(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        if self.inputs is not None:  # the backbone's forward pre-hook is not run here
            images = self.inputs(images)
        backbone = self.backbone
        if hasattr(backbone, "timm_name") and self.has_feature_map:
            final, (dense,) = backbone.forward_intermediates(
                images, indices=1, norm=True, output_fmt="NCHW"
            )
            features = backbone.forward_head(final, pre_logits=True)
        else:
            dense = feature_map(backbone, images)
            features = global_pool(dense)
        if self.embedding == "logits":
            return dense, features, self.head(features)
        if self.embedding == "head":
            return dense, self.head(features), None
        return dense, features, None

    def forward_stages(
        self, images: Tensor, names: Sequence[str]
    ) -> tuple[dict[str, Tensor], Tensor, Tensor | None]:
        """The backbone's stages ``names`` (``{name: [B, C, h, w]}``, see
        ``distill.backbones.forward_stages``), the embedding and the logits (or None), in one
        pass, as ``forward_features`` gives the last two; fed the teacher's own inputs.
        """
        if self.frozen:
            return frozen_forward(self._stages, images, names)
        return self._stages(images, names)

    def _stages(
        self, images: Tensor, names: Sequence[str]
    ) -> tuple[dict[str, Tensor], Tensor, Tensor | None]:
        # forward_stages goes around the backbone's forward and its pre-hook (the inputs) to
        # read a stage; for the embedding alone it calls that forward, which feeds them itself.
        if self.inputs is not None and any(name != POOL for name in names):
            images = self.inputs(images)
        features, stages = forward_stages(self.backbone, images, names)
        if self.embedding == "logits":
            return stages, features, self.head(features)
        if self.embedding == "head":
            return stages, self.head(features), None
        return stages, features, None


def _by_child_index(module: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor] | None:
    """``state`` with leading child indices named (``0.weight`` -> ``conv1.weight``): the keys
    of ``nn.Sequential(*list(model.children())[:-1])``, lightly's usual backbone."""
    names = [name for name, _ in module.named_children()]
    renamed = {}
    for key, value in state.items():
        index, _, rest = key.partition(".")
        if not index.isdigit() or int(index) >= len(names):
            return None
        renamed[f"{names[int(index)]}.{rest}"] = value
    return renamed


def backbone_state(
    backbone: nn.Module, state: dict[str, Tensor], classifier: dict[str, Tensor], where: str
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """A file's backbone (and classifier) weights as ``backbone`` (and its classifier) name
    them: ``(backbone_state, classifier_state)``, to be loaded strictly.

    A timm backbone takes them through timm's pretrained-weights mechanism
    (``timm.create_model(..., pretrained=True, pretrained_cfg_overlay=dict(state_dict=...))``,
    which applies the model's own checkpoint filter, e.g. resampling a ViT's position
    embedding to its ``img_size``), with ``classifier`` as its classifier; others take them as
    they are, or with the child indices of an ``nn.Sequential`` of their children named.

    Raises:
        ConfigError: Weights timm cannot load (the message lists the keys that do not fit).
    """
    if hasattr(backbone, "timm_name"):
        return _through_timm(backbone, state, classifier, where)
    own = set(backbone.state_dict())
    if set(state) != own:
        renamed = _by_child_index(backbone, state)
        state = renamed if renamed is not None and set(renamed) == own else state
    return state, classifier


def _through_timm(
    backbone: nn.Module, state: dict[str, Tensor], classifier: dict[str, Tensor], where: str
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    timm = import_timm()
    name, kwargs, key = backbone.timm_name, backbone.timm_kwargs, backbone.classifier_key
    full, num_classes = dict(state), 0
    if classifier and key:
        full.update({f"{key}.{k}": v for k, v in classifier.items()})
        num_classes = classifier["weight"].shape[0]
    overlay = dict(state_dict=full, num_classes=num_classes)
    try:
        model = timm.create_model(
            name, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay=overlay, **kwargs
        )
    except Exception as error:  # timm's strict load, or its filter missing a key: name the keys
        fresh = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
        load_state_strict(fresh, full, f"{where} (timm {name})")
        raise ConfigError(f"timm cannot load {where} into {name}: {error}") from error
    loaded = model.state_dict()
    if not num_classes:
        return loaded, {}
    prefix = f"{key}."
    return {k: v for k, v in loaded.items() if not k.startswith(prefix)}, sub(loaded, prefix)


def load_backbone(backbone: nn.Module, state: dict[str, Tensor], where: str) -> None:
    """Loads a file's backbone weights into ``backbone`` strictly (see ``backbone_state``).

    Raises:
        ConfigError: Keys or shapes that do not fit (the message lists them).
    """
    load_state_strict(backbone, backbone_state(backbone, state, {}, where)[0], where)


def _missing_part(found: Found, spec: TeacherSpec, part: str) -> ConfigError:
    """Why a frozen teacher's ``part`` (``classifier``, ``head``) cannot come from the file."""
    main = found.main
    holds = f"{spec.weights} ({found.format}, {found.network})"
    if part == "classifier":
        return ConfigError(
            f"{holds} has no linear classifier, so it cannot give the teacher's logits, which "
            f"{spec.embedding_key}=logits reads (KD, DKD and DIST do, and CRD, PKT and "
            "FeatureKD with kd_weight > 0). RKD, CRD and PKT can read its features instead: give "
            "the teacher as model.init_args.teacher with embedding: backbone; FeatureKD does "
            "with kd_weight: 0"
        )
    other = f"; its head {main.projection_where}* is not one" if main.other_head else ""
    return ConfigError(
        f"{holds} has no MoCo-v2 projection head (Linear, ReLU, Linear){other}, which "
        f"{spec.embedding_key}=head reads. A frozen teacher's head must come from its weights, "
        f"never a random initialisation: read its backbone features with {spec.embedding_key}="
        "backbone, or give a checkpoint that holds the head (a MoCo-v2 run)"
    )


def _unused(network: Network, reads: str) -> list[LeftOut]:
    """The heads of ``network`` a teacher that reads ``reads`` leaves out."""
    left_out = []
    if network.classifier and reads != "logits":
        left_out.append((f"{network.classifier_where}*", len(network.classifier),
                         f"the classifier (the teacher's {reads} is read)"))  # fmt: skip
    if network.projection and reads != "head":
        left_out.append((f"{network.projection_where}*", len(network.projection),
                         f"the projection head (the teacher's {reads} is read)"))  # fmt: skip
    if network.other_head:
        why = "a projection head (neither a classifier nor a MoCo-v2 head)"
        left_out.append((f"{network.projection_where}*", len(network.other_head), why))
    return left_out


def fill_network(
    network: TeacherNetwork, found: Found, spec: TeacherSpec, where: str
) -> tuple[dict[str, int], list[LeftOut]]:
    """Loads the file's network into a ``TeacherNetwork``; returns the tensors loaded by
    part and the key groups left out.

    Raises:
        ConfigError: Weights that do not fit, or a classifier or projection head the
            teacher's embedding needs and the file lacks.
    """
    main = found.main.split_classifier(getattr(network.backbone, "classifier_key", None))
    reads = network.embedding
    if reads == "logits" and not main.classifier:
        raise _missing_part(found, spec, "classifier")
    if reads == "head" and not main.projection:
        raise _missing_part(found, spec, "head")
    wanted = main.classifier if reads == "logits" else {}
    features, classifier = backbone_state(network.backbone, main.backbone, wanted, where)
    head = {"logits": classifier, "head": main.projection}.get(reads, {})
    state = {**prefixed(features, "backbone."), **prefixed(head, "head.")}
    load_state_strict(network, state, where)  # one message for every key that does not fit
    loaded = {"backbone": len(features)}
    if head:
        loaded["classifier" if reads == "logits" else "head"] = len(head)
    return loaded, [*found.left_out, *_unused(main, reads)]


def prefixed(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """``state`` with ``prefix`` before every key."""
    return {f"{prefix}{key}": value for key, value in state.items()}


@torch.no_grad()
def fill_momentum_encoder(
    encoder: MomentumEncoder, found: Found, spec: TeacherSpec, frozen: bool, where: str
) -> tuple[dict[str, int], list[LeftOut], list[str]]:
    """Loads the file's network into a momentum encoder (ReKD's teacher): the query encoder
    from the network taken, the key encoder from its pair when the file has one (else a
    copy of the query encoder). The queue is never loaded: it must hold this run's keys.

    A head the file lacks is refused for a frozen teacher (it would relate images through a
    random projection) and kept as initialised for an online one, which trains it.

    Returns:
        Tensors loaded by part, key groups left out, notes for the report.

    Raises:
        ConfigError: Weights that do not fit, or a frozen teacher's missing head.
    """
    main = found.main.split_classifier(getattr(encoder.backbone, "classifier_key", None))
    has_head = not isinstance(encoder.head, nn.Identity)
    reads = "head" if has_head else "backbone"
    if has_head and frozen and not main.projection:
        raise _missing_part(found, spec, "head")
    load_backbone(encoder.backbone, main.backbone, where)
    loaded, notes = {"backbone": len(encoder.backbone.state_dict())}, []
    if has_head and main.projection:
        load_state_strict(
            encoder.head, main.projection, f"{where} ({main.projection_where}*)", head=True
        )
        loaded["head"] = len(main.projection)
    elif has_head:
        notes.append("head: not in the file, randomly initialised (the online teacher trains it)")
    encoder.key_backbone.load_state_dict(encoder.backbone.state_dict())
    encoder.key_head.load_state_dict(encoder.head.state_dict())
    pair = found.key
    left_out = [*found.left_out, *_unused(main, reads)]
    if pair is not None and (not has_head or ("head" in loaded and pair.projection)):
        load_backbone(encoder.key_backbone, pair.backbone, where)
        if has_head:
            load_state_strict(encoder.key_head, pair.projection, f"{where} (key head)", head=True)
        loaded["key encoder"] = len(encoder.key_backbone.state_dict()) + len(pair.projection)
        left_out += _unused(pair, reads)
    else:
        if pair is not None:
            left_out.append((f"{pair.where}*", len(pair.backbone), "the key encoder"))
        notes.append("key encoder: a copy of the query encoder")
    return loaded, left_out, notes
