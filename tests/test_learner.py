"""The GRPO update step: exact gradients under micro-batching, parallel modes, reference refresh, NaN skip.

Run as a script (`python tests/test_learner.py --worker PID PORT OUT`) it is one process of the
multi-host test.
"""
import dataclasses
import os
import socket
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from exit_jax import models
from exit_jax.models import transformer
from exit_jax.models.config import preset
from exit_jax.rl import grpo, learner, parallel
from exit_jax.rl.learner import LearnerConfig

MC = dataclasses.replace(preset("tiny"), num_layers=1, name="tiny-1-layer")  # halves compile time
B, L = 8, 16
logprobs_fn = jax.jit(learner.sequence_logprobs, static_argnames=("model_config", "with_entropy"))


def make_batch(params, seed=0, noise=0.2):
    """B rows: a left-padded prompt, then a completion of varying length, then right padding."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, MC.vocab_size, (B, L)).astype(np.int32)
    input_mask = np.ones((B, L), bool)
    completion = np.zeros((B, L), bool)
    for i in range(B):
        input_mask[i, :i % 3] = False  # left padding of the prompt
        end = 8 + rng.integers(2, L - 8)
        completion[i, 8:end] = True
        input_mask[i, end:] = False
    logp, _ = logprobs_fn(params, MC, tokens, input_mask)
    old = np.asarray(logp) + noise * rng.standard_normal((B, L)).astype(np.float32)
    rewards = rng.integers(0, 2, (B // 4, 4)).astype(np.float32)
    rewards[0] = 1.0  # one zero-variance group
    adv = np.asarray(grpo.group_advantages(rewards)).reshape(B)
    return dict(tokens=tokens, input_mask=input_mask, completion_mask=completion, old_logprobs=old,
                advantages=adv)


def cfg_for(**kw):
    base = dict(learning_rate=1e-3, warmup_steps=0, kl_beta=0.01, micro_batch_size=1, epochs=2,
                group_size=4)
    return LearnerConfig(**(base | kw))


def run(params, batch, cfg):
    state = parallel.place_state(learner.init_state(params, cfg), cfg)
    return parallel.make_update(MC, cfg)(state, parallel.place_batch(batch, cfg))


def max_diff(a, b):
    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(
        np.asarray(x, np.float32) - np.asarray(y, np.float32)))), a, b)))


@pytest.fixture(scope="module")
def params():
    return transformer.init_params(MC, seed=0)


def test_token_logprobs_align_with_forward_and_ignore_left_padding(params):
    tokens = jnp.array([[0, 0, 5, 6, 7, 8], [5, 6, 7, 8, 9, 10]], jnp.int32)
    mask = jnp.array([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]], bool)
    logp, ent = learner.sequence_logprobs(params, MC, tokens, mask, temperature=0.7, with_entropy=True)
    chex.assert_shape([logp, ent], (2, 6))
    logits = transformer.forward(params, MC, tokens, mask) / 0.7
    want = jax.nn.log_softmax(logits, -1)[1, 3, 9]  # token at t=4 is scored by the logits at t=3
    np.testing.assert_allclose(logp[1, 4], want, rtol=1e-5)
    assert float(logp[0, 0]) == 0.0 and float(logp[1, 0]) == 0.0
    # The left-padded row [5 6 7 8] scores its tokens exactly as the unpadded row does.
    np.testing.assert_allclose(logp[0, 3:], logp[1, 1:4], atol=1e-5)
    p = jax.nn.softmax(logits[1, 2])
    np.testing.assert_allclose(ent[1, 3], -jnp.sum(p * jnp.log(p)), rtol=1e-4)


def test_micro_batched_update_equals_whole_batch_gradient_step(params):
    batch = make_batch(params)
    cfg = cfg_for(parallel="single", micro_batch_size=2, epochs=1, max_grad_norm=0.05)
    state, metrics = run(params, batch, cfg)

    ref_logp, _ = logprobs_fn(params, MC, batch["tokens"], batch["input_mask"])

    def full_loss(p):  # paper Eq. 4 on the whole batch at once
        logp, _ = learner.sequence_logprobs(p, MC, batch["tokens"], batch["input_mask"])
        return grpo.policy_loss(grpo.LossInputs(logp, batch["old_logprobs"], batch["advantages"],
                                                batch["completion_mask"], ref_logp),
                                grpo.LossConfig(kl_beta=cfg.kl_beta))[0]

    loss, grads = jax.jit(jax.value_and_grad(full_loss))(params)
    opt = learner.make_optimizer(cfg)
    updates, _ = opt.update(grads, opt.init(params), params)
    want = optax.apply_updates(params, updates)
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(metrics["grad_norm"], optax.tree.norm(grads), rtol=1e-4)
    assert float(metrics["grad_norm"]) > cfg.max_grad_norm  # so the clipping is exercised too
    assert max_diff(parallel.host_params(state, cfg), want) < 1e-5
    assert max_diff(parallel.host_params(state, cfg), params) > 1e-4
    np.testing.assert_allclose(metrics["zero_variance_frac"], 0.5)  # rewards[0] is constant


def test_completion_window_batch_equals_full_width_batch(params):
    """completion_mask / old_logprobs over the last W columns only (logits computed there only) give
    the same update as the same batch written over all L columns."""
    batch = make_batch(params)
    w = L - 8  # make_batch's completions all start at column 8
    assert not batch["completion_mask"][:, :L - w].any()
    window = batch | {k: batch[k][:, L - w:] for k in ("completion_mask", "old_logprobs")}
    cfg = cfg_for(parallel="single", micro_batch_size=2, epochs=1)
    full_state, full = run(params, batch, cfg)
    win_state, win = run(params, window, cfg)
    assert max_diff(parallel.host_params(win_state, cfg), parallel.host_params(full_state, cfg)) < 1e-6
    for k in ("loss", "kl", "entropy", "ratio_mean", "grad_norm"):
        np.testing.assert_allclose(win[k], full[k], rtol=1e-5, err_msg=k)
    logp, _ = learner.sequence_logprobs(params, MC, batch["tokens"], batch["input_mask"], width=w)
    np.testing.assert_allclose(logp, logprobs_fn(
        params, MC, batch["tokens"], batch["input_mask"])[0][:, L - w:], atol=1e-6)
    with pytest.raises(ValueError, match="last W <= L columns"):
        parallel.place_batch(window | {"old_logprobs": batch["old_logprobs"]}, cfg)


def test_skipping_zero_advantage_rows_leaves_the_update_unchanged(params):
    batch = make_batch(params)
    batch["advantages"] = np.array(batch["advantages"])
    batch["advantages"][5] = 0.0  # a lone zero row inside a live group
    live = batch["advantages"] != 0
    assert 0 < live.sum() < len(live)  # rows 0-3 are a constant-reward group
    out = {}
    for skip in (False, True):
        cfg = cfg_for(parallel="single", kl_beta=0.0, micro_batch_size=1, epochs=1,
                      skip_zero_advantage=skip)
        state, metrics = run(params, batch, cfg)
        out[skip] = (parallel.host_params(state, cfg), metrics)
    assert max_diff(out[True][0], out[False][0]) < 1e-6 and max_diff(out[True][0], params) > 1e-4
    for k in ("loss", "pg_loss", "grad_norm"):
        np.testing.assert_allclose(out[True][1][k], out[False][1][k], rtol=1e-5, err_msg=k)
    np.testing.assert_allclose(out[True][1]["trained_rows_frac"], live.mean())
    pmap_cfg = cfg_for(parallel="pmap", kl_beta=0.0, micro_batch_size=1, epochs=1)
    assert float(run(params, batch, pmap_cfg)[1]["trained_rows_frac"]) == 1.0  # data parallel: no skip
    assert float(out[False][1]["trained_rows_frac"]) == 1.0
    # Token-mean diagnostics are over the trained rows: the skipped rows' ratios are not averaged in.
    logp, _ = logprobs_fn(params, MC, batch["tokens"], batch["input_mask"])
    ratio = np.exp(np.asarray(logp) - batch["old_logprobs"])
    for rows, skip in ((live, True), (slice(None), False)):
        mask = batch["completion_mask"][rows]
        want = (ratio[rows] * mask).sum() / mask.sum()
        np.testing.assert_allclose(out[skip][1]["ratio_mean"], want, rtol=1e-5)


def test_pmap_fsdp_and_fake_pmap_equal_single_device(params):
    batch = make_batch(params)
    results = {}
    for mode in ("single", "pmap", "fsdp"):
        cfg = cfg_for(parallel=mode)
        state, metrics = run(params, batch, cfg)
        results[mode] = (parallel.host_params(state, cfg), metrics, state)
    with chex.fake_pmap():  # the pmap code path as vmap: debuggable on one device
        state, metrics = run(params, batch, cfg_for(parallel="pmap"))
        results["fake_pmap"] = (parallel.host_params(state, cfg_for(parallel="pmap")), metrics, state)
    single, m_single, _ = results["single"]
    assert max_diff(single, params) > 1e-4
    for mode in ("pmap", "fsdp", "fake_pmap"):
        assert max_diff(results[mode][0], single) < 1e-5, mode
        for k in ("loss", "kl", "grad_norm", "clip_low_frac", "ratio_max", "advantage_std"):
            np.testing.assert_allclose(results[mode][1][k], m_single[k], rtol=1e-4, err_msg=k)
    # Both epochs ran: every optimizer step counter is at 2; epoch 2 moved the ratio away from old.
    counts = [x for x in jax.tree.leaves(results["single"][2].opt_state) if x.dtype == jnp.int32]
    assert counts and all(int(c) == 2 for c in counts)
    # FSDP really shards: the [512, 64] embedding is split over the 4 devices along its first axis.
    emb = results["fsdp"][2].params["embed"]["embedding"]
    assert emb.sharding.spec == jax.sharding.PartitionSpec(learner.AXIS)
    assert emb.addressable_shards[0].data.shape == (MC.vocab_size // 4, MC.hidden_size)


def test_non_finite_loss_skips_the_update(params):
    cfg = cfg_for(parallel="single", epochs=1, micro_batch_size=4)
    good = make_batch(params)
    bad = dict(good, old_logprobs=good["old_logprobs"].copy())
    bad["old_logprobs"][3, 9] = np.nan  # a trained token
    state = parallel.place_state(learner.init_state(params, cfg), cfg)
    update = parallel.make_update(MC, cfg)
    state, metrics = update(state, parallel.place_batch(bad, cfg))
    assert int(metrics["skipped"]) == 1 and int(state.skipped) == 1
    assert max_diff(state.params, params) == 0.0
    assert all(int(c) == 0 for c in jax.tree.leaves(state.opt_state) if c.dtype == jnp.int32)
    state, metrics = update(state, parallel.place_batch(good, cfg))
    assert int(metrics["skipped"]) == 0 and int(state.skipped) == 1 and int(state.step) == 2
    assert np.isfinite(float(metrics["loss"])) and max_diff(state.params, params) > 1e-4


def test_reference_refresh_every_m_iterations_with_alpha(params):
    cfg = cfg_for(parallel="single", epochs=1, micro_batch_size=0, ref_update_every=2, ref_alpha=0.5)
    batch = parallel.place_batch(make_batch(params), cfg)
    state = parallel.place_state(learner.init_state(params, cfg), cfg)
    update = parallel.make_update(MC, cfg)
    state, m1 = update(state, batch)
    assert int(m1["ref_updated"]) == 0 and max_diff(state.ref_params, params) == 0.0
    theta2 = jax.tree.map(np.asarray, state.params)  # consumed by the donated next call
    state, m2 = update(state, batch)
    assert int(m2["ref_updated"]) == 1
    mixed = jax.tree.map(lambda t, r: 0.5 * t + 0.5 * np.asarray(r), parallel.host_params(state, cfg),
                         params)
    assert max_diff(state.ref_params, mixed) < 1e-7
    assert max_diff(theta2, state.params) > 0  # theta kept moving: ref used the post-update theta
    ref2 = jax.tree.map(np.asarray, state.ref_params)
    state, m3 = update(state, batch)
    assert int(m3["ref_updated"]) == 0 and max_diff(state.ref_params, ref2) == 0.0
    assert float(m3["kl"]) > 0.0
    assert update._cache_size() == 1  # static shapes: later iterations reuse the first compilation
    assert learner.init_state(params, cfg_for(kl_beta=0.0)).ref_params is None


def test_bfloat16_params_compute_and_remat(params):
    cfg = cfg_for(parallel="single", epochs=1, micro_batch_size=4, param_dtype="bfloat16",
                  compute_dtype="bfloat16", remat=True)
    batch = make_batch(params, noise=0.0)
    state, metrics = run(params, batch, cfg)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(state.params))
    assert int(metrics["skipped"]) == 0 and np.isfinite(float(metrics["loss"]))
    # bf16 log-probs stay close to the f32 old log-probs: ratios near 1.
    assert 0.9 < float(metrics["ratio_min"]) <= float(metrics["ratio_max"]) < 1.1
    assert max_diff(state.params, jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)) > 0


def test_remat_policies_and_the_compute_copy_leave_the_gradients_unchanged(params):
    """Every remat policy gives the update without remat; and differentiating through the bfloat16
    copy of the weights (what _gradients does) gives the float32 params' gradients bit for bit, except
    where a tied embedding's two uses are summed (in bfloat16 there)."""
    batch = make_batch(params)
    want = run(params, batch, cfg_for(parallel="single", epochs=1))
    for policy in transformer.REMAT_POLICIES:
        got = run(params, batch, cfg_for(parallel="single", epochs=1, remat=True, remat_policy=policy))
        assert max_diff(got[0].params, want[0].params) < 1e-6, policy
    with pytest.raises(ValueError, match="remat_policy"):
        LearnerConfig(remat_policy="some")

    def loss(p):
        logp, _ = learner.sequence_logprobs(p, MC, batch["tokens"], batch["input_mask"], dtype=jnp.bfloat16)
        return jnp.sum(logp * batch["completion_mask"])
    grad = jax.jit(jax.grad(loss))
    g32, glow = grad(params), grad(learner._compute_copy(params, jnp.bfloat16))
    assert glow["layers_0"]["attn"]["q"]["kernel"].dtype == jnp.bfloat16
    assert glow["final_norm"]["scale"].dtype == jnp.float32  # norm scales keep their dtype
    tied = lambda g: g | {"embed": None}  # noqa: E731
    assert max_diff(tied(g32), tied(glow)) == 0.0
    assert max_diff(g32["embed"], glow["embed"]) < 1e-2 * float(jnp.max(jnp.abs(g32["embed"]["embedding"])))


