"""Seconds per GRPO iteration on math, SmolLM2-135M-Instruct: exit_jax vs TRL's GRPOTrainer (torch CPU) and
Google's tunix GRPOLearner (JAX CPU).

    python launch/bench_e2e.py [--prompts 4 --group 4 --max-new-tokens 64 --warmup 1 --timed 10] [--no-skip]
                               [--sides trl,tunix,exit_jax] [--json out.json]

tunix installs apart (its safetensors pin clashes with transformers'): pip install --no-deps -r
launch/tunix_requirements.txt; without it its side is skipped with a note. All sides, each in its own process
(so peak RSS is its own) and one after the other, run plain GRPO (no buffer: the same work per iteration) from
the exact same weights: sample G completions for each of P chat-templated math prompts (temperature 1, no
top-k/top-p), grade them with exit_jax.envs.math, take one AdamW step on the P*G batch (clip 0.2, beta 0 so no
reference model, per-sequence token-mean loss, group-std advantages), accumulating gradients over
--micro-batch rows at a time (TRL: steps_per_generation = accumulation steps, so no extra old-log-prob pass;
ours takes the sampler's log-probs; tunix: num_iterations 1, so none either). tunix 0.1.7 needs two fixes to
run this model faithfully, printed with its results: its llama3 attention ignores ModelConfig.rope_theta
(always 1e6, SmolLM2 uses 1e5), so apply_rope is rebound with the model's theta; and it masks tokens equal to
the pad id, which SmolLM2's tokenizer sets to <|im_end|>, the end of turn, so the pad is <|endoftext|>
instead. The first --warmup iterations (our jit compiles, torch's first calls) are reported apart; the rest
give medians and means (the mean carries our periodic checkpoint: loop.RunConfig.checkpoint_every, default
10). Our prompts pad to a bucket (sampling.prompt_bucket, >= --min-bucket), TRL's to the batch's longest
prompt, tunix's to --min-bucket (its max_prompt_length). Each side draws its own prompts from the same task
set. Ratios: > 1 means exit_jax is faster. On a shared host read min_iteration_s too: torch's iterations
slowed 3-10x whenever another process used the cores.
"""
import argparse, importlib.util, json, os, statistics, sys, tempfile, time  # noqa: E401

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # gin_cli, bench_util


def summary(steps, rollout, ckpt, tokens, prompt_tokens, warmup):
    """Per-iteration seconds (whole iteration, rollout, checkpoint) and completion tokens -> medians of
    the timed iterations; the learner phase is what is left (advantages, batching, update)."""
    med = lambda xs: statistics.median(list(xs)[warmup:])  # noqa: E731
    learn = [s - r - c for s, r, c in zip(steps, rollout, ckpt)]
    return {"first_iteration_s": steps[0], "iteration_s": med(steps),
            "mean_iteration_s": statistics.mean(steps[warmup:]),
            "iteration_no_ckpt_s": med(s - c for s, c in zip(steps, ckpt)), "rollout_s": med(rollout),
            "learner_update_s": med(learn), "checkpoint_s": med(ckpt),
            "sampled_tokens_per_s": med(t / r for t, r in zip(tokens, rollout)),
            "trained_tokens_per_s": med(t / u for t, u in zip(tokens, learn)),  # single turn: same tokens
            "completion_tokens_per_it": med(tokens), "mean_prompt_tokens": prompt_tokens,
            "min_iteration_s": min(steps[warmup:]), "timed_iteration_s": steps[warmup:],
            "timed_rollout_s": rollout[warmup:]}


def bench_ours(a, lm, domain):
    from exit_jax.curriculum.config import preset
    from exit_jax.rl.learner import LearnerConfig
    from exit_jax.training import loop
    from exit_jax.training.metrics import read_metrics
    from exit_jax.sampling.text_policy import SamplingConfig
    with tempfile.TemporaryDirectory() as wd:
        run = loop.RunConfig(workdir=wd, num_iterations=a.warmup + a.timed, seed=a.seed, progress=False,
                             prompts_per_iteration=a.prompts, group_size=a.group)
        # Plain GRPO (not ExIt) so that both sides do the same work; the loop's default checkpoint
        # cadence stays on, as in a real run (TRL: save_strategy="no"), and is shown as its own phase.
        learner = LearnerConfig(kl_beta=0.0, learning_rate=a.lr, micro_batch_size=a.micro_batch,
                                skip_zero_advantage=not a.no_skip)
        loop.train(run, lm, domain, preset("math", "grpo"), learner,
                   SamplingConfig(max_new_tokens=a.max_new_tokens, min_bucket=a.min_bucket))
        rows = read_metrics(wd)
    col = lambda k: [r[k] for r in rows]  # noqa: E731
    out = summary(col("time/iteration_s"), [r["time/plan_s"] + r["time/rollout_s"] for r in rows],
                  col("time/buffer_checkpoint_s"), col("rollout/completion_tokens"),
                  statistics.mean(col("rollout/mean_prompt_tokens")), a.warmup)
    # Rows of constant-reward groups have advantage 0 and, at beta = 0, exactly no gradient: the
    # learner skips them (LearnerConfig.skip_zero_advantage). Show how much that saved here.
    out["timed_trained_rows_frac"] = col("learner/trained_rows_frac")[a.warmup:]
    return out


