"""BFCL v3 multi-turn tool use as an `Env` (docs/domains.md §2; paper §5.1, Appendix A).

Per user request (a BFCL "turn") the model answers in steps. A reply that decodes to a non-empty call
list is executed on this rollout's own tool instances and the results come back as tool messages; a reply
that decodes to no call (plain text, `<TASK_FINISHED>`, `<TASK_ERROR>`, or text that does not parse) ends
the request, which is then checked against the ground truth. The next request follows, or the episode
ends. The reward at the end is 1.0 iff every request in scope passes BFCL's state and response checks.

    entries = load_entries("multi_turn_base")
    env = MultiTurnEnv(entries[0]); messages = env.reset(); result = env.step(reply)

Restoring a partial history is `envs.base.replay(MultiTurnEnv(task), replies)`: `reset` builds fresh
instances from the entry's `initial_config` and the recorded replies are re-executed deterministically.
"""
from __future__ import annotations

import inspect
import json
from typing import Sequence

from exit_jax.envs import base
from exit_jax.envs.tool_use import checker, data, executor, isolated, prompts

DOMAIN = "tool_use"
PROTOCOLS = prompts.PROTOCOLS
STOP_STRINGS = prompts.STOP_STRINGS
MAX_STEPS_PER_TURN = prompts.MAX_STEPS_PER_TURN
_STATUS_OK = ("pass", "skip")


def load_entries(category: str = "multi_turn_base", ids: Sequence[str] | None = None) -> list[base.Task]:
    """The entries of one BFCL multi-turn category as tasks (optionally only `ids`, in that order)."""
    pairs = data.load_category(category)
    tasks = [base.Task(id=entry["id"], domain=DOMAIN,
                       data={"category": category, "entry": entry, "ground_truth": gt})
             for entry, gt in pairs]
    if ids is None:
        return tasks
    by_id = {t.id: t for t in tasks}
    unknown = [i for i in ids if i not in by_id]
    if unknown:
        raise ValueError(f"Unknown {category} entry id(s) {unknown[:5]}.")
    return [by_id[i] for i in ids]


def _check_task(task: base.Task) -> None:
    fields = getattr(task, "data", None) or {}
    if getattr(task, "domain", None) != DOMAIN or not {"category", "entry", "ground_truth"} <= set(fields):
        raise ValueError(f"Task {getattr(task, 'id', task)!r} is not a BFCL tool-use task; build tasks "
                         "with exit_jax.envs.tool_use.bfcl.load_entries.")


def _check_limit(name: str, value: int | None, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer{' or None' if allow_none else ''}, "
                         f"got {value!r}.")


