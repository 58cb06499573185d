"""Warm-start a small model by SFT on generated attempts and revisions, for the CPU-scale study.

    python studies/cpu/pretrain.py --domain math --out runs/study/pretrained_math
    python studies/cpu/pretrain.py --domain math --out /tmp/pt --examples 2000 --steps 100   # a quick look
    python studies/cpu/pretrain.py --domain mle --out runs/study/pretrain/mle_continued \
        --init runs/study/pretrain/mle --seed 1 --examples 2500 --steps 400 --lr 2e-3   # continue an SFT

Steps: generate the corpus (studies.cpu.warm_start.<domain>_corpus) on the domain's training tasks, train a
sentencepiece tokenizer on it, SFT a freshly initialised model (or, with --init, keep an earlier warm
start's tokenizer and architecture and continue from its weights on a fresh corpus), save it where
`models.load(out)` (and so `MODEL = "<out>"` in gin) finds it, and check it on held-out tasks: for math,
greedy and T=1 accuracy at k=0 and after one self-improvement step; for MLE, how many first attempts run
and make a valid submission and their normalized scores. `out/pretrain.json` records the configuration
hash, the loss curve, the check and (with --init) the earlier stages; a rerun with the same configuration
skips, a different one rebuilds `out`.
"""
import argparse
import dataclasses
import hashlib
import importlib
import json
import os
import shutil
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)  # studies.cpu.warm_start, when this runs as a script

# Bump when the corpus or the recipe changes what a given configuration produces.
RECIPE_VERSION = 5
CORPORA = {"math": "studies.cpu.warm_start.math_corpus", "mle": "studies.cpu.warm_start.mle_corpus"}
# The model's position limit (RoPE: no learned positions, so this only bounds what the sampler accepts):
# above the longest prompt + reply an RL run samples (studies/cpu/gin/mle.gin: 2,048 + 544 tokens).
MAX_POSITIONS = {"math": 1024, "mle": 4096}
# The quickstart's families and levels: those a few-million-parameter model can partly learn.
MATH_FAMILIES = "arith,linear_eq,number_theory,word"


# Per-domain defaults of the flags left unset.
# Math: 4,800 steps (~8M tokens, ~20 minutes of SFT on 2 shared cores) is what it takes for the arithmetic
# in the working to emerge: at 1,200 steps (~5 minutes) the model copies the numbers right but its sums
# are guesses (greedy ~10%, T=1 ~2% held-out accuracy, against ~25% / ~14% at 4,800).
DEFAULTS = {
    "math": {"examples": 60000, "corpus_tasks": 8000, "steps": 4800, "max_len": 384, "tokens_per_batch": 2048,
             "vocab": 768, "eval_tasks": 64, "eval_n": 2},
    # MLE: one fixed ~28-line script layout with choices; 300 steps of 8k tokens (~2.5M tokens, ~1,600
    # examples seen once) on prompts of ~1-1.5k tokens. A 2,048-piece vocabulary turns the prompt's fixed
    # instructions into few tokens (768 pieces: ~2k tokens an attempt example, ~2.7k a debug one).
    # The corpus uses every MLE-lite task but the study's held-out ones, plus 96 procedural tasks: trained
    # on six tasks alone, the model tied each task's title to its prediction line and wrote a broken or
    # wrong-kind script on every unseen task (0 valid of 48 held-out attempts).
    "mle": {"examples": 2000, "steps": 300, "max_len": 2560, "tokens_per_batch": 8192, "vocab": 2048,
            "held_out": "randhie,synth_multiclass,synth_clf_hard", "procedural_tasks": 96, "eval_tasks": 3,
            "eval_n": 4},
}


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--domain", choices=sorted(CORPORA), default="math")
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument("--examples", type=int, help="corpus size")
    p.add_argument("--corpus_tasks", type=int, help="math: training-split tasks in the corpus")
    p.add_argument("--families", default=MATH_FAMILIES, help="math: comma-separated families")
    p.add_argument("--levels", default="1,2", help="math: comma-separated levels")
    p.add_argument("--steps", type=int)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--tokens_per_batch", type=int)
    p.add_argument("--max_len", type=int, help="longest example in tokens (prompts are cut from the left)")
    p.add_argument("--vocab", type=int)
    p.add_argument("--d_model", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--ffn", type=int, default=384)
    p.add_argument("--held_out", help="mle: comma-separated MLE-lite ids kept out of the corpus and checked "
                                      "(studies/cpu/gin/mle.gin's held-out tasks)")
    p.add_argument("--procedural_tasks", type=int, help="mle: procedural tasks added to the corpus")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", help="continue SFT from this pretrain.py model directory: its tokenizer, "
                                  "architecture and weights (the architecture flags are then unused); give "
                                  "another --seed for a fresh corpus")
    p.add_argument("--eval_tasks", type=int, help="held-out tasks of the check (0: skip)")
    p.add_argument("--eval_n", type=int, help="samples per task at T=1")
    args = p.parse_args(argv)
    for key, value in DEFAULTS[args.domain].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def config_hash(args) -> str:
    # Unset flags (those of the other domain) are left out, so adding a flag keeps existing models valid.
    fields = {k: v for k, v in sorted(vars(args).items()) if k != "out" and v is not None}
    fields["recipe_version"] = RECIPE_VERSION
    if args.init:  # the model continued from, not where it lies
        fields["init"] = _init_summary(args.init)["config_hash"]
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def _init_summary(path: str) -> dict:
    try:
        with open(os.path.join(path, "pretrain.json")) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: --init {path!r} is not a finished studies/cpu/pretrain.py model directory "
                         f"(no readable pretrain.json: {e}); pretrain it first.") from None


