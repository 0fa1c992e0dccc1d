import pytest
import torch
from tests_support import normalize_error

from distill.errors import ConfigError
from distill.modules import KeyQueue


@pytest.mark.numerics
def test_enqueue_writes_at_the_pointer_and_wraps_around():
    queue = KeyQueue(5, 2, track_labels=True)
    initial = queue.keys.clone()
    # Random unit keys: normalised, then measured, twice the normalisation's error.
    torch.testing.assert_close(
        initial.norm(dim=1), torch.ones(5), rtol=0, atol=2 * normalize_error(2)
    )
    first, second = torch.arange(6.0).view(3, 2), -torch.arange(1.0, 7.0).view(3, 2)
    queue.enqueue(first, torch.tensor([1, 2, 3]))
    assert int(queue.pointer) == 3 and int(queue.filled) == 3 and not queue.is_full
    assert torch.equal(queue.valid(), torch.tensor([True, True, True, False, False]))
    assert torch.equal(queue.keys[:3], first) and torch.equal(queue.keys[3:], initial[3:])
    queue.enqueue(second)  # slots 3, 4, then 0
    assert int(queue.pointer) == 1 and queue.is_full and queue.valid().all()
    expected = torch.stack([second[2], first[1], first[2], second[0], second[1]])
    assert torch.equal(queue.keys, expected)
    assert torch.equal(queue.labels, torch.tensor([-1, 2, 3, -1, -1]))


def test_more_keys_than_slots_keeps_the_newest():
    queue = KeyQueue(4, 1)
    queue.enqueue(torch.zeros(2, 1))
    queue.enqueue(torch.arange(1.0, 7.0).view(6, 1))  # rows 1..6 written from slot 2 on
    # Written one by one, row r lands in slot (2 + r - 1) % 4: 3, 4, 5, 6 survive.
    assert torch.equal(queue.keys.flatten(), torch.tensor([3.0, 4.0, 5.0, 6.0]))
    assert int(queue.pointer) == (2 + 6) % 4


def test_queues_fed_the_same_counts_stay_aligned():
    student, teacher = KeyQueue(7, 3), KeyQueue(7, 5, track_labels=True)
    for step, count in enumerate([3, 4, 2, 5]):
        ids = torch.arange(count) + 10 * step
        student.enqueue(ids.float().unsqueeze(1).expand(count, 3))
        teacher.enqueue(ids.float().unsqueeze(1).expand(count, 5), ids)
    assert torch.equal(student.pointer, teacher.pointer)
    assert torch.equal(student.keys[:, 0].long(), teacher.labels)
    assert torch.equal(teacher.keys[:, 0].long(), teacher.labels)


def test_state_is_in_buffers_and_a_loaded_queue_goes_on_from_it():
    queue = KeyQueue(3, 2, track_labels=True)
    queue.enqueue(torch.ones(2, 2), torch.tensor([4, 5]))
    restored = KeyQueue(3, 2, track_labels=True)
    restored.load_state_dict(queue.state_dict())
    assert set(queue.state_dict()) == {"keys", "pointer", "filled", "labels"}
    for name, value in queue.state_dict().items():
        assert torch.equal(restored.state_dict()[name], value)
    # The pointer and count the steps use are read back from the loaded buffers.
    for q in (queue, restored):
        assert not q.is_full and q.valid().tolist() == [True, True, False]
        q.enqueue(torch.full((2, 2), 7.0), torch.tensor([6, 7]))  # slots 2, then 0
    assert torch.equal(restored.keys, queue.keys) and torch.equal(restored.labels, queue.labels)
    assert restored.is_full and int(restored.pointer) == 1


@pytest.mark.parametrize(("size", "dim", "key"), [(0, 4, "queue_size=0"), (4, 0, "dim=0")])
def test_bad_sizes_are_refused(size, dim, key):
    with pytest.raises(ConfigError, match=f"{key}; valid: a positive"):
        KeyQueue(size, dim)
