"""Shared helpers for the evaluation tests (no tests here): hand-written tool-use and MLE envs and policies
scripted for them (the exact-answer env and its tasks are exit_jax.testing's).

The policies are deterministic functions of the conversation they are shown, so the expected curves can be
computed by hand; they test the evaluation logic, not a model.
"""
from __future__ import annotations

import re

from exit_jax.envs.base import Env, StepResult, Task
from exit_jax.testing import ExactAnswerEnv

SYSTEM = ExactAnswerEnv.SYSTEM

_CURRENT = re.compile(r"## Current response:\n(.*)\Z", re.S)


class ScriptedImprover:
    """Base prompt: sample 0 answers right, sample 1 answers "wrong".

    Improve prompt, by previous response: "wrong" -> right on task A, "wrong2" on task B; right -> kept on
    A, "broken" on B; "broken" -> right; "wrong2" -> "wrong2". Records every call.
    """

    def __init__(self, tasks):
        self.by_question = {t.data["question"]: t for t in tasks}
        self.calls = []

    def _task_of(self, text):
        for q, t in self.by_question.items():
            if q in text:
                return t
        raise AssertionError(f"unknown prompt {text!r}")

    def generate(self, conversations, num_samples=1):
        self.calls.append((len(conversations), num_samples))
        out = []
        for conv in conversations:
            text = conv[-1]["content"]
            task = self._task_of(text)
            right = task.data["answer"]
            m = _CURRENT.search(text)
            if m is None:
                out.append([right if j % 2 == 0 else "wrong" for j in range(num_samples)])
                continue
            prev = m.group(1).strip()
            if prev == "wrong":
                reply = right if task.id == "A" else "wrong2"
            elif prev == right:
                reply = right if task.id == "A" else "broken"
            elif prev == "broken":
                reply = right
            else:
                reply = prev
            out.append([reply] * num_samples)
        return out


_TARGET = re.compile(r"(easy|hard|skip) target=(\w+)")


class ToyToolEnv(Env):
    """Multi-turn: per request, replies "call X" execute (a tool message comes back, at most 3 per
    request); any other reply ends the request, which passes iff X == its target was called in it."""

    def reset(self):
        self._r, self._calls, self._results = 0, [], []
        return [dict(SYSTEM), {"role": "user", "content": self.task.data["requests"][0]}]

    def instruction(self):
        return self.task.data["requests"][min(self._r, len(self.task.data["requests"]) - 1)]

    def step(self, reply):
        requests = self.task.data["requests"]
        if reply.startswith("call ") and len(self._calls) < 3:
            self._calls.append(reply[5:])
            return StepResult([{"role": "tool", "content": "ok"}], 0.0, False, {})
        target = _TARGET.search(requests[self._r]).group(2)
        self._results.append(1.0 if target in self._calls else 0.0)
        self._r, self._calls = self._r + 1, []
        if self._r == len(requests):
            reward = float(all(self._results))
            return StepResult([], reward, True, {"request_rewards": list(self._results)})
        return StepResult([{"role": "user", "content": requests[self._r]}], 0.0, False, {})


class ScriptedToolUser:
    """Base: after a tool result "end"; else easy -> "call <target>", hard -> "call wrong", skip -> "end".
    Improve: "call wrong" -> "call <target>"; other calls kept; "end" -> "end" if a tool result is in the
    conversation, else "call <target>"."""

    def __init__(self):
        self.calls = []

    def generate(self, conversations, num_samples=1):
        self.calls.append((len(conversations), num_samples))
        return [[self._reply(conv)] * num_samples for conv in conversations]

    def _reply(self, conv):
        last = conv[-1]
        m = _CURRENT.search(last["content"]) if last["role"] == "user" else None
        kind, target = _TARGET.search([x for x in conv if x["role"] == "user"][-1]["content"]).groups()
        if m is None:
            if last["role"] == "tool":
                return "end"
            return {"easy": f"call {target}", "hard": "call wrong", "skip": "end"}[kind]
        prev = m.group(1).strip()
        if prev == "call wrong":
            return f"call {target}"
        if prev.startswith("call "):
            return prev
        return "end" if any(x["role"] == "tool" for x in conv) else f"call {target}"


_CODE = re.compile(r"```(?:python)?\n(.*?)```", re.S)
_FIELDS = re.compile(r"VAL=([\d.]+) TEST=([\d.]+) PRINT=([\d.]+)")


def mle_task(task_id="toy-mle"):
    return Task(id=task_id, domain="mle", data={"task_description": "Predict y.",
                                                 "preview_contents": "train.csv: id,x,y"})


class ToyMLEEnv(Env):
    """A stand-in grader: the code's text says what it scores. "VAL=v TEST=t PRINT=p" is a valid solution
    with validation score v, normalized test score t and a self-printed metric p (which must be ignored);
    anything else crashes with a traceback naming the code. TEST >= 0.6 earns bronze."""

    def reset(self):
        from exit_jax.envs.mle import prompts as mle_prompts
        return [{"role": "user", "content": mle_prompts.mle_prompt(
            mle_prompts.MLE_STARTER_SOLUTION, self.task.data["task_description"],
            self.task.data["preview_contents"])}]

    def step(self, reply):
        blocks = _CODE.findall(reply)
        code = blocks[-1].strip() if blocks else ""
        m = _FIELDS.fullmatch(code)
        if m is None:
            error = f"Traceback (most recent call last):\nValueError: {code}"
            return StepResult([], 0.0, True, {"code": code, "valid": False, "normalized": 0.0, "medal": "none",
                                              "validation_score": None, "error": error})
        val, test, printed = map(float, m.groups())
        return StepResult([], test, True, {"code": code, "valid": True, "normalized": test,
                                           "validation_score": val, "stdout": f"metric: {printed}",
                                           "medal": "bronze" if test >= 0.6 else "none", "error": ""})


_STUDY = re.compile(r"Study the current version of solution.py:\n```python\n(.*?)\n```", re.S)


class ScriptedSearcher:
    """Replies by a script keyed on (goal, current code): each key yields its replies in order."""

    def __init__(self, script, default="CRASH"):
        self.script = {(goal, code.strip()): list(v) for (goal, code), v in script.items()}
        self.default = default
        self.calls, self.prompts = [], []

    def generate(self, conversations, num_samples=1):
        self.calls.append((len(conversations), num_samples))
        out = []
        for conv in conversations:
            text = conv[-1]["content"]
            self.prompts.append(text)
            goal = "debug" if "Your goal is to debug" in text else "improve"
            code = _STUDY.search(text).group(1).strip()
            queue = self.script.get((goal, code), [])
            reply = queue.pop(0) if queue else self.default
            out.append([f"Here is my solution:\n```python\n{reply}\n```"] * num_samples)
        return out