def _lineage(summary: dict) -> dict:
    """What a continued model started from: each earlier stage's hash, flags and SFT cost (no loss curve)."""
    sft = {k: v for k, v in summary["sft"].items() if k != "losses"}
    return {"config_hash": summary["config_hash"], "args": summary["args"], "sft": sft,
            "init": summary.get("init")}


def _math_domain(args):
    from exit_jax.envs import domains
    return domains.math_domain(num_train=args.corpus_tasks, num_eval=max(args.eval_tasks, 1),
                               families=args.families.split(","), levels=[int(v) for v in args.levels.split(",")],
                               seed=1000 + args.seed)  # a task stream apart from the RL runs' (seed 0)


def _mle_domain(args):
    """Every MLE-lite task but the held-out ones, plus procedural ones, to train on; the held-out to check."""
    from exit_jax.envs.mle import env as mle_env
    from exit_jax.envs.mle import lite, lite_specs
    from exit_jax.envs import domains
    held_out = [i for i in args.held_out.split(",") if i]
    # one warm sandbox per task: the corpus builds task by task and only its debug examples run scripts
    train_ids = [s.id for s in lite_specs.specs() if s.id not in held_out]
    domain = domains.mle_domain(train_ids=train_ids, eval_ids=held_out, sandboxes_per_task=1)
    # seed 1000 + seed: apart from any task stream an RL run or test draws
    procedural = tuple(map(mle_env.as_task, lite.procedural_tasks(args.procedural_tasks, seed=1000 + args.seed)))
    return dataclasses.replace(domain, train_tasks=domain.train_tasks + procedural)


def _domain(args):
    return _math_domain(args) if args.domain == "math" else _mle_domain(args)


