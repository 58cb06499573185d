"""BFCL v3 multi-turn environment: oracle / null / perturbed policies, isolation, malformed replies,
restore-by-replay, knobs. Data: the bfcl-eval wheel (Apache-2.0, ShishirPatil/gorilla)."""
import ast
import decimal
import json
import os
import time

import hypothesis
import hypothesis.strategies as st
import mpmath
import pytest

from exit_jax.envs import base
from exit_jax.envs.tool_use import bfcl, checker, data, executor, isolated, prompts

CATEGORIES = data.CATEGORIES


@pytest.fixture(scope="module")
def all_tasks():
    return {c: bfcl.load_entries(c) for c in CATEGORIES}


def _task(task_id):
    category = task_id.rsplit("_", 1)[0]
    return bfcl.load_entries(category, [task_id])[0]


def _run(task, replies, **kw):
    return base.replay(bfcl.MultiTurnEnv(task, **kw), replies)


def test_pinned_version_and_counts(all_tasks):
    assert data.installed_version() == data.PINNED_VERSION
    for category, tasks in all_tasks.items():
        assert len(tasks) == 200, category
        assert len({t.id for t in tasks}) == 200
        assert all(t.domain == "tool_use" and t.id.startswith(category) for t in tasks)
    assert prompts.MAX_STEPS_PER_TURN == __import__(
        "bfcl_eval.constants.default_prompts", fromlist=["x"]).MAXIMUM_STEP_LIMIT


@pytest.mark.parametrize("protocol", bfcl.PROTOCOLS)
def test_oracle_scores_one_on_all_800_entries(all_tasks, protocol):
    for category, tasks in all_tasks.items():
        failures = []
        for task in tasks:
            _, result = _run(task, bfcl.oracle_replies(task, protocol), protocol=protocol)
            if not (result.done and result.reward == 1.0):
                failures.append((task.id, result.info.get("reason")))
            else:
                assert all(r == 1.0 for r in result.info["request_rewards"])
                assert result.info["total_return"] == len(task.data["ground_truth"])
        assert not failures, (category, failures[:3])


def test_do_nothing_scores_zero_on_all_800_entries(all_tasks):
    for category, tasks in all_tasks.items():
        for task in tasks:
            _, result = _run(task, ["I cannot help with that."] * 50)
            assert result.done and result.reward == 0.0, task.id
            assert "no tool call" in result.info["reason"], task.id


def _perturb(call: str) -> str | None:
    """The call with its first string/number argument changed (booleans are skipped: `ls(a=False)`
    equals `ls(a=True)` in a directory without hidden files)."""
    node = ast.parse(call, mode="eval").body
    slots = [(kw, "value") for kw in node.keywords] + [(node.args, i) for i in range(len(node.args))]
    for holder, key in slots:
        value = ast.literal_eval(getattr(holder, key) if isinstance(key, str) else holder[key])
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            continue
        new = ast.Constant(value + "_x" if isinstance(value, str) else value + 7)
        if isinstance(key, str):
            setattr(holder, key, new)
        else:
            holder[key] = new
        return ast.unparse(node)
    return None


def test_perturbed_argument_fails(all_tasks):
    # Exact cases: a state change caught by the state check, a read-only call by the response check.
    task = _task("multi_turn_base_0")
    good = bfcl.oracle_replies(task)
    state_bad = [good[0].replace("dir_name='temp'", "dir_name='tmp'")] + good[1:]
    _, result = _run(task, state_bad)
    assert result.reward == 0.0 and result.info["turn_status"][0] == "fail"
    assert "state differs" in result.info["turn_reasons"][0]
    read_bad = good[:2] + [good[2].replace("pattern='budget analysis'", "pattern='forecast'")] + good[3:]
    _, result = _run(task, read_bad)
    assert result.info["turn_status"][:2] == ["pass", "fail"]
    assert "missing" in result.info["turn_reasons"][1]
    # Sweep: perturbing the first perturbable argument of the first request fails nearly every entry.
    # A few survive because BFCL's checker is blind to them (e.g. a mileage estimate that still says
    # "cannot drive", or adding a stock that is already on the watch list).
    for category, tasks in all_tasks.items():
        failed = 0
        for task in tasks:
            replies, done = [], False
            for turn in task.data["ground_truth"]:
                calls = list(turn)
                for j, call in enumerate(calls):
                    if not done and (changed := _perturb(call)) is not None:
                        calls[j], done = changed, True
                if calls:
                    replies.append("[" + ", ".join(calls) + "]")
                replies.append("done")
            _, result = _run(task, replies)
            failed += result.reward == 0.0
        assert failed >= 0.9 * len(tasks), (category, failed)


