"""``distill.backbones.forward_stages``: named intermediate maps of every backbone family, from
the one pass that gives its embedding."""

import copy

import pytest
import torch
import torch.nn.functional as F
from tests_support import NETWORK64_TOL
from torch import nn

from distill.backbones import (
    create_backbone,
    feature_map,
    forward_stages,
    layer_calls,
    stage_names,
    stage_shapes,
    to_channels_last,
)
from distill.backbones import stages as stages_module
from distill.errors import ConfigError

FAMILIES = [
    ("resnet8", {}),
    ("wrn_16_2", {}),
    ("vgg8", {}),
    ("mobilenetv2", {"width_mult": 0.25, "cifar_stem": True}),
    ("resnet18", {"cifar_stem": True}),
    ("torchvision:resnet18", {}),
    ("timm:test_resnet", {}),
]
IDS = [name for name, _ in FAMILIES]


def build(name, **kwargs):
    """The backbone in eval mode with non-trivial batch-norm statistics, so that a wrong layer
    shows in the values and pre-activations have negative entries."""
    if name.startswith("timm:"):
        pytest.importorskip("timm")
    torch.manual_seed(0)
    backbone = create_backbone(name, **kwargs)
    for module in backbone.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    return backbone.eval()


def images(batch=2, size=32):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def inner(backbone):
    """Every stage name but ``pool``."""
    return [name for name in stage_names(backbone) if name != "pool"]


def reference_stages(name, backbone, x):
    """Each stage computed from the network's own modules, as RepDistiller's (or timm's)
    feature lists take them, independently of ``forward_stages``."""
    if name == "resnet8":
        stem = F.relu(backbone.bn1(backbone.conv1(x)))
        stage1 = backbone.layer1(stem)
        stage2 = backbone.layer2(stage1)
        return {"stem": stem, "stage1": stage1, "stage2": stage2, "stage3": backbone.layer3(stage2)}
    if name == "wrn_16_2":  # RepDistiller's feat list: the groups' residual sums
        stem = backbone.conv1(x)
        stage1 = backbone.block1(stem)
        stage2 = backbone.block2(stage1)
        return {"stem": stem, "stage1": stage1, "stage2": stage2, "stage3": backbone.block3(stage2)}
    if name == "vgg8":  # RepDistiller's VGG on 32 px: no max-pool after the fourth block
        b = backbone.blocks
        stem = F.relu(b[0](x))
        stage1 = F.relu(b[1](F.max_pool2d(stem, 2)))
        stage2 = F.relu(b[2](F.max_pool2d(stage1, 2)))
        stage3 = F.relu(b[3](F.max_pool2d(stage2, 2)))
        return {
            "stem": stem,
            "stage1": stage1,
            "stage2": stage2,
            "stage3": stage3,
            "stage4": F.relu(b[4](stage3)),
        }
    if name == "mobilenetv2":
        f = backbone.features
        return {"stem": f[0](x), "stage1": f[:4](x), "stage2": f[:7](x), "stage3": f[:14](x),
                "stage4": f[:18](x)}  # fmt: skip
    if name in ("resnet18", "torchvision:resnet18"):
        stem = backbone.relu(backbone.bn1(backbone.conv1(x)))
        stage1 = backbone.layer1(backbone.maxpool(stem))
        stage2 = backbone.layer2(stage1)
        stage3 = backbone.layer3(stage2)
        return {"stem": stem, "stage1": stage1, "stage2": stage2, "stage3": stage3,
                "stage4": backbone.layer4(stage3)}  # fmt: skip
    timm = pytest.importorskip("timm")  # timm's own feature extractor, given the same weights
    features = timm.create_model(backbone.timm_name, features_only=True, pretrained=False)
    features.load_state_dict(backbone.state_dict())
    return dict(zip(features.feature_info.module_name(), features.eval()(x), strict=True))


