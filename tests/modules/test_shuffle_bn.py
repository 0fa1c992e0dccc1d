import copy
import math
from pathlib import Path

import pytest
import torch
from tests_support import EPS32, NETWORK64_TOL, assert_within, launch_ddp
from torch import nn

from distill.backbones import create_backbone
from distill.errors import ConfigError
from distill.modules import MomentumEncoder
from distill.modules.shuffle_bn import (
    SplitBatchNorm1d,
    SplitBatchNorm2d,
    balanced_shuffle,
    convert_split_batch_norm,
    resolve_shuffle_bn,
    shuffled_forward,
    split_batch_norm,
)

WORKER = Path(__file__).with_name("ddp_shuffle_bn_worker.py")
pytestmark = pytest.mark.numerics


def encoder(**kwargs) -> MomentumEncoder:
    """A float64 encoder: its keys and queries are compared with other batch splits and
    statistics, which float64 makes a matter of NETWORK64_TOL (see tests_support)."""
    torch.manual_seed(0)
    backbone = create_backbone("resnet8")
    encoder = MomentumEncoder(backbone, proj_hidden_dim=32, proj_dim=16, queue_size=8, **kwargs)
    return encoder.double()


def images64(*shape, generator=None):
    return torch.randn(*shape, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("groups, batch", [(4, 16), (3, 10)])
def test_split_batch_norm_matches_per_group_formula_and_running_average(groups, batch):
    torch.manual_seed(0)
    layer = convert_split_batch_norm(nn.Sequential(nn.BatchNorm2d(3, momentum=0.3)))[0]
    assert isinstance(layer, SplitBatchNorm2d)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 2.0)
        layer.bias.normal_()
        layer.running_mean.normal_()
    x = torch.randn(batch, 3, 5, 5) * 3 + 1
    running_mean, running_var = layer.running_mean.double(), layer.running_var.double()
    with split_batch_norm(layer, groups):
        out = layer(x)
    assert layer.groups == 1  # restored after the block
    x64 = x.double()
    chunks = x64.tensor_split(groups)
    weight, bias = layer.weight.double().view(1, 3, 1, 1), layer.bias.double().view(1, 3, 1, 1)
    expected, errors, means, variances, stat_errors = [], [], [], [], []
    for chunk in chunks:
        mean = chunk.mean(dim=(0, 2, 3), keepdim=True)
        var = ((chunk - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
        normed = (chunk - mean) / torch.sqrt(var + layer.eps)
        expected.append(normed * weight + bias)
        count = chunk.numel() / 3
        means.append(mean.flatten())
        variances.append(var.flatten() * count / (count - 1))  # running stats: unbiased
        # Float32: the mean sums `count` values (count roundings of max|x|) and divides; the
        # variance sums `count` squares around it (the mean's error enters squared) and
        # divides; 1/sqrt(var + eps) halves that and rounds twice. The output x·α + β, with
        # α = w/σ and β = b − μ·α, rounds values up to (|x| + |μ|)·|α| + |b|.
        mean_error = (count + 1) * EPS32 * chunk.abs().amax(dim=(0, 2, 3), keepdim=True)
        var_rtol = (count + 3) * EPS32 + (mean_error**2 / var)
        scale = weight.abs() / torch.sqrt(var + layer.eps)
        errors.append(
            scale * mean_error
            + (normed * weight).abs() * (var_rtol / 2 + 3 * EPS32)
            + 3 * EPS32 * ((chunk.abs() + mean.abs()) * scale + bias.abs())
        )
        stat_errors.append((mean_error.flatten(), (var_rtol.flatten() + 2 * EPS32) * variances[-1]))
    assert_within(out, torch.cat(expected), torch.cat(errors), "output")
    # The running statistics: each group's update (1 − m)·r + m·s, then their mean over the
    # groups: the statistics' errors times m, plus 3 + groups roundings of the values.
    for name, running, stats, index in (
        ("running_mean", running_mean, means, 0),
        ("running_var", running_var, variances, 1),
    ):
        expected = 0.7 * running + 0.3 * torch.stack(stats).mean(0)
        largest = torch.maximum(running.abs(), torch.stack(stats).abs().amax(0))
        error = 0.3 * torch.stack([e[index] for e in stat_errors]).amax(0)
        assert_within(getattr(layer, name), expected, error + (3 + groups) * EPS32 * largest, name)
    assert int(layer.num_batches_tracked) == 1


def test_conversion_keeps_state_dict_and_plain_behaviour():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    plain = copy.deepcopy(net)
    convert_split_batch_norm(net)
    assert isinstance(net[1], SplitBatchNorm1d) and isinstance(net[3], SplitBatchNorm2d)
    assert net.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(8, 4)
    torch.testing.assert_close(net[1](net[0](x)), plain[1](plain[0](x)), rtol=0, atol=0)
    torch.testing.assert_close(net[1].running_mean, plain[1].running_mean, rtol=0, atol=0)


@pytest.mark.parametrize("batch, groups", [(64, 8), (64, 4), (36, 8), (10, 3), (7, 1)])
def test_balanced_shuffle_deals_each_group_out_evenly(batch, groups):
    permutation = balanced_shuffle(batch, groups, torch.Generator().manual_seed(batch))
    assert sorted(permutation.tolist()) == list(range(batch))
    query_group = torch.empty(batch, dtype=torch.long)
    for g, rows in enumerate(torch.arange(batch).tensor_split(groups)):
        query_group[rows] = g
    size = math.ceil(batch / groups)
    for key_rows in permutation.tensor_split(groups):
        counts = torch.bincount(query_group[key_rows], minlength=groups)
        assert counts.max() <= math.ceil(size / groups)
        if groups > 1:  # a key group is never its query group
            assert counts.max() < len(key_rows)


def test_balanced_shuffle_is_drawn_from_the_generator():
    draw = lambda seed: balanced_shuffle(32, 4, torch.Generator().manual_seed(seed))  # noqa: E731
    assert torch.equal(draw(1), draw(1)) and not torch.equal(draw(1), draw(2))


def group_statistics_forward(network: nn.Module, group: torch.Tensor) -> torch.Tensor:
    """Each image of ``group`` alone, in eval mode, with every batch norm's statistics set to
    the ones the whole group has at that layer in a training-mode forward (float64)."""
    network = copy.deepcopy(network).double()
    captured = {}
    hooks = [
        layer.register_forward_pre_hook(lambda m, args: captured.__setitem__(m, args[0]))
        for layer in network.modules()
        if isinstance(layer, nn.modules.batchnorm._BatchNorm)
    ]
    network.train()
    network(group.double())
    for hook in hooks:
        hook.remove()
    for layer, inputs in captured.items():
        dims = [0, *range(2, inputs.dim())]
        layer.running_mean.copy_(inputs.mean(dim=dims))
        layer.running_var.copy_(inputs.var(dim=dims, unbiased=False))
    network.eval()
    with torch.no_grad():
        return torch.cat([network(image.unsqueeze(0).double()) for image in group])


def test_keys_come_back_in_their_rows_normalised_with_their_shuffled_group():
    model = encoder(bn_groups=4)
    images = images64(16, 3, 32, 32)
    key_network = nn.Sequential(model.key_backbone, model.key_head)
    generator = torch.Generator().manual_seed(3)
    keys = shuffled_forward(key_network, images, "split", 4, generator)
    permutation = balanced_shuffle(16, 4, torch.Generator().manual_seed(3))
    expected = torch.empty(16, 16, dtype=torch.float64)
    for rows in permutation.tensor_split(4):
        expected[rows] = group_statistics_forward(key_network, images[rows])
    torch.testing.assert_close(keys, expected, rtol=NETWORK64_TOL, atol=NETWORK64_TOL)
    # Plain batch norm over the whole batch gives other keys: the groups matter.
    assert not torch.allclose(keys, key_network(images), atol=1e-3)


def test_queries_are_normalised_in_batch_order_groups_and_keys_in_other_groups():
    model = encoder(bn_groups=4)
    views = [images64(16, 3, 32, 32), images64(16, 3, 32, 32)]
    torch.manual_seed(5)
    queries, keys = model.queries_and_keys(views, symmetric=False)
    query_network = nn.Sequential(model.backbone, model.head)
    expected = torch.cat(
        [group_statistics_forward(query_network, rows) for rows in views[0].tensor_split(4)]
    )
    expected = nn.functional.normalize(expected)
    torch.testing.assert_close(queries, expected, rtol=NETWORK64_TOL, atol=NETWORK64_TOL)
    torch.manual_seed(5)
    permutation = balanced_shuffle(16, 4)
    key_network = nn.Sequential(model.key_backbone, model.key_head)
    expected = torch.empty(16, 16, dtype=torch.float64)
    for rows in permutation.tensor_split(4):
        expected[rows] = group_statistics_forward(key_network, views[1][rows])
        # No key group is a query group: each holds one image of every query group.
        assert sorted((rows // 4).tolist()) == [0, 1, 2, 3]
    expected = nn.functional.normalize(expected)
    torch.testing.assert_close(keys, expected, rtol=NETWORK64_TOL, atol=NETWORK64_TOL)


def test_the_unshuffled_control_normalises_each_key_with_its_querys_group():
    control, split = encoder(bn_groups=4, shuffle_bn="split_unshuffled"), encoder(bn_groups=4)
    views = [images64(16, 3, 32, 32), images64(16, 3, 32, 32)]
    torch.manual_seed(5)
    queries, keys = control.queries_and_keys(views, symmetric=False)
    torch.manual_seed(5)
    split_queries, split_keys = split.queries_and_keys(views, symmetric=False)
    torch.testing.assert_close(queries, split_queries)  # the same query groups, same arithmetic
    key_network = nn.Sequential(control.key_backbone, control.key_head)
    expected = torch.cat(
        [group_statistics_forward(key_network, rows) for rows in views[1].tensor_split(4)]
    )
    expected = nn.functional.normalize(expected)
    torch.testing.assert_close(keys, expected, rtol=NETWORK64_TOL, atol=NETWORK64_TOL)
    # Only the shuffle differs from split: its keys are normalised in other groups.
    assert not torch.allclose(keys, split_keys, atol=1e-3)


def test_off_is_plain_batch_norm_and_eval_mode_skips_the_shuffle():
    model = encoder(shuffle_bn="off")
    images = images64(8, 3, 32, 32)
    expected = nn.functional.normalize(model.key_head(model.key_backbone(images)))
    torch.testing.assert_close(model.keys(images), expected)  # the same computation
    split = encoder()
    split.eval()
    per_image = torch.cat([split.keys(image.unsqueeze(0)) for image in images])
    torch.testing.assert_close(
        split.keys(images), per_image, rtol=NETWORK64_TOL, atol=NETWORK64_TOL
    )


def test_modes_are_checked_by_name():
    valid = "auto, split, ranks, off, split_unshuffled"
    with pytest.raises(ConfigError, match=f"shuffle_bn='sync'; valid: {valid}"):
        encoder(shuffle_bn="sync")
    with pytest.raises(ConfigError, match="bn_groups=0; valid"):
        encoder(bn_groups=0)
    assert resolve_shuffle_bn("auto") == "split"
    with pytest.raises(ConfigError, match="shuffle_bn=ranks needs multi-process"):
        resolve_shuffle_bn("ranks")


def test_two_ranks_give_the_keys_of_one_process_with_two_groups(tmp_path):
    launch_ddp(WORKER, [tmp_path], world=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert [r["mode"] for r in ranks] == ["ranks", "ranks"]
    model = encoder()
    images = images64(12, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(7)
    key_network = nn.Sequential(model.key_backbone, model.key_head)
    keys = nn.functional.normalize(shuffled_forward(key_network, images, "split", 2))
    ranks_keys = torch.cat([r["keys"] for r in ranks])
    torch.testing.assert_close(ranks_keys, keys, rtol=NETWORK64_TOL, atol=NETWORK64_TOL)
    queries = torch.cat([model(rows) for rows in images.tensor_split(2)])  # per-rank BN
    ranks_queries = torch.cat([r["queries"] for r in ranks])
    torch.testing.assert_close(ranks_queries, queries, rtol=NETWORK64_TOL, atol=NETWORK64_TOL)
