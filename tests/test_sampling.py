"""Sampler tests on the tiny config: cached decode vs the no-cache forward, log-prob semantics, knobs,
stop handling, mesh data parallelism and recompilation."""
import dataclasses
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from exit_jax import sampling
from exit_jax.models import preset, transformer
from exit_jax.sampling import sampler as sampler_lib

CONFIG = preset("tiny")
PAD, EOS = 0, 1
# Mixed lengths in one batch (1 .. 33 tokens: left padding up to the 64 bucket).
PROMPTS = [[5, 6, 7], list(range(100, 133)), [9], list(range(200, 212))]


@pytest.fixture(scope="module")
def params():
    # Scale the random init up so the tiny model's distributions are far from uniform (no argmax ties).
    p = transformer.init_params(CONFIG, seed=0)
    return jax.tree.map(lambda x: x * 3.0 if x.ndim == 2 else x, p)


def make_lm(params, eos=(EOS,), dtype=jnp.float32):
    tok = types.SimpleNamespace(eos_ids=tuple(eos), pad_id=PAD,
                                decode=lambda ids: " ".join(str(i) for i in ids))
    return types.SimpleNamespace(config=CONFIG, params=params, dtype=dtype, tokenizer=tok)


@jax.jit
def _forward(params, tokens, mask):
    return transformer.forward(params, CONFIG, tokens, input_mask=mask)


def teacher_forced(params, prompt, completion, temperature=1.0):
    """log_softmax(logits / T) at each completion token, from one no-cache forward (what GRPO does)."""
    seq = list(prompt) + list(completion)
    tokens = np.zeros((1, 96), np.int32)  # one right-padded shape: one compile
    tokens[0, :len(seq)] = seq
    mask = np.arange(96)[None] < len(seq)
    logits = np.asarray(_forward(params, tokens, mask))[0]  # [96, V]
    t = temperature if temperature > 0 else 1.0
    logp = np.asarray(jax.nn.log_softmax(logits / t, axis=-1))
    rows = np.arange(len(prompt) - 1, len(seq) - 1)
    return logp[rows, completion], logits


def test_greedy_equals_stepwise_argmax_without_cache(params):
    out = sampling.generate(make_lm(params, eos=()), PROMPTS, num_samples=2, max_new_tokens=12,
                            temperature=0.0)
    chex.assert_shape(out.tokens, (4, 2, 12))
    for p, prompt in enumerate(PROMPTS):
        seq = list(prompt)
        for _ in range(12):  # reference: full recompute, no cache, no padding
            logits = np.asarray(_forward(params, np.asarray([seq + [0] * (96 - len(seq))]),
                                         np.arange(96)[None] < len(seq)))
            seq.append(int(np.argmax(logits[0, len(seq) - 1])))
        expected = seq[len(prompt):]
        for g in range(2):
            assert out.tokens[p, g].tolist() == expected, (p, g)
        ref_lp, _ = teacher_forced(params, prompt, expected, 0.0)
        np.testing.assert_allclose(out.logprobs[p, 0], ref_lp, atol=1e-4)
    assert out.prompts == tuple(tuple(p) for p in PROMPTS)
    assert not out.finished.any() and (out.lengths == 12).all()


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.3, 5, 0.9)])
def test_logprobs_equal_teacher_forced(params, temperature, top_k, top_p):
    out = sampling.generate(make_lm(params), PROMPTS, num_samples=2, max_new_tokens=16,
                            temperature=temperature, top_k=top_k, top_p=top_p, seed=3)
    assert out.logprobs.dtype == np.float32 and out.tokens.dtype == np.int32
    for p, prompt in enumerate(PROMPTS):
        for g in range(2):
            n = out.lengths[p, g]
            ref, logits = teacher_forced(params, prompt, out.completion(p, g), temperature)
            np.testing.assert_allclose(out.logprobs[p, g, :n], ref, atol=1e-4)
            assert (out.logprobs[p, g, n:] == 0).all() and (out.tokens[p, g, n:] == PAD).all()
            if top_k:  # every emitted token is among the k best of its step
                steps = logits[np.arange(len(prompt) - 1, len(prompt) - 1 + n)]
                kth = np.sort(steps, axis=-1)[:, -top_k]
                assert (steps[np.arange(n), out.completion(p, g)] >= kth).all()