def test_scanned_layers_give_the_unrolled_update_single_and_fsdp(params):
    """LearnerConfig.scan_layers stacks the layers in the state and scans them: same update, and the
    params come back to the sampler and to checkpoints in the per-layer layout."""
    mc = preset("tiny")  # 2 layers: the scan has something to iterate
    batch = make_batch(params)  # old log-probs of the 1-layer model: ratios away from 1, clipping on
    params = transformer.init_params(mc, seed=1)
    stacked = transformer.stack_layers(params)
    chex.assert_shape(stacked["layers"]["mlp"]["up"]["kernel"], (2, mc.hidden_size, mc.intermediate_size))
    assert max_diff(transformer.unstack_layers(stacked), params) == 0.0
    tokens = jnp.asarray(np.random.default_rng(0).integers(1, mc.vocab_size, (2, 7)), jnp.int32)
    np.testing.assert_allclose(transformer.forward(stacked, mc, tokens), transformer.forward(params, mc, tokens),
                               atol=1e-5)
    out = {}
    for mode, scan in (("single", False), ("single", True), ("fsdp", True)):
        cfg = cfg_for(parallel=mode, scan_layers=scan, kl_beta=0.01, epochs=1, micro_batch_size=2)
        state = parallel.place_state(learner.init_state(params, cfg), cfg)
        state, metrics = parallel.make_update(mc, cfg)(state, parallel.place_batch(batch, cfg))
        assert ("layers" in state.params) == scan and ("layers" in state.ref_params) == scan
        out[mode, scan] = parallel.host_params(state, cfg), metrics
    want, m_want = out["single", False]
    assert max_diff(want, params) > 1e-4
    for key in (("single", True), ("fsdp", True)):
        assert max_diff(out[key][0], want) < 1e-5, key
        for k in ("loss", "kl", "grad_norm", "entropy"):
            np.testing.assert_allclose(out[key][1][k], m_want[k], rtol=1e-4, err_msg=f"{key} {k}")