@pytest.mark.parametrize(
    ("name", "kwargs", "shapes"),
    [("resnet8", {}, {"stem": (16, 32, 32), "stage1": (16, 32, 32), "stage2": (32, 16, 16),
                      "stage3": (64, 8, 8), "pool": (64,)}),
     ("resnet20", {}, {"stem": (16, 32, 32), "stage1": (16, 32, 32), "stage2": (32, 16, 16),
                       "stage3": (64, 8, 8), "pool": (64,)}),
     ("resnet32x4", {}, {"stem": (32, 32, 32), "stage1": (64, 32, 32), "stage2": (128, 16, 16),
                         "stage3": (256, 8, 8), "pool": (256,)}),
     ("wrn_16_2", {}, {"stem": (16, 32, 32), "stage1": (32, 32, 32), "stage2": (64, 16, 16),
                       "stage3": (128, 8, 8), "pool": (128,)}),
     ("vgg8", {}, {"stem": (64, 32, 32), "stage1": (128, 16, 16), "stage2": (256, 8, 8),
                   "stage3": (512, 4, 4), "stage4": (512, 4, 4), "pool": (512,)}),
     ("mobilenetv2", {}, {"stem": (32, 16, 16), "stage1": (24, 8, 8), "stage2": (32, 4, 4),
                          "stage3": (96, 2, 2), "stage4": (320, 1, 1), "pool": (1280,)}),
     ("torchvision:resnet18", {}, {"stem": (64, 16, 16), "stage1": (64, 8, 8),
                                   "stage2": (128, 4, 4), "stage3": (256, 2, 2),
                                   "stage4": (512, 1, 1), "pool": (512,)})],
    ids=["resnet8", "resnet20", "resnet32x4", "wrn_16_2", "vgg8", "mobilenetv2", "tv-resnet18"],
)  # fmt: skip
def test_stage_names_and_shapes_at_32_px(name, kwargs, shapes):
    backbone = create_backbone(name, **kwargs)
    assert stage_names(backbone) == list(shapes)
    assert stage_shapes(backbone, 32) == shapes


def test_a_torchvision_and_a_timm_model_list_their_stages_through_the_same_api():
    pytest.importorskip("timm")
    resnet = create_backbone("torchvision:resnet18")
    assert stage_names(resnet) == ["stem", "stage1", "stage2", "stage3", "stage4", "pool"]
    tiny = create_backbone("timm:test_resnet")
    assert stage_names(tiny) == ["act1", "layer1", "layer2", "layer3", "layer4", "pool"]
    shapes = stage_shapes(tiny, 32)
    # timm's feature_info describes the same maps: its widths, and 32 px over its reductions.
    for info in tiny.feature_info:
        side = 32 // info["reduction"]
        assert shapes[info["module"]] == (info["num_chs"], side, side)
    assert shapes["pool"] == (tiny.num_features,)


@pytest.mark.parametrize(("name", "kwargs"), FAMILIES, ids=IDS)
def test_embedding_is_the_plain_forward_and_each_stage_its_reference(name, kwargs):
    backbone = build(name, **kwargs)
    x = images()
    with torch.no_grad():
        embedding, stages = forward_stages(backbone, x, stage_names(backbone))
        # The same modules on the same inputs: the same kernels, so equal bit for bit.
        assert torch.equal(embedding, backbone(x))
        assert stages["pool"] is embedding
        expected = reference_stages(name, backbone, x)
        assert list(expected) == inner(backbone)
        for stage, value in expected.items():
            assert torch.equal(stages[stage], value), stage


@pytest.mark.parametrize(
    ("name", "kwargs", "last"),
    [("resnet8", {}, "stage3"), ("vgg8", {}, "stage4"),
     ("resnet18", {"cifar_stem": True}, "stage4")],
    ids=["resnet8", "vgg8", "resnet18"],
)  # fmt: skip
def test_the_last_stage_is_the_last_feature_map(name, kwargs, last):
    backbone = build(name, **kwargs)
    x = images()
    with torch.no_grad():
        assert torch.equal(forward_stages(backbone, x, [last])[1][last], feature_map(backbone, x))


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("resnet8", {}), ("vgg8", {}), ("resnet18", {"cifar_stem": True}),
     ("torchvision:resnet18", {})],
    ids=["resnet8", "vgg8", "resnet18", "tv-resnet18"],
)  # fmt: skip
def test_a_pre_activation_is_its_stage_before_the_relu(name, kwargs):
    backbone = build(name, **kwargs)
    x = images()
    names = inner(backbone)
    with torch.no_grad():
        embedding, after = forward_stages(backbone, x, names)
        pre_embedding, before = forward_stages(backbone, x, names, preact=True)
    assert torch.equal(pre_embedding, embedding)
    assert torch.equal(before["stem"], after["stem"])  # a stem is the same either way
    for stage in names[1:]:
        assert torch.equal(F.relu(before[stage]), after[stage]), stage
        assert (before[stage] < 0).any(), stage  # really before the ReLU


