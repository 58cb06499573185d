"""The ExIt training loop (paper Algorithm 1, one rollout group per prompt):

    episodes (base or replay; improve or diverge) -> sampler (G samples per prompt) -> environments
    -> advantages x diversity -> GRPO update -> buffer update (S = var of group rewards) -> metrics

Every `checkpoint_every` iterations a checkpoint (params, optimizer, reference, buffer, RNG) is written
in the background while the next iteration runs; a rerun of the same command resumes from the last
complete one and reproduces the uninterrupted run's metrics exactly (on CPU). SIGTERM (preemption) or
Ctrl-C ends the run after the current iteration with a checkpoint of it (`Interrupted`), so a stop that
is announced loses nothing; a kill without warning loses the iterations since the last checkpoint.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import logging
import os
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from exit_jax import models
from exit_jax.models import lora, transformer
from exit_jax.curriculum import buffer, diversity, embedders, episodes as episodes_lib, stats
from exit_jax.curriculum.config import CurriculumConfig
from exit_jax.rl import grpo, learner as learner_lib, parallel
from exit_jax import storage
from exit_jax.training import batch as batch_lib
from exit_jax.training.checkpointing import Checkpointer, CheckpointWriteError, fingerprint
from exit_jax.envs.domains import Domain
from exit_jax.training.export import export
from exit_jax.training.host_state import HostState
from exit_jax.training.metrics import Discard, MetricsWriter
from exit_jax.sampling.text_policy import SamplingConfig, TextPolicy
from exit_jax.training.processes import Processes
from exit_jax.training.rollout import run_groups
from exit_jax.training.stopping import Interrupted, stop_requests

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    workdir: str
    num_iterations: int
    seed: int = 0
    prompts_per_iteration: int = 8  # P: GRPO groups per iteration
    group_size: int = 8  # G: rollouts per group
    # Iterations between checkpoints. Each is params + two Adam moments (+ reference): 1.6 GB for SmolLM2-
    # 135M, written in the background, yet on a CPU the copy and the write compete with sampling, so saving
    # every iteration costs several times an iteration's time. Announced stops save anyway (above).
    checkpoint_every: int = 10
    keep_checkpoints: Optional[int] = 2  # None keeps every checkpoint
    env_workers: int = 4  # threads stepping environments (sandboxes and graders are processes)
    embedder: str = "hashed_ngram"  # diversity-bonus embedder (full ExIt only)
    eval_every: int = 0  # also run `evaluate` every this many iterations (0: only after the last)
    # Stop early once this many completion tokens were sampled (0: no budget). Compares methods at equal
    # compute: ExIt's episodes differ in length from GRPO's, so equal iterations are not equal work.
    sampled_token_budget: int = 0
    # Stop after this many consecutive iterations whose every optimizer step was skipped for a non-finite
    # loss or gradient (0: never): nothing is learning, and the last checkpoint is kept as it is.
    max_skipped_iterations: int = 3
    # DAPO overlong filtering (paper Appendix A.3, tool use): a response holding none of the environment's
    # response types (info["valid_response"] False, e.g. cut off by max_new_tokens) is left out of the loss.
    filter_invalid_responses: bool = False
    # Leave groups whose rewards are all equal out of the loss and its normalisers (DAPO); the paper keeps
    # them (their advantage is 0, paper §13.4).
    drop_zero_variance_groups: bool = False
    progress: bool = True
    # Write the final policy here (training.export: an HF directory, and the PEFT adapters with LoRA).
    export_dir: str = ""

    def __post_init__(self):
        if self.max_skipped_iterations < 0:
            raise ValueError(f"RunConfig.max_skipped_iterations must be >= 0 (0: never stop); got "
                             f"{self.max_skipped_iterations}.")
        if self.num_iterations < 0 or self.prompts_per_iteration < 1 or self.group_size < 2:
            raise ValueError("RunConfig needs num_iterations >= 0, prompts_per_iteration >= 1 and group_size >= 2 "
                             f"(GRPO compares samples); got num_iterations={self.num_iterations}, "
                             f"prompts_per_iteration={self.prompts_per_iteration}, group_size={self.group_size}.")


class NonFiniteUpdates(ValueError):
    """RunConfig.max_skipped_iterations consecutive iterations trained nothing."""


def resolve_workdir(workdir: str, domain: str, method: str) -> str:
    workdir = workdir.format(domain=domain, method=method)
    return workdir if storage.is_remote(workdir) else os.path.abspath(os.path.expanduser(workdir))


def load_model(model: Any, domain: Domain, workdir: str, dtype: str = "float32", shardings=None):
    """`model` is a models.load source, "smoke" (tiny random model + tokenizer trained on the domain's
    prompts), or an already loaded LM. shardings: see models.load (a checkpoint's weights go straight
    into their shards)."""
    if not isinstance(model, str):
        return model
    if model == "smoke":
        from exit_jax.curriculum import prompts
        from exit_jax.models.smoke import smoke_lm
        corpus = [m["content"] for t in domain.train_tasks[:512] for m in domain.make_env(t).reset()]
        corpus += [prompts.IMPROVE_TEMPLATE, prompts.DIVERGE_TEMPLATE]
        return smoke_lm(corpus, cache_dir=os.path.join(workdir, "smoke_tokenizer"))
    return models.load(model, dtype=dtype, shardings=shardings)


def _advantages(groups, episodes, curriculum: CurriculumConfig, embedder, normalize: str, graded):
    """Training rewards [P, G], GRPO advantages [P, G] (paper Eq. 3) and Eq. 6 multipliers [P, G].
    Ungraded rollouts (`graded` False) are left out of their group's statistics (advantage 0)."""
    rewards = np.stack([episodes_lib.group_rewards(ep, g, curriculum) for ep, g in zip(episodes, groups)])
    adv = np.asarray(grpo.group_advantages(rewards, scale=normalize, valid=graded), np.float32)
    multipliers = np.ones_like(adv)
    if curriculum.diversity_bonus:  # full ExIt: Â_i = d_i · A_i (paper §4.2)
        for p, group in enumerate(groups):
            multipliers[p] = diversity.group_coefficients(embedder, [r.responses[0] for r in group])
    return rewards, adv, multipliers


