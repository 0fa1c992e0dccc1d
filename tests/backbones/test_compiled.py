import copy

import pytest
import torch
import torch.nn.functional as F
from tests_support import NETWORK64_TOL

from distill.backbones import create_backbone, to_channels_last
from distill.backbones.compiled import compile_backbones
from distill.modules import Classifier


class CountingBackend:
    """A ``torch.compile`` backend that runs the captured graphs eagerly and counts them."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, graph: torch.fx.GraphModule, example_inputs):
        self.graphs += 1
        return graph.forward


def classifier(seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    return Classifier(create_backbone("resnet8"), 5)


@pytest.mark.numerics
@pytest.mark.compiles
def test_compiled_training_step_equals_eager_in_float64():
    """Inductor's kernels (fused batch norms and activations, reordered reductions) against
    eager ones on the same float64 network, both ways in a training step and in evaluation:
    a whole network compared two ways, within NETWORK64_TOL (see tests_support); a wrong
    fusion, decomposition or statistic would move them by more than 1e-3."""
    eager = classifier().double()
    to_channels_last(eager)  # as a fit runs it (channels_last: true)
    compiled = copy.deepcopy(eager)
    assert compile_backbones(compiled) == [compiled.backbone]
    images = torch.randn(
        8, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    targets = torch.arange(8) % 5
    outputs = {}
    for name, model in (("eager", eager), ("compiled", compiled)):
        logits = model(images)
        F.cross_entropy(logits, targets).backward()
        with torch.no_grad():
            evaluated = model.eval()(images)
        grads = {k: p.grad for k, p in model.named_parameters()}
        outputs[name] = (logits.detach(), evaluated, grads, model.state_dict())
    (logits, evaluated, grads, state), expected = outputs["compiled"], outputs["eager"]
    tol = dict(rtol=NETWORK64_TOL, atol=NETWORK64_TOL)
    torch.testing.assert_close(logits, expected[0], **tol)
    torch.testing.assert_close(evaluated, expected[1], **tol)
    assert set(grads) == set(expected[2])
    for key, grad in grads.items():
        torch.testing.assert_close(grad, expected[2][key], msg=key, **tol)
    for key, value in state.items():  # the running statistics the training step updated
        torch.testing.assert_close(value, expected[3][key], msg=key, **tol)
    assert state["backbone.bn1.num_batches_tracked"] == 1


def test_state_dict_parameters_and_hooks_stay_those_of_the_eager_network():
    model = classifier()
    state = model.state_dict(keep_vars=True)
    backend = CountingBackend()
    compile_backbones(model, backend=backend)
    # The same keys (no _orig_mod.) holding the same tensors: checkpoints fit either way.
    assert list(model.state_dict(keep_vars=True)) == list(state)
    assert all(v is state[k] for k, v in model.state_dict(keep_vars=True).items())
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = classifier().backbone.eval()(images)
    model.eval()
    # A hook added and removed every call, as the methods' feature hooks are, sees each
    # call's output: hooks run outside the compiled forward, never traced into it.
    seen = []
    for scale in (1.0, 2.0, 3.0):
        handle = model.backbone.register_forward_hook(
            lambda module, args, out, scale=scale: seen.append(scale * out)
        )
        with torch.no_grad():
            model(images)
        handle.remove()
        torch.testing.assert_close(seen[-1], scale * expected)
    # The backbone ran compiled, one graph for the three calls: its hooks, new at each call,
    # are not traced into it (with nn.Module.compile each would recompile it).
    assert backend.graphs == 1
    with torch.no_grad():
        model(images)
    assert len(seen) == 3  # the removed hooks stay removed


def test_a_copy_of_a_compiled_backbone_runs_its_own_weights():
    model = classifier()
    backend = CountingBackend()
    compile_backbones(model, backend=backend)
    copied = copy.deepcopy(model).eval()
    with torch.no_grad():
        for param in copied.backbone.parameters():
            param.mul_(0.5)
    images = torch.randn(4, 3, 32, 32)
    eager = copy.deepcopy(copied)
    with torch.no_grad():
        # The copy's forward is the compiled function bound to the copy, not the original.
        assert copied.backbone.forward.__self__ is copied.backbone
        expected = type(eager.backbone).forward(eager.backbone, images)
        torch.testing.assert_close(copied.backbone(images), expected)
        assert not torch.allclose(model.eval().backbone(images), expected)
    assert backend.graphs >= 1


def test_only_backbones_are_compiled_and_only_once():
    model = classifier()
    backend = CountingBackend()
    assert compile_backbones(model, backend=backend) == [model.backbone]
    forward = model.backbone.forward
    assert compile_backbones(model, backend=backend) == []
    assert model.backbone.forward is forward
    assert "forward" not in vars(model.head) and "forward" not in vars(model)
