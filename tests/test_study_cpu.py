"""The CPU study runner: cpu_study.json shape, Table-1 statistics, skipping, one tiny real run."""
import importlib.util
import json
import math
import os
import subprocess
import sys
import threading
import time

import pytest

from exit_jax.evaluation.eval_json import make_eval_record, write_eval_json
from studies.cpu import report, study

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN_DIR = os.path.join(REPO, "studies", "cpu", "gin")


def _load_launcher():
    spec = importlib.util.spec_from_file_location("study_launcher", os.path.join(REPO, "studies", "cpu", "run.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _math_eval(method, seed, accuracy, net=None, n=2, num_tasks=4):
    K = len(accuracy) - 1
    ev = {"kind": "self_improve", "K": K, "n": n, "num_tasks": num_tasks, "headline": "accuracy",
          "curves": {"accuracy": accuracy, "net_corrections": net or [0.0] * (K + 1),
                     "macro_accuracy": accuracy}}
    return make_eval_record(method, "math", {"self_improvement": ev}, seed=seed, iteration=3)


def _mle_eval(method, seed, score):
    K = len(score) - 1
    ev = {"kind": "greedy_search", "K": K, "n": 1, "num_tasks": 3, "headline": "normalized_score",
          "curves": {"normalized_score": score, "medal_rate": [0.0] * (K + 1), "valid_rate": [1.0] * (K + 1)}}
    return make_eval_record(method, "mle", {"greedy_search": ev}, seed=seed, iteration=3)


def _metrics(workdir, rows):
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps({"iteration": i, **row}) + "\n" for i, row in enumerate(rows))


def _fake_run(spec, record, metric_rows=()):
    os.makedirs(spec.workdir, exist_ok=True)
    write_eval_json(spec.eval_path, record)
    if metric_rows:
        _metrics(spec.workdir, metric_rows)


def test_aggregate_has_exactly_the_issue_shape(tmp_path):
    specs = study.plan_runs(str(tmp_path), ["math", "mle"], ["grpo", "exit"], [0, 1])
    rows = [{"reward/mean": 0.1, "rollout/sampled_tokens_total": 100, "time/iteration_s": 1.5,
             "curriculum/sampled_depth": "nan", "curriculum/replay_fraction": 0.0,
             "curriculum/distinct_instances_seen": 8},
            {"reward/mean": 0.3, "rollout/sampled_tokens_total": 210, "time/iteration_s": 1.0,
             "curriculum/sampled_depth": 1.0, "curriculum/replay_fraction": 0.5,
             "curriculum/distinct_instances_seen": 14}]
    for spec in specs:
        if spec.name == "mle/exit/seed1":
            continue  # unfinished: no eval.json, so it is left out
        if spec.domain == "math":
            record = _math_eval(spec.method, spec.seed, [0.25, 0.5, 0.75], net=[0.0, 0.5, 1.0])
        else:
            record = _mle_eval(spec.method, spec.seed, [0.1, float("nan"), 0.3])
        _fake_run(spec, record, rows)
    out = study.aggregate(list(reversed(specs)))  # seeds come back sorted whatever the order
    assert set(out) == {"math", "mle"}
    assert set(out["math"]) == {"grpo", "exit"} and set(out["mle"]) == {"grpo", "exit"}
    assert [r["seed"] for r in out["math"]["exit"]] == [0, 1]
    assert [r["seed"] for r in out["mle"]["exit"]] == [0]
    for methods in out.values():
        for records in methods.values():
            for r in records:
                assert isinstance(r["seed"], int)
                assert all(v is None or isinstance(v, float) for v in r["accuracy_by_k"])
                assert len(r["accuracy_by_k"]) == 3
    math_rec = out["math"]["grpo"][0]
    assert math_rec["accuracy_by_k"] == [0.25, 0.5, 0.75]
    assert math_rec["net_corrections_by_k"] == [0.0, 0.5, 1.0]
    assert out["mle"]["grpo"][1]["accuracy_by_k"] == [0.1, None, 0.3]  # NaN never reaches the JSON
    assert out["mle"]["grpo"][1]["metric"] == "normalized_score"
    assert math_rec["training"] == {"iterations": 2, "sampled_tokens": 210, "train_time_s": 2.5,
                                    "reward_start": 0.1, "reward_end": 0.3}
    cur = math_rec["curriculum"]
    assert cur["sampled_depth_mean"] == 1.0 and cur["replay_fraction_mean"] == 0.25
    assert cur["distinct_instances_seen"] == 14.0
    path = study.write_json(str(tmp_path / "results" / "cpu_study.json"), out)
    with open(path) as f:
        assert json.load(f) == out  # strict JSON (allow_nan=False) round trip


def _records(k0s, kKs, K=16):
    return [{"seed": s, "K": K, "accuracy_by_k": [a] + [None] * (K - 1) + [b]}
            for s, (a, b) in enumerate(zip(k0s, kKs))]


def test_table_mean_and_standard_error_match_hand_computation():
    # k=0: 10, 20, 30 % -> mean 20, SE = 10 / sqrt(3) = 5.77; k=16: 20, 30, 70 -> mean 40,
    # SE = sqrt(700) / sqrt(3) = 15.28; Δ: 10, 10, 40 -> mean 20, SE = sqrt(300) / sqrt(3) = 10.0.
    methods = {"grpo": _records([0.2, 0.2, 0.2], [0.2, 0.2, 0.2]),
               "exit": _records([0.1, 0.2, 0.3], [0.2, 0.3, 0.7])}
    assert study.mean_sem([0.1, 0.2, 0.3]) == pytest.approx((0.2, 0.1 / math.sqrt(3)))
    assert study.mean_sem([0.5]) == (0.5, 0.0)
    assert all(math.isnan(v) for v in study.mean_sem([None, float("nan")]))
    table = "\n".join(report.score_table("math", methods))
    exit_row = next(line for line in table.splitlines() if "Full ExIt" in line)
    cells = [c.strip() for c in exit_row.strip("|").split("|")]
    assert cells[1:5] == ["3", "20.0 ± 5.8", "40.0 ± 15.3", "+20.0 ± 10.0"]
    assert cells[5:8] == ["18.4", "20.4", "+2.0"]  # the paper's Table 1 numbers beside ours
    grpo_row = next(line for line in table.splitlines() if line.startswith("| GRPO"))
    assert "20.0 ± 0.0" in grpo_row and "+0.0 ± 0.0" in grpo_row
    # Difference to GRPO: 40 - 20 = +20 at k=16 with SE hypot(15.28, 0) and z = 20 / 15.28 = 1.3.
    versus = "\n".join(report.versus_table(methods))
    assert "+20.0 ± 15.3, +1.3 SE" in versus and "+20.0 ± 10.0, +2.0 SE" in versus


def test_single_seed_and_missing_values_are_shown_plainly():
    methods = {"base": _records([0.5], [0.25], K=2), "grpo": _records([0.5], [0.5], K=2)}
    row = report.score_table("mle", methods)[2]
    assert "| 50.0 | 25.0 | -25.0 |" in row and "2 → 4" in row
    assert study.fmt([]) == "n/a"
    versus = "\n".join(report.versus_table(methods))
    assert "-25.0 (1 seed: no SE)" in versus and "±" not in versus


def test_tables_markdown_has_every_section(tmp_path):
    rec = {"seed": 0, "K": 2, "n": 2, "num_tasks": 4, "accuracy_by_k": [0.25, 0.5, 0.5],
           "net_corrections_by_k": [0.0, 1.0, 1.0],
           "training": {"iterations": 3, "sampled_tokens": 900, "reward_start": 0.1, "reward_end": 0.2},
           "curriculum": {"distinct_instances_seen": 10.0, "sampled_depth_mean": 1.5}}
    text = report.tables_markdown({"math": {"grpo": [rec], "exit": [dict(rec, seed=1)]}}, "quick")
    for needle in ("## math", "Difference to GRPO", "Net corrections", "Curriculum statistics",
                   "| + diversity bonus (Full ExIt) | 3 | 1 |", "≈ 160–170", "| 1.26 |"):
        assert needle in text, needle
    # net corrections: 1.0 per chain over 4 problems = +25 % of problems
    assert "| +1.00 | +25.0 |" in text


def test_plan_order_and_commands(tmp_path):
    specs = study.plan_runs(str(tmp_path), ["math", "mle"], ["base", "exit"], [0, 1])
    assert [s.name for s in specs[:4]] == ["math/base/seed0", "math/exit/seed0", "mle/base/seed0",
                                           "mle/exit/seed0"]
    assert specs[0].workdir == os.path.join(str(tmp_path), "math", "base", "seed0")
    base = study.train_command(specs[0], "/g/math.gin", "/m", "py", "train.py", bindings=["A=1"])
    assert base == ["py", "train.py", "--gin_file=/g/math.gin", "--gin_file=grpo.gin", "--gin.MODEL='/m'",
                    f"--gin.WORKDIR='{specs[0].workdir}'", "--gin.SEED=0", "--gin.NUM_ITERATIONS=0",
                    "--gin.A=1"]
    ex = study.train_command(specs[5], "/g/mle.gin", "smoke", "py", "train.py", ["/g/models_mle.gin"])
    assert ex[2:5] == ["--gin_file=/g/mle.gin", "--gin_file=/g/models_mle.gin", "--gin_file=exit.gin"]
    assert "--gin.SEED=1" in ex and not any("NUM_ITERATIONS" in a for a in ex)
    with pytest.raises(ValueError, match="unknown"):
        study.parse_list("grpo,exitt", study.METHODS, "methods")
    full = study.PRESETS["full"]  # the issue's study: both domains, base + five methods, three seeds
    names = [s.name for s in study.plan_runs(str(tmp_path), full.domains, full.methods, full.seeds)]
    assert len(names) == 2 * 6 * 3 and names[6:8] == ["mle/base/seed0", "mle/grpo/seed0"]


def test_finished_runs_are_skipped_and_the_rest_run(tmp_path, monkeypatch):
    launcher = _load_launcher()
    root = tmp_path / "root"
    done = study.plan_runs(str(root / "quick"), ["math"], ["grpo"], [0])[0]
    _fake_run(done, _math_eval("grpo", 0, [0.5, 0.5, 0.5]))
    calls = []

    def fake_call(cmd, log_path):
        calls.append(cmd)
        workdir = next(a for a in cmd if a.startswith("--gin.WORKDIR=")).split("=", 1)[1].strip("'")
        seed = int(next(a for a in cmd if a.startswith("--gin.SEED=")).split("=")[1])
        write_eval_json(os.path.join(workdir, "eval.json"), _math_eval("exit", seed, [0.25, 0.5, 0.75]))
        return 0

    monkeypatch.setattr(launcher, "call", fake_call)
    out = tmp_path / "res" / "cpu_study.json"
    rc = launcher.main(["--preset", "quick", "--domains", "math", "--methods", "grpo,exit", "--seeds", "0",
                        "--root", str(root), "--out", str(out), "--model", "smoke"])
    assert rc == 0
    assert len(calls) == 1 and "--gin_file=exit.gin" in calls[0]  # the finished GRPO run was skipped
    assert f"--gin_file={GIN_DIR}/math_quick.gin" in calls[0] and "--gin.MODEL='smoke'" in calls[0]
    results = json.loads(out.read_text())
    assert set(results["math"]) == {"grpo", "exit"}
    meta = json.loads((out.parent / "cpu_study_meta.json").read_text())
    assert [r["finished"] for r in meta["runs"]] == [True, True] and meta["failed"] == []
    assert (out.parent / "cpu_study_tables.md").exists() and (out.parent / "math_score_vs_k.png").exists()
    # A second invocation finds everything finished and runs nothing.
    rc = launcher.main(["--preset", "quick", "--domains", "math", "--methods", "grpo,exit", "--seeds", "0",
                        "--root", str(root), "--out", str(out), "--model", "smoke"])
    assert rc == 0 and len(calls) == 1


def test_a_failed_run_is_reported_and_the_study_goes_on(tmp_path, monkeypatch):
    launcher = _load_launcher()
    monkeypatch.setattr(launcher, "call", lambda cmd, log_path: 3)
    out = tmp_path / "res" / "cpu_study.json"
    rc = launcher.main(["--preset", "quick", "--domains", "math", "--methods", "grpo,exit", "--seeds", "0",
                        "--root", str(tmp_path / "root"), "--out", str(out), "--model", "smoke"])
    assert rc == 1
    meta = json.loads((out.parent / "cpu_study_meta.json").read_text())
    assert meta["failed"] == ["math/grpo/seed0", "math/exit/seed0"]
    assert [r["rc"] for r in meta["runs"]] == [3, 3]
    assert json.loads(out.read_text()) == {}


@pytest.mark.slow
def test_end_to_end_on_the_smoke_model(tmp_path):
    out = tmp_path / "results" / "cpu_study.json"
    cmd = [sys.executable, os.path.join(REPO, "studies", "cpu", "run.py"), "--preset", "quick", "--domains", "math",
           "--methods", "exit", "--seeds", "0", "--model", "smoke", "--root", str(tmp_path / "runs"),
           "--out", str(out), "--gin", "loop.RunConfig.sampled_token_budget=1",
           "--gin", "loop.RunConfig.prompts_per_iteration=2", "--gin", "domains.math_domain.num_train=16",
           "--gin", "policy.SamplingConfig.max_new_tokens=16", "--gin", "study.evaluate_and_report.K=1",
           "--gin", "study.evaluate_and_report.n=2", "--gin", "study.evaluate_and_report.num_tasks=4"]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads(out.read_text())
    (record,) = results["math"]["exit"]
    assert record["seed"] == 0 and len(record["accuracy_by_k"]) == 2  # K = 1
    assert record["training"]["iterations"] == 1  # the 1-token budget stops after one iteration
    assert record["n"] == 2 and record["num_tasks"] == 4
    config = (tmp_path / "runs" / "quick" / "math" / "exit" / "seed0" / "config.gin").read_text()
    assert "loop.RunConfig.sampled_token_budget = 1" in config and "METHOD = 'exit'" in config


class _RecordingPolicy:
    def __init__(self):
        self.calls = []

    def generate(self, conversations, num_samples=1):
        self.calls.append((len(conversations), num_samples))
        return [[f"{c[0]['content']}#{j}" for j in range(num_samples)] for c in conversations]


def test_chunked_policy_keeps_order_and_one_batch_shape():
    inner = _RecordingPolicy()
    policy = study.ChunkedPolicy(inner, max_rows=8)
    convs = [[{"role": "user", "content": str(i)}] for i in range(10)]
    out = policy.generate(convs, num_samples=1)
    assert out == [[f"{i}#0"] for i in range(10)]
    assert inner.calls == [(8, 1), (8, 1)]  # the last chunk is padded to the same shape
    out = policy.generate(convs[:3], num_samples=4)  # 3 x 4 = 12 rows > 8: 2 conversations a call
    assert out == [[f"{i}#{j}" for j in range(4)] for i in range(3)]
    assert inner.calls[2:] == [(2, 4), (2, 4)]
    assert study.ChunkedPolicy(inner, 64).generate(convs[:2], 2) == [["0#0", "0#1"], ["1#0", "1#1"]]
    with pytest.raises(ValueError):
        study.ChunkedPolicy(inner, 0)


def test_runs_go_jobs_at_a_time_and_failures_are_reported(tmp_path, monkeypatch):
    launcher = _load_launcher()
    running, peak, lock = [0], [0], threading.Lock()

    def fake_call(cmd, log_path):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.3)  # long enough for the other job to start
        workdir = next(a for a in cmd if a.startswith("--gin.WORKDIR=")).split("=", 1)[1].strip("'")
        seed = int(next(a for a in cmd if a.startswith("--gin.SEED=")).split("=")[1])
        with lock:
            running[0] -= 1
        if seed == 1 and "--gin_file=exit.gin" in cmd:
            return 3  # this run crashes: no eval.json
        write_eval_json(os.path.join(workdir, "eval.json"), _math_eval("exit", seed, [0.25, 0.5, 0.75]))
        return 0

    monkeypatch.setattr(launcher, "call", fake_call)
    out = tmp_path / "res" / "cpu_study.json"
    rc = launcher.main(["--preset", "quick", "--domains", "math", "--methods", "grpo,exit", "--seeds", "0,1",
                        "--root", str(tmp_path / "root"), "--out", str(out), "--model", "smoke", "--jobs", "2"])
    meta = json.loads((out.parent / "cpu_study_meta.json").read_text())
    assert rc == 1 and meta["failed"] == ["math/exit/seed1"] and peak[0] == 2
    assert [len(v) for v in json.loads(out.read_text())["math"].values()] == [2, 1]