def opening_prompts(domain: Domain):
    """(task id, first prompt) of every training and held-out task."""
    for tasks, make_env in ((domain.train_tasks, domain.make_env),
                            (domain.eval_tasks, domain.make_eval_env or domain.make_env)):
        for task in tasks:
            yield task.id, make_env(task).reset()


def train(run: RunConfig, model: Any, domain: Domain, curriculum: CurriculumConfig,
          learner: learner_lib.LearnerConfig, sampling: SamplingConfig = SamplingConfig(),
          evaluate: Optional[Any] = None, model_dtype: str = "float32") -> dict:
    """Runs (or resumes) training; returns the last iteration's metrics.

    `run.workdir` may contain {domain} and {method}, e.g. "runs/{domain}_{method}", and may be a bucket
    (gs://…): checkpoints then go straight to it and the other files through a local working copy that
    is uploaded after every iteration (exit_jax.storage).
    """
    run = dataclasses.replace(run, workdir=resolve_workdir(run.workdir, domain.name, curriculum.method))
    if sampling.temperature == 0:
        raise ValueError("SamplingConfig.temperature=0 samples greedily: the G rollouts of a group are the same, "
                         "so GRPO has no learning signal; train with a temperature > 0 (paper: 1.0).")
    if learner.temperature != sampling.temperature:
        raise ValueError(f"LearnerConfig.temperature={learner.temperature} must equal the sampling "
                         f"temperature {sampling.temperature}: old and new log-probs must match.")
    args = (model, domain, curriculum, learner, sampling, evaluate, model_dtype)
    checkpoints = storage.join(run.workdir, "checkpoints")
    # The checkpointer is closed on every exit, so no orbax writer thread outlives a run that failed.
    if not storage.is_remote(run.workdir):
        with Checkpointer(checkpoints, run.keep_checkpoints) as ckpt:
            return _train(run, ckpt, lambda: None, *args)
    mirror = storage.Mirror(run.workdir)
    mirror.pull()
    try:
        with Checkpointer(checkpoints, run.keep_checkpoints) as ckpt:
            return _train(dataclasses.replace(run, workdir=mirror.local), ckpt, mirror.push, *args)
    finally:
        mirror.push()


