"""Math grading against math-verify's own test cases: our grader and math-verify's default configuration
side by side, on the same cases in one run (docs/math_grading.md).

    python launch/bench_grader.py [--json out.json]

Prints, per side and per `anchorless` mode: expected labels matched out of 261, false positives (reward 1
where the case expects 0), false negatives, and the seconds to grade all cases (our grader in its worker
process, math-verify in this process with its own timeouts).
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from launch.bench_util import write_json  # noqa: E402

CASES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures",
                     "math_verify_cases.json")


def _counts(got, cases) -> dict:
    exp = [c["expected"] for c in cases]
    return {"matched": sum(int(g) == e for g, e in zip(got, exp)),
            "false_positives": sum(g == 1 and e == 0 for g, e in zip(got, exp)),
            "false_negatives": sum(g == 0 and e == 1 for g, e in zip(got, exp))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default="", help="write the figures here")
    args = ap.parse_args()
    import logging
    logging.disable(logging.WARNING)  # math-verify warns about every unparsable case
    from math_verify import parse, verify

    from exit_jax.envs.math import Grader, GraderConfig, math_verify_version
    with open(CASES) as f:
        cases = json.load(f)["cases"]

    def peer(gold, pred):
        try:
            return int(verify(parse(gold), parse(pred)))
        except Exception:  # noqa: BLE001 - a case math-verify cannot handle counts as 0
            return 0

    t = time.perf_counter()
    rows = {"math-verify default": _counts([peer(c["gold"], c["pred"]) for c in cases], cases)}
    rows["math-verify default"]["seconds"] = time.perf_counter() - t
    for mode in ("latex", "math_verify", "none"):
        with Grader(GraderConfig(anchorless=mode)) as g:
            g.check("\\boxed{1}", "1")  # start the worker outside the timed region
            t = time.perf_counter()
            got = [r.reward for r in g.check_batch([c["pred"] for c in cases], [c["gold"] for c in cases])]
            rows[f"exit_jax anchorless={mode}" + (" (default)" if mode == "latex" else "")] = {
                **_counts(got, cases), "seconds": time.perf_counter() - t}
    print(f"math-verify {math_verify_version()}: {len(cases)} cases, {sum(c['expected'] for c in cases)} "
          "expected equal")
    print(f"{'side':38s} {'matched':>8s} {'false +':>8s} {'false -':>8s} {'seconds':>8s}")
    for name, r in rows.items():
        print(f"{name:38s} {r['matched']:8d} {r['false_positives']:8d} {r['false_negatives']:8d} "
              f"{r['seconds']:8.2f}")
    write_json(args.json, {"cases": len(cases), "sides": rows})


if __name__ == "__main__":
    main()
