"""A frozen teacher trains nothing, moves no statistic and runs under inference mode."""

import torch
import torch.nn.functional as F

from distill.backbones import create_backbone
from distill.teachers import TeacherNetwork, frozen_forward


def network(**kwargs) -> TeacherNetwork:
    torch.manual_seed(0)
    return TeacherNetwork(create_backbone("resnet8"), **{"num_classes": 10, **kwargs})


def test_a_frozen_teacher_is_in_eval_mode_without_gradients_and_keeps_its_statistics():
    teacher = network()
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()  # Lightning puts the whole model in training mode every epoch
    assert not any(m.training for m in teacher.modules())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    teacher(torch.randn(8, 3, 32, 32))
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, before[name]), name  # batch-norm statistics included


def test_a_frozen_teacher_runs_under_inference_mode_and_hands_out_ordinary_tensors():
    teacher = network()
    modes = []
    teacher.backbone.register_forward_hook(
        lambda *_: modes.append(torch.is_inference_mode_enabled())
    )
    embedding, logits = teacher.forward_features(torch.randn(4, 3, 32, 32))
    assert modes == [True]
    assert not embedding.is_inference() and not logits.is_inference()
    # A loss on them trains the student: autograd may save them for the backward pass.
    student = torch.randn(4, 10, requires_grad=True)
    F.kl_div(F.log_softmax(student, 1), F.softmax(logits, 1), reduction="batchmean").backward()
    assert student.grad is not None


def test_an_online_teacher_trains():
    teacher = network(frozen=False)
    teacher.train()
    assert teacher.training and all(p.requires_grad for p in teacher.parameters())
    modes = []
    teacher.backbone.register_forward_hook(
        lambda *_: modes.append(torch.is_inference_mode_enabled())
    )
    teacher(torch.randn(4, 3, 32, 32)).sum().backward()
    assert modes == [False] and teacher.head.weight.grad is not None


def test_the_embedding_decides_the_head():
    x = torch.randn(2, 3, 32, 32)
    features = network(embedding="backbone")
    assert not any(k.startswith("head.") for k in features.state_dict())
    embedding, logits = features.forward_features(x)
    assert embedding.shape == (2, features.num_features) and logits is None
    projected = network(embedding="head", proj_hidden_dim=32, proj_dim=8)
    assert projected.num_features == 8 and projected(x).shape == (2, 8)
    classifier = network()
    embedding, logits = classifier.forward_features(x)
    assert classifier.num_classes == 10 and logits.shape == (2, 10)
    torch.testing.assert_close(logits, classifier.head(embedding), rtol=0, atol=0)


def test_frozen_forward_clones_its_outputs_out_of_inference_mode():
    outputs = frozen_forward(lambda x: {"a": x * 2, "b": [x + 1, "text"]}, torch.ones(3))
    assert not outputs["a"].is_inference() and not outputs["b"][0].is_inference()
    assert outputs["b"][1] == "text" and torch.equal(outputs["a"], torch.full((3,), 2.0))