def _train(run: RunConfig, ckpt: Checkpointer, sync, model: Any, domain: Domain, curriculum: CurriculumConfig,
           learner: learner_lib.LearnerConfig, sampling: SamplingConfig, evaluate: Optional[Any],
           model_dtype: str) -> dict:
    """train() in a local run directory; checkpoints may be elsewhere; sync() after each iteration."""
    os.makedirs(run.workdir, exist_ok=True)
    learner = dataclasses.replace(learner, group_size=run.group_size)  # for the zero-variance metric
    mesh = parallel.make_mesh(tensor=learner.tensor_parallel) if learner.parallel == "fsdp" else None
    processes = Processes.current()
    # FSDP: the checkpoint is read straight into the learner's shards, the state is built in its shards
    # and restored into them; with one process the sampler splits the prompts over the same mesh, reading
    # the sharded params in place. Otherwise the state is built here and placed below. Several processes
    # (multi-host): each samples its share of the groups on its own devices, from a copy of the params
    # gathered onto them device to device (parallel.process_sampler_params; see training.processes).
    sharded = mesh is not None
    lm = load_model(model, domain, run.workdir, model_dtype,
                    functools.partial(parallel.state_shardings, mesh=mesh) if sharded else None)
    run_fingerprint = fingerprint(model=lm.config, domain=domain.name, curriculum=curriculum, learner=learner,
                                  sampling=sampling, seed=run.seed, group_size=run.group_size,
                                  prompts_per_iteration=run.prompts_per_iteration)
    if learner.lora is not None:  # the checkpoints hold adapters only: the base they were trained on
        run_fingerprint["base_model"] = model if isinstance(model, str) else lm.config.name
    if sharded:
        state = parallel.init_sharded(lm.params, learner, mesh)
    else:
        state = learner_lib.init_state(lm.params, learner)
    lm = dataclasses.replace(lm, params=None)  # the state holds them now: no second copy
    host = HostState(0, buffer.init(curriculum.capacity), frozenset())
    # The newest checkpoint that verifies (see checkpointing).
    restored = ckpt.restore_latest(_checkpointed(state, learner), run_fingerprint)
    if restored is not None:
        state = _with_base(restored[0], state, learner)
        host = HostState.from_json(restored[1])
        log.info("resumed from iteration %d in %s", host.iteration, run.workdir)
    if not sharded:
        state = parallel.place_state(state, learner, mesh)
    update = parallel.make_update(lm.config, learner, mesh)
    sample_mesh = mesh if sharded else None
    if processes.count > 1:
        sample_mesh = parallel.make_mesh(parallel.process_devices()[processes.index])  # its own devices
    policy = TextPolicy(lm, sampling, stop_strings=domain.stop_strings, mesh=sample_mesh, lora=learner.lora)
    policy.check_fits(opening_prompts(domain))
    sampling_params = functools.partial(_sampling_params, learner=learner, dtype=lm.dtype, mesh=sample_mesh)
    params = sampling_params(state)  # the sampler's view of the state's params, renewed after each update
    # Eq. 6 embedder of the replies: built once, or per iteration when it embeds with the policy's params.
    text_embedder = None
    if curriculum.diversity_bonus and run.embedder != "policy_hidden":
        text_embedder = embedders.make(run.embedder)
    resuming = host.iteration < run.num_iterations and not _budget_spent(run, host)
    writer = (MetricsWriter(run.workdir, resume_from_iteration=host.iteration if resuming else None)
              if processes.primary else Discard())
    rows = run.prompts_per_iteration * run.group_size
    row_multiple = rows * (jax.device_count() if learner.parallel == "pmap" else 1)
    normalize = "none" if learner.aggregation == "dr_grpo" else "group"  # Dr. GRPO: no std scaling
    metrics: dict = {}
    progress = _progress(dataclasses.replace(run, progress=run.progress and processes.primary), host.iteration)
    saved = host.iteration  # the iteration of the newest checkpoint (or the start)
    skipped_in_a_row = 0
    stopping = False  # a stop request reached some process: all of them stop after the same iteration
    compiled: set = set()  # batch layouts the update was compiled for ahead of their batch
    with concurrent.futures.ThreadPoolExecutor(run.env_workers) as pool, stop_requests() as stop, \
            concurrent.futures.ThreadPoolExecutor(1) as ahead:
        while host.iteration < run.num_iterations and not _budget_spent(run, host):
            if processes.any(stop.signal is not None):
                stopping = True
                break
            it = host.iteration
            try:
                ckpt.poll()  # a failed background write (a full disk) stops the run now, not one save later
            except CheckpointWriteError:
                writer.close()
                raise
            t0 = time.perf_counter()
            buffer_state, episodes = episodes_lib.select(host.buffer, (run.seed, it), domain.train_tasks,
                                                         domain.make_env, curriculum, run.prompts_per_iteration,
                                                         iteration=it)
            t1 = time.perf_counter()
            compiling = None
            if not domain.multi_turn:
                compiling = _compile_ahead(update, state, [e.prompt for e in episodes], policy, rows,
                                           row_multiple, learner, mesh, ahead, compiled)
            groups, segments, roll_stats = run_groups(policy, params, episodes, run.group_size, domain.make_env,
                                                      seed=run.seed * 1_000_003 + it, pool=pool,
                                                      processes=processes)
            t2 = time.perf_counter()
            _note_slow("rollout", it, t2 - t1, f"{int(roll_stats['rollout/completion_tokens'])} tokens sampled")
            graded = np.array([[r.graded for r in g] for g in groups])
            embedder = text_embedder
            if curriculum.diversity_bonus and embedder is None:
                embedder = embedders.PolicyHidden(lm.config, lm.tokenizer, params, learner.lora)
            rewards, adv, multipliers = _advantages(groups, episodes, curriculum, embedder, normalize, graded)
            keep = np.asarray(grpo.group_keep_mask(rewards, run.drop_zero_variance_groups, graded))
            keep = [keep[s.group, s.sample] and (s.valid or not run.filter_invalid_responses) for s in segments]
            batch = batch_lib.pack(segments, adv, multipliers, sampling.max_new_tokens,
                                   lm.tokenizer.pad_id, row_multiple, sampling.min_bucket, keep)
            if compiling is not None:  # else the update would compile the same program again
                compiling.result()
            state, learn = update(state, parallel.place_batch(batch, learner, mesh))
            params = sampling_params(state)
            learn = {f"learner/{k}": float(v) for k, v in jax.device_get(learn).items()}
            skipped_in_a_row = skipped_in_a_row + 1 if learn["learner/skipped"] >= learner.epochs else 0
            if run.max_skipped_iterations and skipped_in_a_row >= run.max_skipped_iterations:
                writer.close()
                raise NonFiniteUpdates(
                    f"iterations {it - skipped_in_a_row + 2}-{it + 1} skipped every optimizer step (non-finite "
                    f"loss or gradient): lower the learning rate (now {learner.learning_rate:g}) or check the "
                    f"rewards and data; the checkpoints in {ckpt.directory} are untouched.")
            t3 = time.perf_counter()
            _note_slow("update", it, t3 - t2, f"{batch['tokens'].shape[0]} rows of {batch['tokens'].shape[1]} tokens")
            buffer_state, scores = episodes_lib.record(
                buffer_state, episodes, [[r for r in g if r.graded] for g in groups],
                [r[g] for r, g in zip(rewards, graded)], curriculum, it)
            seen = stats.update_seen(host.instances_seen, episodes)
            host = HostState(it + 1, buffer_state, seen,
                             host.sampled_tokens + int(roll_stats["rollout/completion_tokens"]))
            last = host.iteration == run.num_iterations or _budget_spent(run, host)
            if host.iteration % run.checkpoint_every == 0 or last:
                _save(ckpt, state, host, run_fingerprint, learner, last)
                saved = host.iteration
            t4 = time.perf_counter()
            trained_tokens = int(batch["completion_mask"].sum())
            metrics = {
                "reward/mean": _mean([r.score for g in groups for r in g if r.graded]),
                "reward/train_mean": _mean(rewards[graded]),
                "reward/group_std": _mean([r[g].std() for r, g in zip(rewards, graded) if g.any()]),
                "advantage/multiplier_mean": float(multipliers.mean()),
                **roll_stats, **learn,
                **stats.iteration_stats(buffer_state, episodes, it, seen, scores[~np.isnan(scores)]),
                "time/plan_s": t1 - t0, "time/rollout_s": t2 - t1, "time/update_s": t3 - t2,
                "time/buffer_checkpoint_s": t4 - t3, "time/iteration_s": t4 - t0,
                "throughput/sampled_tokens_per_s": roll_stats["rollout/completion_tokens"] / (t2 - t1),
                "throughput/trained_tokens_per_s": trained_tokens / (t3 - t2),
                "rollout/sampled_tokens_total": host.sampled_tokens,
            }
            if run.eval_every and evaluate is not None and processes.primary \
                    and host.iteration % run.eval_every == 0 and host.iteration < run.num_iterations \
                    and not _budget_spent(run, host) and not stop.signal:
                metrics.update(_evaluate(evaluate, policy, params, domain, run, curriculum, host.iteration))
            writer.write(it, metrics)
            sync()
            progress(it, metrics)
    if stopping and saved != host.iteration:
        _save(ckpt, state, host, run_fingerprint, learner, last=True)
    writer.close()
    ckpt.close()  # waits for the last checkpoint to be durable
    if stopping or stop.signal:
        why = f"{stop.signal} received" if stop.signal else "another process received a stop signal"
        raise Interrupted(stop.signal or "SIGTERM", f"{why}: stopped after iteration {host.iteration} with a "
                          f"checkpoint in {ckpt.directory}; rerun the same command to resume.")
    if run.export_dir:
        gathered = parallel.host_params(state, learner)  # every process takes part in the gather
        if processes.primary:
            for path in export(run.export_dir, lm, gathered, learner.lora,
                               run_fingerprint.get("base_model", lm.config.name)):
                log.info("exported %s", path)
    if evaluate is not None and processes.primary:
        metrics.update(_evaluate(evaluate, policy, params, domain, run, curriculum, host.iteration))
    return metrics


