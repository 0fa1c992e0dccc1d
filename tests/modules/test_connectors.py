"""``distill.modules.connectors``: FitNets' regressors (RepDistiller's ConvReg) between stages."""

import pytest
import torch
from torch import nn

from distill.backbones import create_backbone, forward_stages
from distill.commands.checkpoint import backbone_state
from distill.errors import ConfigError
from distill.modules import Classifier, Connector, StageConnectors


def test_a_same_size_connector_is_a_1x1_convolution_then_batch_norm():
    torch.manual_seed(0)
    connector = Connector((5, 4, 4), (7, 4, 4)).double()
    nn.init.uniform_(connector.bn.weight, 0.5, 1.5)
    nn.init.uniform_(connector.bn.bias, -0.5, 0.5)
    x = torch.randn(3, 5, 4, 4, dtype=torch.float64)
    out = connector(x)  # training mode: the batch's statistics
    # The formula: a per-pixel linear map of the channels, normalised per channel over the
    # batch and the pixels with the biased variance, then scaled and shifted.
    mapped = torch.einsum("oc,bchw->bohw", connector.conv.weight[:, :, 0, 0], x)
    mean = mapped.mean(dim=(0, 2, 3), keepdim=True)
    var = mapped.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    weight, bias = (p.view(1, -1, 1, 1) for p in (connector.bn.weight, connector.bn.bias))
    expected = (mapped - mean) / torch.sqrt(var + connector.bn.eps) * weight + bias
    # float64 against float64: a 5-term sum and a 48-term mean, each within ~50 roundings.
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    assert connector.conv.bias is None  # the batch norm's mean would cancel one


@pytest.mark.parametrize(
    ("student", "teacher", "kind", "kernel", "stride"),
    [((16, 32, 32), (64, 32, 32), nn.Conv2d, (1, 1), (1, 1)),
     ((16, 32, 32), (64, 16, 16), nn.Conv2d, (3, 3), (2, 2)),
     ((32, 8, 8), (64, 16, 16), nn.ConvTranspose2d, (4, 4), (2, 2)),
     ((32, 10, 9), (64, 8, 8), nn.Conv2d, (3, 2), (1, 1))],
    ids=["same", "half", "double", "valid"],
)  # fmt: skip
def test_the_convolution_matches_the_resolution_as_convreg_does(
    student, teacher, kind, kernel, stride
):
    connector = Connector(student, teacher)
    assert type(connector.conv) is kind
    assert (connector.conv.kernel_size, connector.conv.stride) == (kernel, stride)
    out = connector(torch.randn(2, *student))
    assert out.shape == (2, *teacher)


def test_relu_ends_the_connector_when_asked():
    torch.manual_seed(0)
    plain = Connector((4, 8, 8), (6, 8, 8))
    with_relu = Connector((4, 8, 8), (6, 8, 8), relu=True)
    with_relu.load_state_dict(plain.state_dict())
    x = torch.randn(2, 4, 8, 8)
    assert torch.equal(with_relu(x), torch.relu(plain(x)))
    assert (plain(x) < 0).any()


@pytest.mark.parametrize(
    ("student", "teacher", "message"),
    [((16, 8, 8), (32, 12, 12), "no connector from a student map (16, 8, 8) to a teacher map "
                                "(32, 12, 12): it can shrink a map, or double it, not enlarge it "
                                "otherwise"),
     ((64,), (128,), "a connector maps feature maps (C, H, W); got student (64,) and teacher "
                     "(128,)")],
    ids=["enlarge", "pooled"],
)  # fmt: skip
def test_shapes_no_connector_maps_are_one_message(student, teacher, message):
    with pytest.raises(ConfigError) as error:
        Connector(student, teacher)
    assert str(error.value).startswith(message)


