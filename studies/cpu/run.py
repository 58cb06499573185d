"""The CPU-scale reproduction study, end to end, in one command:

    nice -n 10 python studies/cpu/run.py                   # full: 2 domains x (base + 5 methods) x 3 seeds
    nice -n 10 python studies/cpu/run.py --preset quick    # a quick look: 1 seed, base / GRPO / ExIt
    python studies/cpu/run.py --domains math --methods grpo,exit --seeds 0 --model smoke   # wiring check

It (a) SFT-warm-starts one small model per domain (studies/cpu/pretrain.py, cached), (b) trains and
evaluates every domain x method x seed with launch/train.py and studies/cpu/gin/{domain}[_quick].gin,
--jobs runs at a time (a run with eval.json is skipped; an interrupted one resumes from its checkpoint),
(c) aggregates the runs into --out (cpu_study.json) and (d) writes cpu_study_meta.json,
cpu_study_tables.md and PNGs beside it.
"""
import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import subprocess
import sys
import threading
import time

STUDY_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(STUDY_DIR))
sys.path.insert(0, REPO)
from studies.cpu import report, study  # noqa: E402  (imports no jax)

GIN_DIR = os.path.join(STUDY_DIR, "gin")  # the study's configs, given to launch/train.py by absolute path


def log(msg: str) -> None:
    print(f"[study {datetime.datetime.now():%H:%M:%S}] {msg}", flush=True)


def hms(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m{seconds % 60:02d}s"


def call(cmd: list, log_path: str) -> int:
    """Runs `cmd` in the repository, appending its output to `log_path`; returns the exit status. The
    repository root goes on PYTHONPATH: the study's gin files import `studies.cpu.study`, which
    launch/train.py would not find otherwise. (launch/train.py and pretrain.py tune glibc's malloc
    themselves: gin_cli.tune_malloc.)"""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p))
    with open(log_path, "a", encoding="utf-8") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        return subprocess.run(cmd, check=False, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT).returncode


def stage_dir(root: str, name: str) -> str:
    """Where a warm-start stage of study.PRETRAIN_STAGES is built: ROOT/pretrain/<name>."""
    return os.path.join(root, "pretrain", name)


def pretrain(domain: str, root: str) -> str:
    """Builds (or finds cached) the domain's warm-start stages (study.PRETRAIN_STAGES); returns the last."""
    script = os.path.join(STUDY_DIR, "pretrain.py")
    if not os.path.exists(script):
        raise SystemExit(f"error: {script} is missing; pass --model SOURCE (e.g. --model smoke) to skip "
                         "pretraining.")
    previous = None
    for name, flags in study.PRETRAIN_STAGES[domain]:
        t0, out = time.time(), stage_dir(root, name)
        os.makedirs(os.path.dirname(out), exist_ok=True)  # for the log beside `out`
        cmd = [sys.executable, script, "--domain", domain, "--out", out, *flags]
        rc = call(cmd + (["--init", previous] if previous else []), out + ".log")
        if rc:
            raise SystemExit(f"error: pretraining {name} failed (exit {rc}); see {out}.log")
        log(f"pretrained {name} for {domain}: {out} ({hms(time.time() - t0)})")
        previous = out
    return previous


def run_one(spec, cmd, model: str) -> dict:
    """Runs one training + evaluation; its output goes to WORKDIR/study_run.log, timings and the model it
    started from (study.model_identity) to study_run.json."""
    os.makedirs(spec.workdir, exist_ok=True)
    info_path = os.path.join(spec.workdir, "study_run.json")
    info = {"wall_s": 0.0, "attempts": 0}
    if os.path.exists(info_path):
        with open(info_path, encoding="utf-8") as f:
            info = json.load(f)
    t0 = time.time()
    rc = call(cmd, os.path.join(spec.workdir, "study_run.log"))
    info.update(wall_s=round(info["wall_s"] + time.time() - t0, 1), attempts=info["attempts"] + 1, rc=rc,
                command=cmd, model=model)
    study.write_json(info_path, info)
    return info


class Progress:
    """Finished-run count and an ETA for runs that go `jobs` at a time (called from several threads)."""

    def __init__(self, total: int, jobs: int, t_start: float):
        self.total, self.jobs, self.t_start, self.times = total, jobs, t_start, []
        self.lock = threading.Lock()

    def done(self, seconds: float) -> str:
        with self.lock:
            self.times.append(seconds)
            left = self.total - len(self.times)
            eta = sum(self.times) / len(self.times) * left / min(self.jobs, max(left, 1))
            return f"elapsed {hms(time.time() - self.t_start)}, ETA {hms(eta)}"


