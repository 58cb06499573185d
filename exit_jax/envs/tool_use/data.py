"""BFCL v3 multi-turn data, function docs and tool classes, read from the installed `bfcl-eval` wheel.

The wheel is installed with `--no-deps` (its pinned deps conflict with jax). We only read its data files
and import the eight stateful tool-class modules, whose package `__init__`s are empty and which need only
the standard library plus `mpmath`. BFCL's own executor and checker are never imported (docs/domains.md §2.4).
"""
from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.resources
import json
import types
import warnings
from typing import Any, Mapping

# The version whose data the split file and the tests were built on. Older 2025.x wheels name the files
# `BFCL_v3_*` and differ slightly in ground truth.
PINNED_VERSION = "2026.3.23"
PACKAGE = "bfcl_eval"
CATEGORIES = ("multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param",
              "multi_turn_long_context")
_FILE_PREFIX = "BFCL_v4_"  # the v3 multi-turn categories ship under "v4" names in 2026.x wheels
_CLASS_SOURCE = "eval_checker.multi_turn_eval.func_source_code"

# class name -> module (and function-doc file) stem in the wheel
CLASS_MODULES = {
    "GorillaFileSystem": "gorilla_file_system",
    "MathAPI": "math_api",
    "MessageAPI": "message_api",
    "TwitterAPI": "posting_api",
    "TicketAPI": "ticket_api",
    "TradingBot": "trading_bot",
    "TravelAPI": "travel_booking",
    "VehicleControlAPI": "vehicle_control",
}
# MathAPI has no scenario to load (BFCL's STATELESS_CLASSES).
STATELESS_CLASSES = frozenset({"MathAPI"})


def installed_version() -> str:
    """The installed bfcl-eval version; raises a one-sentence error if the wheel is missing."""
    try:
        return importlib.metadata.version("bfcl-eval")
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            "The BFCL tool-use domain needs the `bfcl-eval` package: "
            f"pip install --no-deps bfcl-eval=={PINNED_VERSION} mpmath") from None


@functools.lru_cache(maxsize=None)
def _data_dir():
    version = installed_version()
    if version != PINNED_VERSION:
        warnings.warn(f"bfcl-eval {version} is installed but exit_jax was built against "
                      f"{PINNED_VERSION}; ground truth and the shipped split may differ.")
    return importlib.resources.files(PACKAGE) / "data"


def _read_jsonl(path, keys: tuple = ()) -> list[dict]:
    """The JSON objects of a JSON-lines file, each holding `keys`; a bad line is named with its number."""
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {number}: not valid JSON ({e.msg}); reinstall bfcl-eval or fix "
                             "that line.") from None
        missing = [k for k in keys if not isinstance(record, dict) or k not in record]
        if missing:
            raise ValueError(f"{path}, line {number}: the entry lacks {', '.join(missing)}; reinstall "
                             "bfcl-eval or fix that line.")
        records.append(record)
    return records


def check_category(category: str) -> str:
    if category not in CATEGORIES:
        raise ValueError(f"Unknown BFCL category {category!r}; expected one of {CATEGORIES}.")
    return category


@functools.lru_cache(maxsize=None)
def _load_category(category: str) -> tuple[tuple[dict, list], ...]:
    check_category(category)
    root = _data_dir()
    name = f"{_FILE_PREFIX}{category}.json"
    entries = _read_jsonl(root / name, ("id", "question", "initial_config", "involved_classes"))
    answers = {a["id"]: a["ground_truth"]
               for a in _read_jsonl(root / "possible_answer" / name, ("id", "ground_truth"))}
    out = []
    for entry in entries:
        if entry["id"] not in answers:
            raise ValueError(f"{name}: entry {entry['id']!r} has no ground truth in possible_answer/.")
        gt = answers[entry["id"]]
        if len(gt) != len(entry["question"]):
            raise ValueError(f"{name}: entry {entry['id']!r} has {len(entry['question'])} user turns "
                             f"but {len(gt)} ground-truth turns.")
        out.append((entry, gt))
    return tuple(out)


def load_category(category: str) -> list[tuple[dict, list]]:
    """[(entry, ground_truth)] for one category; entries are shared read-only objects: never mutate."""
    return list(_load_category(category))


@functools.lru_cache(maxsize=None)
def function_docs(class_name: str) -> tuple[dict, ...]:
    """JSON-schema docs of one tool class, in the wheel's order."""
    if class_name not in CLASS_MODULES:
        raise ValueError(f"Unknown BFCL tool class {class_name!r}; expected one of "
                         f"{sorted(CLASS_MODULES)}.")
    path = _data_dir() / "multi_turn_func_doc" / f"{CLASS_MODULES[class_name]}.json"
    return tuple(_read_jsonl(path))


@functools.lru_cache(maxsize=None)
def tool_class(class_name: str) -> Any:
    """The stateful tool class itself (imported from the wheel by module path)."""
    if class_name not in CLASS_MODULES:
        raise ValueError(f"Unknown BFCL tool class {class_name!r}; expected one of "
                         f"{sorted(CLASS_MODULES)}.")
    _data_dir()  # version check and a clear error if the wheel is missing
    module = importlib.import_module(f"{PACKAGE}.{_CLASS_SOURCE}.{CLASS_MODULES[class_name]}")
    return getattr(module, class_name)


@functools.lru_cache(maxsize=None)
def method_owners(classes: tuple[str, ...]) -> Mapping[str, str]:
    """Documented function name -> owning class, for a set of involved classes (names are unique)."""
    owners: dict[str, str] = {}
    for class_name in classes:
        for doc in function_docs(class_name):
            owners[doc["name"]] = class_name
    return types.MappingProxyType(owners)