def test_connectors_between_two_backbones_map_student_stages_to_the_teachers_shapes():
    torch.manual_seed(0)
    student, teacher = create_backbone("resnet8"), create_backbone("resnet32x4")
    pairs = [("stage2", "stage2"), ("stage3", "stage3"), ("stage1", "stage2")]
    connectors = StageConnectors.from_backbones(pairs, student, teacher, 32)
    x = torch.randn(2, 3, 32, 32)
    _, student_stages = forward_stages(student, x, ["stage1", "stage2", "stage3"])
    _, teacher_stages = forward_stages(teacher, x, ["stage2", "stage3"])
    mapped = connectors(student_stages)
    assert [m.shape for m in mapped] == [teacher_stages[t].shape for _, t in pairs]
    assert connectors.pairs == pairs


def test_equal_shapes_get_no_connector_only_when_asked():
    shapes = {"stage2": (32, 16, 16), "stage3": (64, 8, 8)}
    teacher = {"stage2": (32, 16, 16), "stage3": (256, 8, 8)}
    pairs = [("stage2", "stage2"), ("stage3", "stage3")]
    fitnets = StageConnectors(pairs, shapes, teacher)  # FitNets regresses every hint
    assert [type(c) for c in fitnets.connectors] == [Connector, Connector]
    skipping = StageConnectors(pairs, shapes, teacher, identity_when_equal=True)
    assert [type(c) for c in skipping.connectors] == [nn.Identity, Connector]


@pytest.mark.parametrize(
    ("pairs", "message"),
    [([("stage2", "stage9")], "backbone 'resnet32x4' has no stage 'stage9' (did you mean "
                              "'stage3'?); its stages: stem, stage1, stage2, stage3, pool"),
     ([("stage2",)], "a stage pair is [student stage, teacher stage], e.g. [stage2, stage2]; "
                     "got ('stage2',)"),
     ([("pool", "pool")], "stage pair ('pool', 'pool'): a connector maps feature maps (C, H, "
                          "W); got student (64,) and teacher (256,)")],
    ids=["unknown", "not-a-pair", "pooled"],
)  # fmt: skip
def test_bad_pairs_are_one_message(pairs, message):
    student, teacher = create_backbone("resnet8"), create_backbone("resnet32x4")
    with pytest.raises(ConfigError) as error:
        StageConnectors.from_backbones(pairs, student, teacher, 32)
    assert str(error.value) == message


def test_a_hint_loss_trains_the_connector_and_the_student():
    torch.manual_seed(0)
    student, teacher = create_backbone("resnet8"), create_backbone("resnet20").eval()
    connectors = StageConnectors.from_backbones([("stage2", "stage2")], student, teacher, 32)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        _, hints = forward_stages(teacher, x, ["stage2"])
    _, stages = forward_stages(student, x, ["stage2"])
    (regressed,) = connectors(stages)
    (regressed - hints["stage2"]).square().mean().backward()
    assert connectors.connectors[0].conv.weight.grad.abs().sum() > 0
    assert student.layer2[0].conv1.weight.grad.abs().sum() > 0
    assert student.layer3[0].conv1.weight.grad is None  # past the hint: not in its graph
    assert all(p.grad is None for p in teacher.parameters())


def test_connectors_beside_the_student_are_not_in_its_exported_backbone(tmp_path):
    # distill export reads a checkpoint's student.backbone.* weights (backbone_state), so
    # connectors kept beside the student, where a method holds them, stay out of the export.
    method = nn.Module()
    method.student = Classifier(create_backbone("resnet8"), 10)
    method.teacher = Classifier(create_backbone("resnet20"), 10)
    method.connectors = StageConnectors.from_backbones(
        [("stage2", "stage2")], method.student.backbone, method.teacher.backbone, 32
    )
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": method.state_dict()}, path)
    exported = backbone_state(str(path), "student")
    assert set(exported) == set(method.student.backbone.state_dict())
    create_backbone("resnet8").load_state_dict(exported)  # strict: the backbone's keys only