def run_and_report(i: int, spec, preset, models: dict, identities: dict, args, progress: Progress) -> str | None:
    """Trains and evaluates one run; returns its name if it failed."""
    gin_file = os.path.join(GIN_DIR, f"{spec.domain}{preset.gin_suffix}.gin")
    extra = [f for f in (os.path.join(GIN_DIR, f"models_{spec.domain}.gin"),) if os.path.exists(f)]
    cmd = study.train_command(spec, gin_file, models[spec.domain], sys.executable,
                              os.path.join(REPO, "launch", "train.py"), extra, args.gin)
    n = progress.total
    log(f"[{i}/{n}] {spec.name} -> {spec.workdir}")
    t0 = time.time()
    info = run_one(spec, cmd, identities[spec.domain])
    took = time.time() - t0
    if info["rc"] or not spec.finished():
        log(f"[{i}/{n}] {spec.name} FAILED (exit {info['rc']}) after {hms(took)}; see "
            f"{spec.workdir}/study_run.log; {progress.done(took)}")
        return spec.name
    curve = study.aggregate([spec])[spec.domain][spec.method][0]["accuracy_by_k"]
    log(f"[{i}/{n}] {spec.name} done in {hms(took)}: k=0 {curve[0]:.3f} -> k={len(curve) - 1} "
        f"{curve[-1]:.3f}; {progress.done(took)}")
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(study.PRESETS), default="full")
    p.add_argument("--domains", help=f"comma-separated, of {','.join(study.DOMAINS)} (default: the preset's; "
                                     "quick: math)")
    p.add_argument("--methods", help=f"comma-separated, of {','.join(study.METHODS)} (default: the preset's)")
    p.add_argument("--seeds", help="comma-separated integers (default: the preset's)")
    p.add_argument("--root", default="runs/study", help="run directories: ROOT/PRESET/DOMAIN/METHOD/seedS")
    p.add_argument("--out", help="cpu_study.json path (default: notebooks/results/cpu_study.json for "
                                 "full, ROOT/quick/results/cpu_study.json for quick)")
    p.add_argument("--model", help="model source for every domain instead of pretraining (e.g. smoke)")
    p.add_argument("--gin", action="append", default=[], metavar="NAME=VALUE",
                   help="extra binding for every run (repeatable), e.g. --gin NUM_ITERATIONS=2")
    p.add_argument("--report_only", action="store_true", help="aggregate the finished runs; train nothing")
    # 2 on 2 cores: one run of a ~1M-parameter model keeps ~0.8 of the 2 cores busy (Python, sandboxed
    # scripts and small XLA ops leave gaps), and a second process fills most of them.
    p.add_argument("--jobs", type=int, default=2, help="runs (and pretrainings) at a time (default: 2)")
    args = p.parse_args(argv)
    preset = study.PRESETS[args.preset]
    try:
        domains = study.parse_list(args.domains, study.DOMAINS, "domains") or preset.domains
        methods = study.parse_list(args.methods, study.METHODS, "methods") or preset.methods
        seeds = tuple(int(s) for s in (study.parse_list(args.seeds, None, "seeds") or preset.seeds))
    except ValueError as e:
        p.error(str(e))
    root = os.path.abspath(args.root)
    out = os.path.abspath(args.out or (os.path.join(REPO, "notebooks", "results", "cpu_study.json")
                                       if args.preset == "full" else
                                       os.path.join(root, "quick", "results", "cpu_study.json")))
    specs = study.plan_runs(os.path.join(root, args.preset), domains, methods, seeds)
    if args.jobs < 1:
        p.error(f"--jobs={args.jobs}: need at least 1.")
    started, t_start, failed = datetime.datetime.now().isoformat(timespec="seconds"), time.time(), []
    # the report names each domain's model: what --model gives, else the last stage pretrain() builds
    models = {d: args.model or stage_dir(root, study.PRETRAIN_STAGES[d][-1][0]) for d in domains}
    if not args.report_only:
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            # One pretraining per domain (cached), then the runs, `--jobs` processes at a time.
            models = dict(zip(domains, pool.map(
                lambda d: args.model or pretrain(d, root), domains)))
            identities = {d: study.model_identity(m) for d, m in models.items()}  # what each run records
            stale = study.stale_runs(specs, identities)
            if stale:  # never mix warm starts in one table, and never delete a finished run
                raise SystemExit(f"error: finished runs were trained from another model than the current "
                                 f"one: {', '.join(stale)}; move their directories away (or pass another "
                                 f"--root) and rerun.")
            todo = [s for s in specs if not s.finished()]
            log(f"preset {args.preset}: {len(specs)} runs, {len(specs) - len(todo)} already finished; "
                f"{args.jobs} at a time")
            progress = Progress(len(todo), args.jobs, t_start)
            failed = [name for name in pool.map(
                lambda item: run_and_report(*item, preset, models, identities, args, progress),
                enumerate(todo, 1)) if name]
    results = study.aggregate(specs)
    study.write_json(out, results)
    out_dir = os.path.dirname(out)
    metrics = study.load_metrics(specs)
    tables = os.path.join(out_dir, "cpu_study_tables.md")
    with open(tables, "w", encoding="utf-8") as f:
        f.write(report.tables_markdown(results, args.preset))
    plots = report.write_plots(results, out_dir, metrics)
    meta = {"preset": args.preset, "command": [os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]],
            "started": started, "finished": datetime.datetime.now().isoformat(timespec="seconds"),
            "wall_s_this_invocation": round(time.time() - t_start, 1), "git_commit": study.git_commit(REPO),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "models": models, "pretrain": {d: study.pretrain_summary(m) for d, m in models.items()
                                           if os.path.isdir(m)},
            "extra_bindings": args.gin, "failed": failed,
            "runs": study.run_infos(specs, REPO)}
    study.write_json(os.path.join(out_dir, "cpu_study_meta.json"), meta)
    log(f"wrote {out}, {tables}, {len(plots)} plots; {sum(s.finished() for s in specs)}/{len(specs)} runs "
        f"finished{'; FAILED: ' + ', '.join(failed) if failed else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