def _mean(values) -> float:
    values = np.asarray(values, np.float64)
    return float(values.mean()) if values.size else 0.0


EVAL_SEED_STRIDE = 1_000_000  # sampler calls an evaluation may make before two seeds' draws could meet


def _evaluate(evaluate_fn, policy: TextPolicy, params, domain: Domain, run: RunConfig,
              curriculum: CurriculumConfig, iteration: int) -> dict:
    """Runs the evaluation on `params`; returns the headline curve's ends as metrics."""
    # Evaluation seeds depend only on the run's seed and the evaluation itself: resumes reproduce it, and
    # runs with different seeds sample independently (an untrained model evaluated with seeds 0, 1, 2
    # must not give three copies of one estimate).
    record = evaluate_fn(policy=policy.bind(params, EVAL_SEED_STRIDE * run.seed), domain=domain,
                         workdir=run.workdir, method=curriculum.method, seed=run.seed, iteration=iteration)
    out = {}
    for name, ev in record["evaluations"].items():
        curve = ev["curves"][ev["headline"]]
        out[f"eval/{name}/k0"], out[f"eval/{name}/kK"] = curve[0], curve[-1]
    return out


SLOW_PHASE_S = 60.0


def _note_slow(phase: str, it: int, seconds: float, what: str) -> None:
    """A log line for a phase long enough that the progress bar alone looks stuck (a CPU, long rows)."""
    if seconds >= SLOW_PHASE_S:
        log.info("iteration %d: %s took %.0f s (%s)", it + 1, phase, seconds, what)


