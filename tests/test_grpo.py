"""GRPO advantages and the clipped objective, against values computed by hand (paper Eqs. 3-4)."""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from exit_jax.rl import grpo


def test_group_advantages_hand_values():
    rewards = np.array([[0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]], np.float32)
    adv = grpo.group_advantages(rewards)  # ddof=0, eps=1e-6 (paper §13.4)
    chex.assert_shape(adv, (2, 4))
    std2 = math.sqrt(3 / 16)  # rewards 0,0,0,1: mean 1/4, var 3/16
    a = 0.5 / (0.5 + 1e-6)
    want = [[-a, a, a, -a], [-0.25 / (std2 + 1e-6)] * 3 + [0.75 / (std2 + 1e-6)]]
    np.testing.assert_allclose(adv, want, rtol=1e-6)
    # ddof=1: sample std of [0,1,1,0] is sqrt(1/3).
    np.testing.assert_allclose(grpo.group_advantages(rewards[:1], ddof=1)[0, 1],
                               0.5 / (math.sqrt(1 / 3) + 1e-6), rtol=1e-6)
    # scale="none" (Dr. GRPO): mean-centred only.
    np.testing.assert_allclose(grpo.group_advantages(rewards, scale="none")[1], [-.25, -.25, -.25, .75])


@pytest.mark.parametrize("value", [0.0, 1.0, 0.1, 0.7])
def test_constant_reward_group_has_exactly_zero_advantage(value):
    # 0.1 and 0.7 are not exact in float32: a naive (r - mean) / (0 + eps) turns the rounding into ±O(0.01).
    rewards = np.array([[value] * 8, [0.0] * 7 + [1.0]], np.float32)
    for scale in ("group", "none"):
        adv = np.asarray(grpo.group_advantages(rewards, scale=scale))
        assert np.all(adv[0] == 0.0)
        assert np.all(adv[1] != 0.0)
    np.testing.assert_array_equal(grpo.zero_variance_groups(rewards), [True, False])
    np.testing.assert_array_equal(grpo.group_keep_mask(rewards, drop_zero_variance_groups=True),
                                  [[False] * 8, [True] * 8])
    assert bool(jnp.all(grpo.group_keep_mask(rewards)))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0]), min_size=2, max_size=6),
                min_size=1, max_size=4).filter(lambda g: len({len(r) for r in g}) == 1))
def test_advantages_centred_and_unit_scaled(groups):
    rewards = np.array(groups, np.float32)
    adv = np.asarray(grpo.group_advantages(rewards))
    np.testing.assert_allclose(adv.mean(-1), 0.0, atol=1e-5)
    varying = rewards.std(-1) > 0
    np.testing.assert_allclose(adv[varying].std(-1), 1.0, rtol=1e-4)
    # Shifting and positively scaling a group's rewards leaves its advantages unchanged (up to eps).
    np.testing.assert_allclose(grpo.group_advantages(3.0 * rewards + 2.0), adv, atol=1e-4)


def test_ungraded_samples_are_left_out_of_their_group():
    """valid=False samples (grader timeouts) get advantage 0 and do not move their group's mean or std:
    each group's advantages are those of its valid members alone."""
    rewards = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
    valid = np.array([[True, True, True, False], [True, False, True, True], [False] * 4])
    for scale in ("group", "none"):
        adv = np.asarray(grpo.group_advantages(rewards, scale=scale, valid=valid))
        np.testing.assert_allclose(adv[0, :3], grpo.group_advantages(rewards[:1, :3], scale=scale)[0], rtol=1e-6)
        assert adv[0, 3] == 0.0 and adv[1, 1] == 0.0 and np.all(adv[2] == 0.0)
        np.testing.assert_array_equal(adv[1], 0.0)  # the valid members all got 0: a constant group
        np.testing.assert_array_equal(grpo.group_advantages(rewards, scale=scale, valid=np.ones_like(valid)),
                                      grpo.group_advantages(rewards, scale=scale))
    np.testing.assert_array_equal(grpo.group_keep_mask(rewards, True, valid),
                                  [[True, True, True, False], [False] * 4, [False] * 4])


def test_bad_arguments_raise_one_clear_error():
    with pytest.raises(ValueError, match="shape"):
        grpo.group_advantages(np.zeros(4))
    with pytest.raises(ValueError, match="aggregation"):
        grpo.LossConfig(aggregation="mean")
    with pytest.raises(ValueError, match="kl_estimator"):
        grpo.kl_penalty(jnp.zeros(2), jnp.zeros(2), "k4")
    with pytest.raises(ValueError, match="kl_estimator"):
        grpo.LossConfig(kl_estimator="k4")
    with pytest.raises(ValueError, match="advantages"):
        grpo.policy_loss(grpo.LossInputs(jnp.zeros((2, 2)), jnp.zeros((2, 2)), jnp.zeros(3), jnp.ones((2, 2))))


# Two rollouts, old log-probs 0. Sample 0 (A=+1) has ratios 1.5 (clipped to 1.2), 0.5, 1.0; sample 1
# (A=-1) has ratios 1.3, 0.5 (clipped to 0.8) and a padding token. Per-token objective min(rA, clip(r)A):
# sample 0: 1.2, 0.5, 1.0 (sum 2.7); sample 1: -1.3, -0.8 (sum -2.1). The loss is its negation.
RATIOS = np.array([[1.5, 0.5, 1.0], [1.3, 0.5, 123.0]], np.float32)
MASK = np.array([[1, 1, 1], [1, 1, 0]], np.float32)
ADV = np.array([1.0, -1.0], np.float32)


