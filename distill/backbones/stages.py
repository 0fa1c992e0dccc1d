"""A backbone's intermediate feature maps by stage name, from the one forward pass that also
gives its embedding: ``embedding, stages = forward_stages(backbone, images, ["stage2"])``.

The names (``stage_names``), and where the maps come from:

- distill's CIFAR ResNets and WRNs: ``stem``, ``stage1`` ... ``stage3``; its VGGs and
  MobileNetV2: ``stem``, ``stage1`` ... ``stage4``. Their ``forward_stages`` methods take
  RepDistiller's ``feat`` (and ``preact``) lists; each module's docstring says which tensors.
- torchvision's ResNets (distill's ``resnet18`` and ``resnet50``, ``torchvision:resnet*``,
  ``resnext*``, ``wide_resnet*``): ``stem`` (after the first ReLU, before the max-pool) and
  ``stage1`` ... ``stage4`` (``layer1`` ... ``layer4``), read by torchvision's
  ``create_feature_extractor``.
- other ``torchvision:`` models: what ``create_feature_extractor`` takes, the node names of
  torchvision's ``get_graph_node_names`` and the modules holding them (``features.6``).
- ``timm:`` models: the modules of timm's ``feature_info`` (``act1``, ``layer3``, ``stages.2``,
  ``blocks.5``), read by timm's ``forward_intermediates``.

Each also has ``pool``: the embedding itself, ``[B, num_features]``.

``preact=True`` gives, for the stages that end in a ReLU, the tensor before it (RepDistiller's
``preact`` lists; a stem is the same either way); distill's own backbones and torchvision's
ResNets have it.
"""

from __future__ import annotations

import difflib
import weakref
from collections import Counter
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, fx, nn
from torchvision.models import ResNet
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from distill.errors import ConfigError

#: The stage name of the embedding, which every backbone has.
POOL = "pool"

_WITH_STAGES = (
    "distill's CIFAR ResNets, WRNs, VGGs, MobileNetV2, resnet18 and resnet50, and torchvision: "
    "and timm: models"
)
_WITH_PREACT = "distill's CIFAR ResNets, WRNs, VGGs, MobileNetV2 and torchvision's ResNets"

# Per backbone, built on first use: its graph node names and its feature extractors. Weak keys,
# so that a backbone's entry goes with it and is never copied, saved or moved with it.
_TORCHVISION: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()


def stage_names(backbone: nn.Module) -> list[str]:
    """The stage names ``forward_stages`` takes for ``backbone``, in network order, then ``pool``.

    Raises:
        ConfigError: A backbone without named stages (distill's ViTs).
    """
    kind = _kind(backbone)
    if kind == "distill":
        names = list(backbone.stage_names)
    elif kind == "resnet":
        names = ["stem"] + [f"stage{k}" for k in range(1, 5)]
    elif kind == "timm":
        names = [info["module"] for info in backbone.feature_info]
    else:
        names = _torchvision_entry(backbone)["nodes"]
    return [*names, POOL]


def forward_stages(
    backbone: nn.Module, images: Tensor, names: Sequence[str] = (), preact: bool = False
) -> tuple[Tensor, dict[str, Tensor]]:
    """The embedding ``backbone(images)`` and the stages ``names``, from one forward pass.

    Without a stage other than ``pool`` this is ``backbone(images)`` and nothing else: no
    extractor is built, no other module runs. With stages, each module runs as often as in
    ``backbone(images)``: the stages are read off the one pass.

    Args:
        backbone: A backbone made by ``create_backbone``.
        images: ``[B, 3, H, W]``.
        names: Stage names, from ``stage_names(backbone)``.
        preact: The stages that end in a ReLU before it (see the module docstring).

    Returns:
        The embedding ``[B, num_features]``, equal to ``backbone(images)``, and ``{name: map}``
        (``[B, C, h, w]``; ``pool`` is the embedding).

    Raises:
        ConfigError: A name the backbone does not have (the message lists those it has), or
            ``preact`` for a backbone without pre-activation stages.
    """
    names = list(names)
    wanted = [name for name in names if name != POOL]
    if not wanted:
        embedding = backbone(images)
        return embedding, ({POOL: embedding} if POOL in names else {})
    kind = _kind(backbone)
    if preact and kind not in ("distill", "resnet"):
        raise ConfigError(
            f"backbone {_label(backbone)!r} has no pre-activation stages (preact); those with "
            f"them: {_WITH_PREACT}"
        )
    _check_names(backbone, wanted)
    if kind == "distill":
        embedding, stages = backbone.forward_stages(images, preact)
    elif kind == "timm":
        embedding, stages = _timm_stages(backbone, images, wanted)
    else:
        embedding, stages = _torchvision_stages(backbone, images, wanted, preact)
    stages = {name: stages[name] for name in wanted}
    if POOL in names:
        stages[POOL] = embedding
    return embedding, stages


