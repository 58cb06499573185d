"""The CPU-scale reproduction study: run plan, aggregation, Table-1-style tables and plots.

`studies/cpu/run.py` runs every domain x method x seed through `launch/train.py`; this module holds the pure
parts: which runs exist and where, when a run counts as finished, how its `eval.json` and `metrics.jsonl`
become one seed record of `cpu_study.json`, and how those records become the tables and figures.

cpu_study.json shape one record per seed, extra keys beside `accuracy_by_k`:
```
{"math": {"grpo": [{"seed": 0, "accuracy_by_k": [k = 0..16], "net_corrections_by_k": [...],
                    "curriculum": {...}, "training": {...}}, ...], ...}, "mle": {...}}
```
For MLE-lite `accuracy_by_k` is the mean normalized score of the best node so far at search step k.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Mapping, Sequence

import numpy as np

DOMAINS = ("math", "mle")
# "base" is the SFT-warm-started model evaluated without RL (the paper's "Base model" row).
METHODS = ("base", "grpo", "curriculum", "improve", "diverge", "exit")
TRAINED_METHODS = METHODS[1:]
METHOD_LABELS = {"base": "Base model", "grpo": "GRPO", "curriculum": "+ curriculum",
                 "improve": "+ self-improve step (Improve)", "diverge": "+ divergent step (Diverge)",
                 "exit": "+ diversity bonus (Full ExIt)"}


@dataclasses.dataclass(frozen=True)
class Preset:
    gin_suffix: str  # studies/cpu/gin/{domain}{gin_suffix}.gin
    methods: tuple
    seeds: tuple
    domains: tuple = DOMAINS


# studies/cpu/pretrain.py flags of each warm-start stage, run in order into ROOT/pretrain/<name>; a later stage
# continues the one before it (--init). The last stage is the domain's model. MLE: after 300 SFT steps the
# model wrote valid scripts greedily on 1 of 3 held-out tasks and on none of 12 at T = 1 (undertrained:
# see notebooks/cpu_study.md), so a second stage continues it on a fresh corpus (seed 1: other examples,
# other procedural tasks) instead of restarting from scratch.
PRETRAIN_STAGES = {
    "math": (("math", ()),),
    "mle": (("mle", ()),
            ("mle_continued", ("--seed", "1", "--examples", "2500", "--steps", "400", "--lr", "2e-3"))),
}

PRESETS = {
    "full": Preset("", METHODS, (0, 1, 2)),
    "quick": Preset("_quick", ("base", "grpo", "exit"), (0,), domains=("math",)),
}


@dataclasses.dataclass(frozen=True)
class RunSpec:
    domain: str
    method: str
    seed: int
    workdir: str

    @property
    def name(self) -> str:
        return f"{self.domain}/{self.method}/seed{self.seed}"

    @property
    def eval_path(self) -> str:
        return os.path.join(self.workdir, "eval.json")

    def finished(self) -> bool:
        """eval.json is written once, after training, by an atomic rename (study presets set no
        eval_every), so its presence means the run trained and evaluated to the end."""
        return os.path.exists(self.eval_path)


def parse_list(text: str | None, allowed: Sequence[str] | None, what: str) -> tuple | None:
    """"a,b" -> ("a", "b"), checked against `allowed`; None stays None (the preset's default)."""
    if text is None:
        return None
    items = tuple(x.strip() for x in text.split(",") if x.strip())
    if not items:
        raise ValueError(f"--{what} is empty; give a comma-separated list.")
    if allowed is not None:
        bad = [x for x in items if x not in allowed]
        if bad:
            raise ValueError(f"--{what}: unknown {bad}; expected some of {list(allowed)}.")
    return items


def plan_runs(root: str, domains: Sequence[str], methods: Sequence[str], seeds: Sequence[int]
              ) -> list[RunSpec]:
    """Seed-major order: an interrupted study has every method's seed 0 before any seed 1."""
    return [RunSpec(d, m, int(s), os.path.join(root, d, m, f"seed{s}"))
            for s in seeds for d in domains for m in methods]


def train_command(spec: RunSpec, gin_file: str, model: str, python: str, train_py: str,
                  extra_gin_files: Sequence[str] = (), bindings: Sequence[str] = ()) -> list[str]:
    """The launch/train.py command of one run: the study's domain file, the method file (`base`: the
    GRPO file with no iterations, i.e. the untrained model's evaluation), model, work dir and seed."""
    method_file = "grpo.gin" if spec.method == "base" else f"{spec.method}.gin"
    cmd = [python, train_py, f"--gin_file={gin_file}", *[f"--gin_file={f}" for f in extra_gin_files],
           f"--gin_file={method_file}", f"--gin.MODEL={model!r}", f"--gin.WORKDIR={spec.workdir!r}",
           f"--gin.SEED={spec.seed}"]
    if spec.method == "base":
        cmd.append("--gin.NUM_ITERATIONS=0")
    return cmd + [f"--gin.{b}" for b in bindings]


# ------------------------------------------------------------------------------------------ records


def finite_values(values) -> list[float]:
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out.append(f)
    return out


def _mean(values) -> float | None:
    vals = finite_values(values)
    return float(np.mean(vals)) if vals else None


def curriculum_summary(records: Sequence[Mapping]) -> dict:
    """Curriculum statistics of one run (paper Figs. 5-7) from its metrics.jsonl records.

    `*_mean` averages the iterations that logged a value (replay-only statistics are NaN elsewhere);
    `*_end` averages the last quarter of training (the paper reads its figures at the end of training).
    """
    records = sorted(records, key=lambda r: r.get("iteration", 0))
    tail = records[len(records) - max(1, len(records) // 4):] if records else []
    out: dict = {}
    for key in ("sampled_depth", "start_turn", "sampled_from_iteration", "replay_fraction",
                "divergence_fraction", "debug_fraction", "learnability", "episode_depth"):
        full = f"curriculum/{key}"
        out[f"{key}_mean"] = _mean(r.get(full) for r in records)
        out[f"{key}_end"] = _mean(r.get(full) for r in tail)
    last = records[-1] if records else {}
    out["distinct_instances_seen"] = _mean([last.get("curriculum/distinct_instances_seen")])
    out["buffer_size_end"] = _mean([last.get("curriculum/buffer_size")])
    return out


def training_summary(records: Sequence[Mapping]) -> dict:
    """Compute actually spent and whether the policy's training reward moved."""
    records = sorted(records, key=lambda r: r.get("iteration", 0))
    if not records:
        return {"iterations": 0, "sampled_tokens": 0, "train_time_s": 0.0}
    tenth = max(1, len(records) // 10)
    return {"iterations": len(records),
            "sampled_tokens": int(_mean([records[-1].get("rollout/sampled_tokens_total")]) or 0),
            "train_time_s": round(sum(finite_values(r.get("time/iteration_s") for r in records)), 1),
            "reward_start": _mean(r.get("reward/mean") for r in records[:tenth]),
            "reward_end": _mean(r.get("reward/mean") for r in records[-tenth:])}


def _json_curve(curve) -> list:
    """Floats, with None where a value is missing or not finite (JSON has no NaN)."""
    return [None if v is None or not math.isfinite(float(v)) else float(v) for v in curve]


def run_record(seed: int, eval_record: Mapping, metrics: Sequence[Mapping]) -> dict:
    """One seed's entry of cpu_study.json."""
    (name, ev), = list(eval_record["evaluations"].items())[:1]
    curves = ev["curves"]
    record = {"seed": int(seed), "accuracy_by_k": _json_curve(curves[ev["headline"]]),
              "metric": ev["headline"], "evaluation": name, "K": ev["K"], "n": ev.get("n"),
              "num_tasks": ev.get("num_tasks")}
    for cname, curve in sorted(curves.items()):
        if cname != ev["headline"]:
            record[f"{cname}_by_k"] = _json_curve(curve)
    record["training"] = training_summary(metrics)
    record["curriculum"] = curriculum_summary(metrics)
    return record


def _run_metrics(spec: RunSpec) -> list:
    """The run's metrics.jsonl records ([] for a base evaluation, which trains nothing)."""
    from exit_jax.training.metrics import read_metrics
    path = os.path.join(spec.workdir, "metrics.jsonl")
    return read_metrics(path) if os.path.exists(path) else []


def aggregate(specs: Sequence[RunSpec]) -> dict:
    """{domain: {method: [seed records]}} over the finished runs (unfinished ones are left out)."""
    from exit_jax.evaluation.eval_json import read_eval_json
    out: dict = {}
    for spec in specs:
        if not spec.finished():
            continue
        rec = run_record(spec.seed, read_eval_json(spec.eval_path), _run_metrics(spec))
        out.setdefault(spec.domain, {}).setdefault(spec.method, []).append(rec)
    for methods in out.values():
        for recs in methods.values():
            recs.sort(key=lambda r: r["seed"])
    return out


def write_json(path: str, obj) -> str:
    """Atomic write; NaN never reaches the file (the records hold None instead)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------------------- tables


def mean_sem(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error over seeds (std with ddof=1 / sqrt(n); 0 for one seed; NaN for none)."""
    vals = np.asarray(finite_values(values), dtype=np.float64)
    if not vals.size:
        return float("nan"), float("nan")
    if vals.size == 1:
        return float(vals[0]), 0.0
    return float(vals.mean()), float(vals.std(ddof=1) / math.sqrt(vals.size))


def fmt(values: Sequence[float], scale: float = 100.0, digits: int = 1, signed: bool = False) -> str:
    mean, sem = mean_sem(values)
    if math.isnan(mean):
        return "n/a"
    sign = "+" if signed else ""
    text = f"{mean * scale:{sign}.{digits}f}"
    return text if len(finite_values(values)) < 2 else f"{text} ± {sem * scale:.{digits}f}"


def endpoints(records: Sequence[Mapping], key: str = "accuracy_by_k") -> tuple[list, list, list]:
    """Per seed: the value at k = 0, at k = K, and ΔK."""
    first, last, delta = [], [], []
    for r in records:
        curve = r.get(key) or []
        if not curve or curve[0] is None or curve[-1] is None:
            continue
        first.append(curve[0])
        last.append(curve[-1])
        delta.append(curve[-1] - curve[0])
    return first, last, delta


def load_metrics(specs: Sequence[RunSpec]) -> dict:
    """{domain: {method: [metrics.jsonl records of each finished seed]}} for the curriculum plots."""
    out: dict = {}
    for spec in specs:
        if spec.finished() and os.path.exists(os.path.join(spec.workdir, "metrics.jsonl")):
            out.setdefault(spec.domain, {}).setdefault(spec.method, []).append(_run_metrics(spec))
    return out


def run_infos(specs: Sequence[RunSpec], relative_to: str | None = None) -> list[dict]:
    """Per run: where it lives, whether it finished, and the wall time studies/cpu/run.py measured for it
    (summed over resumed attempts; None when it was run some other way)."""
    infos = []
    for spec in specs:
        info_path = os.path.join(spec.workdir, "study_run.json")
        info = {}
        if os.path.exists(info_path):
            with open(info_path, encoding="utf-8") as f:
                info = json.load(f)
        workdir = os.path.relpath(spec.workdir, relative_to) if relative_to else spec.workdir
        infos.append({"domain": spec.domain, "method": spec.method, "seed": spec.seed, "workdir": workdir,
                      "finished": spec.finished(), "model": info.get("model"), "wall_s": info.get("wall_s"),
                      "attempts": info.get("attempts"), "rc": info.get("rc")})
    return infos


def git_commit(repo: str) -> str | None:
    """HEAD of the repository (with "-dirty" when tracked files changed), or None outside git."""
    import subprocess
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=False).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


# ------------------------------------------------------------------------------------ evaluation


class ChunkedPolicy:
    """A policy whose `generate` calls reach the wrapped policy in batches of at most `max_rows` rows
    (conversations x samples). The last batch is padded with copies of its last conversation (their
    replies are dropped) so that the sampler compiles one batch shape.

    Why: the evaluation sends every chain of a step in one call (math: tasks x n rows), and on 2 CPU
    cores a ~1M-parameter sampler costs ~3x more per row at 256 rows than at 64 (measured; the KV cache
    and the row count both grow). Chunking changes which sampler seed a row gets, not what is measured.
    """

    def __init__(self, policy, max_rows: int):
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}.")
        self.policy = policy
        self.max_rows = int(max_rows)

    def generate(self, conversations, num_samples: int = 1) -> list:
        conversations = list(conversations)
        per = max(1, self.max_rows // max(num_samples, 1))
        if len(conversations) <= per:
            return self.policy.generate(conversations, num_samples=num_samples)
        out: list = []
        for i in range(0, len(conversations), per):
            chunk = conversations[i:i + per]
            real = len(chunk)
            chunk = chunk + [chunk[-1]] * (per - real)
            out += list(self.policy.generate(chunk, num_samples=num_samples))[:real]
        return out


def evaluate_and_report(policy, domain, workdir: str, method: str, seed: int = 0,
                        iteration: int | None = None, *, num_tasks: int | None = 16, K: int | None = None,
                        n: int = 8, max_rows: int = 64) -> dict:
    """`evaluation.evaluate.evaluate_and_report` with the policy's calls chunked to `max_rows` rows (0: one
    call per step, as the library does). The study's gin files bind this as `loop.train.evaluate`."""
    from exit_jax.evaluation import evaluate
    wrapped = ChunkedPolicy(policy, max_rows) if max_rows else policy
    return evaluate.evaluate_and_report(wrapped, domain, workdir, method, seed=seed, num_tasks=num_tasks, K=K,
                                        n=n, iteration=iteration)


def model_identity(source: str) -> str:
    """What a run was trained from: a pretrained dir's config hash (studies/cpu/pretrain.py), else the source
    as given (e.g. "smoke"). A finished run is only reused while this is unchanged."""
    path = os.path.join(source, "pretrain.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return f"pretrain:{json.load(f).get('config_hash')}"
    return source


def stale_runs(specs: Sequence[RunSpec], identities: Mapping[str, str]) -> list[str]:
    """Finished runs whose study_run.json records another model than `identities[domain]` (runs that
    record none predate the record and are trusted)."""
    stale = []
    for spec in specs:
        path = os.path.join(spec.workdir, "study_run.json")
        if spec.finished() and os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                recorded = json.load(f).get("model")
            if recorded is not None and recorded != identities[spec.domain]:
                stale.append(f"{spec.name} ({recorded})")
    return stale


def pretrain_summary(model_dir: str) -> dict | None:
    """The warm start's size, SFT cost and held-out check from studies/cpu/pretrain.py's pretrain.json."""
    path = os.path.join(model_dir, "pretrain.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        info = json.load(f)
    sft = info.get("sft", {})
    # math: accuracy at k = 0, 1; MLE: the valid fraction and normalized score of first attempts
    check = {name: c["accuracy_by_k"] if "accuracy_by_k" in c else {"valid": c.get("valid"),
                                                                     "normalized": c.get("normalized")}
             for name, c in (info.get("check") or {}).items() if isinstance(c, dict)}
    stages, init = [], info.get("init")  # earlier stages this model continued (pretrain.py --init)
    while init:
        stages.append({"config_hash": init["config_hash"], "sft_seconds": init["sft"].get("seconds"),
                       "sft_tokens": init["sft"].get("tokens")})
        init = init.get("init")
    return {"config_hash": info.get("config_hash"), "num_params": info.get("num_params"),
            "sft_seconds": sft.get("seconds"), "sft_tokens": sft.get("tokens"), "sft_loss_end": sft.get("loss_end"),
            "earlier_stages": stages[::-1], "check_accuracy_by_k": check}
