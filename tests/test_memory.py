"""Long rows fit: blockwise attention (same numbers as the dense path, no [T, T] scores kept) and the update's
micro-batches planned from a memory estimate that XLA's own memory analysis confirms."""
import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from exit_jax.models import flash, transformer
from exit_jax.models.config import FULL_WINDOW, preset
from exit_jax.rl import learner, memory, parallel
from exit_jax.rl.learner import LearnerConfig

SMOL = preset("smollm2-135m-instruct")


def dense_reference(q, k, v, valid, window=FULL_WINDOW, cap=None):
    """The dense path's formula on blockwise_attention's layout."""
    s = transformer.softcap(jnp.einsum("bkgqd,bksd->bkgqs", q, k), cap)
    t = q.shape[3]
    back = np.arange(t)[:, None] - np.arange(t)[None, :]
    keep = jnp.asarray((back >= 0) & (back < window))[None] & valid[:, None, :]
    p = jax.nn.softmax(jnp.where(keep[:, None, None], s, jnp.finfo(jnp.float32).min), axis=-1)
    return jnp.einsum("bkgqs,bksd->bkgqd", p, v)


@pytest.mark.parametrize("window,cap", [(FULL_WINDOW, None), (6, None), (FULL_WINDOW, 1.5), (6, 1.5)])
def test_blockwise_attention_equals_dense_values_and_gradients(monkeypatch, window, cap):
    monkeypatch.setattr(flash, "BLOCK", 8)  # 21 tokens: three blocks, the last one padded
    rng = np.random.default_rng(0)
    b, hkv, g, t, d = 2, 2, 3, 21, 4
    q, k, v = (jnp.asarray(rng.standard_normal(s), jnp.float32)
               for s in ((b, hkv, g, t, d), (b, hkv, t, d), (b, hkv, t, d)))
    valid = np.ones((b, t), bool)
    valid[1, :5] = False  # a left-padded row
    valid = jnp.asarray(valid)
    cot = jnp.asarray(rng.standard_normal((b, hkv, g, t, d)), jnp.float32) * valid[:, None, None, :, None]

    def loss(fn, q, k, v):
        return jnp.sum(fn(q, k, v, valid, window, cap) * cot)

    want = dense_reference(q, k, v, valid, window, cap)
    got = flash.blockwise_attention(q, k, v, valid, window, cap)
    np.testing.assert_allclose(got * valid[:, None, None, :, None], want * valid[:, None, None, :, None],
                               atol=1e-5)
    g_want = jax.grad(lambda *a: loss(dense_reference, *a), argnums=(0, 1, 2))(q, k, v)
    g_got = jax.grad(lambda *a: loss(flash.blockwise_attention, *a), argnums=(0, 1, 2))(q, k, v)
    for x, y in zip(g_got, g_want):
        np.testing.assert_allclose(x, y, atol=1e-5)


def test_blockwise_model_update_matches_dense_and_keeps_no_square_scores():
    """Through the model: log-probs and gradients of a 1.5k-token row equal the dense path's, and XLA's
    memory analysis of the compiled gradient shows the [T, T] scores gone (a fraction of the dense
    temporaries: over two float32 [T, T] score tensors per layer fewer)."""
    cfg = dataclasses.replace(SMOL, num_layers=2, vocab_size=512, name="smol-2")
    params = transformer.init_params(cfg, seed=1)
    t, w = 1500, 300
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (1, t)), jnp.int32)
    mask = jnp.asarray(np.arange(t)[None] >= 200)  # 200 tokens of left padding

    def loss(p, attention):
        logp, _ = learner.sequence_logprobs(p, cfg, tokens, mask, width=w, attention=attention)
        return jnp.sum(logp), logp

    out, temps = {}, {}
    for attention in ("dense", "blockwise"):
        fn = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
        temps[attention] = fn.lower(params, attention).compile().memory_analysis().temp_size_in_bytes
        out[attention] = fn(params, attention)
    (_, lp_d), g_d = out["dense"]
    (_, lp_b), g_b = out["blockwise"]
    np.testing.assert_allclose(lp_b, lp_d, atol=2e-5)
    rel = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30)), g_b, g_d)
    assert max(jax.tree.leaves(rel)) < 1e-4
    one_layer_scores = cfg.num_heads * t * t * 4
    assert temps["blockwise"] < temps["dense"] / 2
    assert temps["dense"] - temps["blockwise"] > 2 * cfg.num_layers * one_layer_scores


