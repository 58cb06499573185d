"""Real math data: local JSONL/Parquet files, their array_record copies, and champ-dataset (docs/domains.md §1.1-1.2).

A record needs `problem` and either `answer` or a `solution` whose last `\\boxed{}` is the gold answer
(MATH-500, AIME, DeepScaleR copies that the user supplies). Never vendor MATH (docs/domains.md §1.1).
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


def _final(text: str) -> str:
    """The final answer inside a gold field: after GSM8K's "####", else its last box, else all of it."""
    if "####" in text:
        return text.rsplit("####", 1)[1].strip().replace(",", "")
    boxed, _ = last_boxed(text)
    return boxed if boxed is not None else text


def gold_answer(record: dict, where: str = "record", answer_field: str | None = None) -> str:
    """The gold answer of a record: its `answer_field`; by default `answer`, else the last `\\boxed{}`
    of `solution`."""
    if answer_field is not None:
        value = record.get(answer_field)
        if value is None or not str(value).strip():
            raise ValueError(f"{where} has no non-empty {answer_field!r} field (set answer_field)")
        return _final(str(value).strip())
    answer = record.get("answer")
    if answer is not None and str(answer).strip():
        return _final(str(answer).strip())
    solution = record.get("solution")
    boxed = last_boxed(solution)[0] if isinstance(solution, str) else None
    if boxed is not None:
        return boxed
    raise ValueError(f"{where} has neither an 'answer' nor a 'solution' with a final \\boxed{{}}")


def _records(rows: Iterable, where: str, problem_field: str, answer_field: str | None) -> list[dict]:
    """Validated records {problem, answer, index, + optional fields} from raw rows."""
    out = []
    for i, row in enumerate(rows):
        at = f"record {i} of {where}"
        if not isinstance(row, dict):
            raise ValueError(f"{at} is not a JSON object")
        problem = row.get(problem_field)
        if not isinstance(problem, str) or not problem.strip():
            raise ValueError(f"{at} has no non-empty {problem_field!r} field (set problem_field)")
        record = {"problem": problem, "answer": gold_answer(row, at, answer_field), "index": i}
        for key in _OPTIONAL_FIELDS:
            if row.get(key) is not None:
                record[key] = str(row[key])
        out.append(record)
    return out


def load_records(path: str, problem_field: str = "problem", answer_field: str | None = None) -> list[dict]:
    """Validated records {problem, answer, index, + optional fields} from a .jsonl/.json/.parquet file."""
    return _records(_read_rows(path), repr(path), problem_field, answer_field)


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


def load_jsonl_or_parquet(path: str, problem_field: str = "problem", source: str | None = None,
                          answer_field: str | None = None) -> list[Task]:
    """Tasks from a local JSONL/JSON/Parquet file with `problem` + `answer` (or `solution`)."""
    name = source or os.path.splitext(os.path.basename(path))[0]
    return records_to_tasks(load_records(path, problem_field, answer_field), name)


def _text_row(example: dict) -> dict:
    """A tfds data-source example with its byte strings decoded."""
    return {k: v.decode("utf-8") if isinstance(v, bytes) else v for k, v in example.items()}


def load_tfds(builder_dir: str, split: str = "train", problem_field: str = "problem",
              answer_field: str | None = None, source: str | None = None) -> list[Task]:
    """Tasks from a prepared tensorflow-datasets dataset (a local MATH or GSM8K build, say), read with
    `builder_from_directory` + `as_data_source`: random access to array_record files, no TensorFlow.

    `builder_dir` is the folder of one version, the one holding `dataset_info.json` (for example
    ~/tensorflow_datasets/gsm8k/main/1.0.0); GSM8K's fields are problem_field="question", "answer".
    """
    import tensorflow_datasets as tfds
    builder_dir = os.path.expanduser(builder_dir)
    if not os.path.isfile(os.path.join(builder_dir, "dataset_info.json")):
        raise FileNotFoundError(f"{builder_dir!r} is not a prepared tensorflow-datasets folder (no "
                                "dataset_info.json); give the folder of one version, e.g. "
                                "~/tensorflow_datasets/gsm8k/main/1.0.0")
    builder = tfds.builder_from_directory(builder_dir)
    splits = sorted(builder.info.splits)
    if split not in splits:
        raise ValueError(f"the tensorflow-datasets dataset in {builder_dir!r} has no split {split!r}; its "
                         f"splits are {splits} (set train_split / eval_split)")
    file_format = str(builder.info.file_format.value if builder.info.file_format else "tfrecord")
    if file_format != "array_record":
        raise ValueError(f"the tensorflow-datasets dataset in {builder_dir!r} is stored as {file_format}; "
                         "reading it without TensorFlow needs array_record: rebuild it with `tfds build "
                         f"{builder.info.name} --file_format=array_record`")
    ds = builder.as_data_source(split=split)
    rows = [_text_row(ds[i]) for i in range(len(ds))]
    name = source or builder.info.name
    return records_to_tasks(_records(rows, f"{builder_dir!r} split {split!r}", problem_field, answer_field),
                            f"{name}/{split}")


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
        rec = _text_row(ex)
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