def test_tensor_parallel_meshes_and_splash_attention_give_the_single_device_update(params):
    """Every mesh shape on 4 devices (data x tensor: 4x1, 2x2, 1x4) and the Pallas splash attention
    (interpreted on CPU; under shard_map on the meshes): the single-device log-probs, loss, gradient
    norm and updated params."""
    mc = preset("tiny")  # 4 heads, 2 kv heads: "tensor" splits both
    params = transformer.init_params(mc, seed=1)
    tokens, mask = make_batch(params)["tokens"], make_batch(params)["input_mask"]
    batch = make_batch(params)
    dense, _ = learner.sequence_logprobs(params, mc, tokens, mask)
    splash, _ = learner.sequence_logprobs(params, mc, tokens, mask, attention="splash_interpret")
    real = mask & np.roll(mask, 1, axis=1)  # tokens whose predictor is a real token
    np.testing.assert_allclose(np.asarray(splash)[real], np.asarray(dense)[real], atol=1e-5)
    out = {}
    for mode, tensor, attention in (("single", 1, "dense"), ("fsdp", 2, "dense"), ("fsdp", 4, "dense"),
                                    ("fsdp", 2, "splash"), ("single", 1, "splash")):
        # eps = 1: Adam's step is ~lr * gradient, so the params compare the gradients themselves (at eps
        # 1e-8 it is lr * sign(g), which turns summation-order noise in near-zero entries into lr-sized steps).
        cfg = cfg_for(parallel=mode, tensor_parallel=tensor, attention=attention, epochs=1,
                      micro_batch_size=1, scan_layers=True, eps=1.0, learning_rate=1e-2)
        state = parallel.place_state(learner.init_state(params, cfg), cfg)
        state, metrics = parallel.make_update(mc, cfg)(state, parallel.place_batch(batch, cfg))
        if tensor > 1:  # column-parallel q: its heads over "tensor", FSDP over "data" (when it divides)
            spec = state.params["layers"]["attn"]["q"]["kernel"].sharding.spec
            assert spec[-1] == "tensor" and ("data" in spec) == (tensor == 2), spec
        out[mode, tensor, attention] = parallel.host_params(state, cfg), metrics
    want, m_want = out["single", 1, "dense"]
    assert max_diff(want, params) > 1e-5
    for key in list(out)[1:]:
        assert max_diff(out[key][0], want) < 1e-7, key
        for k in ("loss", "kl", "grad_norm", "entropy"):
            np.testing.assert_allclose(out[key][1][k], m_want[k], rtol=1e-4, err_msg=f"{key} {k}")
    with pytest.raises(ValueError, match="tensor_parallel"):
        LearnerConfig(tensor_parallel=2)  # needs fsdp
    with pytest.raises(ValueError, match="must divide"):
        parallel.make_mesh(tensor=3)