class MultiTurnEnv(base.Env):
    """One rollout of one BFCL multi-turn entry. Create a fresh env (or call `reset`) per rollout.

    Knobs: `protocol` "bfcl" (`[f(a=1)]` replies) or "json_tag" (`<tool>{...}</tool>`); `max_user_turns`
    keeps only the first requests (None: all; the paper trains on the first request only);
    `max_responses` caps assistant replies over the episode (paper: 10 in training, 60 at test); a request
    with more than `max_steps_per_turn` call steps fails the entry (BFCL's force-quit); longer replies than
    `max_reply_chars` do not decode; `tool_role` is the role of result messages. The model's calls run in
    a worker process (`isolated`); one that runs longer than `call_time_limit_s` returns a tool error.
    """

    def __init__(self, task: base.Task, protocol: str = "bfcl", max_user_turns: int | None = None,
                 max_responses: int | None = None, max_steps_per_turn: int = MAX_STEPS_PER_TURN,
                 max_reply_chars: int = 100_000, tool_role: str = "tool",
                 call_time_limit_s: float = isolated.DEFAULT_TIME_LIMIT_S):
        super().__init__(task)
        _check_task(task)
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}.")
        _check_limit("max_user_turns", max_user_turns, allow_none=True)
        _check_limit("max_responses", max_responses, allow_none=True)
        _check_limit("max_steps_per_turn", max_steps_per_turn, allow_none=False)
        _check_limit("max_reply_chars", max_reply_chars, allow_none=False)
        if not 0 < call_time_limit_s < float("inf"):
            raise ValueError(f"call_time_limit_s must be a finite number of seconds > 0, got {call_time_limit_s!r}.")
        self.protocol = protocol
        self.call_time_limit_s = call_time_limit_s
        self.max_responses = max_responses
        self.max_steps_per_turn = max_steps_per_turn
        self.max_reply_chars = max_reply_chars
        self.tool_role = tool_role
        self.stop_strings = STOP_STRINGS[protocol]
        self._entry = task.data["entry"]
        self._classes = tuple(self._entry["involved_classes"])
        self._long_context = "long_context" in task.data["category"]
        n_all = len(self._entry["question"])
        self.n_turns = n_all if max_user_turns is None else min(n_all, max_user_turns)
        self._gt_calls = [executor.parse_ground_truth(turn)
                          for turn in task.data["ground_truth"][:self.n_turns]]
        self._all_owners = data.method_owners(self._classes)
        # miss_func: {turn index: [names]}; those functions are hidden until that turn.
        self._held_out = {int(k): tuple(v) for k, v in self._entry.get("missed_function", {}).items()}
        self._started = False

    # ----- prompts -----
    def _hidden(self, turn: int) -> set[str]:
        hidden = set(self._entry.get("excluded_function") or ())
        for k, names in self._held_out.items():
            if k > turn:
                hidden.update(names)
        return hidden

    def _docs(self, names_filter) -> list[dict]:
        return [doc for c in self._classes for doc in data.function_docs(c) if names_filter(doc["name"])]

    def system_prompt(self) -> str:
        """The exact system message (worth logging: the format sways small-model scores)."""
        hidden = self._hidden(0)
        return prompts.system_prompt(self.protocol, self._docs(lambda n: n not in hidden))

    def _turn_messages(self, turn: int) -> list[dict]:
        if turn in self._held_out:
            names = set(self._held_out[turn])
            text = prompts.added_functions_message(self.protocol, self._docs(lambda n: n in names))
            return [{"role": "user", "content": text}]
        return [{"role": m["role"], "content": m["content"]} for m in self._entry["question"][turn]]

    def instruction(self) -> str:
        """The current user request (the last one once the episode is over)."""
        turn = min(self._turn, self.n_turns - 1) if self._started else 0
        return "\n".join(m["content"] for m in self._turn_messages(turn) if m["role"] == "user")

    # ----- episode -----
    def reset(self) -> list:
        config = self._entry["initial_config"]
        self._model = executor.make_instances(config, self._classes, self._long_context)
        self._gt = executor.make_instances(config, self._classes, self._long_context)
        self._turn = 0
        self._steps_in_turn = 0
        self._calls_in_turn = 0
        self._responses = 0
        self._model_results: list[str] = []
        self._status = ["unreached"] * self.n_turns
        self._reasons = [""] * self.n_turns
        self._done = False
        self._reward = 0.0
        self._started = True
        return [{"role": "system", "content": self.system_prompt()}] + self._turn_messages(0)

    def _end_turn(self, forced: str = "") -> None:
        t = self._turn
        gt_results = executor.execute_calls(self._gt_calls[t], self._gt, self._all_owners)
        if forced:
            self._status[t], self._reasons[t] = "fail", forced
        elif not self._gt_calls[t]:
            self._status[t] = "skip"  # BFCL checks nothing here; the model's calls still executed
        else:
            ok, reason = checker.check_turn(
                turn=t, model_instances=self._model, gt_instances=self._gt,
                model_results_so_far=self._model_results, gt_results=gt_results,
                n_model_calls_in_turn=self._calls_in_turn)
            self._status[t], self._reasons[t] = ("pass" if ok else "fail"), reason
        self._turn += 1
        self._steps_in_turn = 0
        self._calls_in_turn = 0

    def _finish(self, messages: list, info: dict, why_unreached: str) -> base.StepResult:
        for t in range(self._turn, self.n_turns):
            self._reasons[t] = f"turn {t}: not reached ({why_unreached})"
        self._done = True
        self._reward = 1.0 if all(s in _STATUS_OK for s in self._status) else 0.0
        return base.StepResult(messages, self._reward, True, {**info, **self.summary()})

    def summary(self) -> dict:
        """Per-request results so far: status, reasons, 0/1 rewards, first-turn reward, total return."""
        rewards = self.request_rewards()
        failed = [r for s, r in zip(self._status, self._reasons) if s not in _STATUS_OK]
        return {"turn_status": list(self._status), "turn_reasons": list(self._reasons),
                "request_rewards": rewards, "first_turn_reward": rewards[0],
                "total_return": float(sum(rewards)), "responses": self._responses,
                "reason": failed[0] if (self._done and failed) else ""}

    def request_rewards(self) -> list[float]:
        """1.0 per request that passed (or had nothing to check: BFCL skips empty ground truth), else 0."""
        return [1.0 if s in _STATUS_OK else 0.0 for s in self._status]

    @property
    def done(self) -> bool:
        return self._done

    def step(self, reply: str) -> base.StepResult:
        if not self._started:
            raise RuntimeError("MultiTurnEnv.step was called before reset().")
        if self._done:
            return base.StepResult([], self._reward, True,
                                   {**self.summary(), "reason": "episode already finished"})
        self._responses += 1
        info = {"turn": self._turn, "response": self._responses}
        if not isinstance(reply, str):
            calls, why = None, f"reply is a {type(reply).__name__}, not text"
        elif len(reply) > self.max_reply_chars:
            calls, why = None, f"reply longer than {self.max_reply_chars} characters"
        else:
            calls, why = executor.parse_calls(reply, self.protocol)
        budget_left = self.max_responses is None or self._responses < self.max_responses
        # The paper's overlong filtering (Appendix A.3) drops responses holding none of the protocol's
        # response types: in json_tag a parsed call or an end marker; in bfcl any text ends a request.
        info["valid_response"] = bool(calls) or self.protocol == "bfcl" or (
            isinstance(reply, str) and any(m in reply for m in prompts.END_MARKERS[self.protocol]))

        if calls:
            # Like BFCL, every documented function of the involved classes runs, even one the prompt
            # hides (excluded, or held out until a later turn): ground truth relies on this (e.g.
            # multi_turn_miss_func_49 calls `tail` two turns before it is revealed).
            results = isolated.execute_calls(calls, self._model, self._all_owners, self.call_time_limit_s)
            self._model_results.extend(results)
            self._steps_in_turn += 1
            self._calls_in_turn += len(calls)
            info["n_calls"] = len(calls)
            messages = [{"role": self.tool_role, "content": r} for r in results]
            if self._steps_in_turn > self.max_steps_per_turn:
                self._end_turn(forced=f"turn {self._turn}: more than {self.max_steps_per_turn} "
                                      "tool-call steps in one request")
                return self._finish(messages, info, "the step limit ended the episode")
            if not budget_left:
                self._end_turn()
                return self._finish(messages, info, f"{self.max_responses}-response budget used up")
            return base.StepResult(messages, 0.0, False, {**self.summary(), **info})

        if calls is None:  # the normal way to end a request in the bfcl protocol is plain text
            info["decode_error"] = why
        self._end_turn()
        if self._turn >= self.n_turns:
            return self._finish([], info, "")
        if not budget_left:
            return self._finish([], info, f"{self.max_responses}-response budget used up")
        return base.StepResult(self._turn_messages(self._turn), 0.0, False, {**self.summary(), **info})


def _json_tag_call(call: executor.Call, owner: str) -> str:
    # Positional ground-truth arguments need their parameter names in the JSON form.
    method = getattr(data.tool_class(owner), call.name)
    bound = inspect.signature(method).bind(None, *call.args, **call.kwargs).arguments
    params = {k: v for i, (k, v) in enumerate(bound.items()) if i > 0}
    return "<tool>" + json.dumps({"name": call.name, "parameters": params}) + "</tool>"


def oracle_replies(task: base.Task, protocol: str = "bfcl",
                   max_user_turns: int | None = None) -> list[str]:
    """The ground-truth policy: per request, all its calls in one reply, then a reply ending the request."""
    _check_task(task)
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}.")
    owners = data.method_owners(tuple(task.data["entry"]["involved_classes"]))
    replies = []
    for turn in task.data["ground_truth"][:max_user_turns]:
        if turn and protocol == "bfcl":
            replies.append("[" + ", ".join(turn) + "]")
        elif turn:
            calls = executor.parse_ground_truth(turn)
            replies.append("".join(_json_tag_call(c, owners[c.name]) for c in calls))
        replies.append(prompts.END_OF_TURN[protocol])
    return replies
