"""MLE sandbox speed: the pre-warmed sandboxed worker vs a cold `bwrap python` per solution, in one run.

    python launch/bench_mle.py [--n 15] [--task breast_cancer]

Per-solution overhead = start to exit of a trivial solution (`pass`) as the caller sees it; "imports" = a
solution that only imports numpy/pandas/sklearn (what every real solution pays first). Full evaluation =
`task.evaluate(code)` (sandbox run + grading) of a small scikit-learn solution. Medians over --n runs; the
ratio is cold / warm. The target: warm median overhead <= 0.2 s.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from exit_jax.envs.mle import bwrap, lite, sandbox

SOLUTION = """
import os
import pandas as pd
from sklearn.linear_model import LogisticRegression
p = os.environ["PUBLIC_RESOURCE_PATH"]
tr, te = pd.read_csv(p + "/train.csv"), pd.read_csv(p + "/test.csv")
X = tr.drop(columns=["id", "target"])
m = LogisticRegression(max_iter=500).fit((X - X.mean()) / X.std(), tr["target"])
proba = m.predict_proba((te[X.columns] - X.mean()) / X.std())[:, 1]
pd.DataFrame({"id": te["id"], "target": proba}).to_csv("submission.csv", index=False)
"""


def median_s(fn, n):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times)


def _bare(opts, cfg):
    argv, fds = bwrap.command(opts, [cfg.python, "-c", "pass"], cfg.seccomp)
    try:
        subprocess.run(argv, check=True, pass_fds=fds)
    finally:
        for fd in fds:
            os.close(fd)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=15)
    ap.add_argument("--task", default="breast_cancer")
    a = ap.parse_args()
    if not sandbox.bwrap_available():
        sys.exit("bwrap cannot create namespaces on this machine; the benchmark compares bwrap paths.")
    task = lite.tasks([a.task])[0]
    task.anchors  # noqa: B018  computed (or loaded) before timing
    cfg = sandbox.SandboxConfig(time_limit_s=60)
    rows = []
    with sandbox.WarmPool(cfg) as pool, tempfile.TemporaryDirectory() as empty:
        t = time.perf_counter()
        pool.run_python("pass", task.public_dir)
        start_s = time.perf_counter() - t
        # A bare `bwrap ... python -c pass` with the same mounts: the floor of any cold path.
        opts = bwrap.options(task.public_dir, empty, empty, {})
        imports = "import numpy, pandas, sklearn.linear_model"
        checks = {"trivial": lambda r: r.ok, "imports": lambda r: r.ok, "evaluate": lambda g: g.valid}
        for name, warm_fn, cold_fn in [
            ("trivial", lambda: pool.run_python("pass", task.public_dir),
             lambda: sandbox.run_python("pass", task.public_dir, config=cfg)),
            ("imports", lambda: pool.run_python(imports, task.public_dir),
             lambda: sandbox.run_python(imports, task.public_dir, config=cfg)),
            ("evaluate", lambda: task.evaluate(SOLUTION, config=cfg, pool=pool),
             lambda: task.evaluate(SOLUTION, config=cfg)),
        ]:
            assert checks[name](warm_fn()) and checks[name](cold_fn()), f"{name}: the solution failed"
            warm, warm_min = median_s(warm_fn, a.n)
            cold, cold_min = median_s(cold_fn, a.n)
            rows.append((name, warm, warm_min, cold, cold_min))
        bare_s, _ = median_s(lambda: _bare(opts, cfg), a.n)
    print(f"task {a.task}, n={a.n}, warm worker start (once): {start_s:.2f} s, "
          f"bare `bwrap python -c pass`: {bare_s * 1e3:.0f} ms")
    header = ("measure", "warm median", "warm min", "cold median", "cold min", "cold/warm")
    print("{:<10} {:>12} {:>9} {:>12} {:>9} {:>10}".format(*header))
    for name, warm, warm_min, cold, cold_min in rows:
        print(f"{name:<10} {warm * 1e3:>10.0f}ms {warm_min * 1e3:>7.0f}ms {cold * 1e3:>10.0f}ms "
              f"{cold_min * 1e3:>7.0f}ms {cold / warm:>9.1f}x")
    target = rows[0][1] <= 0.2
    print(f"warm per-solution overhead {'meets' if target else 'MISSES'} the 0.2 s target")


if __name__ == "__main__":
    main()
