"""torchvision's and timm's classification networks as feature extractors, by prefixed name:
``create_backbone("torchvision:resnet50")``, ``create_backbone("timm:convnext_tiny")``.

Built with random weights (a teacher's weights come from ``distill.teachers``, which reads
them through torchvision's and timm's own APIs). What this adds to the libraries: the
classifier comes off, so ``forward`` gives the pooled embedding ``[B, num_features]`` as every
distill backbone does, and ``classifier_key`` records where the classifier was in the full
model's state dict (``fc``, ``classifier.6``, ``head``), so that a full model's weights can be
split into the backbone's and the classifier's.

timm is an optional extra (``pip install -e '.[timm]'``), imported only when a ``timm:`` name
is built.
"""

from __future__ import annotations

import difflib
from types import ModuleType

from torch import nn

from distill.errors import ConfigError

TORCHVISION = "torchvision:"
TIMM = "timm:"
TIMM_INSTALL = "pip install -e '.[timm]'"


def is_external(name: str) -> bool:
    """Whether ``name`` names a torchvision or timm network (``torchvision:...``, ``timm:...``)."""
    return name.startswith((TORCHVISION, TIMM))


def create_external(name: str, **kwargs) -> nn.Module:
    """The feature extractor ``name`` (``torchvision:<model>`` or ``timm:<model>``).

    ``kwargs`` go to ``torchvision.models.get_model`` or ``timm.create_model``.

    Raises:
        ConfigError: An unknown model (the message names the closest ones), an argument the
            model does not take, or timm not installed (the message names the pip command).
    """
    if name.startswith(TORCHVISION):
        return torchvision_backbone(name.removeprefix(TORCHVISION), **kwargs)
    return timm_backbone(name.removeprefix(TIMM), **kwargs)


def import_timm() -> ModuleType:
    """timm, or one message naming the pip command that installs it."""
    try:
        import timm
    except ImportError as error:
        raise ConfigError(
            f"timm models need the timm extra: {TIMM_INSTALL} (timm>=1.0, safetensors)"
        ) from error
    return timm


def _unknown(library: str, name: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"closest: {', '.join(close)}" if close else f"{len(known)} models are available"
    return ConfigError(f"{library} has no classification model {name!r} ({hint})")


def torchvision_backbone(name: str, **kwargs) -> nn.Module:
    """torchvision's classification model ``name`` with its last linear layer replaced by
    ``nn.Identity``: the embedding is that layer's input (``fc`` of a ResNet, ``classifier.6``
    of a VGG, ``heads.head`` of a ViT), ``num_features`` its width."""
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        raise _unknown("torchvision", name, known)
    try:
        model = torchvision.models.get_model(name, weights=None, **kwargs)
    except TypeError as error:
        raise ConfigError(f"torchvision model {name!r}: {error}") from error
    linears = [(key, m) for key, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(
            f"torchvision model {name!r} has no linear classifier to take off (its classifier "
            "is a convolution); choose another model"
        )
    key, classifier = linears[-1]  # torchvision registers the output layer last
    parent, _, attribute = key.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attribute, nn.Identity())
    model.num_features = classifier.in_features
    model.classifier_key = key
    return model


def timm_backbone(name: str, **kwargs) -> nn.Module:
    """timm's model ``name`` built with ``num_classes=0`` (timm's own way of taking the
    classifier off: ``forward`` gives the pooled pre-logits embedding). ``timm_name`` and
    ``timm_kwargs`` let ``distill.teachers`` build it again through timm's pretrained-weights
    mechanism."""
    timm = import_timm()
    if not timm.is_model(name):
        raise _unknown("timm", name, timm.list_models())
    if "num_classes" in kwargs:  # timm's own argument, which distill sets to take the head off
        raise ConfigError(
            f"timm model {name!r}: num_classes is not an argument of a backbone (its classifier "
            "is taken off); a teacher's classifier comes with its weights (embedding: logits, "
            "as many classes as model.init_args.num_classes)"
        )
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except TypeError as error:
        raise ConfigError(f"timm model {name!r}: {error}") from error
    # The width of forward_head(pre_logits=True), which some models widen past num_features.
    model.num_features = getattr(model, "head_hidden_size", None) or model.num_features
    classifier = model.pretrained_cfg.get("classifier")
    model.classifier_key = classifier if isinstance(classifier, str) or not classifier else None
    model.timm_name, model.timm_kwargs = name, dict(kwargs)
    # A ViT's one convolution cuts patches that are reshaped to tokens (see to_channels_last).
    model.prefers_channels_last = not hasattr(model, "patch_embed")
    return model