def test_vocab_chunks_give_the_same_logprobs_entropy_and_gradients(params):
    batch = make_batch(params)
    args = (MC, batch["tokens"], batch["input_mask"])

    def loss(p, chunk):
        logp, ent = learner.sequence_logprobs(p, *args, temperature=0.7, with_entropy=True, width=10,
                                              vocab_chunk=chunk)
        return jnp.sum(logp * batch["completion_mask"][:, -10:]), (logp, ent)

    whole = jax.jit(jax.grad(loss, has_aux=True), static_argnums=1)
    g0, (lp0, e0) = whole(params, 0)
    g3, (lp3, e3) = whole(params, 3)  # 10 columns in chunks of 3: a padded last chunk
    np.testing.assert_allclose(lp3, lp0, atol=1e-6)
    np.testing.assert_allclose(e3, e0, atol=1e-5)
    assert max_diff(g3, g0) < 1e-5 and max_diff(g0, jax.tree.map(jnp.zeros_like, g0)) > 0


def test_reference_policy_is_kept_in_the_compute_dtype(params):
    cfg = cfg_for(parallel="single", compute_dtype="bfloat16", kl_beta=0.01)
    state = learner.init_state(params, cfg)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(state.ref_params))
    state, metrics = parallel.make_update(MC, cfg)(state, parallel.place_batch(make_batch(params), cfg))
    assert np.isfinite(float(metrics["kl"])) and state.ref_params["embed"]["embedding"].dtype == jnp.bfloat16


