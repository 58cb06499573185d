"""The ExIt curriculum: task buffer, episode construction, paper prompts, rewards, diversity bonus.

Modules (import them directly; `embedders` is not imported here because PolicyHidden pulls in jax):
    buffer     functional score-prioritised buffer of partial histories (paper §4.1)
    config     CurriculumConfig and the paper's presets for GRPO / Curriculum / Improve / Diverge / ExIt
    episodes   select: per-group base/replay and improve/diverge decisions and prompt messages, drawn
               from (run seed, iteration); record: group scores and children into the buffer
    prompts    the paper's self-improve and self-diverge templates, verbatim (MLE-bench's: envs.mle.prompts)
    rewards    binary / improvement rewards and the learnability score S = var(rewards)
    diversity  Eq. 6 coefficients that multiply each group's advantages
    embedders  HashedNgram (default), MiniLM, PolicyHidden
    stats      per-iteration curriculum statistics
"""
from exit_jax.curriculum import buffer, config, diversity, episodes, prompts, rewards, stats  # noqa: F401
from exit_jax.curriculum.config import CurriculumConfig, preset  # noqa: F401
