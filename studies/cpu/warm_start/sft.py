"""Supervised fine-tuning of a small model on `Example`s: tokenizer, model config, batches, the train step.

The model sees each example exactly as the policy will see the prompt at sampling time: the chat template
with the generation prompt, tokenized on its own (`TextPolicy.encode`), then the reply tokens and the
end-of-turn token. The loss covers the reply and the end-of-turn token only, so the model learns to answer
and to stop, not to predict the prompts.

Rows are padded to a few length buckets with about the same number of tokens per batch, so the jitted
step compiles once per bucket.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from exit_jax.models import transformer
from exit_jax.models.config import ModelConfig
from exit_jax.models.lm import LM
from exit_jax.models.smoke import SPECIAL_TOKENS, smoke_lm
from exit_jax.models.tokenizer import CHATML_TEMPLATE, Tokenizer
from studies.cpu.warm_start.example import Example


def study_config(vocab_size: int = 768, hidden_size: int = 128, num_layers: int = 4, num_heads: int = 4,
                 intermediate_size: int = 384, name: str = "study", max_positions: int = 1024) -> ModelConfig:
    """A ~1M-parameter llama-family decoder (tied embeddings, no GQA).

    Sized for a fixed CPU budget: at ~2.5M SFT tokens (5 minutes on 2 cores) a 1M model reaches a lower
    loss than 2-3M ones, which process 2-3x fewer tokens in the same time; it also samples fast enough
    for second-scale GRPO iterations. `vocab_size` is what the tokenizer is asked for; the built model
    takes the tokenizer's real size.
    """
    return ModelConfig(family="llama", vocab_size=vocab_size, hidden_size=hidden_size, num_layers=num_layers,
                       num_heads=num_heads, num_kv_heads=num_heads, head_dim=hidden_size // num_heads,
                       intermediate_size=intermediate_size, rope_theta=10000.0, rms_norm_eps=1e-5,
                       tie_embeddings=True, max_position_embeddings=max_positions, name=name)


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    steps: int = 4800
    learning_rate: float = 3e-3
    warmup_steps: int = 60
    end_lr_fraction: float = 0.05  # cosine decays to this fraction of the peak
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    tokens_per_batch: int = 2048  # rows per batch = tokens_per_batch // bucket length
    buckets: tuple = (64, 96, 128, 192, 256, 384)
    seed: int = 0
    log_every: int = 50

    def __post_init__(self):
        if self.steps < 1 or self.tokens_per_batch < max(self.buckets):
            raise ValueError(f"SFTConfig needs steps >= 1 and tokens_per_batch >= the largest bucket "
                             f"({max(self.buckets)}), got steps={self.steps}, "
                             f"tokens_per_batch={self.tokens_per_batch}.")


# ---------------------------------------------------------------------------------------------------
# Tokenizer and model.

def _template_renderer() -> Tokenizer:
    # The chat template is plain jinja: rendering needs no vocabulary yet.
    return Tokenizer(backend=None, chat_template=CHATML_TEMPLATE, bos_token=None, eos_token="<|im_end|>",
                     pad_token="<pad>", add_bos=False, special_tokens=SPECIAL_TOKENS)


def corpus_texts(examples: Sequence[Example], limit: int = 3000) -> list[str]:
    """Whole rendered conversations (prompt and reply), the text the tokenizer must compress."""
    render = _template_renderer().apply_chat_template
    return [render([*ex.messages, {"role": "assistant", "content": ex.target}], add_generation_prompt=False)
            for ex in examples[:limit]]


def build_lm(examples: Sequence[Example], config: ModelConfig, work_dir: str, seed: int = 0) -> LM:
    """A randomly initialised model whose sentencepiece tokenizer is trained on the corpus.

    The recipe (BPE, ChatML special tokens, tokenizer object) is `models.smoke.smoke_lm`'s, with digits
    split so that a number is the same tokens in the problem and in the working; `work_dir` caches the
    tokenizer model under a hash of the corpus.
    """
    lm = smoke_lm(corpus_texts(examples), cache_dir=work_dir, vocab_size=config.vocab_size, seed=seed,
                  config=config, split_digits=True)
    return dataclasses.replace(lm, config=dataclasses.replace(lm.config, name=config.name))


# ---------------------------------------------------------------------------------------------------
# Encoding and batching.

def encode(tokenizer: Tokenizer, example: Example, max_len: int) -> tuple | None:
    """(ids int32 [T], weights float32 [T]): prompt tokens (weight 0), reply + end-of-turn (weight 1).

    A prompt longer than the room left is cut from the left, as `TextPolicy.encode` cuts it; a reply that
    alone fills `max_len` is dropped (None).
    """
    prompt = tokenizer.encode(tokenizer.apply_chat_template(list(example.messages), add_generation_prompt=True))
    end = tokenizer.token_to_id(tokenizer.eos_token)
    reply = tokenizer.encode(example.target, add_bos=False) + [end]
    room = max_len - len(reply)
    if room < 1:
        return None
    prompt = prompt[-room:]
    ids = np.asarray(prompt + reply, np.int32)
    weights = np.concatenate([np.zeros(len(prompt), np.float32), np.ones(len(reply), np.float32)])
    return ids, weights


def encode_all(tokenizer: Tokenizer, examples: Sequence[Example], max_len: int) -> list:
    return [e for e in (encode(tokenizer, ex, max_len) for ex in examples) if e is not None]


def _bucket(length: int, buckets: Sequence[int]) -> int:
    return next(b for b in sorted(buckets) if b >= length)


def _stack(rows: Sequence[tuple], length: int, n_rows: int, pad_id: int) -> dict:
    tokens = np.full((n_rows, length), pad_id, np.int32)  # [B, L]
    mask = np.zeros((n_rows, length), bool)  # [B, L]
    weights = np.zeros((n_rows, length), np.float32)  # [B, L]
    for i, (ids, w) in enumerate(rows):
        tokens[i, :len(ids)], mask[i, :len(ids)], weights[i, :len(ids)] = ids, True, w
    return {"tokens": tokens, "mask": mask, "weights": weights}


def batches(encoded: Sequence[tuple], config: SFTConfig, pad_id: int,
            rng: np.random.Generator) -> Iterator[dict]:
    """Endless fixed-shape batches: each epoch is shuffled, rows wait in their bucket until it is full."""
    buckets = sorted(config.buckets)
    too_long = [len(ids) for ids, _ in encoded if len(ids) > buckets[-1]]
    if too_long:
        raise ValueError(f"{len(too_long)} encoded examples are longer than the largest bucket {buckets[-1]} "
                         f"(up to {max(too_long)} tokens); encode with max_len <= {buckets[-1]}.")
    if not encoded:
        raise ValueError("SFT needs at least one encoded example.")
    queues: dict = {b: [] for b in buckets}
    while True:
        for i in rng.permutation(len(encoded)):
            b = _bucket(len(encoded[i][0]), buckets)
            queues[b].append(encoded[i])
            rows = max(1, config.tokens_per_batch // b)
            if len(queues[b]) == rows:
                yield _stack(queues[b], b, rows, pad_id)
                queues[b] = []
        if len(encoded) < max(1, config.tokens_per_batch // buckets[-1]):
            # Too few examples to fill a batch of any bucket: flush partial batches (tests, tiny corpora).
            for b, q in queues.items():
                if q:
                    yield _stack(q, b, max(1, config.tokens_per_batch // b), pad_id)
                    queues[b] = []


# ---------------------------------------------------------------------------------------------------
# Loss and training.

def loss_fn(params, model_config: ModelConfig, batch: dict) -> jax.Array:
    """Mean next-token cross entropy over the weighted (reply) tokens of the batch."""
    logits = transformer.forward(params, model_config, batch["tokens"], batch["mask"])  # [B, L, V]
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    nll = -jnp.take_along_axis(logp, batch["tokens"][:, 1:, None], axis=-1)[..., 0]  # [B, L-1]
    w = batch["weights"][:, 1:]
    return (nll * w).sum() / jnp.maximum(w.sum(), 1.0)


def optimizer(config: SFTConfig) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, min(config.warmup_steps, config.steps - 1) if config.steps > 1 else 0,
        config.steps, end_value=config.learning_rate * config.end_lr_fraction)
    # No weight decay on norm scales (1-D): decaying them toward 0 only fights the normalisation.
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
    return optax.chain(optax.clip_by_global_norm(config.grad_clip),
                       optax.adamw(schedule, b1=0.9, b2=0.98, weight_decay=config.weight_decay, mask=decay_mask))


def make_train_step(model_config: ModelConfig, tx: optax.GradientTransformation) -> Callable:
    @jax.jit
    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, model_config, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss
    return step


@functools.partial(jax.jit, static_argnames=("model_config",))
def _eval_loss(params, model_config, batch):
    return loss_fn(params, model_config, batch), batch["weights"][:, 1:].sum()


def mean_loss(params, model_config: ModelConfig, encoded: Sequence[tuple], config: SFTConfig,
              pad_id: int) -> float:
    """Token-weighted mean loss over every encoded example (one pass, bucketed like training)."""
    total, count = 0.0, 0.0
    by_bucket: dict = {}
    for e in encoded:
        by_bucket.setdefault(_bucket(len(e[0]), config.buckets), []).append(e)
    for b, rows in sorted(by_bucket.items()):
        n = max(1, config.tokens_per_batch // b)
        for i in range(0, len(rows), n):
            loss, w = _eval_loss(params, model_config, _stack(rows[i:i + n], b, n, pad_id))
            total, count = total + float(loss) * float(w), count + float(w)
    return total / max(count, 1.0)


@dataclasses.dataclass(frozen=True)
class SFTResult:
    params: object
    losses: list  # the training loss of every step
    seconds: float
    tokens: int  # reply + prompt tokens processed (padding excluded)


def train(params, model_config: ModelConfig, encoded: Sequence[tuple], config: SFTConfig, pad_id: int,
          log: Callable[[str], None] | None = print) -> SFTResult:
    """Runs `config.steps` AdamW steps (warmup + cosine) and returns the new params and the loss curve."""
    tx = optimizer(config)
    step = make_train_step(model_config, tx)
    opt_state = tx.init(params)
    stream = batches(encoded, config, pad_id, np.random.default_rng(config.seed))
    losses, tokens, start = [], 0, time.time()
    for i in range(config.steps):
        batch = next(stream)
        params, opt_state, loss = step(params, opt_state, batch)
        tokens += int(batch["mask"].sum())
        losses.append(float(loss))  # forces the step; the host work per step is small
        if log and ((i + 1) % config.log_every == 0 or i + 1 == config.steps):
            window = losses[-config.log_every:]
            log(f"sft step {i + 1}/{config.steps}: loss {np.mean(window):.4f} "
                f"({tokens / (time.time() - start):.0f} tok/s)")
    return SFTResult(params=params, losses=losses, seconds=time.time() - start, tokens=tokens)
