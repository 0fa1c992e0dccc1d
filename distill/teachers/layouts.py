"""Weights files from anywhere: which layout a file has and the network it holds.

Each layout is one function that takes the network asked for (``network: auto``, ``teacher``,
``student``, ``query``, ``key``) out of the file, in the network's own key names (a
torchvision ResNet's ``conv1.weight``, a timm ViT's ``blocks.0.attn.qkv.weight``), and says
what it left out. ``LAYOUTS`` tries them in order; the first whose ``detect`` accepts the
file reads it:

- DINO (official): top-level ``teacher`` and ``student`` dicts; ``auto`` takes the teacher
  (the EMA network DINO evaluates).
- MoCo v1/v2 (official): ``module.encoder_q.*`` and ``module.encoder_k.*``; ``auto`` takes
  the query encoder (what MoCo's ``main_lincls.py`` evaluates).
- MoCo v3 (official): ``module.base_encoder.*`` and ``module.momentum_encoder.*``; ``auto``
  takes the base (query) encoder.
- distill checkpoint: ``student.backbone.*`` or ``teacher.backbone.*``; ``auto`` takes DINO's
  and ReKD's teacher, the student of every other method.
- lightly / solo-learn: a Lightning checkpoint with ``backbone.*``; ``auto`` takes the online
  ``backbone`` (lightly's DINO: its ``teacher_backbone``).
- SwAV (official): ``module.*`` with ``prototypes``; one network.
- state dict: anything else (DDP's ``module.`` stripped), ``.safetensors`` files and distill
  exports included; one network.

Heads are told apart by their keys: a linear classifier (``weight``, ``bias``) can give the
teacher's logits; a MoCo-v2 projection head (``Linear, ReLU, Linear``: MoCo v2's ``fc.0``,
``fc.2``, lightly's ``layers.0``, ``layers.2``, solo-learn's ``projector.0``,
``projector.2``) its ``head`` embedding; any other head (DINO's, MoCo v3's and SwAV's
projectors, predictors, prototypes) is left out.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from distill.checkpoint_io import load_torch_file
from distill.errors import ConfigError

#: A group of keys left out: (key pattern, number of tensors, why).
LeftOut = tuple[str, int, str]


@dataclass
class Network:
    """One network of a file, in its own key names.

    Attributes:
        backbone: The feature extractor's tensors (a classifier's keys included for plain
            torchvision/timm state dicts until ``Network.split_classifier`` takes them).
        classifier: A linear classifier's ``weight`` and ``bias``, if the file has one.
        projection: A MoCo-v2 projection head in lightly's names (``layers.0.weight``, ...).
        other_head: Keys of a head that is neither (left out).
        where: The network's key prefix in the file, for the report (``module.encoder_q.``).
        classifier_where: Likewise for the classifier (``fc.``, ``classifier.``).
        projection_where: Likewise for the projection head.
    """

    backbone: dict[str, Tensor]
    classifier: dict[str, Tensor] = field(default_factory=dict)
    projection: dict[str, Tensor] = field(default_factory=dict)
    other_head: dict[str, Tensor] = field(default_factory=dict)
    where: str = ""
    classifier_where: str = ""
    projection_where: str = ""

    def split_classifier(self, classifier_key: str | None) -> Network:
        """Moves a full model's classifier (``{classifier_key}.weight``, ``.bias``) out of
        the backbone; nothing to do without a key or when the file has no classifier."""
        if not classifier_key or self.classifier:
            return self
        prefix = f"{classifier_key}."
        classifier = sub(self.backbone, prefix)
        if set(classifier) <= {"weight", "bias"} and "weight" in classifier:
            self.backbone = {k: v for k, v in self.backbone.items() if not k.startswith(prefix)}
            self.classifier, self.classifier_where = classifier, f"{self.where}{prefix}"
        return self


@dataclass
class Found:
    """What a layout read from a file.

    Attributes:
        format: The layout's name for the report (``MoCo v1/v2 (official)``).
        network: Which network was taken, for the report.
        main: That network.
        key: The momentum (key) encoder paired with it, when asked for and in the file.
        left_out: Key groups not taken and why (heads and other networks are added by the
            loader according to what the method reads).
        others: The other ``network:`` values the file offers.
    """

    format: str
    network: str
    main: Network
    key: Network | None = None
    left_out: list[LeftOut] = field(default_factory=list)
    others: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Request:
    """What the loader asks a layout for.

    Attributes:
        network: ``auto``, ``teacher``, ``student``, ``query`` or ``key``.
        paired: Also the key encoder that goes with the network (a momentum-encoder teacher,
            ReKD's), when ``network`` is ``auto`` and the file has one.
        source: The file, for messages (and an export's sidecar).
    """

    network: str = "auto"
    paired: bool = False
    source: str = ""


def sub(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries under ``prefix``, with the prefix stripped."""
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


def _without(state: dict[str, Tensor], *prefixes: str) -> dict[str, Tensor]:
    return {key: value for key, value in state.items() if not key.startswith(prefixes)}


def _count(state: dict[str, Tensor], prefix: str) -> int:
    return sum(key.startswith(prefix) for key in state)


def _has(state: dict[str, Tensor], prefix: str) -> bool:
    return any(key.startswith(prefix) for key in state)


def _tensors(obj: object) -> dict[str, Tensor] | None:
    """``obj`` as a state dict (``torch.compile``'s ``_orig_mod.`` dropped), if it is one."""
    if not isinstance(obj, dict) or not obj:
        return None
    if not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        return None
    return {key.replace("_orig_mod.", ""): value for key, value in obj.items()}


def _state(saved: dict) -> dict[str, Tensor] | None:
    """The state dict of a file: under ``state_dict`` or ``model``, or the file itself."""
    for name in ("state_dict", "model"):
        state = _tensors(saved.get(name))
        if state is not None:
            return state
    return _tensors(saved)


def _strip_module(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Without DDP's ``module.`` prefix when every key has it."""
    if state and all(key.startswith("module.") for key in state):
        return sub(state, "module.")
    return state


def _head(network: Network, state: dict[str, Tensor], prefix: str, root: str = "") -> Network:
    """Sorts the head under ``prefix`` of ``state`` into classifier, projection or other
    (``root`` is where ``state`` is in the file, for the report)."""
    head = sub(state, prefix)
    where = f"{root}{prefix}"
    if not head:
        return network
    if set(head) <= {"weight", "bias"} and "weight" in head:
        network.classifier, network.classifier_where = head, where
        return network
    mlp = {f"layers.{k}": v for k, v in head.items()} if not _has(head, "layers.") else head
    if set(mlp) == {f"layers.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}:
        network.projection, network.projection_where = mlp, where
    else:
        network.other_head = head
        network.projection_where = where
    return network


def _only(request: Request, what: str) -> None:
    """Refuses a ``network:`` other than ``auto`` for a file of one network."""
    if request.network != "auto":
        raise ConfigError(
            f"{request.source} is {what}, one network: network={request.network!r} cannot "
            "choose among others; valid: auto"
        )


def _choose(request: Request, choices: dict[str, str], what: str, auto: str) -> str:
    """The ``network:`` value ``request`` names among ``choices`` (value -> description)."""
    choice = auto if request.network == "auto" else request.network
    if choice not in choices:
        valid = ", ".join(f"{name} ({description})" for name, description in choices.items())
        raise ConfigError(
            f"{request.source} is {what}: network={request.network!r} is not in it; "
            f"valid: auto (= {auto}), {valid}"
        )
    return choice


# --- DINO (facebookresearch/dino main_dino.py checkpoints) ---------------------------------


def is_dino(saved: dict) -> bool:
    return _tensors(saved.get("teacher")) is not None and _tensors(saved.get("student")) is not None


def dino(saved: dict, request: Request) -> Found:
    """DINO's ``checkpoint.pth``: the EMA ``teacher`` (what DINO evaluates) unless the
    ``student`` is asked for; ``module.`` (the DDP student's) and ``backbone.`` stripped,
    the DINO head left out."""
    choices = {"teacher": "the EMA teacher DINO evaluates", "student": "the DINO student"}
    choice = _choose(request, choices, "a DINO checkpoint", "teacher")
    other = "student" if choice == "teacher" else "teacher"
    state = _strip_module(_tensors(saved[choice]))
    prefix = "module.backbone." if _has(_tensors(saved[choice]), "module.") else "backbone."
    network = Network(sub(state, "backbone."), where=f"{choice}.{prefix}")
    network.other_head = sub(state, "head.")
    network.projection_where = f"{choice}.{prefix.replace('backbone.', 'head.')}"
    left_out = [(f"{other}.*", len(saved[other]), f"the {other}")]
    rest = _without(state, "backbone.", "head.")
    if rest:
        left_out.append((f"{choice}.{', '.join(sorted(rest))}", len(rest), "not a network weight"))
    return Found("DINO (official)", f"{choice} ({choices[choice]})", network, None, left_out,
                 [other])  # fmt: skip


# --- MoCo v1/v2 (facebookresearch/moco) ------------------------------------------------------


def _moco_prefix(state: dict[str, Tensor], name: str) -> str | None:
    for prefix in (f"module.{name}.", f"{name}."):
        if _has(state, prefix):
            return prefix
    return None


def is_moco(saved: dict) -> bool:
    state = _state(saved)
    return state is not None and _moco_prefix(state, "encoder_q") is not None


def _query_and_key(
    state: dict[str, Tensor],
    request: Request,
    names: tuple[str, str],
    what: str,
    encoder: Callable[[str], Network],
) -> tuple[Network, Network | None, list[LeftOut], list[str], str, list[str]]:
    """The query or the key encoder of a MoCo checkpoint (under ``names``, e.g. ``encoder_q``
    and ``encoder_k``), read by ``encoder(prefix)``; the key encoder as its pair when asked
    for. Returns ``(main, pair, left_out, other keys, network, others)``."""
    prefixes = {"query": _moco_prefix(state, names[0]), "key": _moco_prefix(state, names[1])}
    choices = {name: names[i] for i, name in enumerate(prefixes) if prefixes[name]}
    choice = _choose(request, choices, what, "query")
    main, pair = encoder(prefixes[choice]), None
    if request.paired and request.network == "auto" and prefixes["key"]:
        pair = encoder(prefixes["key"])
    left_out = [
        (f"{prefix}*", _count(state, prefix), f"the {name} encoder")
        for name, prefix in prefixes.items()
        if prefix and name != choice and pair is None
    ]
    rest = sorted(k for k in state if not k.startswith(tuple(p for p in prefixes.values() if p)))
    network = f"{choice} encoder ({prefixes[choice]}*)" + (" with its key encoder" if pair else "")
    return main, pair, left_out, rest, network, [name for name in choices if name != choice]


def moco(saved: dict, request: Request) -> Found:
    """MoCo v1/v2's ``checkpoint_0199.pth.tar``: ``encoder_q`` (query, the network MoCo's
    ``main_lincls.py`` evaluates) or ``encoder_k`` (key); their ``fc`` is MoCo's projection
    (v2: a MoCo-v2 MLP head; v1: one linear layer, left out); the queue is left out."""
    state = _state(saved)

    def encoder(prefix: str) -> Network:
        weights = sub(state, prefix)
        network = Network(_without(weights, "fc."), where=prefix)
        return _v1(network, weights) if _v1_fc(weights) else _head(network, weights, "fc.", prefix)

    names, what = ("encoder_q", "encoder_k"), "a MoCo checkpoint (a query and a key encoder)"
    main, pair, left_out, rest, network, others = _query_and_key(state, request, names, what,
                                                                 encoder)  # fmt: skip
    if rest:
        left_out.append((", ".join(rest), len(rest), "the queue"))
    return Found("MoCo v1/v2 (official)", network, main, pair, left_out, others)


def _v1_fc(weights: dict[str, Tensor]) -> bool:
    return set(sub(weights, "fc.")) == {"weight", "bias"}


def _v1(network: Network, weights: dict[str, Tensor]) -> Network:
    """MoCo v1's ``fc`` is its 128-d projection, not a classifier: left out."""
    network.other_head = sub(weights, "fc.")
    network.projection_where = f"{network.where}fc."
    return network


# --- MoCo v3 (facebookresearch/moco-v3) ------------------------------------------------------


def is_moco_v3(saved: dict) -> bool:
    state = _state(saved)
    return state is not None and _moco_prefix(state, "base_encoder") is not None


def moco_v3(saved: dict, request: Request) -> Found:
    """MoCo v3's checkpoints: ``base_encoder`` (query) or ``momentum_encoder`` (key); their
    projectors (a ResNet's ``fc``, a ViT's ``head``) and the ``predictor`` are left out."""
    state = _state(saved)

    def encoder(prefix: str) -> Network:
        weights = sub(state, prefix)
        head = "fc." if _has(weights, "fc.") else "head."
        network = Network(_without(weights, head), where=prefix)
        network.other_head, network.projection_where = sub(weights, head), f"{prefix}{head}"
        return network

    names = ("base_encoder", "momentum_encoder")
    main, pair, left_out, rest, network, others = _query_and_key(
        state, request, names, "a MoCo v3 checkpoint", encoder
    )
    if rest:
        predictor = _moco_prefix(state, "predictor")
        pattern = f"{predictor}*" if predictor else ", ".join(rest)
        left_out.append((pattern, len(rest), "MoCo v3's predictor"))
    return Found("MoCo v3 (official)", network, main, pair, left_out, others)


# --- distill's own checkpoints ---------------------------------------------------------------


def is_distill(saved: dict) -> bool:
    state = _state(saved)
    return state is not None and (
        _has(state, "student.backbone.") or _has(state, "teacher.backbone.")
    )


def _distill_method(saved: dict, state: dict[str, Tensor]) -> str:
    """The method class of a distill checkpoint: from its hyper-parameters, else its keys."""
    class_path = str((saved.get("hyper_parameters") or {}).get("_class_path") or "")
    if class_path:
        return class_path.rsplit(".", 1)[-1]
    if _has(state, "teacher.key_backbone."):
        return "ReKD"
    if _has(state, "teacher.head.last_layer."):
        return "DINO"
    return "MoCo" if _has(state, "student.key_backbone.") else "Supervised"


def distill(saved: dict, request: Request) -> Found:
    """A distill run's checkpoint (``last.ckpt``) or ``{"state_dict": model.state_dict()}``.

    ``auto`` takes DINO's EMA teacher and ReKD's teacher, and the student of every other
    method (Supervised's classifier, KD's student, MoCo's momentum encoder); ``query`` and
    ``key`` take one encoder of the momentum encoder that ``auto`` would take.
    """
    state = _state(saved)
    method = _distill_method(saved, state)
    networks = {
        name: f"{method}'s {name}" for name in ("student", "teacher") if _has(state, f"{name}.")
    }
    auto = "teacher" if method in ("DINO", "ReKD") and "teacher" in networks else "student"
    momentum = _has(state, f"{auto}.key_backbone.")
    if momentum:
        networks.update(query=f"{auto}.backbone", key=f"{auto}.key_backbone")
    choice = _choose(request, networks, f"a {method} checkpoint", auto)
    root = auto if choice in ("query", "key") else choice
    weights = sub(state, f"{root}.")
    parts = ("key_backbone.", "key_head.") if choice == "key" else ("backbone.", "head.")
    main = Network(sub(weights, parts[0]), where=f"{root}.{parts[0]}")
    main = _head(main, weights, parts[1], f"{root}.")
    pair = None
    if request.paired and choice == root and _has(weights, "key_backbone."):
        pair = Network(sub(weights, "key_backbone."), where=f"{root}.key_backbone.")
        pair = _head(pair, weights, "key_head.", f"{root}.")
    taken = [f"{root}.{p}" for p in parts]
    if pair is not None:
        taken += [f"{root}.key_backbone.", f"{root}.key_head."]
    rest = {k: v for k, v in state.items() if not k.startswith(tuple(taken))}
    left_out = _groups(rest, root)
    network = f"{networks[choice]} ({main.where}*)" + (" with its key encoder" if pair else "")
    return Found(f"distill checkpoint ({method})", network, main, pair, left_out,
                 [n for n in networks if n != choice])  # fmt: skip


#: Why the parts of the network taken from a distill checkpoint are left out, if they are.
_DISTILL_PARTS = {
    "backbone": "the query encoder",
    "head": "the query encoder's head",
    "key_backbone": "the key encoder",
    "key_head": "the key encoder's head",
    "queue": "the key queue",
}
#: Why other parts of a distill checkpoint are left out.
_DISTILL_OTHERS = {
    "student": "the student",
    "teacher": "the teacher",
    "prototypes": "ReKD's prototypes",
    "crd": "CRD's embeddings and memory banks",
}


def _groups(state: dict[str, Tensor], root: str = "") -> list[LeftOut]:
    """Left-out keys of a distill checkpoint or network, grouped: by their first two name
    parts within the network ``root`` taken (``teacher.queue.*``), else by the first."""
    groups: dict[str, int] = {}
    for key in state:
        parts = key.split(".")
        within = parts[0] == root or (not root and parts[0] in _DISTILL_PARTS)
        group = ".".join(parts[:2]) if root and within else parts[0]
        groups[group] = groups.get(group, 0) + 1
    left_out = []
    for group, count in groups.items():
        last = group.split(".")[-1]
        within = group.startswith(f"{root}.") or (not root and group in _DISTILL_PARTS)
        why = _DISTILL_PARTS.get(last, "not read") if within else None
        left_out.append((f"{group}.*", count, why or _DISTILL_OTHERS.get(group, "not read")))
    return left_out


# --- lightly and solo-learn Lightning checkpoints --------------------------------------------

#: Backbone prefixes of lightly's and solo-learn's LightningModules, by ``network:`` value.
_LIGHTNING_NETWORKS = {
    "backbone.": ("query", "student"),
    "student_backbone.": ("student",),
    "teacher_backbone.": ("teacher",),
    "momentum_backbone.": ("key", "teacher"),  # solo-learn
    "backbone_momentum.": ("key", "teacher"),  # lightly
}
#: The head beside each backbone.
_LIGHTNING_HEADS = {
    "backbone.": ("projection_head.", "projector."),
    "student_backbone.": ("student_head.",),
    "teacher_backbone.": ("teacher_head.",),
    "momentum_backbone.": ("momentum_projector.",),
    "backbone_momentum.": ("projection_head_momentum.",),
}
_DISTILL_NETWORK = ("backbone.", "head.", "key_backbone.", "key_head.", "queue.")


def _is_distill_network(state: dict[str, Tensor]) -> bool:
    """A distill ``Classifier`` or ``MomentumEncoder`` state dict (``backbone.``, ``head.``)."""
    return _has(state, "backbone.") and all(k.startswith(_DISTILL_NETWORK) for k in state)


def is_lightning(saved: dict) -> bool:
    state = _state(saved)
    if state is None or "state_dict" not in saved or _is_distill_network(state):
        return False
    return any(_has(state, prefix) for prefix in _LIGHTNING_NETWORKS)


def lightning(saved: dict, request: Request) -> Found:
    """A lightly or solo-learn checkpoint: the online ``backbone`` (what their linear
    evaluations take) unless another is asked for; lightly's DINO ``teacher_backbone`` for
    ``auto`` when present (the EMA teacher, as for DINO's own checkpoints). solo-learn's
    online ``classifier`` gives the logits; MoCo-v2 projection heads (lightly's
    ``projection_head``, solo-learn's ``projector`` of mocov2plus) the ``head`` embedding."""
    state = _state(saved)
    present = [prefix for prefix in _LIGHTNING_NETWORKS if _has(state, prefix)]
    names: dict[str, str] = {}
    for prefix in present:
        for name in _LIGHTNING_NETWORKS[prefix]:
            names.setdefault(name, prefix)
    auto_prefix = "teacher_backbone." if "teacher_backbone." in present else present[0]
    auto = _LIGHTNING_NETWORKS[auto_prefix][0]
    choice = _choose(request, {n: f"{p}*" for n, p in names.items()}, "a Lightning checkpoint",
                     auto)  # fmt: skip
    prefix = names[choice]

    def encoder(prefix: str) -> Network:
        network = Network(sub(state, prefix), where=prefix)
        for head in _LIGHTNING_HEADS[prefix]:
            if _has(state, head):
                network = _head(network, state, head)
        if prefix == "backbone." and set(sub(state, "classifier.")) == {"weight", "bias"}:
            network.classifier, network.classifier_where = sub(state, "classifier."), "classifier."
        return network

    main = encoder(prefix)
    pair = None
    key_prefix = names.get("key")
    if request.paired and request.network == "auto" and prefix == "backbone." and key_prefix:
        pair = encoder(key_prefix)
    taken = [p for p in (main.where, main.classifier_where, main.projection_where) if p]
    if pair is not None:
        taken += [p for p in (pair.where, pair.projection_where) if p]
    left_out = []
    for key_prefix in sorted({k.split(".")[0] + "." for k in state} - set(taken)):
        left_out.append((f"{key_prefix}*", _count(state, key_prefix), "not read"))
    solo = any(_has(state, p) for p in ("momentum_backbone.", "projector.", "classifier."))
    lightly = any(_has(state, p) for p in ("backbone_momentum.", "projection_head.",
                                           "student_backbone.", "teacher_backbone."))  # fmt: skip
    name = "solo-learn" if solo else "lightly" if lightly else "Lightning checkpoint (backbone.*)"
    others = [n for n in names if names[n] != prefix]
    return Found(name, f"{choice} ({prefix}*)", main, pair, left_out, others)


# --- SwAV (facebookresearch/swav) ------------------------------------------------------------


def is_swav(saved: dict) -> bool:
    state = _state(saved)
    if state is None or not all(key.startswith("module.") for key in state):
        return False
    return _has(state, "module.prototypes") or _has(state, "module.projection_head.")


def swav(saved: dict, request: Request) -> Found:
    """SwAV's released weights: ``module.`` stripped; ``projection_head`` and
    ``prototypes`` left out."""
    _only(request, "a SwAV checkpoint")
    state = sub(_state(saved), "module.")
    network = Network(_without(state, "projection_head.", "prototypes"), where="module.")
    network.other_head = sub(state, "projection_head.")
    network.projection_where = "module.projection_head."
    left_out = [("module.prototypes.*", _count(state, "prototypes"), "SwAV's prototypes")]
    return Found("SwAV (official)", "the network (module.*)", network, None, left_out)


# --- plain state dicts -----------------------------------------------------------------------


def plain(saved: dict, request: Request) -> Found:
    """A state dict of the network itself: a torchvision or timm model's (its classifier
    split off by the loader), a distill export's (with its ``.json`` sidecar), or a distill
    ``Classifier``'s or ``MomentumEncoder``'s (``backbone.``, ``head.``, ``key_backbone.``)."""
    _only(request, "a state dict")
    state = _strip_module(_state(saved))
    source = Path(request.source)
    if _is_distill_network(state):
        main = _head(Network(sub(state, "backbone."), where="backbone."), state, "head.")
        pair = None
        if request.paired and _has(state, "key_backbone."):
            pair = Network(sub(state, "key_backbone."), where="key_backbone.")
            pair = _head(pair, state, "key_head.")
        taken = ("backbone.", "head.") + (("key_backbone.", "key_head.") if pair else ())
        left_out = _groups({k: v for k, v in state.items() if not k.startswith(taken)})
        return Found("distill network state dict", "the network (backbone.*)", main, pair,
                     left_out)  # fmt: skip
    if source.suffix == ".safetensors":
        name = "safetensors state dict"
    elif source.with_suffix(".json").is_file():
        name = "distill export (with its .json sidecar)"
    else:
        name = "state dict"
    return Found(name, "the network", Network(state))


#: (detect, read) in the order they are tried; ``plain`` takes whatever is left.
LAYOUTS: list[tuple[Callable[[dict], bool], Callable[[dict, Request], Found]]] = [
    (is_dino, dino),
    (is_moco, moco),
    (is_moco_v3, moco_v3),
    (is_distill, distill),
    (is_lightning, lightning),
    (is_swav, swav),
    (lambda saved: _state(saved) is not None, plain),
]


def find_network(saved: object, request: Request) -> Found:
    """The network ``request`` asks for in a loaded weights file ``saved``.

    Raises:
        ConfigError: The file holds no state dict, or not the network asked for (the
            message names those it holds).
    """
    if isinstance(saved, dict):
        for detect, read in LAYOUTS:
            if detect(saved):
                return read(saved, request)
    kind = type(saved).__name__
    keys = ", ".join(map(str, list(saved)[:6])) if isinstance(saved, dict) else ""
    raise ConfigError(
        f"{request.source} holds no state dict (a {kind}{' with keys ' + keys if keys else ''}): "
        "expected a checkpoint or a state dict of tensors"
    )


def read_weights_file(path: str) -> object:
    """A weights file's content: ``.safetensors`` through safetensors, others through a
    weights-only ``torch.load`` (memory-mapped) that also accepts DINO's ``args``
    (an ``argparse.Namespace`` of plain values).

    Raises:
        ConfigError: Unreadable, or Python objects a weights-only load refuses (the message
            says how to save the weights alone from a file one trusts).
    """
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError as error:
            raise ConfigError(
                f"{path}: reading .safetensors needs safetensors (pip install -e '.[timm]')"
            ) from error
        try:
            return load_file(path)
        except Exception as error:
            raise ConfigError(f"{path} is not a readable .safetensors file: {error}") from error
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return load_torch_file(path, mmap=True)
    except ConfigError as error:
        if "weights-only torch.load refuses" not in str(error):
            raise
        raise ConfigError(
            f"{error}. To use its weights, save them alone from a file you trust: python -c "
            f"\"import torch; c = torch.load('{path}', weights_only=False); "
            f"torch.save(c['state_dict'], '{path}.weights.pt')\" and give that file"
        ) from error
