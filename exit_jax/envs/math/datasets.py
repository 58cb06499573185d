"""Real math data: local JSONL/Parquet files, their array_record copies, and champ-dataset (domains.md §1.1-1.2).

A record needs `problem` and either `answer` or a `solution` whose last `\\boxed{}` is the gold answer
(MATH-500, AIME, DeepScaleR copies that the user supplies). Never vendor MATH (domains.md §1.1).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from fractions import Fraction
from typing import Iterable

from exit_jax.envs.base import Task
from exit_jax.envs.math.answers import canonical, last_boxed
from exit_jax.envs.math.generator import BOXED_INSTRUCTION

_OPTIONAL_FIELDS = ("id", "level", "type", "unique_id", "subject")


def _read_rows(path: str) -> list[dict]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"math dataset file {path!r} does not exist")
    lower = path.lower()
    if lower.endswith(".parquet"):
        import pandas as pd
        return pd.read_parquet(path).to_dict(orient="records")
    if lower.endswith(".jsonl") or lower.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if lower.endswith(".json") and text.lstrip().startswith("["):
            rows = json.loads(text)
        else:
            rows = []
            for lineno, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise ValueError(f"line {lineno} of {path!r} is not valid JSON ({e.msg})") from None
        return rows
    raise ValueError(f"math dataset file {path!r} must end in .jsonl, .json or .parquet")


def gold_answer(record: dict, where: str = "record") -> str:
    """The gold answer of a record: `answer`, else the last `\\boxed{}` of `solution`."""
    answer = record.get("answer")
    if answer is not None and str(answer).strip():
        answer = str(answer).strip()
        if "####" in answer:  # GSM8K style: the final answer follows "#### "
            answer = answer.rsplit("####", 1)[1].strip().replace(",", "")
        return answer
    solution = record.get("solution")
    if isinstance(solution, str):
        boxed, status = last_boxed(solution)
        if boxed is not None:
            return boxed
    raise ValueError(f"{where} has neither an 'answer' nor a 'solution' with a final \\boxed{{}}")


def load_records(path: str, problem_field: str = "problem") -> list[dict]:
    """Validated records {problem, answer, index, + optional fields} from a .jsonl/.json/.parquet file."""
    rows = _read_rows(path)
    out = []
    for i, row in enumerate(rows):
        where = f"record {i} of {path!r}"
        if not isinstance(row, dict):
            raise ValueError(f"{where} is not a JSON object")
        problem = row.get(problem_field)
        if not isinstance(problem, str) or not problem.strip():
            raise ValueError(f"{where} has no non-empty {problem_field!r} field")
        record = {"problem": problem, "answer": gold_answer(row, where), "index": i}
        for key in _OPTIONAL_FIELDS:
            if row.get(key) is not None:
                record[key] = str(row[key])
        out.append(record)
    return out


def records_to_tasks(records: Iterable[dict], source: str, add_instruction: bool = True) -> list[Task]:
    """Tasks (domain "math") from records; appends the boxed-answer sentence unless the problem asks for it."""
    tasks = []
    for r in records:
        problem = r["problem"]
        if add_instruction and "\\boxed" not in problem:
            problem = f"{problem.rstrip()}\n\n{BOXED_INSTRUCTION}"
        key = r.get("unique_id") or r.get("id") or str(r["index"])
        data = {k: v for k, v in r.items() if k not in ("problem",)}
        data.update(problem=problem, source=source)
        tasks.append(Task(id=f"{source}/{key}", domain="math", data=data))
    return tasks


def load_jsonl_or_parquet(path: str, problem_field: str = "problem", source: str | None = None) -> list[Task]:
    """Tasks from a local JSONL/JSON/Parquet file with `problem` + `answer` (or `solution`)."""
    name = source or os.path.splitext(os.path.basename(path))[0]
    return records_to_tasks(load_records(path, problem_field), name)


# ---------------------------------------------------------------------------------------------------
# array_record copies through tensorflow-datasets (no TensorFlow needed for prepare + data_source).

def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def prepare_array_record(path: str, data_dir: str, problem_field: str = "problem") -> str:
    """Stores a JSONL/Parquet math file as an array_record TFDS dataset under `data_dir`; returns data_dir.

    `data_dir` holds one source file's copy; a `source.json` beside it records which (by sha256), so a
    second file is never silently read back as the first.
    """
    from exit_jax.envs.math.tfds_builder import MathRecords
    digest = _sha256(path) if os.path.isfile(path) else None
    if digest is None:
        raise FileNotFoundError(f"math dataset file {path!r} does not exist")
    marker = os.path.join(data_dir, "source.json")
    if os.path.exists(marker):
        with open(marker, encoding="utf-8") as f:
            previous = json.load(f)
        if previous.get("sha256") != digest:
            raise ValueError(f"data_dir {data_dir!r} already holds an array_record copy of "
                             f"{previous.get('path')!r}; pick another data_dir for {path!r}")
        return data_dir
    os.makedirs(data_dir, exist_ok=True)
    builder = MathRecords(source_path=path, problem_field=problem_field, data_dir=data_dir,
                          file_format="array_record")
    builder.download_and_prepare()
    with open(marker, "w", encoding="utf-8") as f:
        json.dump({"path": os.path.abspath(path), "sha256": digest}, f)
    return data_dir


def load_array_record(data_dir: str, source: str = "records", split: str = "train") -> list[Task]:
    """Tasks read back with `tfds.data_source` (random access, no TensorFlow) from `prepare_array_record`."""
    import tensorflow_datasets as tfds

    from exit_jax.envs.math.tfds_builder import MathRecords
    if not os.path.isdir(os.path.join(data_dir, MathRecords.name)):
        raise FileNotFoundError(f"no prepared math array_record dataset under {data_dir!r}; "
                                "run prepare_array_record first")
    ds = tfds.data_source(MathRecords.name, data_dir=data_dir, split=split, download=False)
    records = []
    for i in range(len(ds)):
        ex = ds[i]
        rec = {k: (v.decode("utf-8") if isinstance(v, bytes) else v) for k, v in ex.items()}
        rec["index"] = int(rec["index"])
        records.append({k: v for k, v in rec.items() if v != ""})
    records.sort(key=lambda r: r["index"])
    return records_to_tasks(records, source)


# ---------------------------------------------------------------------------------------------------
# champ-dataset: 270 competition problems; the ones with a plain-number answer form a real eval set.

_PLAIN_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+)?")


def champ_numeric_answer(raw: str) -> Fraction | None:
    """The number in a champ `_answer` when it is plain ("239", "3/2", "C(10, 5), or equivalently 252")."""
    text = raw.strip()
    m = re.search(r",\s*or equivalently\s+(.+)$", text)
    if m:
        text = m.group(1).strip()
    if _PLAIN_NUMBER.fullmatch(text):
        return Fraction(text)
    return None


def champ_tasks(path: str | None = None) -> list[Task]:
    """champ-dataset v0 problems whose answer is a plain number, as tasks (source "champ")."""
    if path is None:
        spec = importlib.util.find_spec("champ_dataset")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError("the champ-dataset package is not installed (pip install champ-dataset)")
        path = os.path.join(spec.submodule_search_locations[0], "dataset_files", "v0.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"champ dataset file {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        problems = json.load(f).get("problems")
    if not isinstance(problems, dict):
        raise ValueError(f"champ dataset file {path!r} has no 'problems' object")
    tasks = []
    for ident, p in problems.items():
        value = champ_numeric_answer(str(p.get("_answer", "")))
        if value is None:
            continue
        problem = f"{p['_text'].rstrip()}\n\n{BOXED_INSTRUCTION}"
        tasks.append(Task(id=f"champ/{ident}", domain="math",
                          data={"problem": problem, "answer": canonical(value), "source": "champ",
                                "category": p.get("category", ""), "raw_answer": p["_answer"]}))
    return tasks
