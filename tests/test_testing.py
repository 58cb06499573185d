"""The fakes exit_jax.testing ships work with the library as a real model and environment do, and a bound
policy's draws follow from its params and seed alone."""
import chex
import jax
import numpy as np

from exit_jax import testing
from exit_jax.evaluation import self_improve
from exit_jax.sampling.text_policy import SamplingConfig, TextPolicy


def test_fake_lm_samples_through_the_text_policy():
    lm = testing.fake_lm(seed=0)
    policy = TextPolicy(lm, SamplingConfig(max_new_tokens=8, max_prompt_tokens=256))
    task = testing.exact_answer_tasks()[0]
    chat = testing.ExactAnswerEnv(task).reset()
    (row,) = policy.sample(lm.params, [chat], num_samples=3, seed=0)
    assert len(row) == 3 and len({c.token_ids for c in row}) > 1
    for c in row:
        assert c.prompt_ids == tuple(lm.tokenizer.encode(lm.tokenizer.apply_chat_template(chat)))
        chex.assert_shape(c.logprobs, (len(c.token_ids),))
        assert np.all(c.logprobs <= 0) and c.text == lm.tokenizer.decode(c.token_ids)
    # Params are an argument: other params, other replies, from the same seed.
    other = jax.tree.map(lambda x: -x, lm.params)
    (again,) = policy.sample(lm.params, [chat], num_samples=3, seed=0)
    (flipped,) = policy.sample(other, [chat], num_samples=3, seed=0)
    assert [c.token_ids for c in again] == [c.token_ids for c in row] != [c.token_ids for c in flipped]


def test_a_bound_policy_draws_from_its_seed_and_call_index_only():
    lm = testing.fake_lm(seed=1)
    policy = TextPolicy(lm, SamplingConfig(max_new_tokens=6, max_prompt_tokens=256))
    chats = [testing.ExactAnswerEnv(t).reset() for t in testing.exact_answer_tasks()]
    first = policy.bind(lm.params, seed=5)
    replies = [first.generate(chats, 2), first.generate(chats, 2)]
    assert replies[0] != replies[1]  # call i samples with seed + i
    policy.sample(lm.params, chats, 2, seed=123)  # sampling elsewhere does not move a bound policy's draws
    again = policy.bind(lm.params, seed=5)
    assert [again.generate(chats, 2), again.generate(chats, 2)] == replies
    assert policy.bind(lm.params, seed=6).generate(chats, 2) != replies[0]


def test_scripted_policy_and_exact_answer_env_drive_an_evaluation():
    tasks = testing.exact_answer_tasks()
    policy = testing.ScriptedPolicy(lambda conv, g: tasks[0].data["answer"] if g == 0 else "no")
    result = self_improve.evaluate(policy, tasks, testing.ExactAnswerEnv, K=1, n=2)
    # k = 0: sample 0 of each task answers "4", right for task A only (1 of 4 chains). k = 1: each chain's
    # one improve sample is sample 0 again, so both of task A's chains are right (2 of 4).
    assert result.accuracy_by_k == [0.25, 0.5]
    assert policy.calls == [(2, 2), (4, 1)]
    (row,) = policy.sample(None, [testing.ExactAnswerEnv(tasks[0]).reset()], 2, seed=0)
    assert [c.text for c in row] == ["4", "no"] and row[0].token_ids[-1] in testing.ByteTokenizer.eos_ids
