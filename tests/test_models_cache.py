"""Loaded checkpoints under left padding and the KV cache: both must equal the plain forward pass."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from exit_jax import models
from exit_jax.models import transformer

PARITY = os.path.join(os.path.dirname(__file__), "fixtures", "parity")
# Between them the two lists cover GQA/MHA, tied/untied, llama3 rope scaling, biases and Gemma.


def left_pad(rows, pad_id):
    width = max(len(r) for r in rows)
    tokens = np.full((len(rows), width), pad_id, np.int32)
    mask = np.zeros((len(rows), width), bool)
    for i, r in enumerate(rows):
        tokens[i, width - len(r):] = r
        mask[i, width - len(r):] = True
    return tokens, mask  # [B, T], [B, T]


@pytest.mark.parametrize("name", ["llama_mha_untied_rope3", "qwen2_bias"])
def test_left_padded_rows_equal_unpadded_rows(name):
    lm = models.load(os.path.join(PARITY, name))
    rng = np.random.default_rng(1)
    rows = [rng.integers(0, 300, size=n).tolist() for n in (5, 12, 9)]
    tokens, mask = left_pad(rows, lm.tokenizer.pad_id)
    padded = np.asarray(transformer.forward(lm.params, lm.config, jnp.asarray(tokens),
                                            jnp.asarray(mask)))  # [B, T, V]
    for i, row in enumerate(rows):
        alone = np.asarray(lm.logits(np.asarray([row], np.int32)))[0]  # [len, V]
        np.testing.assert_allclose(padded[i, -len(row):], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["llama_gqa_tied", "gemma_head_dim", "qwen3_qknorm", "llama_attention_bias",
                                  "gemma3_local_rope", "gemma2_softcap"])
def test_kv_cache_prefill_and_decode_equal_no_cache_forward(name):
    lm = models.load(os.path.join(PARITY, name))
    rng = np.random.default_rng(2)
    prompts = [rng.integers(0, 300, size=n).tolist() for n in (3, 6)]
    continuation = rng.integers(0, 300, size=(2, 5)).astype(np.int32)  # fed one token at a time
    tokens, mask = left_pad(prompts, lm.tokenizer.pad_id)  # [2, 6]
    full = np.concatenate([tokens, continuation], axis=1)  # [2, 11]
    full_mask = np.concatenate([mask, np.ones_like(continuation, bool)], axis=1)
    want = np.asarray(transformer.forward(lm.params, lm.config, jnp.asarray(full),
                                          jnp.asarray(full_mask)))  # [2, 11, V]

    apply = jax.jit(transformer.Transformer(lm.config).apply)  # two traces: prefill and decode
    length = full.shape[1]
    cache = transformer.init_cache(lm.config, 2, length)
    positions = transformer.positions_from_mask(jnp.asarray(full_mask))  # [2, 11]
    slot_valid = jnp.asarray(full_mask)  # a slot is attendable once written and not padding
    p = tokens.shape[1]
    prefill_mask = transformer.causal_mask(jnp.asarray(mask))  # [2, P, P]
    prefill_mask = jnp.pad(prefill_mask, ((0, 0), (0, 0), (0, length - p)))  # [2, P, S]
    logits, cache, _ = apply({"params": lm.params}, jnp.asarray(tokens), positions[:, :p],
                             prefill_mask, cache, 0)
    valid = mask  # compare only real (non-pad) prompt positions
    np.testing.assert_allclose(np.asarray(logits)[valid], want[:, :p][valid], atol=1e-5, rtol=0)
    for step in range(continuation.shape[1]):
        slot = p + step
        step_mask = (slot_valid & (jnp.arange(length) <= slot))[:, None, :]  # [2, 1, S]
        logits, cache, _ = apply({"params": lm.params}, jnp.asarray(continuation[:, step:step + 1]),
                                 positions[:, slot:slot + 1], step_mask, cache, slot)
        np.testing.assert_allclose(np.asarray(logits)[:, 0], want[:, slot], atol=1e-5, rtol=0)


def test_greedy_generate_uses_cache_consistently():
    lm = models.load(os.path.join(PARITY, "qwen2_bias"))
    prompt = lm.tokenizer.encode(lm.tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}]))
    out = models.greedy_generate(lm, prompt, 8, stop_at_eos=False)
    # Teacher-forced no-cache pass over prompt + output: each output token is the argmax there.
    logits = np.asarray(lm.logits(np.asarray([prompt + out], np.int32)))[0]  # [T, V]
    assert out == np.argmax(logits[len(prompt) - 1:-1], axis=-1).tolist()


@pytest.mark.parametrize("name", ["gemma2_softcap", "gemma3_local_rope", "mistral_sliding"])
def test_windowed_layers_scanned_blockwise_and_splash_equal_the_unrolled_dense_forward(name, monkeypatch):
    """Per-layer windows, RoPE bases and soft-capping reach each block as scanned inputs (stacked layers),
    through blockwise attention (blocks of 8 over 24 tokens: windows cross block edges) and through the
    splash kernel (its interpreter: a local or causal kernel per layer, soft-capped), values and gradients."""
    from exit_jax.models import flash
    monkeypatch.setattr(flash, "BLOCK", 8)
    lm = models.load(os.path.join(PARITY, name))
    tokens = jnp.asarray(np.load(os.path.join(PARITY, name, "tokens.npy")))
    mask = jnp.asarray(np.arange(tokens.shape[1])[None] >= np.array([[0], [5]]))  # row 1 left-padded

    def loss(params, attention):
        logits = transformer.forward(params, lm.config, tokens, mask, attention=attention)
        return jnp.sum(jnp.where(mask[..., None], jax.nn.log_softmax(logits), 0.0)[..., :7]), logits

    (_, want), g_want = jax.value_and_grad(loss, has_aux=True)(lm.params, "dense")
    stacked = transformer.stack_layers(lm.params)
    for attention in ("dense", "blockwise", "splash_interpret"):
        (_, got), g_got = jax.value_and_grad(loss, has_aux=True)(stacked, attention)
        np.testing.assert_allclose(np.asarray(got)[np.asarray(mask)], np.asarray(want)[np.asarray(mask)], atol=2e-5)
        for a, b in zip(jax.tree.leaves(transformer.unstack_layers(g_got)), jax.tree.leaves(g_want)):
            np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)