def test_jobs_below_one_is_refused_with_one_sentence(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _load_launcher().main(["--jobs", "0", "--root", str(tmp_path), "--model", "smoke"])
    assert "--jobs=0: need at least 1." in capsys.readouterr().err


def test_runs_from_another_warm_start_are_never_mixed_in(tmp_path, monkeypatch, capsys):
    launcher = _load_launcher()
    root = tmp_path / "root"
    argv = ["--preset", "quick", "--domains", "math", "--methods", "grpo", "--seeds", "0", "--root", str(root),
            "--out", str(tmp_path / "res" / "cpu_study.json")]

    def fake_call(cmd, log_path):
        workdir = next(a for a in cmd if a.startswith("--gin.WORKDIR=")).split("=", 1)[1].strip("'")
        write_eval_json(os.path.join(workdir, "eval.json"), _math_eval("grpo", 0, [0.5, 0.5]))
        return 0

    monkeypatch.setattr(launcher, "call", fake_call)
    model = tmp_path / "pretrained"
    model.mkdir()
    (model / "pretrain.json").write_text(json.dumps({"config_hash": "aaaa"}))
    assert launcher.main(argv + ["--model", str(model)]) == 0
    run = study.plan_runs(str(root / "quick"), ["math"], ["grpo"], [0])[0]
    assert json.loads(open(os.path.join(run.workdir, "study_run.json")).read())["model"] == "pretrain:aaaa"
    assert launcher.main(argv + ["--model", str(model)]) == 0  # the same warm start: reused
    (model / "pretrain.json").write_text(json.dumps({"config_hash": "bbbb"}))  # a rebuilt warm start
    with pytest.raises(SystemExit, match=r"math/grpo/seed0 \(pretrain:aaaa\); move their directories away"):
        launcher.main(argv + ["--model", str(model)])
    assert os.path.exists(run.eval_path)  # nothing was deleted


def test_pretraining_stages_chain_and_the_gin_files_point_at_the_last(tmp_path, monkeypatch):
    launcher = _load_launcher()
    calls = []
    monkeypatch.setattr(launcher, "call", lambda cmd, log_path: calls.append(cmd) or 0)
    model = launcher.pretrain("mle", str(tmp_path))
    outs = [cmd[cmd.index("--out") + 1] for cmd in calls]
    assert outs == [os.path.join(str(tmp_path), "pretrain", name) for name, _ in study.PRETRAIN_STAGES["mle"]]
    assert model == outs[-1] and "--init" not in calls[0]
    assert all(cmd[cmd.index("--init") + 1] == before for cmd, before in zip(calls[1:], outs))
    monkeypatch.setattr(launcher, "call", lambda cmd, log_path: 1)
    with pytest.raises(SystemExit, match="pretraining math failed"):
        launcher.pretrain("math", str(tmp_path))
    for domain, stages in study.PRETRAIN_STAGES.items():  # a manual train.py run finds the study's model
        with open(os.path.join(GIN_DIR, f"{domain}.gin"), encoding="utf-8") as f:
            assert f'\nMODEL = "runs/study/pretrain/{stages[-1][0]}"\n' in f.read()


def test_pretrain_summary_lists_the_stages_a_model_continued(tmp_path):
    first = {"config_hash": "aaaa", "args": {}, "sft": {"seconds": 10.0, "tokens": 100}}
    (tmp_path / "pretrain.json").write_text(json.dumps({
        "config_hash": "bbbb", "num_params": 5, "sft": {"seconds": 20.0, "tokens": 200, "loss_end": 0.5},
        "init": {**first, "init": None}, "check": {"greedy": {"valid": 0.5, "normalized": 0.25, "tasks": {}}}}))
    summary = study.pretrain_summary(str(tmp_path))
    assert summary["earlier_stages"] == [{"config_hash": "aaaa", "sft_seconds": 10.0, "sft_tokens": 100}]
    assert summary["sft_seconds"] == 20.0 and summary["check_accuracy_by_k"]["greedy"]["valid"] == 0.5


def test_report_only_trains_nothing_and_names_the_pretrained_model(tmp_path, monkeypatch):
    launcher = _load_launcher()
    monkeypatch.setattr(launcher, "call", lambda cmd, log_path: pytest.fail(f"ran {cmd}"))
    root = tmp_path / "root"
    _fake_run(study.plan_runs(str(root / "full"), ["math"], ["grpo"], [0])[0], _math_eval("grpo", 0, [0.5, 0.25]))
    model = root / "pretrain" / study.PRETRAIN_STAGES["math"][-1][0]
    model.mkdir(parents=True)
    (model / "pretrain.json").write_text(json.dumps({"config_hash": "cccc", "sft": {"seconds": 3.0}}))
    out = tmp_path / "res" / "cpu_study.json"
    assert launcher.main(["--report_only", "--domains", "math", "--root", str(root), "--out", str(out)]) == 0
    meta = json.loads((out.parent / "cpu_study_meta.json").read_text())
    assert meta["models"] == {"math": str(model)} and meta["pretrain"]["math"]["config_hash"] == "cccc"
    assert json.loads(out.read_text())["math"]["grpo"][0]["accuracy_by_k"] == [0.5, 0.25]
