"""The policy at the text level: chat messages in, sampled replies (with their tokens and log-probs) out.

It wraps the jitted `Sampler` (one per group size, each compiled once per prompt-length bucket) and the
model's chat template. Training and evaluation share it, so a policy is evaluated exactly as it samples.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import numpy as np

from exit_jax.sampling.sampler import Sampler
from exit_jax.sampling import prompt_fit


@dataclasses.dataclass(frozen=True)
class Completion:
    text: str
    prompt_ids: tuple  # the prompt tokens that were fed (after fitting into max_prompt_tokens)
    token_ids: tuple  # completion tokens, stop token included
    logprobs: np.ndarray  # float32 [len(token_ids)]: log_softmax(logits / T) of each sampled token
    finished: bool  # ended on a stop id (False: hit max_new_tokens)
    shortened_prompt: bool  # the prompt was longer than max_prompt_tokens and lost middle messages


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 256
    max_prompt_tokens: int = 1024
    temperature: float = 1.0  # docs/paper.md §13: training sampling temperature 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_bucket: int = 64  # smallest prompt-length bucket (sampling.prompt_bucket: 64, 96, 128, 192...)
    # Prefill the prompts in this many passes: the attention temporaries of long prompts shrink by it
    # (launch/compile.py shows where it is needed; docs/tpu.md). P is padded to a multiple of it.
    prefill_chunks: int = 1
    # Prompts per sampler call (0: all P at once): the decode's KV cache and state shrink to this many
    # groups, at some throughput; the draws do not change (row keys follow the prompt's index).
    prompts_per_call: int = 0
    # The prefill's attention over the prompt (models.flash): "auto" is the Pallas splash kernel on TPU.
    attention: str = "auto"

    def __post_init__(self):
        if self.max_new_tokens < 1 or self.max_prompt_tokens < 1 or self.prefill_chunks < 1:
            raise ValueError("SamplingConfig.max_new_tokens, max_prompt_tokens and prefill_chunks must be >= 1.")
        if self.prompts_per_call < 0:
            raise ValueError(f"SamplingConfig.prompts_per_call must be >= 0 (0: all), got {self.prompts_per_call}.")
        if self.temperature < 0:
            raise ValueError(f"SamplingConfig.temperature must be >= 0, got {self.temperature}.")


class TextPolicy:
    """Samples replies to chat conversations with the params and seed each call is given. Holds no
    params and no random state: only the model's config and tokenizer and the compiled samplers."""

    def __init__(self, lm, config: SamplingConfig, stop_strings: Sequence[str] = (), mesh=None, lora=None):
        """lora: a models.lora.LoraConfig when the params it is given carry unmerged adapters."""
        self.lm = lm
        self.lora = lora
        self.config = config
        self.stop_strings = tuple(stop_strings)
        self.mesh = mesh  # prompts split over its first axis; params may be sharded over it
        self._samplers: dict = {}

    def _sampler(self, num_samples: int) -> Sampler:
        if num_samples not in self._samplers:
            tok = self.lm.tokenizer
            self._samplers[num_samples] = Sampler(
                self.lm.config, num_samples=num_samples, max_new_tokens=self.config.max_new_tokens,
                eos_ids=tok.eos_ids, pad_id=tok.pad_id, dtype=self.lm.dtype, mesh=self.mesh,
                min_bucket=self.config.min_bucket, prefill_chunks=self.config.prefill_chunks,
                attention=self.config.attention, lora=self.lora)
        return self._samplers[num_samples]

    def _ids(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> list:
        tok = self.lm.tokenizer
        return tok.encode(tok.apply_chat_template(list(messages), add_generation_prompt=add_generation_prompt))

    def encode(self, messages: Sequence[dict]) -> tuple[list, bool]:
        """Chat-templated prompt ids within max_prompt_tokens, and whether the prompt had to be shortened.

        Too long, it drops whole middle messages (prompt_fit: the system prompt and the newest context
        stay). If even that is too long, tokens are cut after the system messages, never before them.
        """
        limit = self.config.max_prompt_tokens
        ids = self._ids(messages)
        if len(ids) <= limit:
            return ids, False
        fitted, _ = prompt_fit.fit(messages, lambda m: len(self._ids(m)), limit)
        ids = self._ids(fitted)
        if len(ids) > limit:
            head = [m for m in fitted if m.get("role") == "system"][:1]
            keep = len(self._ids(head, add_generation_prompt=False)) if head else 0
            keep = keep if keep < limit else 0
            ids = ids[:keep] + ids[len(ids) - (limit - keep):]
        return ids, True

    def check_fits(self, prompts: Sequence[tuple[str, Sequence[dict]]]) -> None:
        """Refuses a prompt budget beyond the model's context, or one that cannot hold an opening prompt
        (system messages and the first request), which no dropping of middle messages could shorten.
        `prompts`: (task id, messages)."""
        limit, tok = self.config.max_prompt_tokens, self.lm.tokenizer
        context = self.lm.config.max_position_embeddings
        if limit + self.config.max_new_tokens > context:
            raise ValueError(f"SamplingConfig.max_prompt_tokens={limit} plus max_new_tokens="
                             f"{self.config.max_new_tokens} exceed the model's {context}-token context; lower "
                             f"max_prompt_tokens to at most {context - self.config.max_new_tokens}.")
        for task_id, messages in prompts:
            text = tok.apply_chat_template(list(messages), add_generation_prompt=True)
            if len(text.encode("utf-8")) <= limit:  # a token is at least one byte: no need to encode
                continue
            n = len(tok.encode(text))
            if n > limit:
                raise ValueError(f"SamplingConfig.max_prompt_tokens={limit} cannot hold the {n}-token opening "
                                 f"prompt of task {task_id!r}; raise it to at least {n}.")

    def sample(self, params, conversations: Sequence[Sequence[dict]], num_samples: int, seed: int,
               temperature: Optional[float] = None, first_index: int = 0) -> list:
        """[len(conversations)][num_samples] Completions sampled with `params`. first_index: the index of
        conversations[0] in a larger batch sampled in parts (a row's random draws depend on its index and
        the seed only)."""
        if not conversations:
            return []
        cfg = self.config
        encoded = [self.encode(c) for c in conversations]
        step = cfg.prompts_per_call or len(encoded)
        result = []
        for start in range(0, len(encoded), step):
            part = encoded[start:start + step]
            out = self._sampler(num_samples)(
                params, [ids for ids, _ in part],
                temperature=cfg.temperature if temperature is None else temperature,
                top_k=cfg.top_k, top_p=cfg.top_p, seed=seed, first_index=first_index + start)
            if self.stop_strings:
                out = out.truncate_at_stop_strings(self.stop_strings, self.lm.tokenizer.decode)
            result += self._completions(out, part, num_samples)
        return result

    def _completions(self, out, encoded, num_samples: int) -> list:
        """[len(encoded)][num_samples] Completions from one sampler call's output."""
        decode = self.lm.tokenizer.decode
        eos = set(self.lm.tokenizer.eos_ids)
        result = []
        for p, (ids, shortened) in enumerate(encoded):
            row = []
            for g in range(num_samples):
                n = int(out.lengths[p, g])
                tokens = out.tokens[p, g, :n].tolist()
                text_ids = tokens[:-1] if tokens and tokens[-1] in eos else tokens
                row.append(Completion(text=decode(text_ids, skip_special_tokens=True),
                                      prompt_ids=tuple(ids), token_ids=tuple(tokens),
                                      logprobs=np.asarray(out.logprobs[p, g, :n], np.float32),
                                      finished=bool(out.finished[p, g]), shortened_prompt=shortened))
            result.append(row)
        return result

    def bind(self, params, seed: int) -> "BoundPolicy":
        """The evaluation's `Policy` (reply texts only) over fixed params."""
        return BoundPolicy(self, params, seed)


@dataclasses.dataclass
class BoundPolicy:
    """A TextPolicy with fixed params, as the evaluation drives it (`generate`, the `Policy` protocol).
    Its i-th call samples with seed + i: an evaluation's draws follow from the seed it was bound with and
    its own sequence of calls, whatever sampled before."""
    policy: TextPolicy
    params: Any
    seed: int
    calls: int = 0

    def generate(self, conversations: Sequence[Sequence[dict]], num_samples: int = 1) -> list:
        """Reply texts [len(conversations)][num_samples]."""
        rows = self.policy.sample(self.params, conversations, num_samples, self.seed + self.calls)
        self.calls += 1
        return [[c.text for c in row] for row in rows]
