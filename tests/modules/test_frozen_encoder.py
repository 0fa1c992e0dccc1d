import pytest
import torch
from torch import nn

from distill.backbones import create_backbone
from distill.errors import ConfigError
from distill.methods import MoCo, Supervised
from distill.modules.frozen_encoder import FrozenEncoder


def moco_state() -> dict[str, torch.Tensor]:
    """A MoCo checkpoint's state dict whose key encoder differs from its query encoder."""
    torch.manual_seed(0)
    moco = MoCo(backbone="resnet8", proj_hidden_dim=32, proj_dim=16, queue_size=20)
    with torch.no_grad():
        for param in moco.student.key_backbone.parameters():
            param.add_(1.0)
    return moco.state_dict()


def encoder(embedding="head") -> FrozenEncoder:
    return FrozenEncoder(create_backbone("resnet8"), embedding, proj_hidden_dim=32, proj_dim=16)


def test_it_is_frozen_stays_in_eval_mode_and_moves_no_statistic():
    frozen = encoder()
    assert not any(p.requires_grad for p in frozen.parameters())
    frozen.train()
    assert not any(m.training for m in frozen.modules())
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    frozen(torch.randn(8, 3, 32, 32))
    for name, value in frozen.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_head_embedding_takes_the_query_encoder_of_a_moco_checkpoint():
    state = moco_state()
    frozen = encoder()
    source = frozen.load_pretrained_state(state, "moco.ckpt")
    assert source == (
        "backbone and head (query encoder) from 'moco.ckpt' (read as the momentum encoder "
        "of MoCo's student)"
    )
    for name, value in frozen.state_dict().items():
        assert torch.equal(value, state[f"student.{name}"]), name  # backbone.*, head.*
    assert frozen.num_features == 16
    moco = MoCo(backbone="resnet8", proj_hidden_dim=32, proj_dim=16, queue_size=20)
    moco.load_state_dict(state)
    query = nn.Sequential(moco.student.backbone, moco.student.head).eval()
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(frozen(x), query(x))  # same network, same kernels


def test_backbone_embedding_takes_a_supervised_backbone():
    torch.manual_seed(1)
    supervised = Supervised(backbone="resnet8", num_classes=5)
    frozen = encoder("backbone")
    source = frozen.load_pretrained_state(supervised.state_dict(), "sup.ckpt")
    assert source == "backbone from 'sup.ckpt' (read as a student backbone)"
    assert frozen.num_features == 64 and isinstance(frozen.head, nn.Identity)
    for name, value in supervised.student.backbone.state_dict().items():
        assert torch.equal(frozen.backbone.state_dict()[name], value), name


def test_head_embedding_from_a_checkpoint_without_a_head_is_refused():
    supervised = Supervised(backbone="resnet8", num_classes=5)
    frozen = encoder("head")
    with pytest.raises(ConfigError) as error:
        frozen.load_pretrained_state(supervised.state_dict(), "sup.ckpt")
    assert str(error.value) == (
        "'sup.ckpt' (read as a student backbone) has no projection head, so the frozen "
        "teacher's head would stay randomly initialised. Set "
        "model.init_args.teacher_embedding: backbone to teach the backbone's features, or "
        "give a checkpoint with a trained head (a MoCo or ReKD run)."
    )


def test_a_head_of_another_width_is_refused_with_its_keys():
    frozen = FrozenEncoder(create_backbone("resnet8"), "head", proj_hidden_dim=64, proj_dim=16)
    with pytest.raises(ConfigError, match=r"shape mismatches \[layers.0.bias \(32,\) vs \(64,\)"):
        frozen.load_pretrained_state(moco_state(), "moco.ckpt")