def test_isolation_between_rollouts_of_one_entry():
    task = _task("multi_turn_base_0")
    a, b = bfcl.MultiTurnEnv(task), bfcl.MultiTurnEnv(task)
    a.reset(), b.reset()
    # Rollout a wrecks the file system first; b then plays the oracle, interleaved with more of a.
    a.step("[rm(file_name='final_report.pdf'), mkdir(dir_name='junk')]")
    for reply in bfcl.oracle_replies(task):
        result = b.step(reply)
        a.step("[touch(file_name='x.txt')]")
    assert result.done and result.reward == 1.0
    # The task record itself is untouched, and a fresh env starts from the pristine state.
    contents = task.data["entry"]["initial_config"]["GorillaFileSystem"]["root"]["workspace"]["contents"]
    assert set(contents["document"]["contents"]) == {"final_report.pdf", "previous_report.pdf"}
    _, again = _run(task, bfcl.oracle_replies(task))
    assert again.reward == 1.0


def test_long_context_instances_do_not_share_module_objects():
    travel = next(t for t in bfcl.load_entries("multi_turn_long_context")
                  if "TravelAPI" in t.data["entry"]["involved_classes"])
    entry = travel.data["entry"]
    first = executor.make_instances(entry["initial_config"], ["TravelAPI"], long_context=True)
    second = executor.make_instances(entry["initial_config"], ["TravelAPI"], long_context=True)
    cards = first["TravelAPI"].credit_card_list
    for card in cards.values():  # e.g. a booking drains every card, filler cards included
        card["balance"] = -1
    assert all(c["balance"] != -1 for c in second["TravelAPI"].credit_card_list.values())
    third = executor.make_instances(entry["initial_config"], ["TravelAPI"], long_context=True)
    assert checker.state_differences(second, third) == []


MALFORMED = [
    "[cd(folder='document'",  # syntax error
    "[cd(folder='document'), 42]",  # not a call
    "[os.system('ls')]",  # dotted name
    "[no_such_function(x=1)]",  # unknown function
    "[cd(folder=__import__('os').system('touch {sentinel}'))]",  # non-literal argument
    "[cd(**{'folder': 'document'})]",  # **kwargs
    "[cd(folder=open('/etc/passwd').read())]",
    "[" * 50_000,  # deep nesting
    "[echo(content='" + "x" * 200_000 + "', file_name='a.txt')]",  # longer than max_reply_chars
    "<tool>{not json</tool>",
    "",
    "\x00\x01\ufffd",
]


@pytest.mark.parametrize("reply", MALFORMED)
def test_malformed_replies_score_zero_with_reason_and_never_raise(reply, tmp_path):
    sentinel = tmp_path / "pwned"
    reply = reply.format(sentinel=sentinel) if "{sentinel}" in reply else reply
    task = _task("multi_turn_base_0")
    for protocol in bfcl.PROTOCOLS:
        env = bfcl.MultiTurnEnv(task, protocol=protocol)
        env.reset()
        results = [env.step(reply) for _ in range(30)]
        final = results[-1]
        assert final.done and final.reward == 0.0 and final.info["reason"]
    assert not sentinel.exists()


def test_malformed_calls_give_error_results():
    env = bfcl.MultiTurnEnv(_task("multi_turn_base_0"))
    env.reset()
    result = env.step("[no_such_function(x=1), cd(folder=__import__('os')), cd(folder='document')]")
    contents = [m["content"] for m in result.messages]
    assert not result.done and len(contents) == 3
    assert contents[0] == "Error during execution: function 'no_such_function' is not available"
    assert contents[1].startswith("Error during execution:") and "not a literal" in contents[1]
    assert json.loads(contents[2]) == {"current_working_directory": "document"}
    bad_kw = env.step("[cd(directory='x')]")
    assert "unexpected keyword argument" in bad_kw.messages[0]["content"]
    undecodable = env.step("this is not a call")
    assert undecodable.info["decode_error"] and not undecodable.done
    assert undecodable.messages[0]["role"] == "user"  # the request ended; the next one began


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(st.lists(st.text(max_size=60), min_size=1, max_size=6),
                  st.sampled_from(bfcl.PROTOCOLS))