def test_top_k_top_p_never_leave_kept_set():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(6, 50)) * 2.0, jnp.float32)
    keys = jax.random.split(jax.random.key(0), 400)
    draw = jax.jit(jax.vmap(sampling.choose_tokens, in_axes=(None, 0, None)))
    for top_k, top_p in [(4, 1.0), (0, 0.6), (10, 0.3), (1, 1.0)]:
        knobs = sampling.make_knobs(1.0, top_k, top_p, 1)
        row_keys = jax.vmap(lambda k: jax.random.split(k, 6))(keys)  # [400, 6]
        tokens, _ = draw(logits, row_keys, knobs)  # [400, 6]
        for b in range(6):
            order = np.argsort(-np.asarray(logits[b]))
            probs = np.asarray(jax.nn.softmax(logits[b][order][:top_k or 50]))
            n_p = int(np.sum(np.cumsum(probs) - probs < top_p))
            kept = set(order[:n_p].tolist())
            seen = set(np.asarray(tokens[:, b]).tolist())
            assert seen <= kept, (top_k, top_p, b)
            assert len(seen) > 1 or len(kept) == 1  # it does sample, not just argmax


def test_draws_follow_softmax():
    logits = jnp.log(jnp.asarray([[0.5, 0.25, 0.125, 0.0625, 0.0625, 0.0]]) + 1e-30)
    keys = jax.random.split(jax.random.key(1), 20000)[:, None]
    tokens, _ = jax.jit(jax.vmap(sampling.choose_tokens, in_axes=(None, 0, None)))(
        logits, keys, sampling.make_knobs(1.0, 0, 1.0, 1))
    freq = np.bincount(np.asarray(tokens[:, 0]), minlength=6) / 20000
    np.testing.assert_allclose(freq, [0.5, 0.25, 0.125, 0.0625, 0.0625, 0.0], atol=0.015)


def test_seeds_reproduce_and_rows_ignore_batch_composition(params):
    lm = make_lm(params)
    a = sampling.generate(lm, PROMPTS, num_samples=2, max_new_tokens=10, seed=7)
    b = sampling.generate(lm, PROMPTS, num_samples=2, max_new_tokens=10, seed=7)
    c = sampling.generate(lm, PROMPTS, num_samples=2, max_new_tokens=10, seed=8)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.logprobs, b.logprobs)
    assert (a.tokens != c.tokens).any()
    assert (a.tokens[:, 0] != a.tokens[:, 1]).any()  # the G samples of a prompt differ
    # Prompt 0 alone (smaller bucket, smaller batch) draws the same samples.
    alone = sampling.generate(lm, PROMPTS[:1], num_samples=2, max_new_tokens=10, seed=7)
    np.testing.assert_array_equal(alone.tokens[0], a.tokens[0])


def test_stop_tokens_end_rows_and_padding_follows(params):
    free = sampling.generate(make_lm(params, eos=()), PROMPTS, num_samples=2, max_new_tokens=10,
                             temperature=0.0)
    stop = int(free.tokens[0, 0, 3])
    first = {p: free.tokens[p, 0].tolist().index(stop) if stop in free.tokens[p, 0] else None
             for p in range(len(PROMPTS))}
    for lm, extra in [(make_lm(params, eos=(stop,)), ()), (make_lm(params, eos=()), (stop,))]:
        out = sampling.generate(lm, PROMPTS, num_samples=2, max_new_tokens=10, temperature=0.0,
                                stop_ids=extra)
        for p in range(len(PROMPTS)):
            if first[p] is None:
                assert out.lengths[p, 0] == 10 and not out.finished[p, 0]
                assert out.finish_reason[p, 0] == "length"
                continue
            n = first[p] + 1
            assert out.lengths[p, 0] == n and out.finished[p, 0] and out.tokens[p, 0, n - 1] == stop
            assert out.finish_reason[p, 0] == "stop"
            assert (out.tokens[p, 0, n:] == PAD).all() and (out.logprobs[p, 0, n:] == 0).all()
            assert out.tokens[p, 0, :n].tolist() == free.tokens[p, 0, :n].tolist()