def test_a_wrn_pre_activation_is_its_sum_after_the_batch_norm_that_follows():
    backbone = build("wrn_16_2")
    x = images()
    names = inner(backbone)
    with torch.no_grad():
        _, after = forward_stages(backbone, x, names)
        _, before = forward_stages(backbone, x, names, preact=True)
        following = [backbone.block2[0].bn1, backbone.block3[0].bn1, backbone.bn]
        for stage, norm in zip(names[1:], following, strict=True):
            assert torch.equal(before[stage], norm(after[stage])), stage
        assert torch.equal(F.relu(before["stage3"]), feature_map(backbone, x))
    assert torch.equal(before["stem"], after["stem"])


def test_mobilenet_stages_end_without_activation_so_preact_changes_nothing():
    backbone = build("mobilenetv2", width_mult=0.25, cifar_stem=True)
    with torch.no_grad():
        after = forward_stages(backbone, images(), inner(backbone))[1]
        before = forward_stages(backbone, images(), inner(backbone), preact=True)[1]
    assert all(torch.equal(before[stage], after[stage]) for stage in after)


def module_calls(backbone, run):
    """``layer_calls`` of ``run()``, without autograd."""
    with torch.no_grad():
        return layer_calls(backbone, run)


def test_layer_calls_counts_each_layer_by_name_and_removes_its_hooks():
    backbone = build("resnet8")
    x = images()
    leaves = [name for name, m in backbone.named_modules() if not list(m.children())]
    assert module_calls(backbone, lambda: backbone(x)) == dict.fromkeys(leaves, 1)
    twice = module_calls(backbone, lambda: (backbone(x), backbone.conv1(x)))
    assert twice == {**dict.fromkeys(leaves, 1), "conv1": 2}
    assert not any(m._forward_hooks for m in backbone.modules())


@pytest.mark.parametrize(("name", "kwargs"), FAMILIES, ids=IDS)
def test_stages_come_from_the_one_forward_pass(name, kwargs):
    backbone = build(name, **kwargs)
    x = images()
    plain = module_calls(backbone, lambda: backbone(x))
    asked = module_calls(backbone, lambda: forward_stages(backbone, x, stage_names(backbone)))
    assert asked == plain  # no second forward, no module run twice (a WRN's norms included)
    if name in ("resnet8", "wrn_16_2", "vgg8", "resnet18"):
        preact = lambda: forward_stages(backbone, x, inner(backbone), preact=True)  # noqa: E731
        assert module_calls(backbone, preact) == plain


@pytest.mark.parametrize(("name", "kwargs"), FAMILIES, ids=IDS)
@pytest.mark.parametrize("names", [[], ["pool"]], ids=["none", "pool"])
def test_nothing_extra_runs_when_no_stage_is_asked(name, kwargs, names, monkeypatch):
    backbone = build(name, **kwargs)

    def refuse(*args, **kwargs):
        raise AssertionError("a stage reader ran for no stage")

    # Every stage reader: the backbone's own, torchvision's extractor and tracer, timm's.
    monkeypatch.setattr(stages_module, "create_feature_extractor", refuse)
    monkeypatch.setattr(stages_module, "get_graph_node_names", refuse)
    for method in ("forward_stages", "forward_intermediates"):
        if hasattr(backbone, method):
            monkeypatch.setattr(backbone, method, refuse)
    x = images()
    plain = module_calls(backbone, lambda: backbone(x))
    assert module_calls(backbone, lambda: forward_stages(backbone, x, names)) == plain
    with torch.no_grad():
        embedding, stages = forward_stages(backbone, x, names)
        assert torch.equal(embedding, backbone(x))
    assert list(stages) == names


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("resnet8", {}), ("wrn_16_2", {}), ("resnet18", {"cifar_stem": True}),
     ("timm:test_resnet", {})],
    ids=["resnet8", "wrn_16_2", "resnet18", "timm"],
)  # fmt: skip
def test_a_channels_last_backbone_gives_its_stages_in_channels_last(name, kwargs):
    backbone = build(name, **kwargs).double()
    contiguous = copy.deepcopy(backbone)
    assert to_channels_last(backbone) == [backbone]
    x = images().double()
    with torch.no_grad():
        embedding, stages = forward_stages(backbone, x, inner(backbone))
        assert torch.equal(embedding, backbone(x))  # its forward, through the pre-hook
        _, reference = forward_stages(contiguous, x, inner(backbone))
    for stage, value in stages.items():
        assert value.is_contiguous(memory_format=torch.channels_last), stage
        # The two layouts run other kernels: in float64 their agreement is NETWORK64_TOL's
        # (tests_support), as for the networks' outputs in test_channels_last.
        torch.testing.assert_close(value, reference[stage], rtol=NETWORK64_TOL, atol=NETWORK64_TOL)


