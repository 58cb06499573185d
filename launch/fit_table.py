"""Regenerate the fit table of docs/tpu.md: the paper's three configs compiled by launch/compile.py for each
target slice, one process per cell, on this (CPU) host.

    python launch/fit_table.py [--topologies v4-8,v5e-8,v5p-8,v6e-8,v5e-16] [--configs math,tool_use,mle]
                               [--only math_v5e-8,...] [--table_only]

The table sits between the markers in docs/tpu.md and is replaced whole; each cell's JSON report is kept
in docs/fit/ so that the table can be checked against what the tool printed.
"""
import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from exit_jax.tpu import chips  # noqa: E402
DOC = os.path.join(REPO, "docs", "tpu.md")
BEGIN, END = "<!-- fit-table:begin -->", "<!-- fit-table:end -->"
# The paper's configs (paper §5.1, Tables 4-6): domain gin + the domain's model.
CONFIGS = {"math": ("math.gin", "models/llama3_2_3b.gin"), "tool_use": ("tool_use.gin", "models/qwen2_5_7b.gin"),
           "mle": ("mle.gin", "models/deepseek_r1_distill_qwen_7b.gin")}
# Where full fine-tuning cannot fit (a 7B model's float32 params and Adam moments alone are 10.6 GiB of a
# 16 GiB v5e chip on 8 chips, 21.3 GiB of a 32 GiB v4 chip on 4), the documented options: bfloat16 params
# and moments (docs/tpu.md's caveat), or LoRA adapters on a frozen bfloat16 base (docs/lora.md).
OPTIONS = {"bf16params": ["--gin.learner.LearnerConfig.param_dtype='bfloat16'"], "lora": ["--gin_file=lora.gin"]}
OPTION_CELLS = [(f"{c}+{o}", t) for o in OPTIONS for c in ("tool_use", "mle") for t in ("v4-8", "v5e-8")]


def cell(config: str, topology: str, extra: list) -> dict:
    out = os.path.join(REPO, "docs", "fit", f"{config}_{topology}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    base, _, option = config.partition("+")
    files = [f"--gin_file={f}" for f in CONFIGS[base]] + (OPTIONS[option] if option else [])
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, os.path.join(REPO, "launch", "compile.py"), *files,
                           f"--topology={topology}", f"--json={out}", *extra],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - t
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    if proc.returncode and not os.path.exists(out):
        return {"config": config, "topology": topology, "error": (errors or ["failed"])[-1], "wall_s": seconds}
    with open(out) as f:
        rec = json.load(f)
    rec |= {"config": config, "fits": proc.returncode == 0, "wall_s": seconds,
            "error": errors[-1] if errors else ""}
    with open(out, "w") as f:
        json.dump(rec, f, indent=1)
    print(proc.stdout, proc.stderr if proc.returncode else "", flush=True)
    return rec


def row(rec: dict) -> str:
    """A table line; the verdict is recomputed from the bytes and chips.py's usable HBM."""
    if "programs" not in rec:
        return f"| {rec['config']} | {rec['topology']} | – | – | – | – | – | {rec['error']} | – |"
    hbm = next(c.hbm_bytes for c in chips.CHIPS.values() if c.name == rec["chip"])
    gib = {p["name"]: "OOM" if p["error"] else f"{p['total_bytes'] / 2**30:.1f}"
           + (" (over)" if p["total_bytes"] > hbm else "") for p in rec["programs"]}
    failed = [p for p in rec["programs"] if p["error"]]
    worst = max(rec["programs"], key=lambda p: p["total_bytes"])
    if failed:
        verdict = f"{failed[0]['name']} does not fit ({failed[0]['error']})"
    elif worst["total_bytes"] > hbm:
        verdict = f"{worst['name']} over by {(worst['total_bytes'] - hbm) / 2**30:.2f} GiB"
    else:
        verdict = f"fits, {1 - worst['total_bytes'] / hbm:.0%} headroom"
    estimate = "– | –" if failed else f"{rec['iteration_roofline_s']:.0f} | {rec['update_mfu']:.0%}"
    return (f"| {rec['config']} | {rec['topology']} ({rec['chips']} devices) | {gib['prefill']} | "
            f"{gib['decode']} | {gib['update']} | {estimate} | {verdict} | {rec['wall_s'] / 60:.1f} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--topologies", default="v4-8,v5e-8,v5p-8,v6e-8,v5e-16")
    p.add_argument("--configs", default="math,tool_use,mle")
    p.add_argument("--only", default="", help="rerun only these config_topology cells (comma-separated); "
                   "the others are read back from docs/fit/")
    p.add_argument("--table_only", action="store_true", help="rebuild the table from docs/fit/ only")
    a, extra = p.parse_known_args()
    cells = [(c, t) for c in a.configs.split(",") for t in a.topologies.split(",")]
    cells += [(c, t) for c, t in OPTION_CELLS if c.partition("+")[0] in a.configs.split(",")]
    recs = []
    for c, t in cells:
        saved = os.path.join(REPO, "docs", "fit", f"{c}_{t}.json")
        if (a.table_only or a.only and f"{c}_{t}" not in a.only.split(",")) and os.path.exists(saved):
            with open(saved) as f:
                recs.append(json.load(f))
        else:
            recs.append(cell(c, t, extra))
    table = ["| config | slice | prefill GiB | decode GiB | update GiB | iteration s (roofline) | update MFU bound "
             "| verdict | compile min |", "|---|---|---|---|---|---|---|---|---|"] + [row(r) for r in recs]
    with open(DOC) as f:
        doc = f.read()
    head, _, rest = doc.partition(BEGIN)
    _, _, tail = rest.partition(END)
    with open(DOC, "w") as f:
        f.write(head + BEGIN + "\n" + "\n".join(table) + "\n" + END + tail)
    print("\n".join(table))


if __name__ == "__main__":
    main()
