"""Every layout gives the network asked for with its weights unchanged, and a report naming
the layout, the network taken and what was left out.

The files are written here in each project's layout from randomly initialised torchvision
ResNet-18s (two seeds: the network asked for and the one beside it), so a wrong choice or
a wrong key mapping shows as different tensors.
"""

import argparse

import pytest
import torch
import torchvision
from torch import nn

from distill.errors import ConfigError
from distill.methods import DINO
from distill.modules.weights import HEAD_HINT
from distill.teachers import TeacherSpec, build_momentum_teacher, build_teacher

RESNET18 = "torchvision:resnet18"
#: Tensors of a ResNet-18 without its classifier (weights and batch-norm buffers).
BACKBONE_TENSORS = 120


def resnet18(seed: int, num_classes: int = 10) -> dict[str, torch.Tensor]:
    """A random torchvision ResNet-18's state dict, classifier ``fc`` included."""
    torch.manual_seed(seed)
    return torchvision.models.resnet18(num_classes=num_classes).state_dict()


def features(state: dict) -> dict:
    """Without the classifier ``fc``."""
    return {key: value for key, value in state.items() if not key.startswith("fc.")}


def under(prefix: str, state: dict) -> dict:
    return {f"{prefix}{key}": value for key, value in state.items()}


def moco_v2_head(seed: int, width: int = 512, dim: int = 16) -> dict:
    """MoCo v2's ``fc``: Linear, ReLU, Linear (keys 0.* and 2.*)."""
    torch.manual_seed(seed)
    head = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, dim))
    return head.state_dict()


def batch_norm_projector(seed: int, width: int = 512, dim: int = 16) -> dict:
    """A projector with batch norm (MoCo v3's, solo-learn's, SwAV's): no MoCo-v2 head."""
    torch.manual_seed(seed)
    head = nn.Sequential(
        nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, dim)
    )
    return head.state_dict()


def load(path, embedding="backbone", network="auto", num_classes=None, **spec):
    """The teacher the spec gives, loaded, and its report."""
    config = dict(architecture=RESNET18, weights=str(path), network=network, embedding=embedding)
    teacher = build_teacher(TeacherSpec.from_config({**config, **spec}), num_classes, None, 16)
    report = teacher.weights.load()
    return teacher.network, report


def assert_same(module: nn.Module, expected: dict) -> None:
    own = module.state_dict()
    assert own.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(own[key], value), key


def official_moco(path, query: dict, key: dict, head: dict, key_head: dict | None = None):
    """facebookresearch/moco's main_moco.py checkpoint (MoCo v2: ``fc`` is an MLP, MoCo v1:
    one linear layer)."""
    state = {
        **under("module.encoder_q.", features(query)),
        **under("module.encoder_q.fc.", head),
        **under("module.encoder_k.", features(key)),
        **under("module.encoder_k.fc.", key_head or head),
        "module.queue": torch.randn(16, 32),
        "module.queue_ptr": torch.zeros(1, dtype=torch.long),
    }
    torch.save(
        {
            "epoch": 200,
            "arch": "resnet18",
            "state_dict": state,
            "optimizer": {"state": {}, "param_groups": []},
        },
        path,
    )
    return path


def test_official_moco_gives_the_query_or_the_key_encoder(tmp_path):
    query, key, head = resnet18(0), resnet18(1), moco_v2_head(2)
    path = official_moco(tmp_path / "moco_v2_200ep.pth.tar", query, key, head)
    network, report = load(path)
    assert_same(network.backbone, features(query))
    assert report.format == "MoCo v1/v2 (official)" and report.others == ["key"]
    assert report.network == "query encoder (module.encoder_q.*)"
    assert report.loaded == {"backbone": BACKBONE_TENSORS}
    assert report.left_out == [
        ("module.encoder_k.*", BACKBONE_TENSORS + 4, "the key encoder"),
        ("module.queue, module.queue_ptr", 2, "the queue"),
        ("module.encoder_q.fc.*", 4, "the projection head (the teacher's backbone is read)"),
    ]
    network, report = load(path, network="key")
    assert_same(network.backbone, features(key))
    # MoCo v2's MLP is a MoCo-v2 head: a teacher that reads its head gets it, unchanged.
    network, report = load(path, embedding="head")
    assert_same(network.head, {f"layers.{name}": value for name, value in head.items()})
    assert report.loaded == {"backbone": BACKBONE_TENSORS, "head": 4}