def stage_shapes(
    backbone: nn.Module, image_size: int | tuple[int, int], names: Sequence[str] | None = None
) -> dict[str, tuple[int, ...]]:
    """The shape of each stage (without the batch dimension) on ``image_size`` inputs: one
    forward pass of a blank image in eval mode, without gradients, leaving every module's
    mode and batch-norm statistics as they were.

    Args:
        image_size: Input side, or ``(height, width)``.
        names: The stages to measure (default: all, ``stage_names(backbone)``).

    Returns:
        ``{name: (C, h, w)}``, and ``(num_features,)`` for ``pool``.
    """
    names = stage_names(backbone) if names is None else list(names)
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    parameter = next(backbone.parameters(), None)
    images = torch.zeros(
        1,
        3,
        height,
        width,
        device=parameter.device if parameter is not None else None,
        dtype=parameter.dtype if parameter is not None else None,
    )
    modes = [(module, module.training) for module in backbone.modules()]
    backbone.eval()
    try:
        with torch.no_grad():
            _, stages = forward_stages(backbone, images, names)
    finally:
        for module, training in modes:
            module.training = training
    return {name: tuple(stages[name].shape[1:]) for name in names}


def layer_calls(network: nn.Module, run: Callable[[], object]) -> Counter[str]:
    """How many times each layer of ``network`` (each module without children: a feature
    extractor runs those, not their containers) runs in ``run()``, by module name.

    Compared with the counts of a plain ``network(images)``, it shows whether reading stages
    (or a whole training step) runs any layer a second time.
    """
    calls: Counter[str] = Counter()
    hooks = [
        module.register_forward_hook(lambda *_, name=name: calls.update([name]))
        for name, module in network.named_modules()
        if not list(module.children())
    ]
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return calls


def _kind(backbone: nn.Module) -> str:
    """Which reader serves ``backbone``: distill, resnet (torchvision's), timm or torchvision."""
    if callable(getattr(backbone, "forward_stages", None)) and hasattr(backbone, "stage_names"):
        return "distill"
    if isinstance(backbone, ResNet):
        return "resnet"
    if callable(getattr(backbone, "forward_intermediates", None)) and hasattr(
        backbone, "feature_info"
    ):
        return "timm"
    if str(getattr(backbone, "backbone_name", "")).startswith("torchvision:"):
        return "torchvision"
    raise ConfigError(
        f"backbone {_label(backbone)!r} has no named stages (intermediate feature maps); "
        f"those with them: {_WITH_STAGES}"
    )


def _label(backbone: nn.Module) -> str:
    return getattr(backbone, "backbone_name", type(backbone).__name__)


