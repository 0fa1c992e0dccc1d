import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tests_support import EPS32, TRANSCENDENTAL, dot_error, normalize_error

from distill.errors import ConfigError
from distill.eval.knn import KNNEval, knn_class_scores


def reference_scores(bank, bank_labels, queries, num_classes, k, temperature):
    """Direct float64 weighted k-NN, one query at a time."""
    bank = bank.double() / bank.double().norm(dim=1, keepdim=True)
    queries = queries.double() / queries.double().norm(dim=1, keepdim=True)
    out = torch.zeros(len(queries), num_classes, dtype=torch.float64)
    for q in range(len(queries)):
        sims = [(float(queries[q] @ bank[j]), j) for j in range(len(bank))]
        sims.sort(key=lambda s: -s[0])
        for sim, j in sims[:k]:
            out[q, int(bank_labels[j])] += math.exp(sim / temperature)
    return out


def score_rtol(dim, k, temperature):
    """Bound on the relative error of float32 class scores against ``reference_scores``: a
    cosine similarity (two normalisations and a dot product) over τ in exp, then a sum of up
    to k votes; valid when float32 picks the same neighbours (``assert_neighbours_decided``)."""
    return (similarity_error(dim) + EPS32) / temperature + TRANSCENDENTAL + k * EPS32


def similarity_error(dim):
    return dot_error(dim) + 2 * normalize_error(dim)


def assert_neighbours_decided(bank, queries, k):
    """Float32 finds the float64 k nearest: the k-th and (k + 1)-th similarities of every
    query lie more than two float32 similarity errors apart."""
    bank, queries = (F.normalize(x.double(), dim=1) for x in (bank, queries))
    ranked = (queries @ bank.T).sort(dim=1, descending=True).values
    assert (ranked[:, k - 1] - ranked[:, k] > 2 * similarity_error(bank.shape[1])).all()


@pytest.mark.numerics
def test_scores_match_direct_formula_for_each_k():
    torch.manual_seed(0)
    bank, labels = torch.randn(50, 8), torch.randint(0, 4, (50,))
    queries = torch.randn(13, 8)
    scores = knn_class_scores(bank, labels, queries, 4, ks=(3, 10), temperature=0.5, chunk_size=4)
    for k in (3, 10):
        assert_neighbours_decided(bank, queries, k)
        expected = reference_scores(bank, labels, queries, 4, k, 0.5)
        rtol = score_rtol(8, k, 0.5)
        torch.testing.assert_close(scores[k].double(), expected, rtol=rtol, atol=0)


@pytest.mark.numerics
def test_unlabelled_bank_rows_are_ignored_and_k_is_capped():
    bank = torch.eye(3)
    labels = torch.tensor([0, -1, 1])
    scores = knn_class_scores(bank, labels, torch.eye(3), 2, ks=(200,), temperature=1.0)[200]
    expected = reference_scores(bank[[0, 2]], labels[[0, 2]], torch.eye(3), 2, 2, 1.0)
    # Similarities of one-hot rows are exactly 0 or 1: one exp and a sum of two votes round.
    rtol = TRANSCENDENTAL + 2 * EPS32
    torch.testing.assert_close(scores.double(), expected, rtol=rtol, atol=0)


def clusters(num_classes=5, per_class=40, dim=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=generator) * 5
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    return centres[labels] + 0.3 * torch.randn(len(labels), dim, generator=generator), labels


def test_separable_features_are_classified_perfectly():
    bank, labels = clusters(seed=0)
    queries, query_labels = clusters(seed=0)
    queries = queries + 0.1 * torch.randn_like(queries)
    scores = knn_class_scores(bank, labels, queries, 5, ks=(20,))[20]
    assert (scores.argmax(1) == query_labels).float().mean() == 1.0