def test_official_moco_v1_leaves_its_linear_projection_out(tmp_path):
    query = resnet18(0)
    projection = {"weight": torch.randn(16, 512), "bias": torch.randn(16)}  # v1's fc: 128-d
    path = official_moco(
        tmp_path / "moco_v1_200ep_pretrain.pth.tar", query, resnet18(1), projection
    )
    network, report = load(path)
    assert_same(network.backbone, features(query))
    why = "a projection head (neither a classifier nor a MoCo-v2 head)"
    assert ("module.encoder_q.fc.*", 2, why) in report.left_out
    with pytest.raises(ConfigError, match="its head module.encoder_q.fc.\\* is not one"):
        load(path, embedding="head")  # nor the teacher's logits: it classifies nothing


def test_a_momentum_teacher_takes_moco_s_query_and_key_encoders_with_their_heads(tmp_path):
    query, key, head, key_head = resnet18(0), resnet18(1), moco_v2_head(2), moco_v2_head(3)
    path = official_moco(tmp_path / "moco.pth.tar", query, key, head, key_head)
    config = dict(architecture=RESNET18, weights=str(path), embedding="head")
    teacher = build_momentum_teacher(TeacherSpec.from_config(config), True, 512, 16, 20)
    report = teacher.weights.load()
    encoder = teacher.network
    assert_same(encoder.backbone, features(query))
    assert_same(encoder.key_backbone, features(key))
    assert_same(encoder.head, {f"layers.{k}": v for k, v in head.items()})
    assert_same(encoder.key_head, {f"layers.{k}": v for k, v in key_head.items()})
    assert report.network == "query encoder (module.encoder_q.*) with its key encoder"
    assert report.loaded == {"backbone": BACKBONE_TENSORS, "head": 4, "key encoder": 124}
    assert report.left_out == [("module.queue, module.queue_ptr", 2, "the queue")]


def test_an_imagenet_checkpoint_fed_the_students_statistics_gets_a_note(tmp_path):
    path = official_moco(tmp_path / "moco.pth.tar", resnet18(0), resnet18(1), moco_v2_head(2))
    _, report = load(path, architecture="resnet18")  # distill's: the student's statistics
    assert report.notes == [
        "MoCo v1/v2 (official) networks were trained on ImageNet-normalised images, but this "
        "teacher is fed the student's statistics; set teacher.mean, teacher.std (and "
        "image_size) to the ImageNet ones, or use a torchvision: architecture, which takes them "
        "from torchvision's metadata"
    ]
    assert load(path)[1].notes == []  # torchvision:resnet18 takes ImageNet's from torchvision


def test_official_moco_v3_gives_the_base_encoder_and_leaves_out_projector_and_predictor(
    tmp_path,
):
    query, key = resnet18(0), resnet18(1)
    projector = batch_norm_projector(2)
    state = {
        **under("module.base_encoder.", features(query)),
        **under("module.base_encoder.fc.", projector),
        **under("module.momentum_encoder.", features(key)),
        **under("module.momentum_encoder.fc.", projector),
        **under("module.predictor.", batch_norm_projector(3, 16, 16)),
    }
    path = tmp_path / "r-50-300ep.pth.tar"
    torch.save({"epoch": 300, "arch": "resnet18", "state_dict": state}, path)
    network, report = load(path)
    assert_same(network.backbone, features(query))
    assert report.format == "MoCo v3 (official)"
    assert (
        "module.base_encoder.fc.*",
        len(projector),
        "a projection head (neither a classifier nor a MoCo-v2 head)",
    ) in report.left_out
    predictor = len(state) - 2 * len(features(query)) - 2 * len(projector)
    assert ("module.predictor.*", predictor, "MoCo v3's predictor") in report.left_out
    assert_same(load(path, network="key")[0].backbone, features(key))
    with pytest.raises(
        ConfigError,
        match="has no MoCo-v2 projection head .*its head "
        r"module.base_encoder.fc.\* is not one",
    ):
        load(path, embedding="head")


