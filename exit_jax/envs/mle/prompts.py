"""The MLE-bench prompt of paper Appendix B, verbatim (docs/paper.md §4.3), its goal preambles, the base
task's starting code and the slot for a failed iterate's error trace."""
from __future__ import annotations

from exit_jax.envs.base import render

# paper Appendix B: the MLE-bench prompt (bullet continuation lines as in docs/paper.md §4.3).
MLE_TEMPLATE = """You are a Kaggle grandmaster.
Your solution to this Kaggle challenge should achieve the highest medal possible, where the medal
rankings from best to worst are gold, silver, and bronze.
Your solution is not good enough if it does not medal.

Study the current version of solution.py:
```python
{initial_solution}
```{debug_info}

{goal_preamble}

# Task description

{task_description}

# Previews of files located at PUBLIC_RESOURCE_PATH:

{preview_contents}

Write a single file called solution.py that does the following:
- Loads any relevant training data described in the task description.
- Loads any relevant test data described in the task description.
- It is important your code references the training and test data paths exactly as above,
  via these environment variables, which will already be set correctly for you.
- Performs any arbitrary training and evaluation logic on this data split.
  For example, you might hold out some subset of this data for the purposes
  of k-fold cross validation for model and hyperparameter selection.
- Finally, evaluates the final model on the test data and writes the results
  to a file in the current directory called submission.csv.

All files and directories described in the task description are located under the
PUBLIC_RESOURCE_PATH, whose value is always available via os.environ.get('PUBLIC_RESOURCE_PATH').
Besides solution.py, you may not create any extra files or modify any other files in the
directory.
Remember to define all necessary functions before the `if __name__ == '__main__'` block.
Your code will be run on a machine with a single H100 GPU.

Respond with your full working python program for this task inside triple-tick delimiters (```)."""

# paper Appendix B: MLE-bench goal preambles. "debug" replaces "improve" when the previous iterate failed.
MLE_GOALS = {
    "improve": "Your goal is to improve this python script to better achieve the following task:",
    "debug": "Your goal is to debug this python script, so that it best achieves the following task:",
    "diverge": (
        "Your goal is to propose a new python script that improves over this python script for the\n"
        "following task.\n"
        "Your improved script should take a radically different approach to solving the problem than the\n"
        "one taken by the current python script."),
}

# The base task's starting code: "a Python script with an empty main function, with comments naming the
# environment variable that holds the data path" (paper Appendix B). Its exact text is not published.
MLE_STARTER_SOLUTION = """import os

# The competition's data files are in the directory named by the PUBLIC_RESOURCE_PATH
# environment variable: os.environ.get('PUBLIC_RESOURCE_PATH').


def main():
    pass


if __name__ == '__main__':
    main()"""

# Where the error trace of a failed iterate goes ({debug_info}, right after the code block). The paper
# does not state its format; ours is a short heading and the trace in a fence.
DEBUG_INFO_TEMPLATE = """

Running the current solution.py failed with this error:
```
{trace}
```"""


def debug_info(trace: str) -> str:
    """The {debug_info} slot for a failed previous iterate; empty when there is no trace."""
    trace = (trace or "").strip("\n")
    return render(DEBUG_INFO_TEMPLATE, {"trace": trace}) if trace else ""


def mle_prompt(initial_solution: str, task_description: str, preview_contents: str,
               goal: str = "improve", error_trace: str = "") -> str:
    """The MLE-bench prompt. goal: "improve" (also base tasks), "debug" (shows `error_trace`) or "diverge"."""
    if goal not in MLE_GOALS:
        raise ValueError(f"MLE goal must be one of {sorted(MLE_GOALS)}, got {goal!r}.")
    return render(MLE_TEMPLATE, {
        "initial_solution": initial_solution,
        "debug_info": debug_info(error_trace) if goal == "debug" else "",
        "goal_preamble": MLE_GOALS[goal],
        "task_description": task_description,
        "preview_contents": preview_contents,
    })
