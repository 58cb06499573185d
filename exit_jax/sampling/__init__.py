"""Sampling: the jitted batched sampler that turns prompts into rollout groups.

    from exit_jax import sampling
    out = sampling.generate(lm, prompts, num_samples=8, max_new_tokens=64, temperature=1.0)
    out.tokens, out.lengths, out.logprobs, out.finished   # [P, G, N], [P, G], [P, G, N], [P, G]

The training loop builds one `Sampler` and calls it every iteration (no recompiles); `text_policy.TextPolicy`
wraps it at the level of chat messages, and `token_logprobs` is the one definition of a token's log-prob
(the learner's too).
"""
from exit_jax.sampling.methods import SamplingKnobs, choose_tokens, filter_logits, make_knobs, token_logprobs
from exit_jax.sampling.output import SampleOutput
from exit_jax.sampling.sampler import Sampler, SamplerSpec, SamplingState, generate, prompt_bucket

__all__ = ["SampleOutput", "Sampler", "SamplerSpec", "SamplingKnobs", "SamplingState", "choose_tokens",
           "filter_logits", "generate", "make_knobs", "prompt_bucket", "token_logprobs"]
