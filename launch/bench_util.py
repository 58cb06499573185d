"""What the benchmarks share: the machine's measured matmul peak, the machine's name, and the JSON record
that `tests/test_bench_guard.py` compares with the committed baseline (`launch/bench_baseline.json`)."""
import json
import os
import platform
import time


def matmul_peak(n: int = 2048, reps: int = 5) -> float:
    """Best FLOP/s of an n x n float32 jnp matmul, measured now (under the same machine load)."""
    import jax
    import jax.numpy as jnp
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def machine() -> str:
    """CPU model and core count: ratios against a torch peer move with the CPU (see the baseline)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            info = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in f if ":" in line)}
        model = f"{info['model name']} (family {info.get('cpu family')}, model {info.get('model')})"
    except (OSError, KeyError):
        pass
    return f"{model}, {os.cpu_count()} cores"


def write_json(path: str, record: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(record | {"machine": machine()}, f, indent=1)