def _compile_ahead(update, state, prompts, policy: TextPolicy, rows: int, row_multiple: int,
                   learner: learner_lib.LearnerConfig, mesh, executor, compiled: set):
    """With one model call per rollout the batch's layout is known before the rollout: a row per sample,
    the prompt bucket of the longest prompt. The update compiles for a layout it has not seen on
    `executor` while the rollout runs (on a CPU its compile then overlaps the sampler's own compile; a TPU
    host's CPU idles while the chips sample; docs/speed.md). Returns the Future, or None."""
    cfg = policy.config
    shape = batch_lib.layout([len(policy.encode(p)[0]) for p in prompts], rows, row_multiple, cfg.min_bucket)
    if shape in compiled:
        return None
    compiled.add(shape)
    empty = batch_lib.empty(*shape, cfg.max_new_tokens, policy.lm.tokenizer.pad_id)
    return parallel.compile_ahead(update, state, empty, learner, executor, mesh)


def _budget_spent(run: RunConfig, host: HostState) -> bool:
    return 0 < run.sampled_token_budget <= host.sampled_tokens


def _sampling_params(state, learner: learner_lib.LearnerConfig, dtype, mesh):
    """The params the sampler uses, in the per-layer layout: the learner's own (single device), its
    sharded ones cast to the model's dtype (fsdp: they never leave the devices; with several processes
    each gets a whole copy on its own devices, mesh), or a host copy (pmap)."""
    if learner.parallel == "single":
        return transformer.unstack_layers(state.params)
    if learner.parallel == "fsdp" and jax.process_count() > 1:
        return parallel.process_sampler_params(state.params, jnp.dtype(dtype), mesh)
    if jax.process_count() > 1:
        return parallel.sampler_params(parallel.host_params(state, learner), jnp.dtype(dtype), mesh)
    if learner.parallel == "fsdp" and mesh is not None:
        return parallel.sampler_params(state.params, jnp.dtype(dtype), mesh)
    return parallel.host_params(state, learner)