def test_stop_strings_truncate_on_host(params):
    lm = make_lm(params, eos=())
    free = sampling.generate(lm, PROMPTS, num_samples=2, max_new_tokens=10, temperature=0.0)
    words = [str(t) for t in free.tokens[0, 0]]
    target = f"{words[4]} {words[5]}"  # spans two tokens
    n = next(i + 1 for i in range(10) if target in " ".join(words[:i + 1]))
    out = sampling.generate(lm, PROMPTS, num_samples=2, max_new_tokens=10, temperature=0.0,
                            stop_strings=[target])
    assert out.lengths[0, 0] == n and out.finished[0, 0]
    assert (out.tokens[0, 0, n:] == PAD).all() and (out.logprobs[0, 0, n:] == 0).all()
    np.testing.assert_array_equal(out.logprobs[0, 0, :n], free.logprobs[0, 0, :n])


def test_continuation_from_token_prefix(params):
    lm = make_lm(params, eos=())
    full = sampling.generate(lm, PROMPTS, num_samples=2, max_new_tokens=9, temperature=0.0)
    prefixes = [p + full.completion(i, 0)[:4] for i, p in enumerate(PROMPTS)]
    rest = sampling.generate(lm, prefixes, num_samples=2, max_new_tokens=5, temperature=0.0)
    np.testing.assert_array_equal(rest.tokens[:, 0], full.tokens[:, 0, 4:])
    # rtol: the prefix's tokens go through prefill here and decode there (float reassociation)
    np.testing.assert_allclose(rest.logprobs[:, 0], full.logprobs[:, 0, 4:], rtol=1e-5, atol=1e-5)


def test_mesh_sharded_equals_single_device(params):
    assert jax.device_count() == 4
    mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    lm = make_lm(params)
    kwargs = dict(num_samples=2, max_new_tokens=12, temperature=1.0, seed=5)
    one = sampling.generate(lm, PROMPTS, **kwargs)
    four = sampling.generate(lm, PROMPTS[:3], mesh=mesh, **kwargs)  # 3 prompts: padded to 4
    np.testing.assert_array_equal(four.tokens, one.tokens[:3])
    np.testing.assert_array_equal(four.lengths, one.lengths[:3])
    np.testing.assert_allclose(four.logprobs, one.logprobs[:3], rtol=1e-5, atol=1e-5)  # float reassociation
    # The decode state really is split over the 4 devices.
    s = sampling.Sampler(CONFIG, num_samples=2, max_new_tokens=16, eos_ids=(EOS,), pad_id=PAD,
                         mesh=mesh)
    tokens, mask, _ = s._batch(PROMPTS)
    shard = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    state = s._prefill(s.spec, params, *jax.device_put((tokens, mask, np.arange(4, dtype=np.int32)),
                                                       shard), jnp.uint32(0), sampling.make_knobs())
    # Each prompt's cache is stored once, shared by its G = 2 samples; rows own only their N slots.
    layer = state.cache["layers_0"]
    chex.assert_shape(layer["prefix_k"], (4, CONFIG.num_kv_heads, tokens.shape[1], CONFIG.head_dim))
    chex.assert_shape(layer["k"], (8, CONFIG.num_kv_heads, 16, CONFIG.head_dim))
    for name in ("prefix_k", "prefix_v", "k", "v"):
        assert layer[name].sharding.is_equivalent_to(shard, 4), name
    assert len(state.tokens.addressable_shards) == 4
    assert state.tokens.addressable_shards[0].data.shape == (2, 16)