def test_random_text_never_raises(replies, protocol):
    env = bfcl.MultiTurnEnv(_task("multi_turn_base_3"), protocol=protocol)
    env.reset()
    for reply in replies:
        result = env.step(reply)
        assert result.reward in (0.0, 1.0)
        assert all(isinstance(m["content"], str) for m in result.messages)


def test_non_string_reply_is_refused():
    env = bfcl.MultiTurnEnv(_task("multi_turn_base_3"))
    env.reset()
    result = env.step(None)
    assert "not text" in result.info["decode_error"]


@pytest.mark.parametrize("task_id", ["multi_turn_base_0", "multi_turn_base_5", "multi_turn_miss_func_0",
                                     "multi_turn_miss_param_7", "multi_turn_long_context_3"])
def test_restore_by_replay_continues_exactly(task_id):
    task = _task(task_id)
    replies = bfcl.oracle_replies(task)
    full_messages, full_result = _run(task, replies)
    for cut in range(len(replies)):
        env = bfcl.MultiTurnEnv(task)
        messages, _ = base.replay(env, replies[:cut])
        for reply in replies[cut:]:
            messages.append({"role": "assistant", "content": reply})
            result = env.step(reply)
            messages.extend(result.messages)
        assert messages == full_messages and result.reward == full_result.reward == 1.0


def test_replay_is_deterministic_with_random_ids():
    # MessageAPI draws message ids from its seeded per-instance RNG: replays must see the same ids.
    task = next(t for t in bfcl.load_entries("multi_turn_base")
                if any("send_message" in c for turn in t.data["ground_truth"] for c in turn))
    first, _ = _run(task, bfcl.oracle_replies(task))
    second, _ = _run(task, bfcl.oracle_replies(task))
    assert any("message_id" in m["content"] for m in first if m["role"] == "tool")
    assert first == second


def test_first_request_only_with_a_response_budget():
    task = _task("multi_turn_base_0")
    env = bfcl.MultiTurnEnv(task, max_user_turns=1, max_responses=10)
    env.reset()
    oracle = bfcl.oracle_replies(task)
    assert not env.step(oracle[0]).done
    result = env.step(oracle[1])
    assert result.done and result.reward == 1.0 and result.info["request_rewards"] == [1.0]
    # Budget: ten read-only calls never finish the request; the tenth response ends the episode.
    env = bfcl.MultiTurnEnv(task, max_user_turns=1, max_responses=10)
    env.reset()
    results = [env.step("[pwd()]") for _ in range(10)]
    assert [r.done for r in results] == [False] * 9 + [True]
    assert results[-1].reward == 0.0 and results[-1].info["turn_status"] == ["fail"]
    # Solving it within the budget but never saying so still counts (the state is checked at the end).
    env = bfcl.MultiTurnEnv(task, max_user_turns=1, max_responses=2)
    env.reset()
    env.step("[pwd()]")
    assert env.step(oracle[0]).reward == 1.0


def test_step_limit_fails_the_entry():
    task = _task("multi_turn_base_0")
    env = bfcl.MultiTurnEnv(task)
    env.reset()
    results = [env.step("[pwd()]") for _ in range(bfcl.MAX_STEPS_PER_TURN + 1)]
    assert [r.done for r in results] == [False] * bfcl.MAX_STEPS_PER_TURN + [True]
    assert results[-1].reward == 0.0 and "tool-call steps" in results[-1].info["reason"]
    after = env.step("[pwd()]")
    assert after.done and after.info["reason"] == "episode already finished"
    # Nineteen idle steps and then the oracle's calls make twenty: still allowed.
    env.reset()
    for _ in range(bfcl.MAX_STEPS_PER_TURN - 1):
        env.step("[pwd()]")
    assert not env.step(bfcl.oracle_replies(task)[0]).done  # the 20th step is allowed
    assert env.step(bfcl.oracle_replies(task)[1]).info["turn_status"][0] == "pass"


