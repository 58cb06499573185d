"""Speed regression guard. The sampler and end-to-end benchmarks run our code beside their torch peers
(transformers `generate`, TRL's GRPOTrainer) in one run; the ratios must not fall more than TOLERANCE
below those committed in launch/bench_baseline.json, nor our fraction of the machine's measured matmul
peak. Ratios cancel most machine noise, but not a change of CPU: torch's side at this model size is
bound by per-op overhead while ours is bound by the matmul units, so a CPU with half the FP throughput
halves our ratios (see the baseline's note). The peak fractions are read to tell the two apart.
"""
import json
import os
import subprocess
import sys

import pytest

LAUNCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "launch")
TOLERANCE = 0.25  # ratios measured in one run on 2 shared cores vary by ~10-15%; a real regression was 40%

pytestmark = [pytest.mark.slow, pytest.mark.bench]  # timed: never beside other tests (README)


@pytest.fixture(scope="module")
def baseline():
    for peer in ("torch", "transformers", "trl"):
        pytest.importorskip(peer, reason="the speed guard needs the peers: pip install -e '.[bench]'")
    with open(os.path.join(LAUNCH, "bench_baseline.json")) as f:
        return json.load(f)


def run_bench(script, args, tmp_path):
    out = tmp_path / (script + ".json")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # no fake devices from conftest
    env["EXIT_JAX_COMPILATION_CACHE"] = ""  # first-iteration figures stay cold
    subprocess.run([sys.executable, os.path.join(LAUNCH, script), *args, "--json", str(out)],
                   check=True, timeout=1200, env=env, cwd=tmp_path)
    with open(out) as f:
        return json.load(f)


def floor(base):
    return base * (1 - TOLERANCE)


def test_sampler_ratios_hold(baseline, tmp_path):
    rec = run_bench("bench_sampler.py", baseline["sampler"]["args"], tmp_path)
    for row in rec["results"]:
        base = baseline["sampler"]["results"][f"{row['batch']}_{row['mode']}"]
        for key in ("ratio", "peak_frac"):
            assert row[key] >= floor(base[key]), (
                f"sampler batch {row['batch']} {row['mode']}: {key} {row[key]:.2f} fell below "
                f"{floor(base[key]):.2f} (baseline {base[key]:.2f} - {TOLERANCE:.0%}) on {rec['machine']}")


def test_e2e_ratios_hold(baseline, tmp_path):
    rec = run_bench("bench_e2e.py", baseline["e2e"]["args"], tmp_path)
    for key, base in baseline["e2e"]["ratios"]["trl"].items():
        assert rec["ratios"]["trl"][key] >= floor(base), (
            f"bench_e2e {key}: ratio to TRL {rec['ratios']['trl'][key]:.2f} fell below {floor(base):.2f} "
            f"(baseline {base:.2f} - {TOLERANCE:.0%}) on {rec['machine']}")
    ours = rec["results"]["exit_jax"]["update_peak_frac"]
    base = baseline["e2e"]["update_peak_frac"]
    assert ours >= floor(base), f"update at {ours:.0%} of the matmul peak, below {floor(base):.0%}"