def bench_trl(a, hf_dir, domain):
    import datasets, torch, transformers, trl  # noqa: E401
    from exit_jax.envs import math as math_env
    ds = datasets.Dataset.from_list([{"prompt": domain.make_env(t).reset(), "answer": str(t.data["answer"])}
                                     for t in domain.train_tasks])

    def correctness(completions, answer, **_):  # the reward MathEnv.step gives
        return [math_env.grade(c[-1]["content"], ans) for c, ans in zip(completions, answer)]

    rec = {"step": [], "rollout": [], "tokens": [], "prompt_tokens": []}

    class TimedGRPO(trl.GRPOTrainer):
        def _generate_and_score_completions(self, inputs):  # sampling + rewards + advantages
            t = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            rec["rollout"].append(time.perf_counter() - t)
            rec["tokens"].append(int(out["completion_mask"].sum()))
            rec["prompt_tokens"].append(float(out["prompt_mask"].sum()) / out["prompt_mask"].shape[0])
            return out

    class Clock(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            rec["step"].append(time.perf_counter() - self.t)

    cfg = trl.GRPOConfig(
        output_dir=os.path.join(hf_dir, "trl_out"), use_cpu=True, report_to="none", save_strategy="no",
        logging_strategy="no", disable_tqdm=True, max_steps=a.warmup + a.timed, seed=a.seed,
        per_device_train_batch_size=a.micro_batch,
        gradient_accumulation_steps=a.prompts * a.group // a.micro_batch,
        num_generations=a.group, max_completion_length=a.max_new_tokens, temperature=1.0, top_p=1.0,
        top_k=0, beta=0.0, num_iterations=1, epsilon=0.2, loss_type="grpo", scale_rewards="group",
        learning_rate=a.lr, max_grad_norm=1.0, use_vllm=False, log_completions=False, bf16=False)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    trainer = TimedGRPO(model=model, reward_funcs=correctness, args=cfg, train_dataset=ds,
                        processing_class=tok, callbacks=[Clock()])
    trainer.train()
    return summary(rec["step"], rec["rollout"], [0.0] * len(rec["step"]),  # save_strategy="no"
                   rec["tokens"], statistics.mean(rec["prompt_tokens"]), a.warmup)


TUNIX_FIXES = ("llama3.model.apply_rope rebound with the model's rope_theta (0.1.7 always uses 1e6)",
               "pad token <|endoftext|> (SmolLM2's is <|im_end|>, which tunix's pad masks would hide)")


def bench_tunix(a, lm, hf_dir, domain):
    import jax, numpy as np, optax, transformers  # noqa: E401
    from tunix.models.llama3 import model as llama3, params as llama3_params
    from tunix.rl import rl_cluster as rlc
    from tunix.rl.grpo import grpo_learner
    from tunix.rl.rollout import base_rollout
    from exit_jax.envs import math as math_env
    c = lm.config
    rope = llama3.apply_rope  # TUNIX_FIXES[0]
    llama3.apply_rope = lambda x, pos, head_dim, rope_theta=None: rope(x, pos, head_dim, c.rope_theta)
    cfg = llama3.ModelConfig(
        num_layers=c.num_layers, vocab_size=c.vocab_size, embed_dim=c.hidden_size,
        hidden_dim=c.intermediate_size, num_heads=c.num_heads, head_dim=c.head_dim, num_kv_heads=c.num_kv_heads,
        rope_theta=c.rope_theta, norm_eps=c.rms_norm_eps, weight_tying=c.tie_embeddings)
    mesh = jax.make_mesh((1, 1), ("fsdp", "tp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    actor = llama3_params.create_model_from_safe_tensors(hf_dir, cfg, mesh, dtype=jax.numpy.float32)
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    tok.pad_token = "<|endoftext|>"  # TUNIX_FIXES[1]
    rng, tasks, prompt_tokens = np.random.default_rng(a.seed), domain.train_tasks, []

    def batches():  # P distinct tasks per iteration, chat-templated as the other sides do
        while True:
            picked = [tasks[i] for i in rng.choice(len(tasks), a.prompts, replace=False)]
            prompts = [tok.apply_chat_template(domain.make_env(t).reset(), tokenize=False,
                                               add_generation_prompt=True) for t in picked]
            prompt_tokens.extend(len(tok(p)["input_ids"]) for p in prompts)
            yield {"prompts": prompts, "answer": [str(t.data["answer"]) for t in picked]}

    def correctness(prompts, completions, answer, **_):  # the reward MathEnv.step gives
        return [math_env.grade(text, ans) for text, ans in zip(completions, answer)]

    steps = a.warmup + a.timed
    train = rlc.RLTrainingConfig(
        actor_optimizer=optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(a.lr, weight_decay=0.0)),
        eval_every_n_steps=steps + 1, max_steps=steps, mini_batch_size=a.prompts,  # one update per iteration
        train_micro_batch_size=a.micro_batch // a.group, rollout_micro_batch_size=a.prompts,  # all P*G at once
        compute_logps_micro_batch_size=a.micro_batch // a.group)
    rollout = base_rollout.RolloutConfig(
        max_tokens_to_generate=a.max_new_tokens, temperature=1.0, top_p=1.0, top_k=None,
        max_prompt_length=a.min_bucket, kv_cache_size=a.min_bucket + a.max_new_tokens,
        eos_tokens=[tok.eos_token_id])
    cluster = rlc.RLCluster(actor=actor, tokenizer=tok, cluster_config=rlc.ClusterConfig(
        role_to_mesh={role: mesh for role in (rlc.Role.ACTOR, rlc.Role.REFERENCE, rlc.Role.ROLLOUT)},
        rollout_engine="vanilla", training_config=train, rollout_config=rollout))
    learner = grpo_learner.GRPOLearner(
        cluster, grpo_learner.GRPOConfig(num_generations=a.group, num_iterations=1, beta=0.0, epsilon=0.2),
        correctness)
    rec = {"step": [], "rollout": [], "tokens": []}
    generate, global_step = cluster.generate, learner._run_global_step

    def timed_generate(*args, **kw):  # sampling only; rewards and advantages count to the learner phase
        t = time.perf_counter()
        out = generate(*args, **kw)
        rec["rollout"].append(time.perf_counter() - t)
        rec["tokens"].append(sum(len(x) for x in out.tokens))
        return out

    def timed_step(*args, **kw):  # one iteration: rollout of P*G rows and the optimizer step on them
        t = time.perf_counter()
        global_step(*args, **kw)
        rec["step"].append(time.perf_counter() - t)

    cluster.generate, learner._run_global_step = timed_generate, timed_step
    learner.train(batches())
    out = summary(rec["step"], rec["rollout"], [0.0] * len(rec["step"]), rec["tokens"],
                  statistics.mean(prompt_tokens), a.warmup)
    out["fixes"] = list(TUNIX_FIXES)
    return out


def update_flops(lm, rows, prompt_tokens, completion_tokens) -> float:
    """Model FLOPs of one update over the real (unpadded) tokens: 6 per parameter per token through the
    decoder, and through the vocabulary head for the scored (completion) tokens only."""
    body, head = lm.config.matmul_params()
    return 6.0 * (body * (rows * prompt_tokens + completion_tokens) + head * completion_tokens)


def child(a):
    """Run one side in this process (so its peak RSS is its own) and write its summary to a.out."""
    import gin_cli
    gin_cli.tune_malloc()  # as launch/train.py does
    import resource
    import jax
    from bench_util import matmul_peak
    from exit_jax import models
    from exit_jax.envs import domains
    domain = domains.math_domain(num_train=a.num_train, num_eval=1, levels=(1, 2), seed=a.seed)
    lm = models.load("smollm2-135m-instruct")
    vers = {"jax": jax.__version__}
    if a.child == "exit_jax":
        out = bench_ours(a, lm, domain)
    else:
        import importlib.metadata as md
        packages = {"trl": ("torch", "transformers", "trl"), "tunix": ("google-tunix",)}[a.child]
        vers |= {pkg: md.version(pkg) for pkg in packages}
        if a.child == "trl":
            import torch
            vers["torch_threads"] = torch.get_num_threads()
        with tempfile.TemporaryDirectory() as hf_dir:
            models.save_hf(lm, hf_dir)  # the peers train the exact same weights
            out = bench_trl(a, hf_dir, domain) if a.child == "trl" else bench_tunix(a, lm, hf_dir, domain)
    flops = update_flops(lm, a.prompts * a.group, out["mean_prompt_tokens"], out["completion_tokens_per_it"])
    out["peak_gflops"] = matmul_peak() / 1e9  # measured right after the run, under the same load
    out["update_peak_frac"] = flops / out["learner_update_s"] / (out["peak_gflops"] * 1e9)
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    out["versions"] = vers
    with open(a.out, "w") as f:
        json.dump(out, f)


SIDES = {"trl": ("torch", "transformers", "trl"), "tunix": ("tunix",), "exit_jax": ()}  # side: its imports
INSTALL = {"trl": "pip install -e '.[bench]'", "tunix": "pip install --no-deps -r launch/tunix_requirements.txt"}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag, default, why in (
            ("--prompts", 4, "P: prompts per iteration"), ("--group", 4, "G: samples per prompt"),
            ("--max-new-tokens", 64, "N"), ("--warmup", 1, "untimed first iterations"),
            ("--timed", 10, "timed iterations"), ("--num-train", 256, "math tasks to draw prompts from"),
            # Level 1-2 prompts are 47-87 tokens: one 96 bucket = one compile, not one per bucket seen.
            ("--min-bucket", 96, "our smallest prompt-length bucket"), ("--lr", 1e-6, "learning rate"),
            # Both sides accumulate gradients over this many rows: all 16 x 192 at once takes > 10 GB
            # in our learner, more than this shared host has to spare.
            ("--micro-batch", 4, "rows per forward/backward pass"), ("--seed", 0, "seed"),
            ("--sides", "trl,tunix,exit_jax", "which sides to run, in order, each in its own process"),
            ("--json", "", "also write the results and ratios to this JSON file")):
        p.add_argument(flag, type=type(default), default=default, help=why)
    p.add_argument("--no-skip", action="store_true",
                   help="train zero-advantage rows too (LearnerConfig.skip_zero_advantage=False)")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)  # internal: run one side
    p.add_argument("--out", default="", help=argparse.SUPPRESS)
    a = p.parse_args()
    if set(a.sides.split(",")) - set(SIDES):
        p.error(f"--sides={a.sides!r}: expected a comma-separated list of {', '.join(SIDES)}.")
    if (a.prompts * a.group) % a.micro_batch:
        p.error(f"--micro-batch={a.micro_batch} must divide prompts x group = {a.prompts * a.group}.")
    if a.child:
        return child(a)
    import subprocess
    from bench_util import write_json
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for side in a.sides.split(","):
            missing = [m for m in SIDES[side] if importlib.util.find_spec(m) is None]
            if missing:
                print(f"{side}: skipped, {', '.join(missing)} not installed ({INSTALL[side]})", flush=True)
                continue
            out = os.path.join(tmp, side + ".json")
            subprocess.run([sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--child", side,
                            "--out", out], check=True)
            with open(out) as f:
                results[side] = json.load(f)
            print(side, json.dumps(results[side]), flush=True)
    print(f"config: P={a.prompts} G={a.group} N={a.max_new_tokens} micro_batch={a.micro_batch} "
          f"warmup={a.warmup} timed={a.timed} no_skip={a.no_skip} load_avg={os.getloadavg()}")
    if not results:
        sys.exit("bench_e2e: every side was skipped; install one or choose others with --sides.")
    keys = [k for k, v in results.get("exit_jax", next(iter(results.values()))).items()
            if isinstance(v, (int, float))]
    peers = [s for s in results if s != "exit_jax"] if "exit_jax" in results else []
    print(f"{'metric':26s}" + "".join(f"{s:>12s}" for s in results) + "".join(f"  /{s:>6s}" for s in peers))
    ratios = {peer: {} for peer in peers}
    for k in keys:
        line = f"{k:26s}" + "".join(f"{results[s].get(k, 0):12.3f}" for s in results)
        for peer in peers:
            ours, theirs = results["exit_jax"][k], results[peer].get(k)
            if ours and theirs and k not in ("completion_tokens_per_it", "mean_prompt_tokens", "peak_gflops"):
                # times and memory: peer / ours; rates and fractions: ours / peer (> 1: exit_jax is ahead)
                ratios[peer][k] = ours / theirs if ("per_s" in k or "frac" in k) else theirs / ours
                line += f"  {ratios[peer][k]:7.2f}"
            else:
                line += " " * 9
        print(line)
    if "tunix" in results:
        print("tunix ran with these fixes: " + "; ".join(results["tunix"]["fixes"]))
    write_json(a.json, {"bench": "e2e", "args": {k: v for k, v in vars(a).items() if k not in ("child", "out")},
                        "results": results, "ratios": ratios})


if __name__ == "__main__":
    main()