def test_official_dino_gives_the_ema_teacher_unless_the_student_is_asked_for(tmp_path):
    teacher, student = resnet18(0), resnet18(1)
    dino_head = {"mlp.0.weight": torch.randn(8, 512), "last_layer.weight_g": torch.ones(32, 1)}
    checkpoint = {
        "teacher": {**under("backbone.", features(teacher)), **under("head.", dino_head)},
        "student": {
            **under("module.backbone.", features(student)),
            **under("module.head.", dino_head),
        },
        "optimizer": {"state": {}, "param_groups": []},
        "epoch": 100,
        "args": argparse.Namespace(arch="resnet18", out_dim=32),  # as main_dino.py saves it
        "dino_loss": {"center": torch.zeros(1, 32)},
    }
    path = tmp_path / "checkpoint.pth"
    torch.save(checkpoint, path)
    network, report = load(path)
    assert_same(network.backbone, features(teacher))
    assert report.format == "DINO (official)" and report.others == ["student"]
    assert report.network == "teacher (the EMA teacher DINO evaluates)"
    assert report.left_out == [
        ("student.*", BACKBONE_TENSORS + 2, "the student"),
        ("teacher.head.*", 2, "a projection head (neither a classifier nor a MoCo-v2 head)"),
    ]
    assert_same(load(path, network="student")[0].backbone, features(student))
    with pytest.raises(ConfigError) as error:
        load(path, network="query")
    assert str(error.value) == (
        f"model.init_args.teacher.weights: {path} is a DINO checkpoint: network='query' is not "
        "in it; valid: auto (= teacher), teacher (the EMA teacher DINO evaluates), student "
        "(the DINO student)"
    )


def test_a_distill_dino_checkpoint_gives_its_ema_teacher(tmp_path):
    # The run's teacher has moved away from its student, as the EMA does during training.
    torch.manual_seed(0)
    dino = DINO(
        backbone="resnet8", output_dim=64, hidden_dim=32, bottleneck_dim=16, lr_reference_batch=None
    )
    with torch.no_grad():
        for parameter in dino.teacher.backbone.parameters():
            parameter.add_(1.0)
    path = tmp_path / "last.ckpt"
    torch.save(
        {
            "state_dict": dino.state_dict(),
            "hyper_parameters": {"_class_path": "distill.methods.DINO"},
        },
        path,
    )
    network, report = load(path, architecture="resnet8")
    assert_same(network.backbone, dino.teacher.backbone.state_dict())
    assert report.format == "distill checkpoint (DINO)" and report.others == ["student"]
    network, _ = load(path, architecture="resnet8", network="student")
    assert_same(network.backbone, dino.student.backbone.state_dict())


def lightning_checkpoint(state: dict) -> dict:
    return {
        "pytorch-lightning_version": "2.4.0",
        "epoch": 9,
        "global_step": 100,
        "state_dict": state,
        "hyper_parameters": {"lr": 0.06},
    }


def test_lightly_checkpoint_with_a_sequential_backbone(tmp_path):
    # lightly's examples: backbone = nn.Sequential(*list(resnet.children())[:-1]), MoCo's
    # projection_head (a MoCo-v2 head in lightly's names) and their momentum copies.
    query, key, head = resnet18(0), resnet18(1), moco_v2_head(2)

    def sequential(state: dict) -> dict:
        torch.manual_seed(0)
        resnet = torchvision.models.resnet18(num_classes=10)
        resnet.load_state_dict(state)
        return nn.Sequential(*list(resnet.children())[:-1]).state_dict()

    lightly_head = {f"layers.{name}": value for name, value in head.items()}
    state = {
        **under("backbone.", sequential(query)),
        **under("projection_head.", lightly_head),
        **under("backbone_momentum.", sequential(key)),
        **under("projection_head_momentum.", lightly_head),
    }
    path = tmp_path / "lightly_moco.ckpt"
    torch.save(lightning_checkpoint(state), path)
    network, report = load(path, embedding="head")
    assert_same(network.backbone, features(query))
    assert_same(network.head, lightly_head)
    assert report.format == "lightly" and report.network == "query (backbone.*)"
    assert report.left_out == [
        ("backbone_momentum.*", BACKBONE_TENSORS, "not read"),
        ("projection_head_momentum.*", 4, "not read"),
    ]
    assert_same(load(path, network="key")[0].backbone, features(key))


class SoloConfig:
    """Stands for solo-learn's omegaconf config in its checkpoints' hyper-parameters."""


def test_solo_learn_checkpoint_gives_the_backbone_and_its_online_classifier(tmp_path):
    query, key = resnet18(0), resnet18(1)
    classifier = {"weight": torch.randn(10, 512), "bias": torch.randn(10)}
    state = {
        **under("backbone.", features(query)),
        **under("projector.", batch_norm_projector(2)),
        **under("momentum_backbone.", features(key)),
        **under("momentum_projector.", batch_norm_projector(2)),
        **under("classifier.", classifier),
    }
    path = tmp_path / "byol-cifar10.ckpt"
    torch.save(lightning_checkpoint(state), path)
    network, report = load(path, embedding="logits", num_classes=10)
    assert_same(network, {**under("backbone.", features(query)), **under("head.", classifier)})
    assert report.format == "solo-learn" and report.loaded["classifier"] == 2
    assert_same(load(path, network="key")[0].backbone, features(key))
    # solo-learn saves its omegaconf config too, which a weights-only load refuses.
    torch.save({**lightning_checkpoint(state), "hyper_parameters": {"cfg": SoloConfig()}}, path)
    with pytest.raises(
        ConfigError,
        match=r"refuses .*save them alone from a file you trust: "
        r"python -c .*torch.save\(c\['state_dict'\]",
    ):
        load(path)


