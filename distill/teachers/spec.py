"""The teacher specification: which network, which weights, what it is fed, where it is saved.

A method with a teacher takes it as ``teacher:`` in its ``model.init_args``; the CLI checks
the keys against ``TeacherConfig`` and hands the method a plain dict (so checkpoints keep
loading with ``torch.load(weights_only=True)``), which ``TeacherSpec.from_config`` checks
and turns into a ``TeacherSpec``. The old arguments ``teacher_backbone``,
``teacher_checkpoint`` and ``teacher_backbone_kwargs`` build the same spec
(``TeacherSpec.short_form``).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

from distill.arguments import MODEL, is_number
from distill.backbones.external import TIMM, TORCHVISION
from distill.errors import ConfigError

NETWORKS = ("auto", "teacher", "student", "query", "key")
EMBEDDINGS = ("auto", "backbone", "head", "logits")
#: A torchvision weights enum member: ``IMAGENET1K_V2``, ``DEFAULT`` or ``ResNet50_Weights.X``.
TORCHVISION_WEIGHTS = re.compile(r"([A-Za-z0-9_]+_Weights\.)?[A-Z][A-Z0-9_]*")


class TeacherConfig(TypedDict, total=False):
    """``model.init_args.teacher``: a teacher from distill, torchvision, timm or a file.

    ``architecture`` (required): a distill backbone (``resnet20``), ``torchvision:<model>`` or
    ``timm:<model>``. ``weights``: a torchvision weights name (``IMAGENET1K_V2``, ``DEFAULT``),
    ``pretrained`` (timm's hub cache), or a file or distill run directory; ``null`` only for
    ReKD's online teacher. ``network``: which network of the file (``auto``, ``teacher``,
    ``student``, ``query``, ``key``). ``embedding``: what the method reads (``auto``,
    ``backbone``, ``head``, ``logits``). ``mean``, ``std``, ``image_size``: the teacher's
    inputs (``null``: from torchvision/timm metadata, else the student's). ``in_checkpoint``:
    ``false`` leaves a frozen teacher out of the student's checkpoints. ``kwargs``: arguments
    of the architecture's constructor. See ``distill.teachers.TeacherSpec``.
    """

    architecture: str
    weights: str | None
    network: Literal["auto", "teacher", "student", "query", "key"]
    embedding: Literal["auto", "backbone", "head", "logits"]
    mean: list[float] | None
    std: list[float] | None
    image_size: int | None
    in_checkpoint: bool
    kwargs: dict[str, Any] | None


@dataclass(frozen=True)
class TeacherSpec:
    """Where a teacher comes from and how it is fed.

    Attributes:
        architecture: A distill backbone name (``resnet20``), ``torchvision:<model>`` or
            ``timm:<model>`` (see ``distill.backbones.create_backbone``).
        weights: ``None`` (random: an online teacher only); a torchvision weights name of
            the architecture (``IMAGENET1K_V2``, ``DEFAULT``: read through torchvision's API,
            so its cache works offline); ``pretrained`` for timm (timm's hub cache); else a
            file (``.pth``, ``.pt``, ``.ckpt``, ``.bin``, ``.safetensors``) or a distill run
            directory (its newest finished ``last.ckpt``). A file's layout is detected:
            distill checkpoints and exports, official MoCo v1/v2/v3, official DINO, lightly
            and solo-learn Lightning checkpoints, SwAV, plain state dicts.
        network: Which network of the file: ``auto`` (DINO: its EMA teacher; MoCo: the
            query encoder; ReKD: its teacher; other distill runs: the student), ``teacher``,
            ``student``, ``query`` or ``key`` (of a momentum encoder).
        embedding: What the method reads: ``backbone`` (pooled features), ``head`` (the
            MoCo-v2 projection head's output) or ``logits`` (the classifier: the embedding
            is then the backbone's); ``auto`` is the method's default (KD, DKD, DIST,
            RKD, CRD, PKT: ``logits``; ReKD: its ``teacher_embedding``). A part the file
            lacks is refused, never randomly initialised; parts not read are left out (and
            reported).
        mean: The teacher's per-channel input mean (``None``: torchvision's or timm's
            metadata for ``torchvision:``/``timm:`` architectures, else the student's).
        std: Likewise, the standard deviation.
        image_size: The teacher's input size: the student's batch is resized to
            ``image_size`` x ``image_size`` on the device (``None``: the metadata's size for
            ``torchvision:``/``timm:`` architectures, else the student's size).
        in_checkpoint: ``False``: a frozen teacher's weights are left out of the student's
            checkpoints; the spec and a SHA-256 of the weights are saved instead, and a
            resumed run loads the teacher again and checks it is the same.
        kwargs: Keyword arguments of the architecture's constructor (e.g. ``cifar_stem`` of
            distill's ResNets, ``img_size`` of a timm ViT).
        key: Where the configuration holds the spec, for messages.
        weights_key: Where it holds ``weights``, for messages.
        embedding_key: Where it holds ``embedding``, for messages.
    """

    architecture: str
    weights: str | None = None
    network: str = "auto"
    embedding: str = "auto"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    image_size: int | None = None
    in_checkpoint: bool = True
    kwargs: dict[str, Any] = field(default_factory=dict)
    key: str = field(default=f"{MODEL}.teacher", compare=False)
    weights_key: str = field(default=f"{MODEL}.teacher.weights", compare=False)
    embedding_key: str = field(default=f"{MODEL}.teacher.embedding", compare=False)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], key: str = f"{MODEL}.teacher") -> TeacherSpec:
        """The spec of a ``teacher:`` mapping, checked.

        Raises:
            ConfigError: An unknown key (the nearest valid one named), a missing
                ``architecture`` or a value out of range (the key and what is valid named).
        """
        if not isinstance(config, Mapping):
            # A TeacherSpec too: hyper-parameters must stay plain values (weights-only loads).
            raise ConfigError(
                f"{key}={config!r}; valid: a mapping with an architecture (in Python: a dict, "
                "or TeacherSpec(...).to_config())"
            )
        names = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in _INTERNAL]
        for name in config:
            if name not in names:
                close = difflib.get_close_matches(str(name), names, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"valid: {', '.join(names)}"
                raise ConfigError(f"{key}: unknown key {name!r}; {hint}")
        values = {"architecture": None, **config}  # check() names a missing architecture
        for name in ("mean", "std"):
            if values.get(name) is not None:
                values[name] = _three_numbers(f"{key}.{name}", values[name], name == "std")
        values["kwargs"] = dict(values.get("kwargs") or {})
        keys = dict(key=key, weights_key=f"{key}.weights", embedding_key=f"{key}.embedding")
        spec = cls(**values, **keys)
        spec.check()
        return spec

    @classmethod
    def short_form(
        cls,
        backbone: str,
        checkpoint: str | None,
        backbone_kwargs: dict | None = None,
        embedding: str = "auto",
        embedding_key: str = f"{MODEL}.teacher.embedding",
    ) -> TeacherSpec:
        """The spec of the old arguments ``teacher_backbone``, ``teacher_checkpoint`` and
        ``teacher_backbone_kwargs`` (messages name them; ``embedding_key`` names the
        method's own embedding argument, e.g. ReKD's ``teacher_embedding``)."""
        spec = cls(
            backbone, checkpoint or None, embedding=embedding, kwargs=dict(backbone_kwargs or {}),
            key=f"{MODEL}.teacher_backbone", weights_key=f"{MODEL}.teacher_checkpoint",
            embedding_key=embedding_key,
        )  # fmt: skip
        spec.check()
        return spec

    @classmethod
    def from_arguments(
        cls,
        teacher: Mapping[str, Any] | None,
        short_form: Mapping[str, Any],
        defaults: Mapping[str, Any],
        embedding_key: str = f"{MODEL}.teacher.embedding",
    ) -> TeacherSpec:
        """The spec a method's arguments give: ``teacher`` (its ``teacher:`` mapping), or the
        short form (``teacher_backbone``, ``teacher_checkpoint``, ``teacher_backbone_kwargs``
        and a method's own, e.g. ReKD's ``teacher_embedding``), by argument name.

        Raises:
            ConfigError: Both forms given (a short-form argument away from its default in
                ``defaults``), or what ``from_config`` refuses.
        """
        if teacher is None:
            return cls.short_form(
                short_form["teacher_backbone"], short_form["teacher_checkpoint"],
                short_form.get("teacher_backbone_kwargs"),
                short_form.get("teacher_embedding", "auto"), embedding_key,
            )  # fmt: skip
        given = [name for name, value in short_form.items() if value != defaults.get(name)]
        if given:
            raise ConfigError(
                f"{MODEL}.teacher and {', '.join(f'{MODEL}.{name}' for name in given)} both "
                "give the teacher: use one form, teacher (architecture, weights, network, "
                "embedding, ...) or the short form (teacher_backbone, teacher_checkpoint, "
                "teacher_backbone_kwargs)"
            )
        return cls.from_config(teacher)

    def check(self) -> None:
        """Raises ``ConfigError`` for a value out of range, naming its key."""
        if not isinstance(self.architecture, str) or not self.architecture:
            raise ConfigError(
                f"{self.key}.architecture is required: a distill backbone (resnet20), "
                "torchvision:<model> or timm:<model>"
            )
        for name, choices in (("network", NETWORKS), ("embedding", EMBEDDINGS)):
            if getattr(self, name) not in choices:
                raise ConfigError(
                    f"{self.key}.{name}={getattr(self, name)!r}; valid: {', '.join(choices)}"
                )
        if (self.mean is None) != (self.std is None):
            raise ConfigError(f"{self.key}: give mean and std together (or neither)")
        size = self.image_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ConfigError(f"{self.key}.image_size={size!r}; valid: an integer >= 1 or null")
        if not isinstance(self.in_checkpoint, bool):
            raise ConfigError(f"{self.key}.in_checkpoint={self.in_checkpoint!r}; valid: a bool")
        if self.weights is not None and not isinstance(self.weights, str):
            raise ConfigError(f"{self.weights_key}={self.weights!r}; valid: a name or a path")

    @property
    def library(self) -> Literal["distill", "torchvision", "timm"]:
        """Who builds the architecture."""
        if self.architecture.startswith(TORCHVISION):
            return "torchvision"
        return "timm" if self.architecture.startswith(TIMM) else "distill"

    @property
    def model_name(self) -> str:
        """The architecture without its library prefix."""
        return self.architecture.split(":", 1)[1] if ":" in self.architecture else self.architecture

    @property
    def weights_kind(self) -> Literal["none", "torchvision", "timm", "file"]:
        """``none``, a ``torchvision`` weights name, timm's hub (``timm``) or a ``file``."""
        if not self.weights:
            return "none"
        if self.library == "torchvision" and TORCHVISION_WEIGHTS.fullmatch(self.weights):
            return "torchvision"
        if self.library == "timm" and self.weights == "pretrained":
            return "timm"
        return "file"

    def resolve_embedding(self, default: str, allowed: Sequence[str], method: str) -> TeacherSpec:
        """The spec with ``auto`` replaced by the method's ``default`` embedding.

        Raises:
            ConfigError: An embedding ``method`` cannot read (the message names the valid).
        """
        embedding = default if self.embedding == "auto" else self.embedding
        if embedding not in allowed:
            raise ConfigError(
                f"{self.key}.embedding={self.embedding!r}: {method} reads the teacher's "
                f"{' or '.join(allowed)}; valid: auto, {', '.join(allowed)}"
            )
        return dataclasses.replace(self, embedding=embedding)

    def to_config(self) -> dict[str, Any]:
        """The spec as plain values (what a checkpoint records)."""
        config = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in _INTERNAL
        }
        for name in ("mean", "std"):
            if config[name] is not None:
                config[name] = list(config[name])
        config["kwargs"] = dict(config["kwargs"])
        return config


_INTERNAL = ("key", "weights_key", "embedding_key")


def _three_numbers(key: str, value: object, positive: bool) -> tuple[float, float, float]:
    values = tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else ()
    low = 0.0 if positive else -float("inf")
    if len(values) != 3 or not all(is_number(v) and v > low for v in values):
        valid = "three numbers > 0" if positive else "three numbers"
        raise ConfigError(f"{key}={value!r}; valid: {valid} (one per RGB channel) or null")
    return tuple(float(v) for v in values)
