import math

import pytest
import torch
from tests_support import EPS32, normalize_error

from distill.modules.memory_bank import MomentumMemoryBank, last_occurrence

pytestmark = pytest.mark.numerics
# The float64 update from the same float32 rows: one rounding of m·row + (1 − m)·z per entry
# (m = 0.5 scales exactly), then the normalisation.
UPDATE_ERROR = EPS32 + normalize_error(4)


def test_initial_rows_are_uniform_in_the_reference_range():
    torch.manual_seed(0)
    bank = MomentumMemoryBank(2000, 128)
    bound = 1 / math.sqrt(128 / 3)
    assert bank.rows.min() >= -bound and bank.rows.max() <= bound
    assert abs(bank.rows.norm(dim=1).mean().item() - 1.0) < 0.02  # E‖row‖² = 1


def test_update_follows_the_momentum_formula_and_keeps_unit_norm():
    torch.manual_seed(0)
    bank = MomentumMemoryBank(10, 4, momentum=0.5)
    before = bank.rows.clone().double()
    indices = torch.tensor([7, 2, 5])
    new = torch.nn.functional.normalize(torch.randn(3, 4), dim=1)
    bank.update(indices, new)
    for row, index in enumerate(indices.tolist()):
        mixed = 0.5 * before[index] + 0.5 * new[row].double()
        expected = mixed / mixed.norm()
        torch.testing.assert_close(bank.rows[index].double(), expected, rtol=0, atol=UPDATE_ERROR)
    untouched = [i for i in range(10) if i not in indices.tolist()]
    assert torch.equal(bank.rows[untouched].double(), before[untouched])
    norms = bank.rows[indices].norm(dim=1)  # normalised, then measured: twice the error
    torch.testing.assert_close(norms, torch.ones(3), rtol=0, atol=2 * normalize_error(4))


def test_rows_are_a_checkpointed_buffer():
    bank = MomentumMemoryBank(5, 3)
    assert "rows" in bank.state_dict()
    other = MomentumMemoryBank(5, 3)
    other.load_state_dict(bank.state_dict())
    assert torch.equal(other(torch.arange(5)), bank.rows)


def test_repeated_index_takes_its_last_occurrence_only():
    torch.manual_seed(0)
    bank = MomentumMemoryBank(6, 4, momentum=0.5)
    before = bank.rows.clone().double()
    indices = torch.tensor([3, 1, 3, 5, 3])
    new = torch.nn.functional.normalize(torch.randn(5, 4), dim=1)
    bank.update(indices, new)
    for index, row in ((3, 4), (1, 1), (5, 3)):  # row 4 is index 3's last occurrence
        mixed = 0.5 * before[index] + 0.5 * new[row].double()
        expected = mixed / mixed.norm()
        torch.testing.assert_close(bank.rows[index].double(), expected, rtol=0, atol=UPDATE_ERROR)
    assert torch.equal(last_occurrence(indices), torch.tensor([4, 1, 4, 3, 4]))


def test_a_float64_bank_mixes_in_float64():
    # Under 64-true precision the embeddings are not rounded to float32 on their way in.
    torch.manual_seed(1)
    bank = MomentumMemoryBank(6, 4, momentum=0.5).double()
    before = bank.rows.clone()
    new = torch.nn.functional.normalize(torch.randn(2, 4, dtype=torch.float64), dim=1)
    bank.update(torch.tensor([4, 1]), new)
    for row, index in enumerate([4, 1]):
        mixed = 0.5 * before[index] + 0.5 * new[row]
        torch.testing.assert_close(bank.rows[index], mixed / mixed.norm(), rtol=0, atol=1e-15)
