"""eval.json: one run's evaluation results, the file that plots and run comparisons read.

Schema (version 1):
```
{"schema_version": 1, "method": "exit", "domain": "math", "seed": 0, "iteration": 100, "run": "...",
 "evaluations": {
   NAME: {"kind": "self_improve" | "self_improve_multi_turn" | "greedy_search",
          "K": 16, "n": 8, "headline": "accuracy",
          "curves": {"accuracy": [K + 1 floats], "net_corrections": [...], ...},
          "units": {"accuracy": "fraction", ...},
          ... kind-specific details (groups, per_task, runs) ...}}}
```
`headline` names the curve that run comparisons tabulate (paper Table 1). A curve has one value per step
k = 0..K. Non-finite numbers are written as null (JSON has no NaN) and read back as NaN.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import numpy as np

SCHEMA_VERSION = 1
EVAL_KINDS = ("self_improve", "self_improve_multi_turn", "greedy_search")


def _plain(value: Any) -> Any:
    """JSON-ready copy: dataclass results via to_dict, numpy to Python, non-finite floats to None."""
    if hasattr(value, "to_dict") and callable(value.to_dict):
        return _plain(value.to_dict())
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def make_eval_record(method: str, domain: str, evaluations: Mapping[str, Any], *, seed: int | None = None,
                     iteration: int | None = None, run: str | None = None,
                     extra: Mapping[str, Any] | None = None) -> dict:
    """Assembles an eval.json record; `evaluations` maps a name to a result (with to_dict) or a dict."""
    record = {"schema_version": SCHEMA_VERSION, "method": method, "domain": domain, "seed": seed,
              "iteration": iteration, "run": run, **dict(extra or {}),
              "evaluations": {name: _plain(result) for name, result in evaluations.items()}}
    validate_eval_record(record)
    return _plain(record)


def validate_eval_record(record: Mapping[str, Any], source: str = "eval.json") -> None:
    """Raises ValueError with one sentence naming the first field that breaks the schema."""
    if not isinstance(record, Mapping):
        raise ValueError(f"{source}: expected a JSON object at the top level, got {type(record).__name__}.")
    if record.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{source}: schema_version is {record.get('schema_version')!r}; "
                         f"expected {SCHEMA_VERSION}.")
    if not isinstance(record.get("method"), str) or not record["method"]:
        raise ValueError(f"{source}: field 'method' must be a non-empty string, "
                         f"got {record.get('method')!r}.")
    evaluations = record.get("evaluations")
    if not isinstance(evaluations, Mapping) or not evaluations:
        raise ValueError(f"{source}: field 'evaluations' must be a non-empty object of evaluation results.")
    for name, ev in evaluations.items():
        where = f"{source}: evaluations.{name}"
        ev = _plain(ev)
        if not isinstance(ev, Mapping):
            raise ValueError(f"{where} must be an object, got {type(ev).__name__}.")
        if ev.get("kind") not in EVAL_KINDS:
            raise ValueError(f"{where}.kind is {ev.get('kind')!r}; expected one of {list(EVAL_KINDS)}.")
        K = ev.get("K")
        if not isinstance(K, int) or K < 0:
            raise ValueError(f"{where}.K must be a non-negative integer, got {K!r}.")
        curves = ev.get("curves")
        if not isinstance(curves, Mapping) or ev.get("headline") not in curves:
            raise ValueError(f"{where}.headline {ev.get('headline')!r} must name one of its curves "
                             f"{sorted(curves) if isinstance(curves, Mapping) else curves!r}.")
        for cname, curve in curves.items():
            if not isinstance(curve, (list, tuple)) or len(curve) != K + 1:
                got = len(curve) if isinstance(curve, (list, tuple)) else type(curve).__name__
                raise ValueError(f"{where}.curves.{cname} must hold K + 1 = {K + 1} values, got {got}.")


def write_eval_json(path: str, results: Mapping[str, Any]) -> str:
    """Validates `results` (a record from make_eval_record) and writes it atomically; returns the path."""
    record = _plain(results)
    validate_eval_record(record, source=path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1, sort_keys=False, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)
    return path


def _nan_curves(record: dict) -> dict:
    for ev in record["evaluations"].values():
        ev["curves"] = {name: [float("nan") if v is None else float(v) for v in curve]
                        for name, curve in ev["curves"].items()}
    return record


def read_eval_json(path: str) -> dict:
    """Reads and validates an eval.json (or the eval.json inside a run directory); nulls become NaN."""
    if os.path.isdir(path):
        path = os.path.join(path, "eval.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"No eval.json at {path}; run the evaluation for that run first.")
    with open(path, encoding="utf-8") as f:
        try:
            record = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}).") from None
    validate_eval_record(record, source=path)
    return _nan_curves(record)
