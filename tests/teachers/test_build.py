"""Teachers built from torchvision and timm: weights through the libraries' own APIs (their
downloads replaced by local files: no test touches the network), inputs from their metadata."""

import sys

import pytest
import torch
import torchvision

from distill.backbones import create_backbone
from distill.errors import ConfigError
from distill.teachers import TeacherSpec, build_momentum_teacher, build_teacher

timm = pytest.importorskip("timm")  # the [timm] extra (with safetensors); CI installs it
save_file = pytest.importorskip("safetensors.torch").save_file

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
VIT = "vit_tiny_patch16_224"


def spec(**config) -> TeacherSpec:
    return TeacherSpec.from_config(config)


def assert_same(module, expected: dict) -> None:
    own = module.state_dict()
    assert own.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(own[key], value), key


@pytest.fixture
def torchvision_download(monkeypatch, tmp_path):
    """torchvision's weight download replaced by a local file; returns the URLs asked for
    and the state dict (a random ResNet-18 of ImageNet's 1000 classes)."""
    torch.manual_seed(0)
    weights = torchvision.models.resnet18().state_dict()
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(weights, path)
    asked = []

    def load_state_dict_from_url(url, *args, **kwargs):
        asked.append(url)
        return torch.load(path, weights_only=True)

    monkeypatch.setattr(
        torchvision.models._api, "load_state_dict_from_url", load_state_dict_from_url
    )
    return asked, weights


def test_torchvision_weights_come_through_torchvisions_api(torchvision_download):
    asked, weights = torchvision_download
    teacher = build_teacher(
        spec(architecture="torchvision:resnet18", weights="IMAGENET1K_V1", embedding="logits"),
        num_classes=1000,
    )
    assert asked == []  # building reads nothing
    report = teacher.weights.load()
    assert asked == [torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url]
    head = {"head.weight": weights["fc.weight"], "head.bias": weights["fc.bias"]}
    backbone = {f"backbone.{k}": v for k, v in weights.items() if not k.startswith("fc.")}
    assert_same(teacher.network, {**backbone, **head})
    assert report.format == "torchvision weights"
    # What the teacher is fed comes from the same weights' metadata.
    inputs = teacher.inputs
    assert (inputs.mean, inputs.std, inputs.image_size) == (*IMAGENET, 224)
    assert inputs.origin == "torchvision's ResNet18_Weights.IMAGENET1K_V1 metadata"


def test_torchvision_weights_names_and_classes_are_checked_when_built():
    with pytest.raises(ConfigError) as error:
        build_teacher(
            spec(architecture="torchvision:resnet18", weights="IMAGENET1K_V9", embedding="backbone")
        )
    assert str(error.value) == (
        "model.init_args.teacher.weights='IMAGENET1K_V9': torchvision's resnet18 has the weights "
        "IMAGENET1K_V1, DEFAULT (or a file path)"
    )
    with pytest.raises(
        ConfigError,
        match=r"ResNet18_Weights.IMAGENET1K_V1 classifies 1000 "
        r"classes, but model.init_args.num_classes=10: logits are compared",
    ):
        build_teacher(
            spec(architecture="torchvision:resnet18", weights="DEFAULT", embedding="logits"),
            num_classes=10,
        )


def test_spec_inputs_override_the_metadata_one_by_one():
    teacher = build_teacher(
        spec(
            architecture="torchvision:resnet18",
            weights="DEFAULT",
            embedding="backbone",
            image_size=64,
        )
    )
    inputs = teacher.inputs
    assert (inputs.mean, inputs.std, inputs.image_size) == (*IMAGENET, 64)
    assert inputs.origin == (
        "image_size from the teacher spec, the rest from torchvision's "
        "ResNet18_Weights.IMAGENET1K_V1 metadata"
    )
    distill = build_teacher(spec(architecture="resnet8", weights="x.ckpt", embedding="backbone"))
    assert distill.inputs.is_identity  # distill's own teachers: the student's data


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_a_timm_file_loads_through_timms_pretrained_mechanism(tmp_path, suffix):
    torch.manual_seed(0)
    model = timm.create_model(VIT, num_classes=10, img_size=32)
    path = tmp_path / f"vit{suffix}"
    (save_file if suffix == ".safetensors" else torch.save)(model.state_dict(), path)
    teacher = build_teacher(
        spec(
            architecture=f"timm:{VIT}",
            weights=str(path),
            embedding="logits",
            kwargs={"img_size": 32},
        ),
        10,
    )
    teacher.weights.load()
    state = model.state_dict()
    backbone = {f"backbone.{k}": v for k, v in state.items() if not k.startswith("head.")}
    head = {"head.weight": state["head.weight"], "head.bias": state["head.bias"]}
    assert_same(teacher.network, {**backbone, **head})
    teacher.inputs.configure((0.5,) * 3, (0.5,) * 3)  # a student fed as timm feeds it
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(teacher.network(x), model.eval()(x), rtol=0, atol=0)
    # timm's pretrained config: its statistics, and the size this ViT was built for.
    inputs = teacher.inputs
    assert (inputs.mean, inputs.image_size, inputs.interpolation) == ((0.5,) * 3, 32, "bicubic")


