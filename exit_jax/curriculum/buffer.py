"""The ExIt task buffer: a fixed-capacity, score-prioritised store of partial histories (paper §4, §4.1).

Functional and host-side: the state is a NamedTuple of numpy arrays plus a payload table, and every
function returns a new state without touching its input.

- Sampling: P(i) = exp(κ·S_i) / Σ_j exp(κ·S_j) over filled slots (paper §4.1; κ default 10, our §13).
- Capacity: when full, a new entry enters only if its score is ≥ the lowest score, and it replaces that
  lowest-score entry (paper §4), so the buffer always keeps the top-N scores of what was inserted.
- Replayed entries get their score overwritten by the fresh group score (`update_scores`); new children
  enter with their parent's score (the caller passes it to `insert`).

Payloads must be JSON values (dict with str keys, list, str, int, float, bool, None). They are stored as
their canonical JSON text, which makes the table immutable, checkpointable without pickle, and makes
`payload()` hand out a fresh copy (tuples come back as lists).
"""
from __future__ import annotations

import io
import json
from typing import Any, NamedTuple, Sequence, Union

import numpy as np

# A seed of host-side draws: what np.random.default_rng takes. The curriculum draws from (run seed,
# iteration), so an iteration's draws do not depend on what earlier ones drew, and nothing is carried.
Seed = Union[int, Sequence[int], np.random.SeedSequence]

DEFAULT_KAPPA = 10.0  # docs/paper.md §13.1: the paper does not report κ

# Per-entry metadata arrays (all int64, -1 on empty slots) that `insert` accepts as keyword arguments.
METADATA = ("task_id", "depth", "turn", "parent", "created_at")


class BufferState(NamedTuple):
    scores: np.ndarray  # float64 [N]; learnability S of each entry (0 on empty slots)
    filled: np.ndarray  # bool [N]
    task_id: np.ndarray  # int64 [N]; a stable integer key of the base task
    depth: np.ndarray  # int64 [N]; iterate index k of the last turn's response
    turn: np.ndarray  # int64 [N]; number of turns t in the history (1-based last turn)
    parent: np.ndarray  # int64 [N]; uid of the entry this one was expanded from, -1 for base tasks
    created_at: np.ndarray  # int64 [N]; training iteration of insertion
    times_sampled: np.ndarray  # int64 [N]
    last_sampled: np.ndarray  # int64 [N]; iteration of the last selection, -1 if never
    uid: np.ndarray  # int64 [N]; unique id of the entry (slots are reused, uids never)
    next_uid: np.ndarray  # int64 []; the uid the next inserted entry gets
    payloads: tuple  # N JSON strings ("" on empty slots)


_ARRAY_FIELDS = tuple(f for f in BufferState._fields if f != "payloads")


def init(capacity: int) -> BufferState:
    """An empty buffer with `capacity` slots."""
    if int(capacity) < 1:
        raise ValueError(f"Buffer capacity must be a positive integer, got {capacity!r}.")
    n = int(capacity)
    minus = lambda: np.full((n,), -1, np.int64)  # noqa: E731
    return BufferState(
        scores=np.zeros((n,), np.float64), filled=np.zeros((n,), bool), task_id=minus(),
        depth=minus(), turn=minus(), parent=minus(), created_at=minus(),
        times_sampled=np.zeros((n,), np.int64), last_sampled=minus(), uid=minus(),
        next_uid=np.asarray(0, np.int64), payloads=("",) * n)


def capacity(state: BufferState) -> int:
    return int(state.scores.shape[0])


def size(state: BufferState) -> int:
    return int(state.filled.sum())


def payload(state: BufferState, slot: int) -> Any:
    """A fresh copy of the payload stored in `slot`."""
    slot = int(slot)
    if not 0 <= slot < capacity(state) or not state.filled[slot]:
        raise ValueError(f"Buffer slot {slot} is empty or out of range (capacity {capacity(state)}).")
    return json.loads(state.payloads[slot])


def _encode(obj: Any, index: int) -> str:
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise ValueError(f"Buffer payload #{index} is not a JSON value (dict/list/str/int/float/bool/None): "
                         f"{e}") from None


def _copy(state: BufferState) -> dict:
    fields = {f: np.array(getattr(state, f), copy=True) for f in _ARRAY_FIELDS}
    fields["payloads"] = list(state.payloads)
    return fields


def _freeze(fields: dict) -> BufferState:
    fields = dict(fields)
    fields["payloads"] = tuple(fields["payloads"])
    return BufferState(**fields)


