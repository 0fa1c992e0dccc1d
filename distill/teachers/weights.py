"""When a teacher's weights are read, where from, and whether the student's checkpoints hold
them."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from distill.backbones.external import import_timm
from distill.errors import ConfigError
from distill.modules.weights import resolve_checkpoint
from distill.teachers.inputs import TeacherInputs
from distill.teachers.layouts import Found, LeftOut, Request, find_network, read_weights_file
from distill.teachers.report import LoadReport
from distill.teachers.spec import TeacherSpec

if TYPE_CHECKING:
    import lightning as L
    from lightning.pytorch.strategies import Strategy

#: ``fill(found, source) -> (tensors loaded by part, key groups left out, notes)``.
Fill = Callable[[Found, str], tuple[dict[str, int], list[LeftOut], list[str]]]

#: Layouts whose networks were trained on ImageNet-normalised images.
IMAGENET_FORMATS = ("MoCo v1/v2 (official)", "MoCo v3 (official)", "DINO (official)",
                    "SwAV (official)", "torchvision weights")  # fmt: skip
#: The checkpoint entry that records a teacher (its spec; the SHA-256 of one left out).
RECORD = "teacher"


def weights_digest(module: nn.Module, parts: tuple[str, ...] = ("",)) -> str:
    """SHA-256 of the tensors of ``module``'s state dict under ``parts``: names, dtypes,
    shapes and bytes (in the standard memory layout, so channels-last weights hash alike)."""
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        if key.startswith(parts):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class TeacherWeights:
    """Puts the spec's weights into the teacher when a run needs them.

    They are not read when the model is built: a student's checkpoint holds its teacher, so
    a resumed fit, ``distill eval``, ``distill export`` and ``load_from_checkpoint`` must not
    need the teacher's file, which may be gone or hold another run by now. The method calls
    ``load_unless_given`` at the start of fit and of validation, after Lightning restored
    any checkpoint: the weights are read only when no state dict has filled the teacher since
    it was built. Python code using the teacher outside a trainer calls ``load()`` first.
    Under DDP every rank loads the file rank 0 resolved (a run directory that gains a run
    while the ranks start still gives every rank the same teacher). Every load logs one
    ``LoadReport`` (rank 0).

    With ``in_checkpoint: false`` (a frozen teacher only) the method's checkpoints leave the
    teacher's weights out (``on_save_checkpoint``) and record the spec and the weights'
    SHA-256 instead; restoring such a checkpoint lets the teacher's keys be missing
    (``on_load_checkpoint``), loads the teacher from the spec again at the start of the run
    and refuses weights whose SHA-256 differs (the file changed since).

    Args:
        teacher: The network the weights go to.
        spec: Where they come from.
        fill: Loads the network a layout found into ``teacher`` (``distill.teachers.build``).
        inputs: What the teacher is fed (for the report).
        paired: Ask layouts for the key encoder that goes with the network (a momentum
            encoder's).
        needs_classifier: The teacher reads logits (timm's hub weights keep their classifier).
        weight_parts: The keys of ``teacher``'s state dict that are its weights (ReKD's
            teacher also holds a key queue, which is state of the run, never left out).
        initialisation: What the teacher holds without weights, for the log.
    """

    def __init__(
        self,
        teacher: nn.Module,
        spec: TeacherSpec,
        fill: Fill,
        inputs: TeacherInputs,
        paired: bool = False,
        needs_classifier: bool = False,
        weight_parts: tuple[str, ...] = ("",),
        initialisation: str = "random initialisation",
    ) -> None:
        self.teacher = teacher
        self.spec = spec
        self.fill = fill
        self.inputs = inputs
        self.paired = paired
        self.needs_classifier = needs_classifier
        self.weight_parts = weight_parts
        #: Where the teacher's weights came from; ``None`` until they are in place.
        self.source: str | None = None if spec.weights else initialisation
        #: The last load's report.
        self.report: LoadReport | None = None
        self._digest: str | None = None
        self._record: dict | None = None  # a checkpoint's record of a teacher left out of it
        self._restored = False
        self._logged = False
        self._owner_hooked = False
        teacher.register_load_state_dict_pre_hook(self._mark_given)

    def _mark_given(self, module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
        if any(key.startswith(tuple(prefix + p for p in self.weight_parts)) for key in state_dict):
            self.source, self._restored, self._digest = "the weights in a state dict", True, None

    def load(self, strategy: Strategy | None = None) -> LoadReport:
        """Reads the spec's weights into the teacher now, logs and returns the report.

        Args:
            strategy: The trainer's strategy: every rank takes the file rank 0 resolved.

        Raises:
            ConfigError: No weights are set, the file is missing or unreadable, its weights
                do not fit, or they are not the ones a restored checkpoint recorded (the
                message starts with the spec's ``weights`` key).
        """
        spec = self.spec
        if spec.weights_kind == "none":
            raise ConfigError(f"{spec.weights_key} is not set: nothing to load")
        try:
            found, source = self._read(strategy)
            loaded, left_out, notes = self.fill(found, source)
        except ConfigError as error:
            raise ConfigError(f"{spec.weights_key}: {error}") from error
        self._digest = weights_digest(self.teacher, self.weight_parts)
        self._check_record(source)
        notes = [*notes, *self._input_notes(found)]
        self.report = LoadReport(
            spec.architecture, source, found.format, found.network, loaded, left_out,
            self.inputs.describe(), found.others, notes,
        )  # fmt: skip
        self.source = f"{found.network} of {source} ({found.format})"
        self._restored = False
        rank_zero_info(str(self.report))
        return self.report

    def _read(self, strategy: Strategy | None) -> tuple[Found, str]:
        """The network the spec names, and where it came from."""
        spec = self.spec
        if spec.weights_kind == "torchvision":
            weights = torchvision_weights(spec)
            source = f"torchvision's {weights} ({weights.url})"
            request = Request(spec.network, self.paired, source)
            try:
                state = weights.get_state_dict(progress=False, check_hash=True)
            except Exception as error:  # no network and no cached file, a bad download, ...
                raise ConfigError(
                    f"torchvision cannot get {weights} ({type(error).__name__}: {error}); "
                    "without internet, put the file in torch's hub cache "
                    f"({torch.hub.get_dir()}/checkpoints) or give it as a local file"
                ) from error
            found = find_network(state, request)
            found.format = "torchvision weights"
            return found, source
        if spec.weights_kind == "timm":
            source = f"timm's pretrained {spec.model_name} (hub cache)"
            return self._timm_hub(Request(spec.network, self.paired, source)), source
        path = resolve_checkpoint(spec.weights)
        if strategy is not None:
            path = strategy.broadcast(path, src=0)
        return find_network(read_weights_file(path), Request(spec.network, self.paired, path)), path

    def _timm_hub(self, request: Request) -> Found:
        spec, timm = self.spec, import_timm()
        classes = {} if self.needs_classifier else {"num_classes": 0}  # timm drops the classifier
        try:
            model = timm.create_model(spec.model_name, pretrained=True, **classes, **spec.kwargs)
        except Exception as error:  # offline without a cached file, a gated repository, ...
            raise ConfigError(
                f"timm cannot get the pretrained weights of {spec.model_name} "
                f"({type(error).__name__}: {error}); download them once (timm's hub cache is "
                "then used offline) or give a local file"
            ) from error
        found = find_network(model.state_dict(), request)
        found.format = "timm pretrained weights"
        return found

    def _check_record(self, source: str) -> None:
        record = self._record
        if record is None:
            return
        if record.get("sha256") and record["sha256"] != self._digest:
            raise ConfigError(
                f"{self.spec.weights_key}: the teacher loaded from {source} is not the one the "
                f"restored checkpoint was trained with: SHA-256 {self._digest[:16]}... now, "
                f"{record['sha256'][:16]}... then (loaded from {record.get('source')}). Its file "
                "changed since, or the spec names other weights: give the weights that run "
                f"used (its teacher spec: {record.get('spec')})"
            )
        self._record = None

    def _input_notes(self, found: Found) -> list[str]:
        if not found.format.startswith(IMAGENET_FORMATS) or self.inputs.mean is not None:
            return []
        return [
            f"{found.format} networks were trained on ImageNet-normalised images, but this "
            "teacher is fed the student's statistics; set teacher.mean, teacher.std (and "
            "image_size) to the ImageNet ones, or use a torchvision: architecture, which takes "
            "them from torchvision's metadata"
        ]

    def load_unless_given(self, trainer: L.Trainer) -> None:
        """``load`` unless the teacher has its weights; says where they came from, once."""
        if self.source is None:
            self.load(trainer.strategy)
        if self._logged:
            return
        self._logged = True
        if self.report is not None and not self._restored:
            return  # load() reported it
        source = self.source
        if self._restored and trainer.ckpt_path:
            source = f"the weights restored from {trainer.ckpt_path}"
        if self._restored and self.spec.weights:
            source += f" ({self.spec.weights_key} {self.spec.weights!r} not read)"
        rank_zero_info(f"Teacher: {source}")

    # --- the student's checkpoints ---

    def _is_weight(self, key: str, prefix: str) -> bool:
        return key.startswith(tuple(prefix + part for part in self.weight_parts))

    def on_save_checkpoint(self, checkpoint: dict, prefix: str = "teacher.") -> None:
        """Records the spec in ``checkpoint``; with ``in_checkpoint: false`` also the weights'
        SHA-256 and source, and drops the teacher's weights (keys under ``prefix``)."""
        record: dict = {"spec": self.spec.to_config(), "in_checkpoint": self.spec.in_checkpoint}
        if not self.spec.in_checkpoint:
            if self._digest is None:
                self._digest = weights_digest(self.teacher, self.weight_parts)
            source = self.report.source if self.report else self.spec.weights
            record.update(sha256=self._digest, source=source)
            state = checkpoint["state_dict"]
            for key in [key for key in state if self._is_weight(key, prefix)]:
                del state[key]
        checkpoint[RECORD] = record

    def on_load_checkpoint(
        self, owner: nn.Module, checkpoint: dict, prefix: str = "teacher."
    ) -> None:
        """Before ``owner`` loads ``checkpoint``: a teacher the checkpoint left out is loaded
        from the spec again at the start of the run (and checked against the recorded
        SHA-256); its keys may be missing from the state dict."""
        record = checkpoint.get(RECORD)
        state = checkpoint.get("state_dict") or {}
        if any(self._is_weight(key, prefix) for key in state):
            return
        if not isinstance(record, dict) or record.get("in_checkpoint") is not False:
            return  # no record: a strict load names the missing keys
        self._record, self.source, self._restored, self._logged = record, None, False, False
        if not self._owner_hooked:
            self._owner_hooked = True
            self._prefix = prefix
            owner.register_load_state_dict_post_hook(self._allow_missing)

    def _allow_missing(self, module: nn.Module, incompatible) -> None:
        if self._record is not None:
            missing = incompatible.missing_keys
            missing[:] = [key for key in missing if not self._is_weight(key, self._prefix)]


def torchvision_weights(spec: TeacherSpec):
    """The torchvision weights enum member ``spec.weights`` names for its model.

    Raises:
        ConfigError: No such weights for the model (the message lists its weights).
    """
    from torchvision.models import get_model_weights

    try:
        enum = get_model_weights(spec.model_name)
    except (KeyError, ValueError) as error:
        raise ConfigError(f"torchvision has no weights for {spec.model_name}: {error}") from error
    enum_name, _, member = spec.weights.rpartition(".")
    if (not enum_name or enum_name == enum.__name__) and member in enum.__members__:
        return enum[member]
    raise ConfigError(
        f"{spec.weights_key}={spec.weights!r}: torchvision's {spec.model_name} has the weights "
        f"{', '.join(enum.__members__)} (or a file path)"
    )
