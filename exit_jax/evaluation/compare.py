"""Compare runs: overlay several runs' eval.json curves and tabulate them like the paper's Table 1.

Runs are grouped by their `method` (or by labels given on the command line); runs sharing a method are
seeds, shown as mean ± standard error. The table has, per evaluation, the headline metric at k = 0, at
k = K, and ΔK = mean over runs of (k = K − k = 0), as in paper Table 1 (which reports mean ± std over 3
runs; we report the standard error of the mean).

    python -m exit_jax.evaluation.compare RUN_DIR_OR_EVAL_JSON ... --out_dir DIR [--labels a,b,...]
"""
from __future__ import annotations

import argparse
import math
import os
from typing import Mapping, Sequence

import numpy as np

from exit_jax.evaluation import plots
from exit_jax.evaluation.eval_json import read_eval_json


def load_runs(paths: Sequence[str], labels: Sequence[str] | None = None) -> dict[str, list[dict]]:
    """Reads eval.json files (or run directories holding one) and groups them by method or given label."""
    if labels is not None and len(labels) != len(paths):
        raise ValueError(f"Got {len(labels)} labels for {len(paths)} runs; give one label per run.")
    runs: dict[str, list[dict]] = {}
    for i, path in enumerate(paths):
        record = read_eval_json(path)
        record["_path"] = path
        runs.setdefault(labels[i] if labels is not None else record["method"], []).append(record)
    return runs


def _stat(values: Sequence[float], scale: float, digits: int) -> str:
    vals = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64) * scale
    if not len(vals):
        return "n/a"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    sem = vals.std(ddof=1) / math.sqrt(len(vals))
    return f"{vals.mean():.{digits}f} ± {sem:.{digits}f}"


def _signed(values: Sequence[float], scale: float, digits: int) -> str:
    vals = [v * scale for v in values if not math.isnan(v)]
    return f"{np.mean(vals):+.{digits}f}" if vals else "n/a"


def table_rows(runs: Mapping[str, Sequence[Mapping]], evaluation: str, curve: str | None = None
               ) -> list[dict]:
    """Per method: the runs' values of `curve` (default: the headline) at k = 0 and k = K, and ΔK."""
    rows = []
    for method, records in runs.items():
        evs = [r["evaluations"][evaluation] for r in records if evaluation in r["evaluations"]]
        if not evs:
            continue
        name = curve or evs[0]["headline"]
        curves = [ev["curves"][name] for ev in evs if name in ev["curves"]]
        first = [c[0] for c in curves]
        last = [c[-1] for c in curves]
        rows.append({"method": method, "runs": len(curves), "curve": name, "K": evs[0]["K"],
                     "unit": evs[0].get("units", {}).get(name, ""), "k0": first, "kK": last,
                     "delta": [b - a for a, b in zip(first, last)]})
    return rows


def summary_table(runs: Mapping[str, Sequence[Mapping]], evaluations: Sequence[str] | None = None,
                  digits: int = 1) -> str:
    """A markdown table like paper Table 1: one row per method; per evaluation k=0, k=K and ΔK.
    Fractions are shown in percent (ΔK in percentage points)."""
    if evaluations is None:
        evaluations = sorted({name for records in runs.values() for r in records
                              for name in r["evaluations"]})
    header, rule = ["Method", "runs"], ["---", "---:"]
    per_eval = {}
    for name in evaluations:
        per_eval[name] = {row["method"]: row for row in table_rows(runs, name)}
        any_row = next(iter(per_eval[name].values()), None)
        if any_row is None:
            continue
        pct = " (%)" if any_row["unit"] == "fraction" else ""
        K = any_row["K"]
        header += [f"{name} {any_row['curve']}{pct} k=0", f"k={K}", f"Δ{K}"]
        rule += ["---:"] * 3
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    for method in runs:
        cells = [method, str(len(runs[method]))]
        for name in evaluations:
            if not per_eval.get(name):
                continue
            row = per_eval[name].get(method)
            if row is None:
                cells += ["–"] * 3
                continue
            scale = 100.0 if row["unit"] == "fraction" else 1.0
            d = digits if scale == 100.0 else max(digits, 3)
            cells += [_stat(row["k0"], scale, d), _stat(row["kK"], scale, d), _signed(row["delta"], scale, d)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def overlay_plots(runs: Mapping[str, Sequence[Mapping]], out_dir: str) -> list[str]:
    """One PNG per (evaluation, curve): every method's mean curve with a standard-error band."""
    paths = []
    names = sorted({name for records in runs.values() for r in records for name in r["evaluations"]})
    for name in names:
        curve_names = sorted({c for records in runs.values() for r in records
                              if name in r["evaluations"] for c in r["evaluations"][name]["curves"]})
        for cname in curve_names:
            series = {method: [r["evaluations"][name]["curves"][cname] for r in records
                               if name in r["evaluations"] and cname in r["evaluations"][name]["curves"]]
                      for method, records in runs.items()}
            series = {m: s for m, s in series.items() if s}
            kind = next(r["evaluations"][name]["kind"] for rs in runs.values() for r in rs
                        if name in r["evaluations"])
            xlabel = "search step k" if kind == "greedy_search" else "self-improvement step k"
            paths.append(plots.plot_curves(
                series, os.path.join(out_dir, f"compare_{name}_{cname}.png"),
                title=f"{name}: {plots.curve_label(cname)}", ylabel=plots.curve_label(cname), xlabel=xlabel))
        groups = {method: [r["evaluations"][name]["groups"] for r in records
                           if name in r["evaluations"] and r["evaluations"][name].get("groups")]
                  for method, records in runs.items()}
        groups = {m: g for m, g in groups.items() if g}
        if groups:
            paths.append(plots.plot_groups(groups, os.path.join(out_dir, f"compare_{name}_groups.png"),
                                           title=f"{name}: accuracy per split"))
    return paths


def compare(paths: Sequence[str], out_dir: str, labels: Sequence[str] | None = None) -> dict:
    """Loads the runs, writes `comparison.md` and overlay PNGs into out_dir; returns table and paths."""
    runs = load_runs(paths, labels)
    os.makedirs(out_dir, exist_ok=True)
    table = summary_table(runs)
    md_path = os.path.join(out_dir, "comparison.md")
    with open(md_path, "w", encoding="utf-8") as f:
        f.write("# Run comparison\n\nRuns:\n\n")
        for method, records in runs.items():
            for r in records:
                f.write(f"- {method}: {r['_path']} (seed {r.get('seed')}, iteration {r.get('iteration')})\n")
        f.write("\nmean ± standard error over runs of a method; ΔK = k=K − k=0 (mean over runs)\n\n")
        f.write(table)
    return {"table": table, "markdown": md_path, "plots": overlay_plots(runs, out_dir)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="eval.json files or run directories that hold one")
    parser.add_argument("--out_dir", required=True, help="where comparison.md and the PNGs go")
    parser.add_argument("--labels", default=None, help="comma-separated method label per run")
    args = parser.parse_args(argv)
    labels = args.labels.split(",") if args.labels else None
    result = compare(args.runs, args.out_dir, labels)
    print(result["table"])
    print("\n".join(["wrote " + result["markdown"]] + ["wrote " + p for p in result["plots"]]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
