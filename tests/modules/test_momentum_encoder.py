import pytest
import torch
import torch.nn.functional as F
from tests_support import assert_within, ema_error, normalize_error

from distill.backbones import create_backbone
from distill.errors import ConfigError
from distill.modules import MomentumEncoder
from distill.modules.momentum_encoder import two_views


def make(**kwargs):
    torch.manual_seed(0)
    backbone = create_backbone("resnet8")
    return MomentumEncoder(backbone, proj_hidden_dim=32, proj_dim=16, queue_size=8, **kwargs)


@pytest.mark.numerics
def test_key_encoder_is_a_frozen_copy_and_follows_the_ema_formula():
    encoder = make()
    query = dict(encoder.backbone.named_parameters()) | {
        f"head.{n}": p for n, p in encoder.head.named_parameters()
    }
    key = dict(encoder.key_backbone.named_parameters()) | {
        f"head.{n}": p for n, p in encoder.key_head.named_parameters()
    }
    assert not any(p.requires_grad for p in key.values())
    assert all(torch.equal(key[n], query[n]) and key[n] is not query[n] for n in query)
    with torch.no_grad():
        for p in query.values():
            p.add_(torch.randn_like(p))
    before = {n: p.detach().double().clone() for n, p in key.items()}
    encoder.update_key_encoder(0.9)
    for name, p in key.items():
        expected = 0.9 * before[name] + 0.1 * query[name].detach().double()
        assert_within(p, expected, ema_error(0.9, before[name], query[name]), name)


@pytest.mark.numerics
def test_queries_and_keys_pair_rows_and_are_unit_norm():
    encoder = make(shuffle_bn="off")  # plain batch norm: shuffle-BN has tests of its own
    views = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)]
    queries, keys = encoder.queries_and_keys(views, symmetric=False)
    assert queries.shape == keys.shape == (4, 16) and not keys.requires_grad
    torch.testing.assert_close(queries, encoder(views[0]))
    torch.testing.assert_close(keys, encoder.keys(views[1]))
    queries, keys = encoder.queries_and_keys(views, symmetric=True)
    assert queries.shape == (8, 16)
    torch.testing.assert_close(queries[4:], encoder(views[1]))
    torch.testing.assert_close(keys[4:], encoder.keys(views[0]))
    expected = F.normalize(encoder.key_head(encoder.key_backbone(views[0])), dim=1)
    torch.testing.assert_close(keys[4:], expected)
    unit_norm = (queries.norm(dim=1), torch.ones(8))  # normalised, then measured
    torch.testing.assert_close(*unit_norm, rtol=0, atol=2 * normalize_error(16))


@pytest.mark.parametrize("views", [torch.randn(2, 3, 8, 8), [torch.randn(2, 3, 8, 8)] * 3])
def test_two_views_refuses_other_batches(views):
    with pytest.raises(ConfigError, match="need two views per image.*TwoViews"):
        two_views((views, torch.zeros(2), torch.arange(2)))
