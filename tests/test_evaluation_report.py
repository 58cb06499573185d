"""eval.json schema, PNG plots and the run comparison table."""
import json
import os

import numpy as np
import pytest

from exit_jax.evaluation import compare, eval_json, plots, self_improve
from exit_jax.training.metrics import MetricsWriter
from exit_jax.testing import ExactAnswerEnv, exact_answer_tasks as toy_tasks
from tests.evaluation_fakes import ScriptedImprover

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _curve_eval(curve, kind="self_improve", headline="accuracy"):
    return {"kind": kind, "K": len(curve) - 1, "n": 8, "headline": headline,
            "curves": {headline: list(curve), "net_corrections": [0.0] * len(curve)},
            "units": {headline: "fraction", "net_corrections": "count / n"}}


def _write_run(tmp_path, name, method, seed, curve, **more):
    record = eval_json.make_eval_record(method, "math", {"math_test": _curve_eval(curve), **more}, seed=seed)
    return eval_json.write_eval_json(str(tmp_path / name / "eval.json"), record)


def _is_png(path):
    with open(path, "rb") as f:
        head = f.read(8)
    return head == PNG_MAGIC and os.path.getsize(path) > 5000


def test_eval_json_round_trip_from_a_real_evaluation(tmp_path):
    tasks = toy_tasks()
    result = self_improve.evaluate(ScriptedImprover(tasks), tasks, ExactAnswerEnv, K=2, n=2)
    record = eval_json.make_eval_record("exit", "math", {"toy": result}, seed=3, iteration=40)
    path = eval_json.write_eval_json(str(tmp_path / "run" / "eval.json"), record)
    back = eval_json.read_eval_json(str(tmp_path / "run"))
    assert back["method"] == "exit" and back["seed"] == 3 and back["iteration"] == 40
    ev = back["evaluations"]["toy"]
    assert ev["kind"] == "self_improve" and ev["K"] == 2 and ev["n"] == 2
    assert ev["curves"]["accuracy"] == pytest.approx([0.5, 0.5, 0.75])
    assert ev["per_task"][0]["rewards"] == [[1.0, 1.0, 1.0], [0.0, 1.0, 1.0]]
    assert json.load(open(path))["schema_version"] == eval_json.SCHEMA_VERSION


def test_eval_json_nan_becomes_null_and_back(tmp_path):
    path = _write_run(tmp_path, "r", "grpo", 0, [0.1, float("nan"), 0.2])
    assert json.load(open(path))["evaluations"]["math_test"]["curves"]["accuracy"][1] is None
    assert np.isnan(eval_json.read_eval_json(path)["evaluations"]["math_test"]["curves"]["accuracy"][1])


@pytest.mark.parametrize("mutate,message", [
    (lambda r: r.pop("method"), "field 'method'"),
    (lambda r: r.update(schema_version=7), "schema_version"),
    (lambda r: r["evaluations"]["math_test"]["curves"]["accuracy"].pop(), r"K \+ 1 = 3 values, got 2"),
    (lambda r: r["evaluations"]["math_test"].update(headline="bogus"), "headline 'bogus'"),
    (lambda r: r["evaluations"]["math_test"].update(kind="other"), "kind is 'other'"),
])
def test_eval_json_schema_errors_name_the_field(tmp_path, mutate, message):
    record = eval_json.make_eval_record("grpo", "math", {"math_test": _curve_eval([0.1, 0.2, 0.3])})
    mutate(record)
    with pytest.raises(ValueError, match=message):
        eval_json.write_eval_json(str(tmp_path / "eval.json"), record)
    assert not os.path.exists(tmp_path / "eval.json")


