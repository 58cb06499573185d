"""LoRA adapters (models.lora through qwix): a fresh adapter is the base model; merged and unmerged weights
give the same log-probs in the learner and the sampler; the update moves only the adapters, in every
parallel mode and layer layout; the state holds no second copy of the base."""
import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from exit_jax.models import lora, transformer
from exit_jax.models.config import preset
from exit_jax.rl import learner, parallel
from exit_jax.rl.learner import LearnerConfig
from exit_jax.sampling.sampler import Sampler

from test_learner import make_batch, max_diff

MC = dataclasses.replace(preset("tiny"), num_layers=2, name="tiny-2-layers")
LORA = dict(lora_rank=4, lora_alpha=8.0, learning_rate=1e-2, warmup_steps=0, micro_batch_size=2, epochs=2,
            group_size=4, kl_beta=0.01)


@pytest.fixture(scope="module")
def params():
    return transformer.init_params(MC, seed=0)


def trained_adapters(base, cfg: lora.LoraConfig, seed=1):
    """Adapters with nonzero B, as after some training."""
    adapters = lora.init(base, cfg)
    keys = iter(jax.random.split(jax.random.PRNGKey(seed), 64))
    return jax.tree_util.tree_map_with_path(
        lambda p, x: 0.05 * jax.random.normal(next(keys), x.shape) if p[-1].key == lora.B else x, adapters)


def test_fresh_adapters_leave_the_model_as_loaded_and_merge_equals_unmerged(params):
    cfg = lora.LoraConfig(rank=4, alpha=8.0)
    tokens = jnp.asarray(np.random.default_rng(0).integers(1, MC.vocab_size, (2, 12)), jnp.int32)
    base_logits = transformer.forward(params, MC, tokens)
    fresh = lora.combine(params, lora.init(params, cfg))
    np.testing.assert_array_equal(transformer.forward(fresh, MC, tokens, lora=cfg), base_logits)
    combined = lora.combine(params, trained_adapters(params, cfg))
    unmerged = transformer.forward(combined, MC, tokens, lora=cfg)
    assert float(jnp.max(jnp.abs(unmerged - base_logits))) > 1e-3  # the adapters do something
    merged = transformer.forward(lora.merge(combined, cfg), MC, tokens)
    np.testing.assert_allclose(merged, unmerged, atol=2e-5)
    base, adapters = lora.split(combined)
    chex.assert_trees_all_equal(base, params)
    assert set(adapters["layers_0"]["attn"]) == {"q", "k", "v", "o"}
    chex.assert_shape(adapters["layers_1"]["mlp"]["down"][lora.A], (MC.intermediate_size, 4))
    # The scanned layout computes the same.
    scanned = transformer.stack_layers(combined)
    np.testing.assert_allclose(transformer.forward(scanned, MC, tokens, lora=cfg), unmerged, atol=1e-5)


def test_sampler_logprobs_unmerged_and_merged_match_the_learner(params):
    cfg = lora.LoraConfig(rank=4, alpha=8.0, targets=("q", "v", "down"))
    combined = lora.combine(params, trained_adapters(params, cfg))
    prompts = [[5, 6, 7, 8, 9], [3, 4]]
    kw = dict(num_samples=2, max_new_tokens=8, eos_ids=(), pad_id=0)
    out = Sampler(MC, lora=cfg, **kw)(combined, prompts, seed=3)
    merged = Sampler(MC, **kw)(lora.merge(combined, cfg), prompts, seed=3)
    np.testing.assert_array_equal(out.tokens, merged.tokens)
    np.testing.assert_allclose(out.logprobs, merged.logprobs, atol=2e-5)
    # The learner scores the sampled tokens as the sampler drew them.
    row = list(prompts[0]) + out.tokens[0, 0].tolist()
    logp, _ = learner.sequence_logprobs(combined, MC, jnp.asarray([row], jnp.int32), jnp.ones((1, len(row)), bool),
                                        width=8, lora=cfg)
    np.testing.assert_allclose(logp[0], out.logprobs[0, 0], atol=2e-5)