def test_timm_resamples_a_checkpoints_position_embedding_to_the_models_size(tmp_path):
    # A DINO checkpoint of a ViT at 224 px taught at 32 px: timm's own checkpoint filter
    # resamples the position embedding, as timm.create_model(pretrained=True) would.
    torch.manual_seed(0)
    vit224 = timm.create_model(VIT, num_classes=0).state_dict()
    path = tmp_path / "dino_vit.pth"
    torch.save(
        {
            "teacher": {f"backbone.{k}": v for k, v in vit224.items()},
            "student": {f"module.backbone.{k}": v for k, v in vit224.items()},
        },
        path,
    )
    teacher = build_teacher(
        spec(
            architecture=f"timm:{VIT}",
            weights=str(path),
            embedding="backbone",
            kwargs={"img_size": 32},
        )
    )
    report = teacher.weights.load()
    assert report.format == "DINO (official)"
    expected = timm.create_model(
        VIT,
        num_classes=0,
        img_size=32,
        pretrained=True,
        pretrained_cfg_overlay=dict(state_dict=dict(vit224), num_classes=0),
    ).state_dict()
    assert teacher.network.backbone.pos_embed.shape == (1, 5, 192)
    assert_same(teacher.network.backbone, expected)


def test_timm_pretrained_reads_timms_hub(monkeypatch):
    torch.manual_seed(0)
    hub_weights = timm.create_model("resnet18").state_dict()
    asked = []

    def load_state_dict_from_hf(model_id, *args, **kwargs):
        asked.append(model_id)
        return dict(hub_weights)

    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_hf", load_state_dict_from_hf)
    teacher = build_teacher(
        spec(architecture="timm:resnet18", weights="pretrained", embedding="logits"),
        num_classes=1000,
    )
    report = teacher.weights.load()
    assert asked == [timm.models.get_pretrained_cfg("resnet18").hf_hub_id]
    assert report.source == "timm's pretrained resnet18 (hub cache)"
    assert torch.equal(teacher.network.head.weight, hub_weights["fc.weight"])
    assert torch.equal(teacher.network.backbone.conv1.weight, hub_weights["conv1.weight"])


def test_timm_weights_that_do_not_fit_are_listed(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "vit.safetensors"
    save_file(timm.create_model(VIT, num_classes=0, img_size=32).state_dict(), path)
    with pytest.raises(
        ConfigError,
        match=r"^model.init_args.teacher.weights: weights in "
        r".*vit.safetensors.* do not fit the VisionTransformer: missing keys \[\]; "
        r"unexpected keys \[\]; shape mismatches \[blocks.0.attn.proj.bias "
        r"\(192,\) vs \(384,\)",
    ):
        build_teacher(
            spec(
                architecture="timm:vit_small_patch16_224",
                weights=str(path),
                embedding="backbone",
                kwargs={"img_size": 32},
            )
        ).weights.load()


def test_without_timm_a_timm_teacher_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now fails
    with pytest.raises(ConfigError) as error:
        create_backbone("timm:resnet18")
    assert str(error.value) == (
        "timm models need the timm extra: pip install -e '.[timm]' (timm>=1.0, safetensors)"
    )


def test_a_teacher_left_out_of_checkpoints_must_be_frozen_and_have_weights():
    with pytest.raises(ConfigError, match=r"in_checkpoint=false needs a frozen teacher"):
        build_momentum_teacher(
            spec(architecture="resnet8", weights="t.ckpt", embedding="head", in_checkpoint=False),
            False,
            16,
            8,
            20,
        )
    with pytest.raises(ConfigError, match=r"in_checkpoint=false needs model.init_args.teacher"):
        build_momentum_teacher(
            spec(architecture="resnet8", embedding="head", in_checkpoint=False), True, 16, 8, 20
        )


def test_an_image_size_a_vit_does_not_take_is_refused_when_built():
    vit64 = {"img_size": 64, "patch_size": 16}
    fitting = build_teacher(
        spec(architecture=f"timm:{VIT}", weights="vit.pth", embedding="backbone", kwargs=vit64)
    )
    assert fitting.inputs.image_size == 64  # the size it was built for, by default
    with pytest.raises(ConfigError) as error:
        build_teacher(
            spec(architecture=f"timm:{VIT}", weights="vit.pth", embedding="backbone",
                 kwargs=vit64, image_size=32)
        )  # fmt: skip
    assert str(error.value) == (
        "model.init_args.teacher: timm:vit_tiny_patch16_224 takes 64x64 images only, but would "
        "be fed 32x32 (image_size from the teacher spec, the rest from timm's pretrained config "
        "of vit_tiny_patch16_224); set image_size: 64 in the teacher spec (a square size), or "
        "build it for that size (kwargs: {img_size: ...}) or for any (kwargs: "
        "{dynamic_img_size: true})"
    )
    dynamic = {**vit64, "dynamic_img_size": True}
    build_teacher(
        spec(architecture=f"timm:{VIT}", weights="vit.pth", embedding="backbone",
             kwargs=dynamic, image_size=32)
    )  # fmt: skip