def test_prefill_in_chunks_and_on_sharded_params_changes_nothing(params):
    """prefill_chunks splits the prompt pass (less temporary memory), the params may arrive sharded over
    the mesh (the FSDP learner's, read in place), and decode attention may be dots (the TPU form): the
    same tokens and log-probs every way."""
    mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    kwargs = dict(temperature=1.0, seed=3)
    base = sampling.Sampler(CONFIG, num_samples=2, max_new_tokens=12, eos_ids=(EOS,), pad_id=PAD)(
        params, PROMPTS, **kwargs)
    sharded = jax.device_put(params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
    for chunks, mesh_, p, reduce in ((2, None, params, True), (2, mesh, sharded, True), (1, None, params, False)):
        s = sampling.Sampler(CONFIG, num_samples=2, max_new_tokens=12, eos_ids=(EOS,), pad_id=PAD,
                             mesh=mesh_, prefill_chunks=chunks)
        assert s.spec.decode_reduce  # on CPU; the TPU form (dots in the compute dtype) must agree
        s.spec = dataclasses.replace(s.spec, decode_reduce=reduce)
        assert s._batch(PROMPTS)[0].shape[0] == (8 if mesh_ else 4)  # a multiple of shards x chunks
        out = s(p, PROMPTS, **kwargs)
        np.testing.assert_array_equal(out.tokens, base.tokens)
        np.testing.assert_allclose(out.logprobs, base.logprobs, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="prefill_chunks"):
        sampling.Sampler(CONFIG, num_samples=2, max_new_tokens=12, eos_ids=(EOS,), pad_id=PAD, prefill_chunks=0)


def test_tensor_parallel_meshes_and_splash_prefill_change_nothing(params):
    """The learner's 2-D meshes (data x tensor): params sharded by rl.parallel's rules (heads, MLP columns
    and vocabulary over "tensor"), the KV cache's heads over "tensor", and the prefill through the Pallas
    splash kernel (interpreted on CPU): the single-device tokens and log-probs."""
    from exit_jax.rl import parallel
    kwargs = dict(temperature=1.0, seed=3)
    base = sampling.Sampler(CONFIG, num_samples=2, max_new_tokens=12, eos_ids=(EOS,), pad_id=PAD)(
        params, PROMPTS, **kwargs)
    for tensor, attention in ((2, "dense"), (4, "dense"), (2, "splash"), (1, "splash")):
        mesh = parallel.make_mesh(tensor=tensor)
        sharded = jax.device_put(params, parallel.state_shardings(params, mesh))
        if tensor > 1:
            assert sharded["layers_0"]["attn"]["q"]["kernel"].sharding.spec[-1] == "tensor"
        s = sampling.Sampler(CONFIG, num_samples=2, max_new_tokens=12, eos_ids=(EOS,), pad_id=PAD,
                             mesh=mesh, attention=attention)
        assert s.spec.attention == ("splash_interpret" if attention == "splash" else "dense")
        out = s(sharded, PROMPTS, **kwargs)
        np.testing.assert_array_equal(out.tokens, base.tokens, err_msg=f"{tensor} {attention}")
        # Row-parallel o/down sum partial products across devices: float reassociation (~3e-5).
        np.testing.assert_allclose(out.logprobs, base.logprobs, rtol=1e-4, atol=1e-4)
    # The cache of the (2 x 2) mesh: rows over "data", kv heads over "tensor".
    mesh = parallel.make_mesh(tensor=2)
    s = sampling.Sampler(CONFIG, num_samples=2, max_new_tokens=16, eos_ids=(EOS,), pad_id=PAD, mesh=mesh)
    tokens, mask, _ = s._batch(PROMPTS)
    shard = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    state = s._prefill(s.spec, params, *jax.device_put((tokens, mask, np.arange(4, dtype=np.int32)), shard),
                       jnp.uint32(0), sampling.make_knobs())
    heads = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data", "tensor"))
    assert state.cache["layers_0"]["prefix_k"].sharding.is_equivalent_to(heads, 4)


def test_no_retrace_for_new_prompts_knobs_and_params(params, monkeypatch):
    for name in ("_prefill_impl", "_decode_impl"):
        monkeypatch.setattr(sampler_lib, name,
                            chex.assert_max_traces(getattr(sampler_lib, name), n=1))
    s = sampling.Sampler(CONFIG, num_samples=2, max_new_tokens=8, eos_ids=(EOS,), pad_id=PAD)
    s(params, [[3, 4], [5, 6, 7]], temperature=1.0, seed=0)
    other = jax.tree.map(lambda x: x * 0.5, params)
    out = s(other, [[8] * 20, [9]], temperature=0.3, top_k=7, top_p=0.8, max_new_tokens=5, seed=4)
    chex.assert_shape(out.tokens, (2, 2, 5))
    s(params, [[1, 2, 3]] * 2, temperature=0.0, max_new_tokens=8)
    with pytest.raises(AssertionError):  # a new bucket must trace again: the guard is live
        s(params, [[3] * 40, [4]])


def test_compute_dtype_bfloat16(params):
    s = sampling.Sampler(CONFIG, num_samples=2, max_new_tokens=16, eos_ids=(), pad_id=PAD,
                         dtype=jnp.bfloat16)
    out = s(params, PROMPTS, temperature=1.0, seed=1, max_new_tokens=6)
    tokens, mask, _ = s._batch(PROMPTS)
    state = s._prefill(s.spec, params, tokens, mask, np.arange(4, dtype=np.int32), jnp.uint32(0),
                       sampling.make_knobs())
    assert state.cache["layers_0"]["k"].dtype == jnp.bfloat16
    assert out.logprobs.dtype == np.float32
    seq = PROMPTS[0] + out.completion(0, 0)
    logits = transformer.forward(params, CONFIG, jnp.asarray([seq]), dtype=jnp.bfloat16)
    assert logits.dtype == jnp.float32
    ref = np.asarray(jax.nn.log_softmax(logits[0], -1))[np.arange(2, len(seq) - 1),
                                                        out.completion(0, 0)]
    # bf16 rounds cached and uncached attention differently (logits here span tens of nats).
    np.testing.assert_allclose(out.logprobs[0, 0], ref, atol=0.25)
    fp32 = sampling.Sampler(CONFIG, num_samples=2, max_new_tokens=16, eos_ids=(), pad_id=PAD)(
        params, PROMPTS, temperature=1.0, seed=1, max_new_tokens=6)
    assert np.abs(fp32.logprobs[0, 0, :1] - out.logprobs[0, 0, :1]).max() > 0  # really bf16


def test_bad_input_is_one_clear_error(params):
    lm = make_lm(params)
    with pytest.raises(ValueError, match="prompt 1"):
        sampling.generate(lm, [[1, 2], []])
    with pytest.raises(ValueError, match="outside"):
        sampling.generate(lm, [[1, 99999]])
    with pytest.raises(ValueError, match="temperature"):
        sampling.generate(lm, [[1]], temperature=-1.0)
    with pytest.raises(ValueError, match="top_p"):
        sampling.generate(lm, [[1]], top_p=0.0)
    with pytest.raises(ValueError, match="non-empty"):
        sampling.generate(lm, [])


def test_sliding_windows_and_soft_caps_sample_what_the_learner_scores():
    """Gemma-style layers (a 6-token window on the first, soft-capped scores and logits, q/k and sandwich
    norms, a local RoPE base) with prompts up to 33 tokens: the sampler's log-probs, through its shared
    prompt cache, chunked prefill and both decode forms, equal the no-cache forward's."""
    config = dataclasses.replace(CONFIG, family="gemma3_text", sliding_window=6,
                                 layer_types=("sliding_attention", "full_attention"), query_pre_attn_scalar=16,
                                 rope_theta=1e6, rope_local_theta=1e4, attn_logit_softcapping=5.0,
                                 final_logit_softcapping=10.0)
    params = jax.tree.map(lambda x: x * 3.0 if x.ndim == 2 else x, transformer.init_params(config, seed=1))
    forward = jax.jit(lambda tokens, mask: transformer.forward(params, config, tokens, input_mask=mask))
    for chunks, reduce in ((1, True), (2, False)):
        s = sampling.Sampler(config, num_samples=2, max_new_tokens=12, eos_ids=(EOS,), pad_id=PAD,
                             prefill_chunks=chunks)
        s.spec = dataclasses.replace(s.spec, decode_reduce=reduce)
        out = s(params, PROMPTS, temperature=1.0, seed=3)
        for p, prompt in enumerate(PROMPTS):
            for g in range(2):
                seq = list(prompt) + out.completion(p, g)
                tokens = np.zeros((1, 64), np.int32)
                tokens[0, :len(seq)] = seq
                logp = jax.nn.log_softmax(forward(tokens, np.arange(64)[None] < len(seq)))[0]
                rows = np.arange(len(prompt) - 1, len(seq) - 1)
                np.testing.assert_allclose(out.logprobs[p, g, :out.lengths[p, g]],
                                           np.asarray(logp)[rows, out.completion(p, g)], atol=1e-4)
