"""Prompts over the budget lose whole middle messages, never the system prompt (sampling.prompt_fit)."""
import dataclasses

import numpy as np
import pytest

from exit_jax import models
from exit_jax.envs import base
from exit_jax.envs.tool_use import bfcl
from exit_jax.sampling import prompt_fit
from exit_jax.sampling.text_policy import SamplingConfig, TextPolicy


def _chars(messages):
    return sum(len(m["content"]) for m in messages)


def _conversation():
    return [{"role": "system", "content": "S" * 50},
            {"role": "user", "content": "old request"},
            {"role": "assistant", "content": "a" * 200}, {"role": "tool", "content": "t" * 200},
            {"role": "user", "content": "current request"},
            {"role": "assistant", "content": "b" * 30}, {"role": "tool", "content": "r" * 30},
            {"role": "assistant", "content": "c" * 30}, {"role": "tool", "content": "q" * 30},
            {"role": "assistant", "content": "newest"}]


def test_fit_drops_oldest_units_first_and_marks_the_gap():
    conv = _conversation()
    assert prompt_fit.fit(conv, _chars, _chars(conv)) == (conv, 0)
    # One unit (the old turn: its request, a reply, a tool result) is enough here.
    fitted, dropped = prompt_fit.fit(conv, _chars, _chars(conv) - 100)
    assert dropped == 3 and fitted[0] == conv[0]
    assert fitted[1]["content"].startswith(prompt_fit.MARKER.format(n=3))
    assert fitted[1]["content"].endswith("current request") and fitted[-1] == conv[-1]
    # Tighter: the current turn's older steps go too, never its request nor its newest step.
    fitted, dropped = prompt_fit.fit(conv, _chars, 150)
    assert [m["role"] for m in fitted] == ["system", "user", "assistant"]
    assert dropped == 7 and fitted[1]["content"] == "current request"
    assert fitted[2]["content"] == prompt_fit.MARKER.format(n=7) + "\n\nnewest"
    # Impossible: everything droppable dropped, the rest is left to the token-level cut.
    assert prompt_fit.fit(conv, _chars, 10)[1] == 7
    assert conv == _conversation()  # the input is never modified


def test_fit_without_droppable_messages_returns_them():
    conv = [{"role": "system", "content": "S" * 50}, {"role": "user", "content": "u" * 50}]
    assert prompt_fit.fit(conv, _chars, 10) == (conv, 0)


@pytest.fixture(scope="module")
def smollm2_tokens():
    lm = models.load("smollm2-135m-instruct")
    return dataclasses.replace(lm, params=None)  # TextPolicy.encode needs the tokenizer and config only


def _policy(lm, limit):
    return TextPolicy(lm, SamplingConfig(max_prompt_tokens=limit, max_new_tokens=256))


def test_long_bfcl_conversation_keeps_the_function_docs(smollm2_tokens):
    """A whole BFCL episode (every request, the oracle's calls and the tool results) over the budget
    keeps the system prompt's tokens at its head and the newest message at its tail."""
    task = bfcl.load_entries("multi_turn_base", ["multi_turn_base_0"])[0]
    env = bfcl.MultiTurnEnv(task, protocol="json_tag")
    messages, _ = base.replay(env, bfcl.oracle_replies(task, "json_tag"))
    opening = _policy(smollm2_tokens, 10**6)._ids(messages[:2])
    system = _policy(smollm2_tokens, 10**6)._ids(messages[:1], add_generation_prompt=False)
    full = _policy(smollm2_tokens, 10**6).encode(messages)[0]
    limit = len(opening) + 200
    assert len(full) > limit + 200
    ids, shortened = _policy(smollm2_tokens, limit).encode(messages)
    assert shortened and len(ids) <= limit
    assert ids[:len(system)] == system  # the docs survive whole
    text = smollm2_tokens.tokenizer.decode(ids)
    assert "earlier messages omitted" in text and messages[-1]["content"].strip() in text
    # The token-level cut (a budget below even the system prompt plus the last step) keeps the head too.
    ids, shortened = _policy(smollm2_tokens, len(system) + 20).encode(messages)
    assert shortened and len(ids) == len(system) + 20 and ids[:len(system)] == system


def test_budget_that_cannot_hold_an_opening_prompt_refuses_to_start(smollm2_tokens):
    task = bfcl.load_entries("multi_turn_base", ["multi_turn_base_0"])[0]
    opening = bfcl.MultiTurnEnv(task, protocol="json_tag").reset()
    n = len(_policy(smollm2_tokens, 10**6)._ids(opening))
    _policy(smollm2_tokens, n).check_fits([(task.id, opening)])
    with pytest.raises(ValueError, match=f"max_prompt_tokens={n - 1} cannot hold the {n}-token opening prompt "
                                         f"of task 'multi_turn_base_0'; raise it to at least {n}"):
        _policy(smollm2_tokens, n - 1).check_fits([(task.id, opening)])


def test_tool_use_gin_budget_holds_every_bfcl_opening_prompt(smollm2_tokens):
    """tool_use.gin's 7,936 tokens (SmolLM2's 8,192 less a 256-token reply) hold the opening prompt of
    every multi_turn_base entry (docs/prompts.md has the distribution of all four categories)."""
    policy = _policy(smollm2_tokens, 7936)
    openings = [(t.id, bfcl.MultiTurnEnv(t, protocol="json_tag").reset())
                for t in bfcl.load_entries("multi_turn_base")]
    policy.check_fits(openings)
    lengths = np.array([len(policy._ids(m)) for _, m in openings])
    assert 7000 < lengths.max() <= 7936 and lengths.min() > 3000