def _check_names(backbone: nn.Module, names: list[str]) -> None:
    valid = stage_names(backbone)
    unknown = [name for name in names if name not in valid]
    if not unknown:
        return
    close = difflib.get_close_matches(str(unknown[0]), valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    shown = ", ".join(valid[:16])
    if len(valid) > 16:
        shown += f", ... ({len(valid)} names; stage_names(backbone) lists them)"
    raise ConfigError(
        f"backbone {_label(backbone)!r} has no stage {unknown[0]!r}{hint}; its stages: {shown}"
    )


def _timm_stages(
    backbone: nn.Module, images: Tensor, names: list[str]
) -> tuple[Tensor, dict[str, Tensor]]:
    """timm's ``forward_intermediates``: its indices are the positions in ``feature_info``."""
    modules = [info["module"] for info in backbone.feature_info]
    indices = sorted({modules.index(name) for name in names})
    final, maps = backbone.forward_intermediates(images, indices=indices, output_fmt="NCHW")
    # The maps come in network order; forward_head pools final as timm's own forward does.
    return backbone.forward_head(final), {modules[i]: m for i, m in zip(indices, maps, strict=True)}


def _torchvision_entry(backbone: nn.Module) -> dict:
    entry = _TORCHVISION.get(backbone)
    if entry is None:
        train_nodes, eval_nodes = get_graph_node_names(backbone, suppress_diff_warning=True)
        nodes = [node for node in eval_nodes if node in set(train_nodes)]
        # create_feature_extractor also takes a module holding nodes (its last node's output),
        # so the names are the nodes' dotted prefixes, in network order (nodes[0] is the input).
        names = {}
        for node in nodes[1:]:
            parts = node.split(".")
            names.update(dict.fromkeys(".".join(parts[:end]) for end in range(1, len(parts) + 1)))
        entry = _TORCHVISION[backbone] = {"nodes": list(names), "output": nodes[-1]}
    return entry


def _torchvision_stages(
    backbone: nn.Module, images: Tensor, names: list[str], preact: bool
) -> tuple[Tensor, dict[str, Tensor]]:
    """torchvision's ``create_feature_extractor``, built once per backbone, names and preact."""
    entry = _torchvision_entry(backbone)
    key = (tuple(names), preact)
    if key not in entry:
        entry[key] = _extractor(backbone, names, preact, entry["output"])
    extractor, embedding_key = entry[key]
    if extractor.training != backbone.training:
        extractor.train(backbone.training)  # its train or eval graph, as the backbone is
    outputs = extractor(images)
    for name in names:
        if not isinstance(outputs[name], Tensor):
            raise ConfigError(
                f"stage {name!r} of backbone {_label(backbone)!r} gives a "
                f"{type(outputs[name]).__name__}, not a feature map; choose another node"
            )
    return outputs[embedding_key], outputs


def _extractor(
    backbone: nn.Module, names: list[str], preact: bool, output: str
) -> tuple[fx.GraphModule, str]:
    """The extractor returning ``names`` and the embedding (``output``, the last node), and the
    key of the embedding among its outputs."""
    nodes = {name: name for name in names}
    if isinstance(backbone, ResNet):
        nodes = {"stem": "relu"}
        for k in range(1, 5):
            layer = getattr(backbone, f"layer{k}")
            nodes[f"stage{k}"] = f"layer{k}.{len(layer) - 1}.add" if preact else f"layer{k}"
        nodes = {name: nodes[name] for name in names}
    returned = {node: name for name, node in nodes.items()}
    returned.setdefault(output, POOL)  # unless a stage asked for is the embedding's node
    extractor = create_feature_extractor(
        backbone, return_nodes=returned, suppress_diff_warning=True
    )
    if preact:
        _copy_where_computed(extractor, [name for name in names if name != "stem"])
    return extractor, returned[output]


def _copy_where_computed(extractor: fx.GraphModule, names: list[str]) -> None:
    """Makes the outputs ``names`` copies taken where they are computed: each torchvision block
    ends with an in-place ReLU, which would otherwise overwrite its residual sum (``add``)."""
    for graph in (extractor.train_graph, extractor.eval_graph):
        output = next(node for node in graph.nodes if node.op == "output")
        returned = dict(output.args[0])
        for name in names:
            with graph.inserting_after(returned[name]):
                returned[name] = graph.call_function(torch.clone, (returned[name],))
        output.args = (returned,)
    extractor.recompile()