@pytest.mark.parametrize("layers,length", [(2, 1024), (4, 2048)])
def test_row_estimate_agrees_with_the_compiler(layers, length):
    """rl.memory's bytes per row against XLA:CPU's memory analysis of the compiled gradient (SmolLM2
    widths): the estimate may be conservative, never far below."""
    cfg = dataclasses.replace(SMOL, num_layers=layers)
    params = jax.eval_shape(lambda: transformer.init_params(cfg))
    width = 512

    def temp(rows):
        spec = jax.ShapeDtypeStruct((rows, length), jnp.int32), jax.ShapeDtypeStruct((rows, length), bool)
        grad = jax.grad(lambda p, x, m: learner.sequence_logprobs(p, cfg, x, m, width=width, with_entropy=True,
                                                                  attention="blockwise")[0].sum())
        return jax.jit(grad).lower(params, *spec).compile().memory_analysis().temp_size_in_bytes

    measured = temp(2) - temp(1)
    estimate = memory.row_bytes(cfg, length, width, 4, False, LearnerConfig().vocab_chunk, "blockwise", "cpu")
    assert 0.9 * measured < estimate < 1.5 * measured, (estimate / 2 ** 20, measured / 2 ** 20)


def test_plan_fits_the_budget_and_respects_fixed_settings(caplog):
    plan = lambda **kw: learner.micro_plan(LearnerConfig(**kw), SMOL, 32, 1, 3072, 1024, "gpu")  # noqa: E731
    per_row = memory.row_bytes(SMOL, 3072, 1024, 4, False, 512, "blockwise", "cpu")
    state = memory.state_bytes(SMOL, 4, 4, False, 1)
    assert plan(memory_budget_gb=(state + 4.5 * per_row) / 2 ** 30) == (8, False)  # 4 rows fit, not 8
    assert plan(memory_budget_gb=(state + 40 * per_row) / 2 ** 30) == (1, False)  # all 32 at once
    assert plan(memory_budget_gb=1.0, micro_batch_size=8, remat=False) == (4, False)  # fixed: kept
    with caplog.at_level(logging.WARNING):
        assert plan(memory_budget_gb=0.5, remat=False) == (32, False)  # nothing fits: 1 row, said once
    assert "exceeds its budget" in caplog.text
    # On CPU micro-batches stop at CPU_MICRO_TOKENS, however much memory there is (bigger ones ran slower).
    cpu = lambda rows, length: learner.micro_plan(LearnerConfig(memory_budget_gb=1000), SMOL, rows, 1,  # noqa: E731
                                                  length, 64, "cpu")
    assert cpu(16, 336) == (8, False) and cpu(16, 160) == (4, False) and cpu(8, 3072) == (8, False)
    # Off CPU, remat (layer inputs kept) is the next resort once one row without it is too much.
    tpu = lambda gb: learner.micro_plan(LearnerConfig(memory_budget_gb=gb), SMOL, 32, 1, 3072, 1024,  # noqa: E731
                                        "tpu")
    n_micro, remat = tpu((state + 0.5 * per_row) / 2 ** 30)
    remat_row = memory.row_bytes(SMOL, 3072, 1024, 4, True, 512, "splash", "tpu")
    assert remat and 32 // n_micro * remat_row <= 0.5 * per_row < 2 * 32 // n_micro * remat_row
    assert tpu((state + 8 * per_row) / 2 ** 30) == (4, False)
    with pytest.raises(ValueError, match="memory_budget_gb"):
        LearnerConfig(memory_budget_gb=-1)


def test_a_planned_update_equals_the_fixed_one_row_update():
    """micro_batch_size = 0 with a budget that holds one row trains exactly as micro_batch_size = 1."""
    cfg = dataclasses.replace(preset("tiny"), num_layers=1)
    params = transformer.init_params(cfg, seed=0)
    rng = np.random.default_rng(0)
    batch = dict(tokens=rng.integers(1, cfg.vocab_size, (4, 24)).astype(np.int32),
                 input_mask=np.ones((4, 24), bool), completion_mask=np.ones((4, 8), bool),
                 old_logprobs=np.full((4, 8), -3.0, np.float32),
                 advantages=np.array([1.0, -1.0, 0.5, -0.5], np.float32))
    state_bytes = memory.state_bytes(cfg, 4, 4, False, 1)
    one_row = memory.row_bytes(cfg, 24, 8, 4, False, 512, "blockwise", "cpu")
    results = []
    for kw in (dict(micro_batch_size=1), dict(memory_budget_gb=(state_bytes + 1.5 * one_row) / 2 ** 30)):
        lc = LearnerConfig(learning_rate=1e-3, warmup_steps=0, skip_zero_advantage=False, **kw)
        assert learner.micro_plan(lc, cfg, 4, 1, 24, 8, "cpu") == (4, False)
        state = learner.init_state(params, lc)
        results.append(parallel.make_update(cfg, lc)(state, parallel.place_batch(batch, lc)))
    (s1, m1), (s2, m2) = results
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), s1.params, s2.params))
    assert float(m1["loss"]) == float(m2["loss"])
