"""Evaluation: inference-time self-improvement curves, MLE greedy search, eval.json, plots, run comparison.

    from exit_jax import evaluation
    result = evaluation.self_improve.evaluate(policy, tasks, env_factory, K=16, n=8)        # math
    result = evaluation.multi_turn.evaluate_multi_turn(policy, tasks, env_factory, K=4, n=8)  # tool use
    result = evaluation.greedy_search.greedy_search(policy, tasks, env_factory, K=16, n=3)   # MLE
    record = evaluation.make_eval_record("exit", "math", {"math_test": result}, seed=0)
    evaluation.write_eval_json(f"{workdir}/eval.json", record)
    evaluation.plots.plot_eval(record, workdir)
    evaluation.compare.compare([run_a, run_b], out_dir)
"""
from exit_jax.evaluation import compare, greedy_search, multi_turn, plots, self_improve
from exit_jax.evaluation.eval_json import (make_eval_record, read_eval_json, validate_eval_record,
                                           write_eval_json)
from exit_jax.evaluation.policy import Policy, generate_checked

__all__ = ["Policy", "compare", "generate_checked", "greedy_search", "make_eval_record", "multi_turn",
           "plots",            "read_eval_json", "self_improve", "validate_eval_record", "write_eval_json"]
