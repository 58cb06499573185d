"""Paper prompts (verbatim), rewards (App. A incl. the r_{k-1} = 1 guard), learnability and method presets."""
import math

import numpy as np
import pytest

from exit_jax.curriculum import config, prompts, rewards
from exit_jax.envs.mle import prompts as mle_prompts

# The paper's text, typed from Appendix B / docs/paper.md §4 (not generated from prompts.py).
PAPER_IMPROVE = (
    "Improve your current response to this request:\n\n## Request:\n{instruction}\n\n"
    "## Current response:\n{previous_response}")
PAPER_DIVERGE = (
    "Consider your current response to this request, and provide another response that takes\n"
    "an approach that SIGNIFICANTLY DIFFERS from the approach of the current response.\n\n"
    "## Request:\n{instruction}\n\n## Current response:\n{previous_response}\n\n"
    "## Your new response format:\n"
    "- First, provide a brief summary of the approach in the current response above.\n"
    "- Next, state a meaningfully different approach that can be taken instead.\n"
    "- Finally, provide your new response using this different approach.")
PAPER_MLE_HEAD = (
    "You are a Kaggle grandmaster.\n"
    "Your solution to this Kaggle challenge should achieve the highest medal possible, where the medal\n"
    "rankings from best to worst are gold, silver, and bronze.\n"
    "Your solution is not good enough if it does not medal.\n\n"
    "Study the current version of solution.py:\n```python\n")
PAPER_MLE_TAIL = (
    "Write a single file called solution.py that does the following:\n"
    "- Loads any relevant training data described in the task description.\n"
    "- Loads any relevant test data described in the task description.\n"
    "- It is important your code references the training and test data paths exactly as above,\n"
    "  via these environment variables, which will already be set correctly for you.\n"
    "- Performs any arbitrary training and evaluation logic on this data split.\n"
    "  For example, you might hold out some subset of this data for the purposes\n"
    "  of k-fold cross validation for model and hyperparameter selection.\n"
    "- Finally, evaluates the final model on the test data and writes the results\n"
    "  to a file in the current directory called submission.csv.\n\n"
    "All files and directories described in the task description are located under the\n"
    "PUBLIC_RESOURCE_PATH, whose value is always available via os.environ.get('PUBLIC_RESOURCE_PATH').\n"
    "Besides solution.py, you may not create any extra files or modify any other files in the\n"
    "directory.\n"
    "Remember to define all necessary functions before the `if __name__ == '__main__'` block.\n"
    "Your code will be run on a machine with a single H100 GPU.\n\n"
    "Respond with your full working python program for this task inside triple-tick delimiters (```).")
PAPER_GOALS = {
    "improve": "Your goal is to improve this python script to better achieve the following task:",
    "debug": "Your goal is to debug this python script, so that it best achieves the following task:",
    "diverge": "Your goal is to propose a new python script that improves over this python script for the\n"
               "following task.\nYour improved script should take a radically different approach to solving "
               "the problem than the\none taken by the current python script.",
}


def test_generic_templates_are_the_papers_text():
    assert prompts.IMPROVE_TEMPLATE == PAPER_IMPROVE
    assert prompts.DIVERGE_TEMPLATE == PAPER_DIVERGE
    # Braces inside a response are content, not format fields.
    text = prompts.improve_prompt("Solve x+1=2.", "x = {1} \\boxed{1} {instruction}")
    assert text == PAPER_IMPROVE.replace("{instruction}", "Solve x+1=2.").replace(
        "{previous_response}", "x = {1} \\boxed{1} {instruction}")
    assert prompts.self_iteration_prompt("diverge", "Q", "A") == PAPER_DIVERGE.format(
        instruction="Q", previous_response="A")
    with pytest.raises(ValueError, match="improve' or 'diverge"):
        prompts.self_iteration_prompt("base", "Q", "A")


@pytest.mark.parametrize("goal", ["improve", "debug", "diverge"])
def test_mle_template_is_the_papers_text(goal):
    assert mle_prompts.MLE_GOALS[goal] == PAPER_GOALS[goal]
    code = "def main():\n    print({'a': 1})"
    text = mle_prompts.mle_prompt(code, "Predict y.", "train.csv: a,b\n1,2", goal=goal,
                                  error_trace="Traceback: KeyError 'y'")
    debug = ("\n\nRunning the current solution.py failed with this error:\n```\nTraceback: KeyError 'y'\n```"
             if goal == "debug" else "")
    expected = (PAPER_MLE_HEAD + code + "\n```" + debug + "\n\n" + PAPER_GOALS[goal]
                + "\n\n# Task description\n\nPredict y.\n\n# Previews of files located at "
                  "PUBLIC_RESOURCE_PATH:\n\ntrain.csv: a,b\n1,2\n\n" + PAPER_MLE_TAIL)
    assert text == expected


