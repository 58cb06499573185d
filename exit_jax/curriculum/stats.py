"""Curriculum statistics logged every iteration (the paper's Figs. 5–7).

Every key starts with "curriculum/" (what evaluation.plots draws). Replay-only means (sampled depth,
start turn, sampled-from iteration) are NaN in iterations without replay. Distinct task instances are
counted over the whole run with a set of instance keys that the caller carries (and checkpoints, as a
sorted list of strings).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from exit_jax.curriculum import buffer
from exit_jax.curriculum.episodes import Episode, instance_key

QUANTILES = {"min": 0.0, "p25": 0.25, "p50": 0.5, "p75": 0.75, "max": 1.0}


def update_seen(seen: frozenset, episodes: Sequence[Episode]) -> frozenset:
    """The set of task instances (m, τ) trained on so far, with this iteration's starting points added."""
    return frozenset(seen) | {instance_key(ep) for ep in episodes}


def _mean(values, empty: float = 0.0) -> float:
    return float(np.mean(values)) if len(values) else empty


def _replay_mean(values) -> float:
    return _mean(values, float("nan"))


def iteration_stats(state: buffer.BufferState, episodes: Sequence[Episode], iteration: int,
                    seen: frozenset = frozenset(), learnability: Sequence[float] = ()) -> dict:
    """A flat dict of floats for the metrics writer."""
    replays = [ep for ep in episodes if ep.kind == "replay"]
    n = max(len(episodes), 1)
    out = {
        "curriculum/num_groups": float(len(episodes)),
        "curriculum/num_replay": float(len(replays)),
        "curriculum/replay_fraction": len(replays) / n,
        "curriculum/divergence_fraction": sum(ep.step == "diverge" for ep in episodes) / n,
        "curriculum/debug_fraction": sum(ep.debug for ep in episodes) / n,
        # Fig. 5: depth k' of the iterate that replay continues from; Fig. 6: the turn t⁻ it restarts at.
        "curriculum/sampled_depth": _replay_mean([ep.sampled_depth for ep in replays]),
        "curriculum/start_turn": _replay_mean([ep.start_turn for ep in replays]),
        # Fig. 7: when the replayed entries were created (recency), and how far back that is.
        "curriculum/sampled_from_iteration": _replay_mean([ep.sampled_from for ep in replays]),
        "curriculum/sampled_age": _replay_mean([iteration - ep.sampled_from for ep in replays]),
        "curriculum/episode_depth": _mean([ep.depth for ep in episodes]),
        "curriculum/distinct_instances_seen": float(len(seen)),
        "curriculum/distinct_tasks_in_episodes": float(len({ep.task.id for ep in episodes})),
    }
    if len(learnability):
        out["curriculum/learnability"] = _mean(list(learnability))
    filled = state.filled
    scores = state.scores[filled]  # empty-buffer quantiles are 0.0: a size-0 buffer holds no score
    out["curriculum/buffer_size"] = float(filled.sum())
    out["curriculum/buffer_capacity"] = float(filled.shape[0])
    out["curriculum/buffer_distinct_tasks"] = float(np.unique(state.task_id[filled]).size)
    out["curriculum/buffer_mean_depth"] = _mean(state.depth[filled])
    out["curriculum/buffer_mean_turn"] = _mean(state.turn[filled])
    out["curriculum/buffer_score_mean"] = _mean(scores)
    for name, q in QUANTILES.items():
        out[f"curriculum/buffer_score_{name}"] = float(np.quantile(scores, q)) if scores.size else 0.0
    return out