def test_update_moves_only_the_adapters_and_the_state_holds_one_base(params):
    cfg = LearnerConfig(**LORA)
    state = learner.init_state(params, cfg)
    base, adapters = lora.split(state.params)
    chex.assert_trees_all_equal_structs(state.opt_state[1][0].mu, adapters)  # Adam over the adapters only
    chex.assert_trees_all_equal_structs(state.ref_params, adapters)  # the reference: base + adapter copy
    batch = make_batch(params)
    new, metrics = jax.jit(learner.update_step, static_argnums=(2, 3))(state, batch, MC, cfg)
    new_base, new_adapters = lora.split(new.params)
    chex.assert_trees_all_equal(new_base, base)
    assert max_diff(new_adapters, adapters) > 1e-4
    assert np.isfinite(float(metrics["loss"])) and int(metrics["skipped"]) == 0
    # At the first step the policy is the base, so the ratio is exp(logp - old): exactly the full model's.
    full = jax.jit(learner.update_step, static_argnums=(2, 3))(
        learner.init_state(params, dataclasses.replace(cfg, lora_rank=0)), batch, MC,
        dataclasses.replace(cfg, lora_rank=0, epochs=1))[1]
    one = jax.jit(learner.update_step, static_argnums=(2, 3))(
        learner.init_state(params, dataclasses.replace(cfg, epochs=1)), batch, MC,
        dataclasses.replace(cfg, epochs=1))[1]
    np.testing.assert_allclose(one["loss"], full["loss"], rtol=1e-5)


def test_the_update_planner_sizes_a_lora_state_from_the_adapters():
    """rl.memory's state estimate (what micro-batches are planned around) against the TrainState init_state
    builds, for SmolLM2's shapes in float32: the learner's own state is covered, and with LoRA the estimate
    falls with it (one base in the compute dtype, Adam over the adapters), so the same budget plans fewer,
    larger micro-batches."""
    from exit_jax.rl import memory
    smol = preset("smollm2-135m-instruct")
    for kw in (dict(), dict(lora_rank=16)):
        cfg = LearnerConfig(kl_beta=0.001, **kw)
        state = jax.eval_shape(lambda: learner.init_state(transformer.init_params(smol), cfg))
        held = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
        adapters = 0 if cfg.lora is None else lora.num_params(cfg.lora, smol)
        if adapters:
            assert adapters == sum(x.size for x in jax.tree.leaves(lora.split(state.params)[1]))
        estimate = memory.state_bytes(smol, 4, 4, True, 1, adapters)
        assert held <= estimate <= 2 * held, (kw, held, estimate)
    # A budget one row short of fitting the full state plus a row: LoRA's state leaves room for several.
    budget = (memory.state_bytes(smol, 4, 4, True, 1) + 0.5 * memory.row_bytes(
        smol, 3072, 1024, 4, True, 512, "blockwise", "gpu")) / 2 ** 30
    plan = lambda **kw: learner.micro_plan(LearnerConfig(memory_budget_gb=budget, remat=True, kl_beta=0.001,  # noqa: E731
                                                         **kw), smol, 32, 1, 3072, 1024, "gpu")
    assert plan() == (32, True) and plan(lora_rank=16)[0] < 32


def test_lora_update_is_the_same_in_every_parallel_mode_and_layout(params):
    batch = make_batch(params, seed=1)
    cfg = LearnerConfig(**LORA, skip_zero_advantage=False)

    def run(c):
        state = learner.init_state(params, c) if c.parallel != "fsdp" else parallel.init_sharded(
            params, c, parallel.make_mesh(tensor=c.tensor_parallel))
        if c.parallel != "fsdp":
            state = parallel.place_state(state, c)
        state, _ = parallel.make_update(MC, c)(state, parallel.place_batch(batch, c))
        return parallel.host_params(state, c)

    want = run(cfg)
    for c in (dataclasses.replace(cfg, parallel="pmap"), dataclasses.replace(cfg, parallel="fsdp"),
              dataclasses.replace(cfg, parallel="fsdp", tensor_parallel=2, scan_layers=True)):
        assert max_diff(run(c), want) < 2e-5, c