def test_mle_starter_and_errors():
    starter = mle_prompts.MLE_STARTER_SOLUTION
    assert "def main():" in starter and "PUBLIC_RESOURCE_PATH" in starter
    compile(starter, "solution.py", "exec")
    assert mle_prompts.debug_info("") == ""
    with pytest.raises(ValueError, match="MLE goal"):
        mle_prompts.mle_prompt("", "", "", goal="fix")
    with pytest.raises(ValueError, match="missing"):
        prompts.render(prompts.IMPROVE_TEMPLATE, {"instruction": "x"})


def test_improvement_reward_formula_and_guard():
    assert rewards.improvement(0.7, 0.4) == pytest.approx(0.5)
    assert rewards.improvement(0.3, 0.4) == 0.0  # no negative reward
    assert rewards.improvement(0.6, 0.0) == pytest.approx(0.6)  # from a failed script r_imp = r_k
    assert rewards.improvement(1.0, 1.0) == 0.0  # guard: r_{k-1} = 1
    assert rewards.improvement(0.2, 1.0) == 0.0
    assert rewards.improvement(1.0, 0.9) == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        rewards.improvement(1.2, 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        rewards.improvement(0.5, math.nan)


def test_step_rewards_per_domain():
    scores = [1.0, 0.0, 1.0, 1.0]
    # Math / tool use: binary correctness of the new iterate for every step type.
    for step in ("base", "improve", "diverge", "curriculum"):
        assert rewards.group_rewards(step, scores, previous_score=1.0).tolist() == scores
    # MLE: absolute score on base / diverge / curriculum, r_imp on improve (debug is an improve step).
    mle = [0.5, 0.8, 0.2]
    for step in ("base", "diverge", "curriculum"):
        assert rewards.group_rewards(step, mle, 0.5, improvement_reward=True).tolist() == mle
    np.testing.assert_allclose(rewards.group_rewards("improve", mle, 0.5, improvement_reward=True),
                               [0.0, 0.6, 0.0])
    with pytest.raises(ValueError, match="previous score"):
        rewards.step_reward("improve", 0.5, None, improvement_reward=True)


def test_learnability_is_population_variance():
    assert rewards.learnability([1, 0, 1, 0]) == 0.25
    assert rewards.learnability([1, 1, 1]) == 0.0
    assert rewards.learnability([0.2, 0.4]) == pytest.approx(0.01)


def test_presets_follow_tables_4_to_6():
    ex = config.preset("tool_use", "exit")
    assert (ex.capacity, ex.b_min, ex.replay_prob, ex.p_div, ex.diversity_bonus, ex.self_iterate) == (
        640, 320, 0.5, 0.5, True, True)
    cur = config.preset("tool_use", "curriculum")
    assert (cur.capacity, cur.b_min, cur.replay_prob) == (320, 320, 0.2)
    assert (cur.self_iterate, cur.p_div) == (False, 0.0)
    assert config.preset("math", "diverge").p_div == 0.2 and config.preset("math", "exit").p_div == 0.2
    mle = {m: config.preset("mle", m) for m in ("curriculum", "improve", "diverge", "exit")}
    assert [(c.capacity, c.b_min) for c in mle.values()] == [(3, 3), (24, 8), (32, 8), (24, 3)]
    assert all(c.template == "mle" and c.improvement_reward for c in mle.values())
    assert not config.preset("math", "grpo").use_buffer
    for domain in config.DOMAINS:
        for method in config.METHODS:
            assert config.preset(domain, method).method == method
    with pytest.raises(ValueError, match="Unknown method"):
        config.preset("math", "ppo")
    # Learning rates: the same table (tool use trains curriculum/improve/diverge at 5e-7).
    assert [config.paper_learning_rate("tool_use", m) for m in config.METHODS] == [1e-6, 5e-7, 5e-7, 5e-7, 1e-6]
    assert config.paper_learning_rate("math", "exit") == config.paper_learning_rate("mle", "grpo") == 1e-6
    # Every table value and kappa are knobs of their own; None keeps the paper's value.
    mine = config.preset("math", "exit", kappa=3.0, b_min=8, capacity=64)
    assert (mine.kappa, mine.b_min, mine.capacity, mine.replay_prob, mine.p_div) == (3.0, 8, 64, 0.5, 0.2)
    assert config.preset("math", "exit").kappa == config.DEFAULT_KAPPA == 10.0
    with pytest.raises(ValueError, match="b_min"):
        config.CurriculumConfig(capacity=4, b_min=5)
    with pytest.raises(ValueError, match="self_iterate"):
        config.CurriculumConfig(self_iterate=False, p_div=0.2)
