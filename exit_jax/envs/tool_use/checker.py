"""BFCL's multi-turn checks, applied to one user turn (docs/domains.md §2.3).

A turn with ground truth passes iff the model made at least one call in it, every public attribute of
every involved model instance equals the ground-truth instance's (state check), and the turn's
ground-truth results form a multiset subset of all the model's results so far (response check). The
method-order check is disabled in BFCL and here.
"""
from __future__ import annotations

import collections
from typing import Any, Mapping, Sequence

_MISSING = object()


def state_differences(model_instances: Mapping[str, Any],
                      gt_instances: Mapping[str, Any]) -> list[str]:
    """`Class.attr` per public attribute of a ground-truth instance that the model's lacks or differs in."""
    diffs = []
    for class_name, gt in gt_instances.items():
        model = model_instances.get(class_name)
        if model is None or type(model) is not type(gt):
            diffs.append(class_name)
            continue
        for attr, gt_value in vars(gt).items():
            if attr.startswith("_"):
                continue
            model_value = getattr(model, attr, _MISSING)
            try:
                equal = model_value is not _MISSING and bool(model_value == gt_value)
            except Exception:  # an exotic value that cannot be compared counts as different
                equal = False
            if not equal:
                diffs.append(f"{class_name}.{attr}")
    return diffs


def missing_results(model_results: Sequence[str], gt_results: Sequence[str]) -> list[str]:
    """Ground-truth results not covered by the model's results, counting duplicates (multiset)."""
    pool = collections.Counter(model_results)
    missing = []
    for result in gt_results:
        if pool[result] > 0:
            pool[result] -= 1
        else:
            missing.append(result)
    return missing


def check_turn(*, turn: int, model_instances: Mapping[str, Any], gt_instances: Mapping[str, Any],
               model_results_so_far: Sequence[str], gt_results: Sequence[str],
               n_model_calls_in_turn: int) -> tuple[bool, str]:
    """(passed, reason) for a turn whose ground truth is non-empty; both instance sets are post-turn."""
    if n_model_calls_in_turn == 0:
        return False, f"turn {turn}: no tool call, but the ground truth has {len(gt_results)}"
    diffs = state_differences(model_instances, gt_instances)
    if diffs:
        return False, f"turn {turn}: state differs from the ground truth in {', '.join(diffs[:8])}"
    missing = missing_results(model_results_so_far, gt_results)
    if missing:
        shown = "; ".join(m[:120] for m in missing[:3])
        return False, (f"turn {turn}: {len(missing)} ground-truth result(s) missing from the model's "
                       f"results so far: {shown}")
    return True, ""