def test_per_request_results_and_first_turn_reward():
    task = _task("multi_turn_base_0")
    oracle = bfcl.oracle_replies(task)
    _, result = _run(task, oracle[:2] + ["nothing"] * 10)
    info = result.info
    assert result.reward == 0.0 and info["first_turn_reward"] == 1.0
    assert info["request_rewards"] == [1.0, 0.0, 0.0, 0.0] and info["total_return"] == 1.0


def test_prompts_hide_excluded_and_held_out_functions():
    task = _task("multi_turn_miss_func_0")  # sort is held out until turn 3; cp is excluded
    env = bfcl.MultiTurnEnv(task)
    messages = env.reset()
    listed = {d["name"] for d in json.loads(messages[0]["content"].split("invoke.\n", 1)[1])}
    assert "sort" not in listed and "cp" not in listed and {"cd", "mv", "post_tweet"} <= listed
    assert messages[0]["content"].startswith("You are an expert in composing functions.")
    replies = bfcl.oracle_replies(task)
    seen, _ = base.replay(bfcl.MultiTurnEnv(task), replies[:5])  # turns 0-1 (calls, end), 2 (end)
    reveal = seen[-1]
    assert reveal["role"] == "user" and "'name': 'sort'" in reveal["content"]
    assert reveal["content"].endswith("I have updated some more functions you can choose from. "
                                      "What about now?")
    env = bfcl.MultiTurnEnv(task, protocol="json_tag")
    system = env.reset()[0]["content"]
    assert "<TASK_FINISHED>" in system and '"name": "sort"' not in system
    assert env.stop_strings == ("</tool>", "<TASK_FINISHED>", "<TASK_ERROR>")


def test_instruction_follows_the_current_request():
    task = _task("multi_turn_base_0")
    env = bfcl.MultiTurnEnv(task)
    env.reset()
    questions = [turn[0]["content"] for turn in task.data["entry"]["question"]]
    assert env.instruction() == questions[0]
    env.step("[pwd()]")
    assert env.instruction() == questions[0]
    env.step("done")
    assert env.instruction() == questions[1]


def test_json_tag_parsing():
    calls, why = executor.parse_json_tag_calls(
        'x <tool>{"name": "cd", "parameters": {"folder": "a"}}</tool><tool>{"name": "ls", "parameters": {}}')
    assert why == "" and [c.name for c in calls] == ["cd", "ls"] and calls[0].kwargs == {"folder": "a"}
    assert executor.parse_json_tag_calls("<TASK_FINISHED>") == ([], "")
    assert executor.parse_json_tag_calls('<tool>{"name": 3}</tool>')[0] is None


def test_math_tools_cannot_hang_or_leak_precision():
    instances = executor.make_instances({}, ["MathAPI"], long_context=False)
    owners = data.method_owners(("MathAPI",))
    dps, prec = mpmath.mp.dps, decimal.getcontext().prec
    (result,) = executor.execute_calls(executor.parse_python_calls(
        "[logarithm(value=20, base=10, precision=40)]")[0], instances, owners)
    assert result.startswith("{'result': mpf('1.30102999566398119521373889472449302676")
    assert (mpmath.mp.dps, decimal.getcontext().prec) == (dps, prec)
    huge_base = "7" * 4000  # 4,000 digits to the 10,000th: 78 s of GIL before the result-size guard
    slow = executor.parse_python_calls(
        f"[power(base=10, exponent=100000000), square_root(number=2, precision=10000000), "
        f"power(base={huge_base}, exponent=10000)]")[0]
    start = time.perf_counter()
    assert all("exceeds the limit" in r for r in executor.execute_calls(slow, instances, owners))
    assert time.perf_counter() - start < 1.0
    (fine,) = executor.execute_calls(executor.parse_python_calls("[power(base=2, exponent=10000)]")[0],
                                     instances, owners)
    assert "exceeds" not in fine and fine.endswith("9376}")  # 2**10000 still computes