def test_bad_config_and_batch_raise_clear_errors(params):
    with pytest.raises(ValueError, match="parallel"):
        LearnerConfig(parallel="ddp")
    with pytest.raises(ValueError, match="ref_alpha"):
        LearnerConfig(ref_alpha=2.0)
    cfg = cfg_for(parallel="single")
    batch = make_batch(params)
    with pytest.raises(ValueError, match="missing keys"):
        parallel.place_batch({k: v for k, v in batch.items() if k != "advantages"}, cfg)
    with pytest.raises(ValueError, match="advantages"):
        parallel.place_batch(dict(batch, advantages=np.zeros((B, 2))), cfg)
    with pytest.raises(ValueError, match="micro_batch_size"):
        run(params, batch, dataclasses.replace(cfg, micro_batch_size=3))
    with pytest.raises(ValueError, match="reference policy"):  # state built without a reference
        parallel.make_update(MC, cfg)(learner.init_state(params, dataclasses.replace(cfg, kl_beta=0.0)),
                                     parallel.place_batch(batch, cfg))


# ------------------------------------------------------------------------------- multi-host

# Adam divides by sqrt(v): on a near-zero gradient component, reduction-order noise (gloo vs in-process)
# moves the update by a few % of the learning rate. A smaller rate keeps that under the 1e-5 tolerance.
MULTIHOST_LR = 2e-4
CHECKPOINT = os.path.join(os.path.dirname(__file__), "fixtures", "parity", "llama_gqa_tied")  # safetensors