def test_swav_drops_its_projection_head_and_prototypes(tmp_path):
    weights = resnet18(0)
    state = under(
        "module.",
        {
            **features(weights),
            **under("projection_head.", batch_norm_projector(1)),
            "prototypes.weight": torch.randn(30, 16),
        },
    )
    path = tmp_path / "swav_800ep_pretrain.pth.tar"
    torch.save(state, path)
    network, report = load(path)
    assert_same(network.backbone, features(weights))
    assert report.format == "SwAV (official)"
    assert ("module.prototypes.*", 1, "SwAV's prototypes") in report.left_out


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_plain_state_dict_gives_backbone_and_classifier(tmp_path, suffix):
    weights = resnet18(0)
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        pytest.importorskip("safetensors.torch").save_file(weights, path)  # the [timm] extra
    else:
        torch.save(weights, path)
    network, report = load(path, embedding="logits", num_classes=10)
    expected_head = {"weight": weights["fc.weight"], "bias": weights["fc.bias"]}
    assert_same(network, {**under("backbone.", features(weights)), **under("head.", expected_head)})
    assert report.format == ("safetensors state dict" if suffix == ".safetensors" else "state dict")
    assert report.loaded == {"backbone": BACKBONE_TENSORS, "classifier": 2}
    _, report = load(path)  # the features alone: the classifier is left out, and said so
    assert report.left_out == [("fc.*", 2, "the classifier (the teacher's backbone is read)")]


def test_keys_that_do_not_fit_are_one_message_listing_them(tmp_path):
    path = official_moco(tmp_path / "moco.pth.tar", resnet18(0), resnet18(1), moco_v2_head(2))
    with pytest.raises(ConfigError) as error:
        load(path, architecture="torchvision:resnet34")
    message = str(error.value)
    assert message.startswith(
        f"model.init_args.teacher.weights: weights in '{path}' do not fit the TeacherNetwork: "
        "missing keys [backbone.layer1.2.bn1.bias, "
    )
    assert "unexpected keys []" in message and message.count("\n") == 0


def test_a_logits_teacher_from_a_file_without_classifier_is_refused(tmp_path):
    path = official_moco(tmp_path / "moco.pth.tar", resnet18(0), resnet18(1), moco_v2_head(2))
    with pytest.raises(
        ConfigError,
        match=r"moco.pth.tar \(MoCo v1/v2 \(official\), query encoder "
        r".*\) has no linear classifier, so it cannot give the teacher's logits",
    ):
        load(path, embedding="logits", num_classes=10)


def test_a_head_the_file_lacks_is_refused_never_random(tmp_path):
    path = tmp_path / "supervised.pth"
    torch.save(resnet18(0), path)
    with pytest.raises(ConfigError) as error:
        load(path, embedding="head")
    assert str(error.value) == (
        f"model.init_args.teacher.weights: {path} (state dict, the network) has no MoCo-v2 "
        "projection head (Linear, ReLU, Linear), which model.init_args.teacher.embedding=head "
        "reads. A frozen teacher's head must come from its weights, never a random "
        "initialisation: read its backbone features with model.init_args.teacher.embedding="
        "backbone, or give a checkpoint that holds the head (a MoCo-v2 run)"
    )


def test_a_head_of_other_widths_is_refused_naming_the_widths_to_set(tmp_path):
    path = official_moco(tmp_path / "moco.pth", resnet18(0), resnet18(1), moco_v2_head(2))
    spec = dict(architecture=RESNET18, weights=str(path), embedding="head")
    teacher = build_teacher(TeacherSpec.from_config(spec), None, None, 32)  # the file's is 16
    with pytest.raises(ConfigError) as error:
        teacher.weights.load()
    message = str(error.value)
    assert "head.layers.2.weight (16, 512) vs (32, 512)" in message
    assert message.endswith(HEAD_HINT) and "backbone name" not in message


def test_a_state_dict_has_one_network(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(resnet18(0), path)
    with pytest.raises(
        ConfigError,
        match=r"is a state dict, one network: network='teacher' "
        "cannot choose among others; valid: auto",
    ):
        load(path, network="teacher")