def test_a_tool_call_over_its_time_budget_is_stopped_and_the_episode_goes_on():
    # round_number(5, -10**9) builds 10**(10**9) inside C code, where no argument guard or signal reaches.
    env = bfcl.MultiTurnEnv(_task("multi_turn_base_15"), call_time_limit_s=1.0)
    env.reset()
    env.step("[mkdir(dir_name='kept')]")
    start = time.perf_counter()
    stalled = env.step("[round_number(number=5, decimal_places=-1000000000), mkdir(dir_name='after')]")
    assert time.perf_counter() - start < 10
    first, second = (m["content"] for m in stalled.messages)
    assert first == executor.ERROR_PREFIX + ("round_number did not finish within the 1 s time budget for a "
                                             "tool call and was stopped")
    assert not stalled.done and "Error" not in second  # the next call runs in a fresh worker
    listing = env.step("[ls()]").messages[0]["content"]
    assert "kept" in listing and "after" in listing  # the state the earlier calls left is intact
    with pytest.raises(ValueError, match="call_time_limit_s"):
        bfcl.MultiTurnEnv(_task("multi_turn_base_15"), call_time_limit_s=0)


_STALLED_CALL = """
import os, threading
from exit_jax.envs.tool_use import data, executor, isolated
instances = executor.make_instances({}, ["MathAPI"], long_context=False)
calls = executor.parse_python_calls("[round_number(number=5, decimal_places=-1000000000)]")[0]
threading.Thread(target=isolated.execute_calls, args=(calls, instances, data.method_owners(("MathAPI",)), 600)).start()
while not isolated._all:
    pass
print(isolated._all[0].proc.pid, flush=True)
threading.Event().wait()
"""


def test_a_worker_stuck_in_a_call_dies_with_a_killed_trainer():
    import signal
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-c", _STALLED_CALL], stdout=subprocess.PIPE, text=True)
    worker = int(proc.stdout.readline())
    time.sleep(1.0)  # the worker is inside the call now
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and os.path.exists(f"/proc/{worker}") and \
            open(f"/proc/{worker}/stat").read().split()[2] != "Z":
        time.sleep(0.1)
    state = open(f"/proc/{worker}/stat").read().split()[2] if os.path.exists(f"/proc/{worker}") else "gone"
    assert state in ("gone", "Z"), state


def test_tool_workers_are_separate_processes_with_a_memory_budget():
    instances = executor.make_instances({}, ["MathAPI"], long_context=False)
    calls = executor.parse_python_calls("[add(a=1, b=2)]")[0]
    assert isolated.execute_calls(calls, instances, data.method_owners(("MathAPI",))) == ['{"result": 3}']
    with open(f"/proc/{isolated._all[0].proc.pid}/limits") as f:
        address_space = next(line for line in f if line.startswith("Max address space")).split()[3]
    assert int(address_space) == isolated.MEMORY_LIMIT_MB << 20


def test_bad_arguments_get_one_clear_sentence():
    task = _task("multi_turn_base_0")
    with pytest.raises(ValueError, match="protocol"):
        bfcl.MultiTurnEnv(task, protocol="xml")
    with pytest.raises(ValueError, match="max_responses"):
        bfcl.MultiTurnEnv(task, max_responses=0)
    with pytest.raises(ValueError, match="not a BFCL tool-use task"):
        bfcl.MultiTurnEnv(base.Task(id="x", domain="math", data={}))
    with pytest.raises(ValueError, match="Unknown BFCL category"):
        bfcl.load_entries("multi_turn_composite")
    with pytest.raises(ValueError, match="Unknown multi_turn_base entry"):
        bfcl.load_entries("multi_turn_base", ["multi_turn_base_999"])
    with pytest.raises(RuntimeError, match="reset"):
        bfcl.MultiTurnEnv(task).step("[pwd()]")


def test_damaged_bfcl_data_is_named_by_file_and_line(tmp_path, monkeypatch):
    """A category file whose line is not JSON, or whose entry lacks a key, is one sentence naming both."""
    import shutil
    root = data._data_dir()
    name = f"{data._FILE_PREFIX}multi_turn_base.json"
    (tmp_path / "possible_answer").mkdir()
    shutil.copy(root / "possible_answer" / name, tmp_path / "possible_answer" / name)
    lines = (root / name).read_text().splitlines()
    monkeypatch.setattr(data, "_data_dir", lambda: tmp_path)
    for broken, message in ((lines[0][:-5], "line 1: not valid JSON"),
                            (json.dumps({k: v for k, v in json.loads(lines[0]).items() if k != "question"}),
                             "line 1: the entry lacks question")):
        (tmp_path / name).write_text("\n".join([broken] + lines[1:]))
        data._load_category.cache_clear()
        with pytest.raises(ValueError, match=message):
            data.load_category("multi_turn_base")
    data._load_category.cache_clear()