def test_dropout_draws_differ_by_step_and_bad_settings_are_refused(params):
    cfg = LearnerConfig(**(LORA | dict(lora_dropout=0.5, kl_beta=0.0, epochs=1)))
    state = learner.init_state(params, cfg)
    batch = make_batch(params)
    step = jax.jit(learner.update_step, static_argnums=(2, 3))
    moved = lambda s, c: lora.split(step(s, batch, MC, c)[0].params)[1]  # noqa: E731
    # B starts at 0, so dropout changes no loss yet, but it does change B's gradient.
    a, b = moved(state, cfg), moved(state._replace(step=state.step + 1), cfg)
    assert max_diff(a, b) > 1e-6  # another step, other dropout masks
    no_dropout = dataclasses.replace(cfg, lora_dropout=0.0)
    assert max_diff(a, moved(learner.init_state(params, no_dropout), no_dropout)) > 1e-6
    with pytest.raises(ValueError, match="LoRA needs rank >= 1 .* targets among"):
        LearnerConfig(lora_rank=4, lora_targets=("q", "qkv"))
    with pytest.raises(ValueError, match="lora_rank must be >= 0"):
        LearnerConfig(lora_rank=-1)
    with pytest.raises(ValueError, match="dropout must lie in"):
        LearnerConfig(lora_rank=4, lora_dropout=1.0)


@pytest.mark.slow
def test_lora_run_resumes_exactly_checkpoints_adapters_only_and_exports(tmp_path):
    from exit_jax import models
    from exit_jax.curriculum.config import preset as curriculum_preset
    from exit_jax.envs import domains
    from exit_jax.training import loop
    from exit_jax.training.metrics import read_metrics
    from exit_jax.sampling.text_policy import SamplingConfig
    from test_training import VOLATILE

    domain = domains.math_domain(num_train=24, num_eval=4, levels=(1, 2))
    cfg = LearnerConfig(learning_rate=1e-2, warmup_steps=0, kl_beta=0.01, lora_rank=4, lora_alpha=8.0,
                        lora_targets=("q", "v", "up"))

    def train(workdir, iterations, **kw):
        run = loop.RunConfig(workdir=str(workdir), num_iterations=iterations, prompts_per_iteration=2,
                             group_size=4, progress=False, checkpoint_every=2, **kw)
        return loop.train(run, "smoke", domain, curriculum_preset("math", "exit", overrides={"b_min": 4}), cfg,
                          SamplingConfig(max_new_tokens=16, max_prompt_tokens=512))

    train(tmp_path / "full", 4)
    train(tmp_path / "split", 2)
    train(tmp_path / "split", 4, export_dir=str(tmp_path / "out"))  # resumes at 2, then exports
    stable = lambda rs: [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rs]  # noqa: E731
    full, split = read_metrics(str(tmp_path / "full")), read_metrics(str(tmp_path / "split"))
    assert stable(full) == stable(split) and full[-1]["learner/grad_norm"] > 0
    # The checkpoint holds the adapters (and their optimizer state), not the base.
    import orbax.checkpoint as ocp
    with ocp.CheckpointManager(str(tmp_path / "split" / "checkpoints"), item_names=("state", "host")) as m:
        saved = m.restore(4, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    leaves = {p[-1].key for p, _ in jax.tree_util.tree_flatten_with_path(saved["params"])[0]}
    assert leaves == {lora.A, lora.B}
    # The export: merged weights load as a plain model that computes what the adapters compute.
    merged = models.load(str(tmp_path / "out" / "hf"))
    assert lora.split(merged.params)[1] is None  # plain weights
    with open(tmp_path / "out" / "adapter" / "adapter_config.json") as f:
        assert f.read().count('"r": 4')
    base = loop.load_model("smoke", domain, str(tmp_path / "split"))
    adapters = jax.tree.map(np.asarray, saved["params"])
    tokens = jnp.asarray([[3, 14, 15, 92, 65, 35, 89, 79]], jnp.int32)
    ours = transformer.forward(lora.combine(base.params, adapters), base.config, tokens, lora=cfg.lora)
    np.testing.assert_allclose(merged.logits(tokens), ours, atol=1e-4)
    assert float(jnp.max(jnp.abs(ours - base.logits(tokens)))) > 1e-4  # training moved the adapters
    # peft (the parity extra) loads the adapter folder onto the base model in transformers.
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    models.save_hf(base, str(tmp_path / "base_hf"))
    hf_model = peft.PeftModel.from_pretrained(
        transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "base_hf"), torch_dtype=torch.float32),
        str(tmp_path / "out" / "adapter")).eval()
    with torch.no_grad():
        theirs = hf_model(torch.as_tensor(np.asarray(tokens))).logits.numpy()
    np.testing.assert_allclose(theirs, ours, atol=1e-4)
