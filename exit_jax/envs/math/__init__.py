"""Competition math: procedural tasks, real-data loaders, the `\\boxed{}` grader and MathEnv.

    from exit_jax.envs import math as math_env
    math_env.grade(response, answer) -> 1.0 | 0.0
"""
from exit_jax.envs.math.answers import normalize
from exit_jax.envs.math.datasets import (champ_tasks, load_array_record, load_jsonl_or_parquet, load_records,
                                         load_tfds, prepare_array_record)
from exit_jax.envs.math.env import MathEnv, grade_tasks
from exit_jax.envs.math.generator import FAMILIES, LEVELS, generate, math_tasks, split_of
from exit_jax.envs.math.grader import (GradeResult, Grader, GraderConfig, default_grader, grade, grade_batch,
                                       grade_with_info, math_verify_version)

__all__ = [
    "FAMILIES", "LEVELS", "GradeResult", "Grader", "GraderConfig", "MathEnv", "champ_tasks", "default_grader",
    "generate", "grade", "grade_batch", "grade_tasks", "grade_with_info", "load_array_record",
    "load_jsonl_or_parquet", "load_records", "load_tfds", "math_tasks", "math_verify_version", "normalize",
    "prepare_array_record", "split_of",
]