def test_random_labels_give_chance_accuracy():
    generator = torch.Generator().manual_seed(1)
    bank, queries = (
        torch.randn(2000, 32, generator=generator),
        torch.randn(2000, 32, generator=generator),
    )
    labels = torch.randint(0, 10, (2000,), generator=generator)
    query_labels = torch.randint(0, 10, (2000,), generator=generator)
    accuracy = knn_class_scores(bank, labels, queries, 10, ks=(20,))[20].argmax(1) == query_labels
    assert abs(accuracy.float().mean().item() - 0.1) < 0.03


@pytest.mark.parametrize(
    ("argument", "value", "valid"),
    [
        ("k", [], "one or more integers >= 1"),
        ("k", [20, 0], "one or more integers >= 1"),
        ("temperature", 0.0, "a number > 0"),  # exp(sim / 0): every vote infinite
        ("temperature", -0.07, "a number > 0"),  # the least similar neighbours would win
        ("every_n_epochs", 0, "an integer >= 1"),
        ("chunk_size", 0, "an integer >= 1"),
    ],
)
def test_bad_arguments_are_one_message_naming_the_key(argument, value, valid):
    with pytest.raises(ConfigError) as error:
        KNNEval(**{argument: value})
    key = f"trainer.callbacks.KNNEval.init_args.{argument}"
    assert str(error.value) == f"{key}={value!r}; valid: {valid}"


def test_callback_logs_one_on_separable_images_and_chance_on_shuffled(tmp_path):
    from tests_support import ColourDataModule, FrozenModel, run_validate

    exact = run_validate(FrozenModel(), ColourDataModule(), KNNEval(k=[5]), tmp_path)
    assert exact["val/knn_top1"] == 1.0 and exact["val/knn_k5_top1"] == 1.0
    shuffled = run_validate(
        FrozenModel(), ColourDataModule(shuffle_labels=True), KNNEval(k=[5]), tmp_path
    )
    assert shuffled["val/knn_top1"] < 0.5
    assert np.isfinite(shuffled["val/knn_top5"])


@pytest.mark.numerics
def test_accuracies_are_direct_counts_of_the_scores_for_each_k():
    from distill.eval.knn import knn_accuracies

    generator = torch.Generator().manual_seed(2)
    bank, labels = torch.randn(60, 8, generator=generator), torch.arange(60) % 6
    queries, query_labels = torch.randn(25, 8, generator=generator), torch.arange(25) % 6
    accuracies = knn_accuracies(bank, labels, queries, query_labels, 6, ks=(30, 60))
    assert_neighbours_decided(bank, queries, 30)  # k = 60 takes the whole bank
    for k in (30, 60):
        expected = reference_scores(bank, labels, queries, 6, k, 0.07)
        assert (expected > 0).all()  # every class voted: no ties in the top 5
        # Float32 ranks the classes as float64 does: the 1st and 2nd, and the 5th and 6th,
        # scores of every query differ by more than twice their float32 error.
        ranked = expected.sort(dim=1, descending=True).values
        rtol = score_rtol(8, k, 0.07)
        assert (ranked[:, 0] - ranked[:, 1] > 2 * rtol * ranked[:, 0]).all()
        assert (ranked[:, 4] - ranked[:, 5] > 2 * rtol * ranked[:, 4]).all()
        top1 = (expected.argmax(1) == query_labels).double().mean()
        top5 = (expected.topk(5, dim=1).indices == query_labels[:, None]).any(1).double().mean()
        assert accuracies[k] == pytest.approx({"top1": float(top1), "top5": float(top5)})


def test_a_dotted_submodule_evaluates_that_network_and_a_wrong_one_is_named():
    from distill.eval.features import resolve_submodule
    from distill.methods import MoCo

    model = MoCo(backbone="resnet8", proj_hidden_dim=16, proj_dim=8, queue_size=8)
    assert resolve_submodule(model, "student.key_backbone") is model.student.key_backbone
    assert resolve_submodule(model, "student") is model.student
    for name in ("student.key_backbon", "teacher", ""):
        with pytest.raises(ConfigError, match=f"has no submodule {name!r}; available: student"):
            resolve_submodule(model, name)
