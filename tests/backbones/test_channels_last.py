import copy

import pytest
import torch
from tests_support import NETWORK64_TOL
from torch import nn

from distill.backbones import create_backbone, to_channels_last

CONVOLUTIONAL = [
    ("resnet8", {}),
    ("vgg8", {}),
    ("wrn_16_2", {}),
    ("mobilenetv2", {"cifar_stem": True}),
    ("resnet18", {"cifar_stem": True}),
]
CHANNELS_LAST = torch.channels_last


def conv_inputs(backbone: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """The inputs of every convolution of ``backbone`` during one forward pass."""
    seen = []
    hooks = [
        m.register_forward_hook(lambda module, args, out: seen.append(args[0]))
        for m in backbone.modules()
        if isinstance(m, nn.Conv2d)
    ]
    backbone(images)
    for hook in hooks:
        hook.remove()
    return seen


@pytest.mark.parametrize(("name", "kwargs"), CONVOLUTIONAL, ids=[n for n, _ in CONVOLUTIONAL])
def test_conv_weights_and_every_conv_input_become_channels_last(name, kwargs):
    backbone = create_backbone(name, **kwargs)
    parameters = list(backbone.parameters())
    assert to_channels_last(backbone) == [backbone]
    assert [id(p) for p in backbone.parameters()] == [id(p) for p in parameters]  # same objects
    convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.weight.is_contiguous(memory_format=CHANNELS_LAST) for c in convs)
    inputs = conv_inputs(backbone, torch.randn(2, 3, 32, 32))  # a contiguous batch
    assert len(inputs) == len(convs)
    assert all(x.is_contiguous(memory_format=CHANNELS_LAST) for x in inputs)


@pytest.mark.numerics
@pytest.mark.parametrize("name", ["resnet8", "vgg8", "wrn_16_2"])
def test_outputs_and_gradients_match_the_contiguous_network(name):
    # In float64: the two layouts run other kernels, whose agreement float64 makes a
    # matter of NETWORK64_TOL (see tests_support) rather than of each network's analysis.
    torch.manual_seed(0)
    contiguous = create_backbone(name).double()
    channels_last = copy.deepcopy(contiguous)
    to_channels_last(channels_last)
    images = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    results = []
    for network in (contiguous, channels_last):
        features = network(images)  # training mode: batch statistics
        features.square().sum().backward()
        grads = torch.cat([p.grad.flatten() for p in network.parameters()])
        results.append((features.detach(), grads))
    (features, grads), (cl_features, cl_grads) = results
    torch.testing.assert_close(cl_features, features, rtol=NETWORK64_TOL, atol=NETWORK64_TOL)
    # Rounding only; channels-last batch norm sums its gradients in another order.
    assert (cl_grads - grads).norm() / grads.norm() < NETWORK64_TOL


def test_vit_is_left_as_it_is():
    vit = create_backbone("vit_tiny", image_size=32, patch_size=4)
    assert to_channels_last(vit) == []
    assert vit.vit.conv_proj.weight.is_contiguous()
    (patches,) = conv_inputs(vit, torch.randn(2, 3, 32, 32))
    assert patches.is_contiguous()


def test_converting_twice_changes_nothing_and_finds_backbones_inside_a_network():
    network = nn.ModuleDict({"student": create_backbone("resnet8"), "head": nn.Linear(64, 10)})
    assert to_channels_last(network) == [network["student"]]
    assert to_channels_last(network) == []
    assert len(network["student"]._forward_pre_hooks) == 1
