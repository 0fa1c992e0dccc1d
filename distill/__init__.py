"""distill: knowledge distillation and self-supervised distillation on PyTorch Lightning."""

__version__ = "0.1.0"