def check_math(lm, domain, args) -> dict:
    """Accuracy at k = 0 and k = 1 on held-out math tasks: greedy (1 chain) and T = 1 (eval_n chains)."""
    from exit_jax.envs import math as math_env
    from exit_jax.evaluation import self_improve
    from exit_jax.sampling.text_policy import SamplingConfig, TextPolicy
    tasks = domain.eval_tasks[:args.eval_tasks]
    out = {"num_tasks": len(tasks)}
    sampling = SamplingConfig(max_new_tokens=96, max_prompt_tokens=args.max_len, min_bucket=128)
    policy = TextPolicy(lm, sampling)  # one policy: temperature is traced, the compiled samplers are shared
    bound = policy.bind(lm.params, seed=0)
    for name, temperature, n in (("greedy", 0.0, 1), ("t1", 1.0, args.eval_n)):
        policy.config = dataclasses.replace(sampling, temperature=temperature)
        result = self_improve.evaluate(bound, tasks, domain.make_env, K=1, n=n, grade_batch=math_env.grade_tasks,
                                       keep_responses=True,
                                       group_of=lambda t: f"{t.data.get('family')}/L{t.data.get('level')}")
        record = result.to_dict()
        out[name] = {"accuracy_by_k": result.accuracy_by_k, "net_corrections_by_k": result.net_corrections_by_k,
                     "groups": {g: v["curves"]["accuracy"] for g, v in record.get("groups", {}).items()},
                     "sample": result.responses[0][0]}
    return out


def check_mle(lm, domain, args) -> dict:
    """First attempts on held-out MLE tasks, greedy (1) and T=1 (eval_n): valid fraction, mean normalized
    score and the errors, per task; the RL study needs a warm start whose scripts run on unseen tasks."""
    from exit_jax.evaluation import greedy_search
    from exit_jax.sampling.text_policy import SamplingConfig, TextPolicy
    tasks = domain.eval_tasks[:args.eval_tasks]
    sampling = SamplingConfig(max_new_tokens=544, max_prompt_tokens=2048, min_bucket=128)  # as the study's mle.gin
    policy = TextPolicy(lm, sampling)
    out = {"num_tasks": len(tasks)}
    for name, temperature, n in (("greedy", 0.0, 1), ("t1", 1.0, args.eval_n)):
        policy.config = dataclasses.replace(sampling, temperature=temperature)
        replies = [[c.text for c in row] for row in
                   policy.sample(lm.params, [list(domain.make_env(t).reset()) for t in tasks], n, seed=0)]
        per_task = {}
        for task, row in zip(tasks, replies):
            graded = [greedy_search.grade_reply(domain.make_env, task, r) for r in row]
            per_task[task.id] = {"valid": sum(g["valid"] for g in graded) / n,
                                 "normalized": sum(g["normalized"] for g in graded) / n,
                                 "errors": [g["error"][-300:] for g in graded if not g["valid"]]}
        out[name] = {"valid": _mean([v["valid"] for v in per_task.values()]),
                     "normalized": _mean([v["normalized"] for v in per_task.values()]), "tasks": per_task,
                     "sample": replies[0][0]}
    return out


def pretrain(args, digest: str, work: str) -> dict:
    import numpy as np

    from exit_jax import models
    from studies.cpu.warm_start import sft
    domain = _domain(args)
    corpus = importlib.import_module(CORPORA[args.domain])
    examples = corpus.examples(domain.train_tasks, domain.make_env, np.random.default_rng(args.seed), args.examples)
    name = f"study-{args.domain}-{digest}"
    if args.init:
        lm = models.load(args.init)
        lm = dataclasses.replace(lm, config=dataclasses.replace(lm.config, name=name))
    else:
        config = sft.study_config(args.vocab, args.d_model, args.layers, args.heads, args.ffn, name=name,
                                  max_positions=max(MAX_POSITIONS[args.domain], args.max_len))
        lm = sft.build_lm(examples, config, os.path.join(work, "tokenizer_cache"), seed=args.seed)
    encoded = sft.encode_all(lm.tokenizer, examples, args.max_len)
    buckets = tuple(b for b in (64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048) if b < args.max_len)
    sft_config = sft.SFTConfig(steps=args.steps, learning_rate=args.lr, tokens_per_batch=args.tokens_per_batch,
                               buckets=buckets + (args.max_len,), seed=args.seed)
    print(f"corpus: {len(examples)} examples ({len(encoded)} within {args.max_len} tokens); model "
          f"{lm.config.num_params() / 1e6:.2f}M params, vocab {lm.config.vocab_size}", flush=True)
    result = sft.train(lm.params, lm.config, encoded, sft_config, lm.tokenizer.pad_id,
                       log=lambda s: print(s, flush=True))
    lm = dataclasses.replace(lm, params=result.params)
    shutil.rmtree(os.path.join(work, "tokenizer_cache"), ignore_errors=True)
    models.save_orbax(lm, work)
    kinds = {}
    for ex in examples:
        kinds.setdefault(ex.kind, []).append(ex.reward)
    summary = {
        "config_hash": digest, "args": vars(args), "recipe_version": RECIPE_VERSION,
        "init": args.init and _lineage(_init_summary(args.init)),
        "model": dataclasses.asdict(lm.config), "num_params": lm.config.num_params(),
        "corpus": {k: {"count": len(v), "mean_reward": _mean([r for r in v if r is not None])}
                   for k, v in sorted(kinds.items())},
        "sft": {"seconds": result.seconds, "tokens": result.tokens,
                "loss_start": float(np.mean(result.losses[:10])), "loss_end": float(np.mean(result.losses[-50:])),
                "losses": result.losses},
    }
    if args.eval_tasks > 0:
        start = time.time()
        summary["check"] = (check_math if args.domain == "math" else check_mle)(lm, domain, args)
        summary["check"]["seconds"] = time.time() - start
    return summary


