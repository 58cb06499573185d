"""Fakes for testing code built on exit_jax: deterministic, tiny and fast on a CPU.

    ByteTokenizer       the models.Tokenizer interface over UTF-8 bytes, with a plain chat template
    fake_lm(seed)       a real decoder (the "tiny" preset) with random params and a ByteTokenizer
    ScriptedPolicy      replies by a rule of (conversation, sample index); serves both the evaluation's
                        `Policy` (`generate`) and the loop's `TextPolicy.sample`, and records its calls
    ExactAnswerEnv      one turn: reward 1 iff the stripped reply equals the task's answer
    exact_answer_tasks  a few ExactAnswerEnv tasks

The library itself never imports this module; tests and users' tests do.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from exit_jax.envs.base import Env, StepResult, Task
from exit_jax.models import transformer
from exit_jax.models.config import preset
from exit_jax.models.lm import LM
from exit_jax.sampling.text_policy import Completion


class ByteTokenizer:
    """Ids 0 (pad) and 1 (end of turn), then byte b as b + 2. The chat template writes "<role>content"
    per message and ends a turn with id 1; the generation prompt is "<assistant>"."""
    pad_id = 0
    eos_ids = (1,)
    vocab_size = 2 + 256
    _OFFSET = 2

    def encode(self, text: str, add_bos=None) -> list:
        return [b + self._OFFSET for b in str(text).encode("utf-8")]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        data = bytes(i - self._OFFSET for i in ids if i >= self._OFFSET)
        return data.decode("utf-8", "replace")

    def apply_chat_template(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        text = "".join(f"<{m['role']}>{m['content']}\n" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")


def fake_lm(seed: int = 0, num_layers: int = 1) -> LM:
    """A random `num_layers`-layer decoder of the "tiny" preset over a ByteTokenizer: every code path of a
    real model (chat template, stop ids, sampling, GRPO updates) in well under a second per call."""
    tokenizer = ByteTokenizer()
    config = dataclasses.replace(preset("tiny"), vocab_size=tokenizer.vocab_size, num_layers=num_layers,
                                 name="fake")
    return LM(config=config, params=transformer.init_params(config, seed=seed), tokenizer=tokenizer)


class ScriptedPolicy:
    """Replies `rule(conversation, sample index)`. `calls` records (conversations, samples) per call.

    `sample` wraps the replies as Completions (ByteTokenizer tokens, an end-of-turn id, log-prob -0.5 per
    token), as TextPolicy.sample returns them; params and seed are ignored."""

    def __init__(self, rule: Callable[[list, int], str]):
        self.rule, self.calls = rule, []

    def generate(self, conversations: Sequence[Sequence[dict]], num_samples: int = 1) -> list:
        self.calls.append((len(conversations), num_samples))
        return [[self.rule(list(c), g) for g in range(num_samples)] for c in conversations]

    def sample(self, params, conversations: Sequence[Sequence[dict]], num_samples: int, seed: int,
               first_index: int = 0) -> list:
        tok = ByteTokenizer()
        out = []
        for conv, row in zip(conversations, self.generate(conversations, num_samples)):
            prompt = tuple(tok.encode(tok.apply_chat_template(conv)))
            completions = []
            for text in row:
                ids = tuple(tok.encode(text)) + tok.eos_ids
                completions.append(Completion(text=text, prompt_ids=prompt, token_ids=ids,
                                              logprobs=np.full(len(ids), -0.5, np.float32), finished=True,
                                              shortened_prompt=False))
            out.append(completions)
        return out


class ExactAnswerEnv(Env):
    """Single turn: a system prompt and the task's question; reward 1 iff the stripped reply equals the
    task's answer, else 0 with the reason "wrong answer"."""
    SYSTEM = {"role": "system", "content": "You are a careful solver."}

    def reset(self) -> list:
        return [dict(self.SYSTEM), {"role": "user", "content": self.instruction()}]

    def instruction(self) -> str:
        return self.task.data["question"]

    def step(self, reply: str) -> StepResult:
        ok = reply.strip() == self.task.data["answer"]
        return StepResult(messages=[], reward=1.0 if ok else 0.0, done=True,
                          info={} if ok else {"reason": "wrong answer"})


def exact_answer_tasks() -> list:
    """Two ExactAnswerEnv tasks: "What is 2+2?" (A, answer 4) and "What is 3*3?" (B, answer 9)."""
    return [Task(id="A", domain="toy", data={"question": "What is 2+2?", "answer": "4"}),
            Task(id="B", domain="toy", data={"question": "What is 3*3?", "answer": "9"})]
