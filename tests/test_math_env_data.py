"""MathEnv protocol, local JSONL/Parquet loading, the TFDS array_record copy, and champ-dataset tasks."""
import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from exit_jax.envs.base import Task, replay
from exit_jax.envs.math import (MathEnv, champ_tasks, grade_tasks, load_array_record, load_jsonl_or_parquet,
                                math_tasks, prepare_array_record)
from exit_jax.envs.math.grader import Grader, GraderConfig

# Hand-written toy records (never MATH problems).
RECORDS = [
    {"problem": "What is $2 + 3$?", "answer": "5"},
    {"problem": "Halve $7$.", "solution": "Half of 7 is $\\boxed{\\frac{7}{2}}$.", "level": "Level 1"},
    {"problem": "Sum of $\\{1, 2\\}$?", "answer": "#### 3", "id": "toy-3"},
]


@pytest.fixture(scope="module")
def grader():
    with Grader(GraderConfig(soft_timeout_s=1.0, hard_timeout_s=4.0)) as g:
        yield g


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_env_protocol(grader):
    task = math_tasks("train", 1, families=["quadratic"], levels=[1])[0]
    env = MathEnv(task, grader=grader)
    messages = env.reset()
    assert messages == [{"role": "user", "content": task.data["problem"]}]
    assert env.instruction() == task.data["problem"]
    good = env.step(f"Factor it. \\boxed{{{task.data['answer']}}}")
    assert (good.reward, good.done, good.messages) == (1.0, True, [])
    assert good.info["extracted_answer"] == task.data["answer"] and good.info["reason"] == "exact_match"
    assert env.step("\\boxed{0}").info["reason"] == "episode_already_done"
    env = MathEnv(task, system_prompt="Reason step by step.", grader=grader)
    assert env.reset()[0] == {"role": "system", "content": "Reason step by step."}
    bad = env.step("I refuse. \\boxed{")
    assert (bad.reward, bad.done, bad.info["reason"], bad.info["ungraded"]) == (0.0, True, "no_answer", False)
    msgs, last = replay(MathEnv(task, grader=grader), ["\\boxed{-1000}"])
    assert [m["role"] for m in msgs] == ["user", "assistant"] and last.reward == 0.0


def test_grade_tasks_batches_like_step(grader):
    tasks = math_tasks("test", 18, seed=3)
    replies = [f"\\boxed{{{t.data['answer']}}}" if i % 2 else "\\boxed{123456789}" for i, t in enumerate(tasks)]
    batch = grade_tasks(tasks, replies, grader=grader)
    single = [MathEnv(t, grader=grader).step(r) for t, r in zip(tasks, replies)]
    assert [b.reward for b in batch] == [s.reward for s in single] == [float(i % 2) for i in range(18)]


def test_env_rejects_tasks_without_answer():
    with pytest.raises(ValueError, match="'answer'"):
        MathEnv(Task(id="t", domain="math", data={"problem": "Hi"}))
    with pytest.raises(ValueError, match="'problem'"):
        MathEnv(Task(id="t", domain="math", data={"answer": "1"}))


def test_load_jsonl_and_parquet(tmp_path):
    tasks = load_jsonl_or_parquet(_write_jsonl(tmp_path / "toy.jsonl", RECORDS))
    assert [t.data["answer"] for t in tasks] == ["5", "\\frac{7}{2}", "3"]
    assert [t.id for t in tasks] == ["toy/0", "toy/1", "toy/toy-3"]
    assert tasks[1].data["level"] == "Level 1" and tasks[0].domain == "math"
    assert tasks[0].data["problem"].endswith("Put your final answer in \\boxed{}.")
    pq = tmp_path / "toy.parquet"
    pd.DataFrame([{"problem": r["problem"], "answer": r.get("answer", "3.5")} for r in RECORDS]).to_parquet(pq)
    assert [t.data["answer"] for t in load_jsonl_or_parquet(str(pq))] == ["5", "3.5", "3"]


def test_the_math_domain_trains_and_evaluates_on_a_users_files(tmp_path, grader):
    """domains.math_domain(train_file=..., eval_file=...), the gin path --gin.domains.math_domain.train_file=...: the
    records become tasks that environments can grade."""
    from exit_jax.envs import domains
    path = _write_jsonl(tmp_path / "mine.jsonl", RECORDS)
    domain = domains.math_domain(num_train=2, num_eval=3, train_file=path, eval_file=path)
    assert [t.id for t in domain.train_tasks] == ["mine/0", "mine/1"] and len(domain.eval_tasks) == 3
    env = MathEnv(domain.train_tasks[0], grader=grader)
    env.reset()
    assert env.step("\\boxed{5}").reward == 1.0


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_jsonl_or_parquet(str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="record 1 .* no non-empty 'problem'"):
        load_jsonl_or_parquet(_write_jsonl(tmp_path / "a.jsonl", [{"problem": "x", "answer": "1"}, {"answer": "2"}]))
    with pytest.raises(ValueError, match="record 0 .* neither an 'answer' nor a 'solution'"):
        load_jsonl_or_parquet(_write_jsonl(tmp_path / "b.jsonl", [{"problem": "x", "solution": "no box"}]))
    (tmp_path / "c.jsonl").write_text('{"problem": "x", "answer": "1"}\n{oops\n')
    with pytest.raises(ValueError, match="line 2"):
        load_jsonl_or_parquet(str(tmp_path / "c.jsonl"))
    (tmp_path / "d.csv").write_text("problem,answer\n")
    with pytest.raises(ValueError, match=".jsonl, .json or .parquet"):
        load_jsonl_or_parquet(str(tmp_path / "d.csv"))