def insert(state: BufferState, payloads: Sequence[Any], scores, **metadata) -> tuple[BufferState, np.ndarray]:
    """Inserts entries one after another; returns (new state, slots int64 [n]).

    Metadata keywords (each a scalar or a sequence of length n): task_id, depth, turn, parent, created_at.
    slots[i] is -1 when entry i was rejected (buffer full and its score below the lowest), or when a later
    entry of the same call evicted it again.
    """
    n = len(payloads)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if scores.shape[0] != n:
        raise ValueError(f"insert got {n} payloads but {scores.shape[0]} scores.")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"Buffer scores must be finite, got {scores.tolist()}.")
    unknown = set(metadata) - set(METADATA)
    if unknown:
        raise ValueError(f"Unknown buffer metadata {sorted(unknown)}; expected some of {list(METADATA)}.")
    meta = {}
    for name in METADATA:
        value = np.asarray(metadata.get(name, -1), np.int64)
        meta[name] = np.broadcast_to(value, (n,)) if value.ndim == 0 else value.reshape(-1)
        if meta[name].shape[0] != n:
            raise ValueError(f"insert metadata {name!r} has {meta[name].shape[0]} values for {n} payloads.")
    texts = [_encode(p, i) for i, p in enumerate(payloads)]

    f = _copy(state)
    slots = np.full((n,), -1, np.int64)
    for i in range(n):
        empty = np.flatnonzero(~f["filled"])
        if empty.size:
            slot = int(empty[0])
        else:
            slot = int(np.argmin(f["scores"]))
            if scores[i] < f["scores"][slot]:  # paper §4: enter only if ≥ the lowest score
                continue
        f["scores"][slot] = scores[i]
        f["filled"][slot] = True
        for name in METADATA:
            f[name][slot] = meta[name][i]
        f["times_sampled"][slot] = 0
        f["last_sampled"][slot] = -1
        f["uid"][slot] = f["next_uid"]
        f["next_uid"] = np.asarray(f["next_uid"] + 1, np.int64)
        f["payloads"][slot] = texts[i]
        slots[slots == slot] = -1  # an earlier entry of this call that got evicted again
        slots[i] = slot
    return _freeze(f), slots


def probabilities(state: BufferState, kappa: float = DEFAULT_KAPPA) -> np.ndarray:
    """softmax(κ·S) over filled slots; float64 [N], 0 on empty slots (all zeros for an empty buffer)."""
    p = np.zeros(state.scores.shape, np.float64)
    if not state.filled.any():
        return p
    logits = float(kappa) * state.scores[state.filled]
    w = np.exp(logits - logits.max())  # shift by the max for overflow safety
    p[state.filled] = w / w.sum()
    return p


def sample(state: BufferState, seed: Seed, n: int, kappa: float = DEFAULT_KAPPA,
           iteration: int = -1) -> tuple[BufferState, np.ndarray]:
    """Draws n slots with replacement from softmax(κ·S); counts the draws in the returned state.
    The draws depend on the state and `seed` only (an int, a tuple of ints, a SeedSequence)."""
    if size(state) == 0:
        raise ValueError("Cannot sample from an empty buffer.")
    p = probabilities(state, kappa)
    slots = np.random.default_rng(seed).choice(p.shape[0], size=int(n), replace=True, p=p).astype(np.int64)
    f = _copy(state)
    np.add.at(f["times_sampled"], slots, 1)
    f["last_sampled"][slots] = int(iteration)
    return _freeze(f), slots


def update_scores(state: BufferState, slots, scores) -> BufferState:
    """Overwrites the scores of filled slots (paper §4: a replayed instance gets the fresh S, no smoothing).

    A slot that appears more than once takes its last score.
    """
    slots = np.asarray(slots, np.int64).reshape(-1)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if slots.shape != scores.shape:
        raise ValueError(f"update_scores got {slots.shape[0]} slots but {scores.shape[0]} scores.")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"Buffer scores must be finite, got {scores.tolist()}.")
    bad = [int(s) for s in slots if not (0 <= s < capacity(state)) or not state.filled[s]]
    if bad:
        raise ValueError(f"update_scores: slots {bad} are empty or out of range.")
    f = _copy(state)
    f["scores"][slots] = scores  # numpy assigns in order, so a repeated slot keeps its last score
    return _freeze(f)


def state_dict(state: BufferState) -> dict:
    """Every field as a numpy array (payloads as UTF-8 JSON bytes): what the training checkpoint stores."""
    out = {f: np.array(getattr(state, f), copy=True) for f in _ARRAY_FIELDS}
    text = json.dumps(list(state.payloads), separators=(",", ":"))
    out["payloads"] = np.frombuffer(text.encode("utf-8"), np.uint8).copy()
    return out


def from_state_dict(d: dict) -> BufferState:
    missing = [f for f in BufferState._fields if f not in d]
    if missing:
        raise ValueError(f"Buffer state dict lacks fields {missing}.")
    fields = {f: np.asarray(d[f]).astype(getattr(init(1), f).dtype) for f in _ARRAY_FIELDS}
    fields["payloads"] = tuple(json.loads(np.asarray(d["payloads"], np.uint8).tobytes().decode("utf-8")))
    n = fields["scores"].shape[0]
    bad = [f for f in _ARRAY_FIELDS if f != "next_uid" and fields[f].shape != (n,)]
    if bad or len(fields["payloads"]) != n:
        raise ValueError(f"Buffer state dict fields {bad or ['payloads']} do not match capacity {n}.")
    return BufferState(**fields)


def to_bytes(state: BufferState) -> bytes:
    """A pickle-free .npz encoding of the whole state."""
    out = io.BytesIO()
    np.savez(out, **state_dict(state))
    return out.getvalue()


def from_bytes(data: bytes) -> BufferState:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return from_state_dict({k: z[k] for k in z.files})


def equal(a: BufferState, b: BufferState) -> bool:
    """True when two states hold identical arrays and payloads."""
    arrays = all(np.array_equal(getattr(a, f), getattr(b, f)) for f in _ARRAY_FIELDS)
    return arrays and a.payloads == b.payloads