def _loss(aggregation, max_length=None, **inputs):
    logp = jnp.log(jnp.asarray(RATIOS))
    return grpo.policy_loss(grpo.LossInputs(logp, jnp.zeros_like(logp), ADV, MASK, **inputs),
                            grpo.LossConfig(aggregation=aggregation, max_length=max_length))


@pytest.mark.parametrize("aggregation,want", [
    ("seq_mean_token_mean", (-2.7 / 3 + 2.1 / 2) / 2),  # paper Eq. 4
    ("token_mean", (-2.7 + 2.1) / 5),
    ("dr_grpo", (-2.7 + 2.1) / (2 * 4)),  # constant normaliser: 2 sequences x max_length 4
])
def test_policy_loss_aggregations_hand_values(aggregation, want):
    loss, m = _loss(aggregation, max_length=4)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(m["pg_loss"], want, rtol=1e-5)
    np.testing.assert_allclose(m["clip_high_frac"], 0.2, rtol=1e-6)  # the 1.5 with A > 0
    np.testing.assert_allclose(m["clip_low_frac"], 0.2, rtol=1e-6)  # the 0.5 with A < 0
    np.testing.assert_allclose(m["ratio_mean"], 4.8 / 5, rtol=1e-5)
    np.testing.assert_allclose([m["ratio_min"], m["ratio_max"]], [0.5, 1.5], rtol=1e-5)
    np.testing.assert_allclose([m["advantage_mean"], m["advantage_std"]], [0.0, 1.0], atol=1e-6)
    assert float(m["kl"]) == 0.0


def test_dr_grpo_defaults_to_the_batch_length():
    np.testing.assert_allclose(_loss("dr_grpo")[0], (-2.7 + 2.1) / (2 * 3), rtol=1e-5)


def test_gradient_is_zero_exactly_where_clipping_is_active():
    logp = jnp.log(jnp.asarray(RATIOS))
    for aggregation in grpo.AGGREGATIONS:
        g = jax.grad(lambda lp: grpo.policy_loss(grpo.LossInputs(lp, jnp.zeros_like(lp), ADV, MASK),
                                                 grpo.LossConfig(aggregation=aggregation))[0])(logp)
        g = np.asarray(g)
        clipped = np.array([[1, 0, 0], [0, 1, 0]], bool)
        assert np.all(g[clipped] == 0.0) and np.all(g[MASK == 0] == 0.0)
        active = ~clipped & (MASK > 0)
        assert np.all(g[active] != 0.0)
        # d/dlogp of -r*A*w is -r*A*w: the sign follows -A.
        np.testing.assert_array_equal(np.sign(g[active]), [-1, -1, 1])


@pytest.mark.parametrize("estimator,want", [
    ("k1", 0.0),  # (-ln2 + ln2) / 2
    ("k2", 0.5 * math.log(2) ** 2),
    ("k3", 0.25),  # ((2 - 1 - ln2) + (1/2 - 1 + ln2)) / 2
])
def test_kl_estimators_hand_values(estimator, want):
    logp = jnp.array([[-1.0, -1.0]])
    ref = logp + jnp.array([[math.log(2), -math.log(2)]])  # pi_ref / pi_theta = 2 and 1/2
    loss, m = grpo.policy_loss(grpo.LossInputs(logp, logp, jnp.zeros(1), jnp.ones((1, 2)), ref_logprobs=ref),
                               grpo.LossConfig(kl_beta=0.1, kl_estimator=estimator))
    np.testing.assert_allclose(m["kl"], want, atol=1e-6)
    np.testing.assert_allclose(loss, 0.1 * want, atol=1e-7)  # zero advantage: only beta * KL
    assert float(m["pg_loss"]) == 0.0


def test_multiplier_sample_mask_entropy_and_zero_variance_metric():
    base, _ = _loss("seq_mean_token_mean")
    doubled, _ = _loss("seq_mean_token_mean", advantage_multiplier=jnp.array([2.0, 2.0]))
    # Sample 0 stays clipped at 1.2 on its first token either way, so the loss doubles exactly.
    np.testing.assert_allclose(doubled, 2 * base, rtol=1e-5)
    dropped, m = _loss("seq_mean_token_mean", sample_mask=jnp.array([True, False]))
    np.testing.assert_allclose(dropped, -2.7 / 3, rtol=1e-5)  # one sequence left
    np.testing.assert_allclose(m["ratio_max"], 1.5, rtol=1e-6)
    entropy = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 99.0]])
    _, m = _loss("token_mean", entropy=entropy)
    np.testing.assert_allclose(m["entropy"], 3.0, rtol=1e-6)  # padding excluded
    adv = jnp.array([0.0, 0.0, 1.0, -1.0, 0.0, 0.0])
    _, m = grpo.policy_loss(grpo.LossInputs(jnp.zeros((6, 2)), jnp.zeros((6, 2)), adv, jnp.ones((6, 2))),
                            grpo.LossConfig(group_size=2))
    np.testing.assert_allclose(m["zero_variance_frac"], 2 / 3, rtol=1e-6)


def test_global_normalisers_make_micro_batches_add_up():
    logp = jnp.log(jnp.asarray(RATIOS))
    for aggregation in grpo.AGGREGATIONS:
        config = grpo.LossConfig(aggregation=aggregation)
        whole, _ = grpo.policy_loss(grpo.LossInputs(logp, jnp.zeros_like(logp), ADV, MASK), config)
        parts = sum(grpo.policy_loss(grpo.LossInputs(logp[i:i + 1], jnp.zeros((1, 3)), ADV[i:i + 1], MASK[i:i + 1]),
                                     config, num_sequences=2.0, num_tokens=5.0)[0] for i in range(2))
        np.testing.assert_allclose(parts, whole, rtol=1e-6)