def test_a_torchvision_extractor_follows_the_backbone_between_train_and_eval():
    class Branchy(nn.Module):
        """A network whose graph differs between modes (as torchvision's stochastic depth)."""

        backbone_name = "torchvision:branchy"

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            x = self.conv(x)
            x = x * 2 if self.training else x
            return x.mean(dim=(2, 3))

    backbone = Branchy().eval()
    x = images()
    with torch.no_grad():
        embedding, _ = forward_stages(backbone, x, ["conv"])  # built in eval mode
        assert torch.equal(embedding, backbone(x))
        backbone.train()
        embedding, stages = forward_stages(backbone, x, ["conv"])
        assert torch.equal(embedding, backbone(x))  # the train graph now
        assert torch.equal(embedding, 2 * stages["conv"].mean(dim=(2, 3)))


def test_an_extractor_does_not_keep_its_backbone_alive():
    import gc
    import weakref

    backbone = create_backbone("torchvision:resnet18")
    forward_stages(backbone, images(), ["stage2"])
    alive = weakref.ref(backbone)
    del backbone
    gc.collect()
    assert alive() is None


def test_a_dry_run_leaves_modes_and_statistics_as_they_were():
    backbone = create_backbone("resnet8").train()
    backbone.layer2.eval()  # a frozen part stays frozen
    state = copy.deepcopy(backbone.state_dict())
    stage_shapes(backbone, 32)
    assert backbone.training and backbone.layer1.training and not backbone.layer2.training
    assert not any(m.training for m in backbone.layer2.modules())
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, state[key]), key  # no running statistic moved


def test_a_generic_torchvision_model_takes_its_graph_node_names():
    backbone = build("torchvision:mobilenet_v2")
    x = images()
    assert {"features.3", "features.3.add", "classifier.1"} <= set(stage_names(backbone))
    with torch.no_grad():
        embedding, stages = forward_stages(backbone, x, ["features.3", "classifier.1"])
        assert torch.equal(embedding, backbone(x))
        assert torch.equal(stages["features.3"], backbone.features[:4](x))
        assert torch.equal(stages["classifier.1"], embedding)  # the embedding's node itself


def test_an_unknown_stage_is_one_message_naming_the_valid_ones():
    with pytest.raises(ConfigError) as error:
        forward_stages(create_backbone("resnet8"), images(), ["stage1", "stage4"])
    assert str(error.value) == (
        "backbone 'resnet8' has no stage 'stage4' (did you mean 'stage3'?); its stages: stem, "
        "stage1, stage2, stage3, pool"
    )
    with pytest.raises(ConfigError, match=r"^backbone 'vgg8' has no stage 'head'; its stages: "):
        stage_shapes(create_backbone("vgg8"), 32, ["head"])


def test_pre_activations_and_stages_are_refused_where_there_are_none():
    pytest.importorskip("timm")
    with pytest.raises(ConfigError) as error:
        forward_stages(create_backbone("timm:test_resnet"), images(), ["layer1"], preact=True)
    assert str(error.value).startswith(
        "backbone 'timm:test_resnet' has no pre-activation stages (preact); those with them: "
        "distill's CIFAR ResNets"
    )
    vit = create_backbone("vit_tiny", image_size=32, patch_size=8)
    with pytest.raises(ConfigError, match=r"^backbone 'vit_tiny' has no named stages"):
        stage_names(vit)
    assert forward_stages(vit, images(), [])[1] == {}  # its embedding needs no stages