def _mean(values) -> float | None:
    return sum(values) / len(values) if values else None


def report(summary: dict) -> None:
    s = summary["sft"]
    print(f"model {summary['model']['name']}: {summary['num_params'] / 1e6:.2f}M params; SFT {s['seconds']:.0f}s, "
          f"{s['tokens'] / max(s['seconds'], 1e-9):.0f} tok/s, loss {s['loss_start']:.3f} -> {s['loss_end']:.3f}")
    for name, c in summary.get("check", {}).items():
        if isinstance(c, dict) and "tasks" in c:  # mle
            tasks = ", ".join(f"{t} {v['valid']:.2f}/{v['normalized']:.2f}" for t, v in c["tasks"].items())
            print(f"held-out check ({name}): valid {c['valid']:.2f}, normalized {c['normalized']:.3f} "
                  f"(valid/normalized by task: {tasks})")
        elif isinstance(c, dict):
            acc = ", ".join(f"k={k}: {a:.3f}" for k, a in enumerate(c["accuracy_by_k"]))
            print(f"held-out check ({name}, {summary['check']['num_tasks']} tasks): {acc}; "
                  f"net corrections {c['net_corrections_by_k'][-1]:+.2f}")
            print("  k=0 by group: " + ", ".join(f"{g} {a[0]:.2f}" for g, a in sorted(c["groups"].items())))


def main(argv) -> int:
    args = parse(argv)
    digest = config_hash(args)
    marker = os.path.join(args.out, "pretrain.json")
    if os.path.exists(marker):
        with open(marker) as f:
            done = json.load(f)
        if done.get("config_hash") == digest:
            print(f"{args.out} already holds this pretrained model (config {digest}); skipping.")
            report(done)
            return 0
        print(f"{args.out} holds config {done.get('config_hash')}, not {digest}: rebuilding it.")
    elif os.path.isdir(args.out) and os.listdir(args.out):
        print(f"error: --out {args.out!r} is a non-empty directory that no pretrain run wrote; pick another.",
              file=sys.stderr)
        return 2
    work = f"{os.path.abspath(args.out).rstrip('/')}.tmp-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    summary = pretrain(args, digest, work)
    with open(os.path.join(work, "pretrain.json"), "w") as f:
        json.dump(summary, f, indent=1)
    shutil.rmtree(args.out, ignore_errors=True)
    os.replace(work, args.out)  # publish only a finished model
    report(summary)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(REPO, "launch"))
    import gin_cli
    gin_cli.tune_malloc()  # as launch/train.py: keep freed memory in the process
    raise SystemExit(main(sys.argv[1:]))
