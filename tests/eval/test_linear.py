import copy

import torch
from tests_support import ColourDataModule, FrozenModel, quiet_trainer

from distill.eval.linear import LinearProbe, fit_linear_classifier


def fit_with_probe(probe, root, epochs=3, **data):
    model = FrozenModel()
    before = copy.deepcopy(model.student.state_dict())
    trainer = quiet_trainer(root, max_epochs=epochs, callbacks=[probe])
    trainer.fit(model, datamodule=ColourDataModule(**data))
    return model, before, trainer


def test_probe_learns_without_touching_backbone_weights_or_buffers(tmp_path):
    probe = LinearProbe(lr=0.05)
    model, before, trainer = fit_with_probe(probe, tmp_path, epochs=4)
    after = model.student.state_dict()
    for name, value in before.items():
        assert torch.equal(value, after[name]), f"{name} changed"
    # The backbone's BN ran in eval mode only: its batch counter never moved.
    assert int(after["backbone.norm.num_batches_tracked"]) == 0
    assert trainer.callback_metrics["val/linear_top1"] == 1.0
    assert all(p.grad is None for p in model.student.parameters())


def test_probe_state_round_trips_through_checkpoint_hooks(tmp_path):
    probe = LinearProbe(lr=0.05)
    fit_with_probe(probe, tmp_path, epochs=1)
    state = copy.deepcopy(probe.state_dict())
    fresh = LinearProbe(lr=0.05)
    fresh.load_state_dict(state)  # before setup: kept until the classifier exists
    fit_with_probe(fresh, tmp_path / "again", epochs=0)
    for name, value in state["classifier"].items():
        assert torch.equal(fresh.classifier.state_dict()[name], value)


def test_offline_probe_reports_accuracy_after_fit(tmp_path):
    probe = LinearProbe(online=False, offline_epochs=100)
    fit_with_probe(probe, tmp_path, epochs=1)
    assert probe.offline_top1 == 1.0
    assert probe.classifier is not None and probe.optimizer.state == {}  # online part idle


def test_fit_linear_classifier_separates_clusters_and_not_noise():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 10, generator=generator) * 4
    labels = torch.arange(4).repeat_interleave(50)
    features = centres[labels] + torch.randn(200, 10, generator=generator)
    classifier = fit_linear_classifier(features, labels, 4, epochs=50)
    held_out = centres[labels] + torch.randn(200, 10, generator=generator)
    assert (classifier(held_out).argmax(1) == labels).float().mean() > 0.95
    noise = torch.randn(400, 10, generator=generator)
    random_labels = torch.randint(0, 4, (400,), generator=generator)
    classifier = fit_linear_classifier(noise[:200], random_labels[:200], 4, epochs=50)
    accuracy = (classifier(noise[200:]).argmax(1) == random_labels[200:]).float().mean()
    assert accuracy < 0.4


def test_fit_linear_classifier_skips_unlabelled_rows():
    features = torch.cat([torch.full((20, 2), 1.0), torch.full((20, 2), -1.0)])
    features = features + 0.01 * torch.randn(40, 2)
    labels = torch.cat([torch.zeros(20), torch.ones(20)]).long()
    labels[::2] = -1
    classifier = fit_linear_classifier(features, labels, 2, epochs=20)
    assert (classifier(features).argmax(1) == torch.cat([torch.zeros(20), torch.ones(20)])).all()


def test_student_and_teacher_probes_have_separate_checkpoint_entries():
    keys = {LinearProbe(submodule="student").state_key, LinearProbe(submodule="teacher").state_key}
    assert len(keys) == 2
