"""The one report every teacher load prints: what was read, from where, and what was not."""

from __future__ import annotations

from dataclasses import dataclass, field

from distill.teachers.layouts import LeftOut


@dataclass
class LoadReport:
    """What a teacher load did.

    Attributes:
        architecture: The teacher's architecture (``torchvision:resnet50``).
        source: Where the weights came from (a file, torchvision's weights name, timm's hub).
        format: The layout detected (``MoCo v1/v2 (official)``, ``state dict``, ...).
        network: The network taken from the file.
        loaded: Tensors loaded, by part of the teacher (``backbone``, ``classifier``, ...).
        left_out: Key groups deliberately not loaded: ``(pattern, count, why)``.
        inputs: What the teacher is fed (``TeacherInputs.describe``).
        others: Other networks the file holds (``network:`` values).
        notes: Anything else the user should know.
    """

    architecture: str
    source: str
    format: str
    network: str
    loaded: dict[str, int]
    left_out: list[LeftOut] = field(default_factory=list)
    inputs: str = ""
    others: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def num_loaded(self) -> int:
        """Tensors loaded in all."""
        return sum(self.loaded.values())

    def __str__(self) -> str:
        network = self.network
        if self.others:
            network += f"; also in the file: {', '.join(self.others)} (choose with teacher.network)"
        parts = ", ".join(f"{part} {count}" for part, count in self.loaded.items())
        left_out = "; ".join(f"{pattern} ({count}): {why}" for pattern, count, why in self.left_out)
        lines = [
            f"Teacher {self.architecture} from {self.source}",
            f"  format: {self.format}",
            f"  network: {network}",
            f"  loaded: {self.num_loaded} tensors ({parts})",
            f"  left out: {left_out or 'nothing'}",
            f"  inputs: {self.inputs}",
        ]
        return "\n".join(lines + [f"  note: {note}" for note in self.notes])