def _save(ckpt: Checkpointer, state, host: HostState, run_fingerprint: dict,
          learner: learner_lib.LearnerConfig, last: bool = False) -> None:
    """last: no update follows (see Checkpointer.save)."""
    if learner.parallel == "pmap":  # pmap states carry a leading device axis; checkpoints hold one copy
        state = jax.tree.map(lambda x: x[0], state)
    ckpt.save(host.iteration, _checkpointed(state, learner), host.to_json(run_fingerprint), last=last)


def _checkpointed(state, learner: learner_lib.LearnerConfig):
    """What a checkpoint holds: the state, or with LoRA the state without the frozen base (reloaded from
    the model source, whose identity the fingerprint records)."""
    return state if learner.lora is None else state._replace(params=lora.split(state.params)[1])


def _with_base(restored, state, learner: learner_lib.LearnerConfig):
    """A restored checkpoint made whole again with the base of `state`."""
    return restored if learner.lora is None else restored._replace(params=lora.combine(state.params, restored.params))


def _progress(run: RunConfig, start: int):
    """A console line per iteration with an ETA (tqdm when available)."""
    if not run.progress:
        return lambda it, m: None
    try:
        from tqdm import tqdm
        bar = tqdm(total=run.num_iterations, initial=start, desc="ExIt", dynamic_ncols=True)
    except ImportError:  # pragma: no cover
        bar = None

    def show(it, m):
        text = (f"reward {m['reward/mean']:.3f} loss {m.get('learner/loss', float('nan')):.4f} "
                f"buffer {int(m.get('curriculum/buffer_size', 0))} "
                f"replay {m.get('curriculum/replay_fraction', 0):.2f} {m['time/iteration_s']:.1f}s/it")
        if bar is None:
            print(f"[{it + 1}/{run.num_iterations}] {text}", flush=True)
        else:
            bar.set_postfix_str(text)
            bar.update(1)
    return show