def test_tfds_array_record_roundtrip_without_tensorflow(tmp_path):
    src = _write_jsonl(tmp_path / "toy.jsonl", RECORDS)
    data_dir = str(tmp_path / "tfds")
    # A fresh interpreter proves the path needs no TensorFlow (and that nothing imported it).
    code = (f"import sys, json; from exit_jax.envs.math import prepare_array_record, load_array_record;"
            f"prepare_array_record({src!r}, {data_dir!r});"
            f"tasks = load_array_record({data_dir!r}, source='toy');"
            f"print(json.dumps([[t.id, t.data['problem'], t.data['answer']] for t in tasks]));"
            f"print('tensorflow' in sys.modules)")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo)
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == "False"
    direct = load_jsonl_or_parquet(src)
    assert json.loads(lines[-2]) == [[t.id, t.data["problem"], t.data["answer"]] for t in direct]
    assert (tmp_path / "tfds" / "math_records" / "1.0.0").is_dir()
    # Reading back in this process too, and refusing to mix a different source into the same dir.
    assert [t.data["answer"] for t in load_array_record(data_dir, source="toy")] == ["5", "\\frac{7}{2}", "3"]
    other = _write_jsonl(tmp_path / "other.jsonl", RECORDS[:1])
    with pytest.raises(ValueError, match="already holds"):
        prepare_array_record(other, data_dir)
    with pytest.raises(FileNotFoundError, match="prepare_array_record"):
        load_array_record(str(tmp_path / "empty"))


def test_champ_numeric_subset(grader):
    tasks = champ_tasks()
    assert 80 <= len(tasks) <= 90
    assert len({t.id for t in tasks}) == len(tasks)
    assert all(t.id.startswith("champ/") and t.data["problem"].strip() for t in tasks)
    answers = {t.data["answer"] for t in tasks}
    assert "\\frac{3}{2}" in answers and "252" in answers  # "3/2" and "C(10, 5), or equivalently 252"
    by_id = {t.id: t for t in tasks}
    assert by_id["champ/P_Combinatorics_1"].data["answer"] == "239"
    assert MathEnv(by_id["champ/P_Combinatorics_1"], grader=grader).step("So \\boxed{239}.").reward == 1.0


_GSM_BUILDER = '''
import numpy as np, tensorflow_datasets as tfds
from etils import epath

class ToyGsm(tfds.core.GeneratorBasedBuilder):
    """GSM8K's layout: question, answer with the final number after ####."""
    VERSION = tfds.core.Version("1.0.0")

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        return epath.Path(__file__ if "__file__" in globals() else ".")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
            {"question": tfds.features.Text(), "answer": tfds.features.Text()}), disable_shuffling=True)

    def _split_generators(self, dl_manager):
        rows = [("Tom has 3 apples and buys 2. How many?", "3 + 2 = 5\\n#### 5"),
                ("A box holds 1,200 pens; 200 are sold. How many are left?", "1200 - 200\\n#### 1,000"),
                ("What is 6 times 7?", "#### 42")]
        return {"train": self._generate_examples(rows[:2]), "test": self._generate_examples(rows[2:])}

    def _generate_examples(self, rows):
        for i, (q, a) in enumerate(rows):
            yield i, {"question": q, "answer": a}

ToyGsm(data_dir=DATA_DIR, file_format="array_record").download_and_prepare()
'''


def test_a_users_tfds_dataset_is_selectable_from_gin_without_tensorflow(tmp_path):
    """A prepared tensorflow-datasets build (GSM8K's fields, array_record) is read by domains.math_domain from
    its folder, as --gin.domains.math_domain.train_file=... --gin.domains.math_domain.problem_field="question" would."""
    data_dir = str(tmp_path / "tfds")
    code = (f"DATA_DIR = {data_dir!r}\n" + _GSM_BUILDER +
            "import json, sys\nfrom exit_jax.envs import domains\n"
            f"d = domains.math_domain(train_file={data_dir + '/toy_gsm/1.0.0'!r},"
            f" eval_file={data_dir + '/toy_gsm/1.0.0'!r}, problem_field='question')\n"
            "print(json.dumps([[t.id, t.data['problem'], t.data['answer']] for t in d.train_tasks + d.eval_tasks]))\n"
            "print('tensorflow' in sys.modules)\n")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == "False"
    tasks = json.loads(lines[-2])
    assert [(t[0], t[2]) for t in tasks] == [("toy_gsm/train/0", "5"), ("toy_gsm/train/1", "1000"),
                                             ("toy_gsm/test/0", "42")]
    assert tasks[0][1].startswith("Tom has 3 apples") and "\\boxed" in tasks[0][1]  # the answer instruction
    from exit_jax.envs.math import load_tfds
    builder_dir = str(tmp_path / "tfds" / "toy_gsm" / "1.0.0")
    with pytest.raises(ValueError, match=r"has no split 'validation'; its splits are \['test', 'train'\]"):
        load_tfds(builder_dir, "validation", problem_field="question")
    with pytest.raises(ValueError, match="record 0 of .* no non-empty 'problem' field"):
        load_tfds(builder_dir, "train")
    with pytest.raises(FileNotFoundError, match="not a prepared tensorflow-datasets folder"):
        load_tfds(str(tmp_path), "train")