def test_read_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="No eval.json"):
        eval_json.read_eval_json(str(tmp_path))
    (tmp_path / "eval.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        eval_json.read_eval_json(str(tmp_path / "eval.json"))


def test_summary_table_mean_sem_and_delta(tmp_path):
    paths = [_write_run(tmp_path, "g0", "grpo", 0, [0.10, 0.12, 0.14]),
             _write_run(tmp_path, "g1", "grpo", 1, [0.20, 0.20, 0.20]),
             _write_run(tmp_path, "e0", "exit", 0, [0.30, 0.35, 0.40])]
    runs = compare.load_runs(paths)
    table = compare.summary_table(runs)
    lines = table.strip().splitlines()
    assert lines[0] == "| Method | runs | math_test accuracy (%) k=0 | k=2 | Δ2 |"
    # grpo: k0 = 10, 20 -> 15.0 ± 5.0; k2 = 14, 20 -> 17.0 ± 3.0; Δ = mean(4, 0) = +2.0
    assert lines[2] == "| grpo | 2 | 15.0 ± 5.0 | 17.0 ± 3.0 | +2.0 |"
    assert lines[3] == "| exit | 1 | 30.0 | 40.0 | +10.0 |"
    relabeled = compare.load_runs(paths, labels=["a", "a", "a"])
    assert list(relabeled) == ["a"] and len(relabeled["a"]) == 3
    with pytest.raises(ValueError, match="one label per run"):
        compare.load_runs(paths, labels=["a"])


def test_compare_command_writes_table_and_overlay_pngs(tmp_path):
    paths = [_write_run(tmp_path, "g0", "grpo", 0, [0.10, 0.12, 0.14]),
             _write_run(tmp_path, "g1", "grpo", 1, [0.20, 0.20, 0.20]),
             _write_run(tmp_path, "e0", "exit", 0, [0.30, 0.35, 0.40])]
    out = tmp_path / "cmp"
    assert compare.main([os.path.dirname(p) for p in paths] + ["--out_dir", str(out)]) == 0
    md = (out / "comparison.md").read_text()
    assert "| exit | 1 | 30.0 | 40.0 | +10.0 |" in md
    pngs = sorted(os.listdir(out))
    assert pngs == ["compare_math_test_accuracy.png", "compare_math_test_net_corrections.png",
                    "comparison.md"]
    assert all(_is_png(out / p) for p in pngs if p.endswith(".png"))


def test_plot_eval_and_groups(tmp_path):
    tasks = toy_tasks()
    result = self_improve.evaluate(ScriptedImprover(tasks), tasks, ExactAnswerEnv, K=2, n=2,
                                   group_of=lambda t: "split_" + t.id)
    record = eval_json.make_eval_record("exit", "math", {"toy": result})
    paths = plots.plot_eval(record, str(tmp_path))
    assert [os.path.basename(p) for p in paths] == ["eval_toy.png", "eval_toy_groups.png"]
    assert all(_is_png(p) for p in paths)


def test_curriculum_plot_from_metrics_jsonl(tmp_path):
    writer = MetricsWriter(str(tmp_path), tensorboard=False)
    for it in range(6):
        writer.write(it, {"reward_mean": 0.1 * it, "curriculum/sampled_depth": 1 + 0.1 * it,
                          "curriculum/start_turn": float("nan") if it == 0 else 2.0,
                          "curriculum/sampled_from_iteration": it / 2, "curriculum/buffer_size": 10 * it})
    writer.close()
    records = plots.load_metrics(str(tmp_path))
    assert plots.curriculum_keys({"r": records}) == [
        "curriculum/buffer_size", "curriculum/sampled_depth", "curriculum/sampled_from_iteration",
        "curriculum/start_turn"]
    path = plots.plot_curriculum({"exit": records}, str(tmp_path / "curriculum.png"))
    assert _is_png(path)
    chosen = plots.plot_curriculum({"exit": records}, str(tmp_path / "chosen.png"),
                                   keys=["reward_mean", "curriculum/absent", "curriculum/buffer_size"])
    assert _is_png(chosen)
    assert plots.plot_curriculum([{"iteration": 0, "reward_mean": 0.3}], str(tmp_path / "none.png")) is None
    assert plots.plot_curriculum([{"iteration": 0}], str(tmp_path / "none.png"), keys=["curriculum/x"]) is None
    assert not os.path.exists(tmp_path / "none.png")
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        plots.load_metrics(str(tmp_path / "missing"))


def test_mean_and_sem():
    mean, sem = plots.mean_and_sem([[1.0, 2.0], [3.0, 2.0]])
    np.testing.assert_allclose(mean, [2.0, 2.0])
    np.testing.assert_allclose(sem, [1.0, 0.0])
