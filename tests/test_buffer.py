"""The ExIt task buffer: capacity/eviction invariants, softmax sampling, purity, checkpoint round trip."""
import copy

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from exit_jax.curriculum import buffer

scores_st = st.floats(min_value=0.0, max_value=0.25, allow_nan=False, width=32)
batches_st = st.lists(st.lists(scores_st, min_size=0, max_size=6), min_size=1, max_size=8)


def _insert_all(state, batches):
    counter = 0
    for batch in batches:
        payloads = [{"id": counter + i} for i in range(len(batch))]
        counter += len(batch)
        state, slots = buffer.insert(state, payloads, batch, depth=1, turn=1, created_at=0)
    return state


@settings(max_examples=60, deadline=None)
@given(capacity=st.integers(1, 6), batches=batches_st)
def test_size_bounded_and_top_scores_kept(capacity, batches):
    state = _insert_all(buffer.init(capacity), batches)
    flat = [s for b in batches for s in b]
    assert buffer.size(state) == min(capacity, len(flat)) <= capacity
    kept = sorted(state.scores[state.filled].tolist(), reverse=True)
    top = sorted(np.asarray(flat, np.float64).tolist(), reverse=True)[:capacity]
    assert kept == top
    # Each kept payload is one of the inserted entries and the uids are unique.
    uids = state.uid[state.filled]
    assert len(set(uids.tolist())) == uids.size


@settings(max_examples=60, deadline=None)
@given(capacity=st.integers(1, 6), batches=batches_st, kappa=st.floats(0.0, 50.0))
def test_probabilities_are_softmax_of_filled(capacity, batches, kappa):
    state = _insert_all(buffer.init(capacity), batches)
    p = buffer.probabilities(state, kappa)
    assert p.dtype == np.float64 and p.shape == (capacity,)
    assert np.all(p[~state.filled] == 0)
    if buffer.size(state):
        s = state.scores[state.filled]
        expected = np.exp(kappa * s) / np.exp(kappa * s).sum()
        np.testing.assert_allclose(p[state.filled], expected, rtol=1e-12)
        assert abs(p.sum() - 1.0) < 1e-12
    else:
        assert p.sum() == 0


@settings(max_examples=40, deadline=None)
@given(batches=batches_st, new=st.lists(scores_st, min_size=1, max_size=4))
def test_functions_never_mutate_their_input(batches, new):
    state = _insert_all(buffer.init(4), batches)
    before = copy.deepcopy(state)
    buffer.insert(state, [{"x": i} for i in range(len(new))], new, parent=3)
    if buffer.size(state):
        filled = np.flatnonzero(state.filled)
        buffer.sample(state, 0, 5, 10.0, iteration=7)
        buffer.update_scores(state, filled[:1], [0.2])
    buffer.probabilities(state, 10.0)
    assert buffer.equal(state, before)


def test_eviction_rule_replaces_lowest_only_when_not_lower():
    state, slots = buffer.insert(buffer.init(3), [{"a": 1}, {"a": 2}, {"a": 3}], [0.1, 0.05, 0.2])
    assert slots.tolist() == [0, 1, 2]
    state, slots = buffer.insert(state, [{"a": 4}], [0.01])
    assert slots.tolist() == [-1] and buffer.size(state) == 3
    state, slots = buffer.insert(state, [{"a": 5}], [0.05], task_id=9, parent=4, created_at=3)  # ties enter
    assert slots.tolist() == [1]
    assert buffer.payload(state, 1) == {"a": 5}
    # A rejected entry takes no uid, so this is the fourth uid (3).
    assert (state.task_id[1], state.parent[1], state.created_at[1], state.uid[1]) == (9, 4, 3, 3)
    # Within one call a later entry may evict an earlier one: the earlier slot is reported as -1.
    state, slots = buffer.insert(buffer.init(1), [{"a": 1}, {"a": 2}], [0.1, 0.2])
    assert slots.tolist() == [-1, 0] and buffer.payload(state, 0) == {"a": 2}


def test_sampling_frequencies_match_softmax_chi_square():
    scores = [0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.25]
    state, _ = buffer.insert(buffer.init(10), [{"i": i} for i in range(8)], scores)
    n = 40_000
    state2, slots = buffer.sample(state, 1234, n, kappa=10.0, iteration=5)
    counts = np.bincount(slots, minlength=10)
    assert counts[8:].sum() == 0  # empty slots are never drawn
    p = buffer.probabilities(state, 10.0)[:8]
    _, pvalue = scipy.stats.chisquare(counts[:8], n * p)
    assert pvalue > 1e-3
    # A wrong temperature is detected by the same test (the test can fail).
    _, pvalue_wrong = scipy.stats.chisquare(counts[:8], n * buffer.probabilities(state, 1.0)[:8])
    assert pvalue_wrong < 1e-6
    assert state2.times_sampled[:8].tolist() == counts[:8].tolist()
    assert np.all(state2.last_sampled[:8] == 5)


def test_update_scores_overwrites_and_validates():
    state, _ = buffer.insert(buffer.init(4), [{"i": 0}, {"i": 1}], [0.1, 0.2])
    new = buffer.update_scores(state, [1, 0, 1], [0.0, 0.25, 0.125])
    assert new.scores[:2].tolist() == [0.25, 0.125]
    with pytest.raises(ValueError, match="empty or out of range"):
        buffer.update_scores(state, [3], [0.1])
    with pytest.raises(ValueError, match="finite"):
        buffer.update_scores(state, [0], [float("nan")])


def test_checkpoint_round_trip_identical_including_payloads():
    state = buffer.init(5)
    payloads = [{"task_id": "t/0", "turns": [{"response": "x = {1}\n```", "depth": 0, "score": 0.5,
                                              "failed": False, "feedback": "ünïcode"}]},
                {"task_id": "t/1", "turns": []}, [1, 2.5, None, True], "plain"]
    state, _ = buffer.insert(state, payloads, [0.1, 0.2, 0.0, 0.25], task_id=[1, 2, 3, 4], depth=2, turn=1,
                             parent=[-1, 0, 1, 1], created_at=7)
    state, _ = buffer.sample(state, 0, 3, iteration=8)
    restored = buffer.from_bytes(buffer.to_bytes(state))
    assert buffer.equal(restored, state)
    assert all(getattr(restored, f).dtype == getattr(state, f).dtype
               for f in buffer.BufferState._fields if f != "payloads")
    assert [buffer.payload(restored, i) for i in range(4)] == payloads
    assert buffer.equal(buffer.from_state_dict(buffer.state_dict(state)), state)
    # Insertion continues identically after a restore (uids included).
    a, _ = buffer.insert(state, [{"n": 1}], [0.3])
    b, _ = buffer.insert(restored, [{"n": 1}], [0.3])
    assert buffer.equal(a, b)


def test_bad_input_gets_one_clear_error():
    with pytest.raises(ValueError, match="capacity"):
        buffer.init(0)
    with pytest.raises(ValueError, match="not a JSON value"):
        buffer.insert(buffer.init(2), [{"x": object()}], [0.1])
    with pytest.raises(ValueError, match="2 payloads but 1 scores"):
        buffer.insert(buffer.init(2), [{}, {}], [0.1])
    with pytest.raises(ValueError, match="Unknown buffer metadata"):
        buffer.insert(buffer.init(2), [{}], [0.1], colour=3)
    with pytest.raises(ValueError, match="empty buffer"):
        buffer.sample(buffer.init(2), 0, 1)
    with pytest.raises(ValueError, match="slot 1 is empty"):
        buffer.payload(buffer.init(2), 1)