def _worker(pid: int, port: int, out: str) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
    assert jax.device_count() == 4 and jax.local_device_count() == 2
    params = transformer.init_params(MC, seed=0)
    batch = make_batch(params)  # every process holds the whole batch and feeds its devices' rows
    flat = {}
    for mode in ("pmap", "fsdp"):
        cfg = cfg_for(parallel=mode, learning_rate=MULTIHOST_LR)
        state = parallel.place_state(learner.init_state(params, cfg), cfg)
        update = parallel.make_update(MC, cfg)
        state, _ = update(state, parallel.place_batch(batch, cfg))  # 2 epochs: 2 optimizer steps
        leaves = jax.tree.leaves(parallel.host_params(state, cfg))
        flat.update({f"{mode}_{i}": np.asarray(x) for i, x in enumerate(leaves)})
    # A checkpoint read straight into shards that span both processes, and the state built in them.
    mesh = parallel.make_mesh()
    lm = models.load(CHECKPOINT, shardings=lambda tree: parallel.state_shardings(tree, mesh))
    assert not all(x.is_fully_addressable for x in jax.tree.leaves(lm.params))
    state = parallel.init_sharded(lm.params, cfg_for(parallel="fsdp"), mesh)
    leaves = jax.tree.leaves(parallel.host_params(state, cfg_for(parallel="fsdp")))
    flat.update({f"load_{i}": np.asarray(x) for i, x in enumerate(leaves)})
    if pid == 0:
        np.savez(out, **flat)
    jax.distributed.shutdown()


@pytest.mark.slow
def test_two_processes_match_one_process(params, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "params.npz")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=root,
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", str(i), str(port),
                               out], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for i in range(2)]
    logs = [p.communicate(timeout=240)[0].decode()[-3000:] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs
    cfg = cfg_for(parallel="single", learning_rate=MULTIHOST_LR)
    single, _ = run(params, make_batch(params), cfg)
    want = jax.tree.leaves(parallel.host_params(single, cfg))
    assert max_diff(want, jax.tree.leaves(params)) > 1e-4
    got = np.load(out)
    for mode in ("pmap", "fsdp"):
        for i, x in enumerate(want):
            np.testing.assert_allclose(got[f"{mode}_{i}"], x, atol=1e-5, err_msg=mode)
    loaded = jax.tree.leaves(transformer.unstack_layers(models.load(CHECKPOINT).params))
    for i, x in enumerate(loaded):
        np.testing.assert_array_equal(got[f"load_{i}"], np.asarray(x))


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    _worker(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
