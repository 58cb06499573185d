"""PNG plots: self-improvement curves (paper Fig. 3, 8) and curriculum statistics over training (Fig. 5, 6).

Figures are drawn on matplotlib's Agg canvas through `matplotlib.figure.Figure`, never through pyplot, so
no display is needed and importing this module leaves a notebook's backend alone. Every function writes
PNG files and returns their paths; several runs of one method are drawn as their mean with a ±1
standard-error band.
"""
from __future__ import annotations

import math
import os
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from exit_jax.training.metrics import read_metrics

CURRICULUM_PREFIX = "curriculum/"

# Readable names for the curves the evaluation writes and the curriculum statistics the trainer logs.
LABELS = {
    "accuracy": "accuracy (avg@n)",
    "macro_accuracy": "accuracy, macro mean over splits",
    "net_corrections": "net corrections (count / n chains)",
    "first_turn_net_corrections": "first-turn net corrections (count / n)",
    "episode_success": "episode success (all requests)",
    "truncated_fraction": "episodes cut by max_responses",
    "mean_turns": "assistant replies per episode",
    "fresh_turn_fraction": "turns without a previous iterate",
    "first_turn_accuracy": "first-turn accuracy",
    "total_return": "total task return",
    "normalized_score": "normalized score",
    "medal_rate": "medal rate",
    "valid_rate": "valid rate of the node made at step k",
    "reward/mean": "training reward (mean)",
    "learnability": "learnability S of trained groups",
    "sampled_depth": "sampled depth (self-iteration steps)",
    "start_turn": "replay start turn",
}


def curve_label(name: str) -> str:
    key = name[len(CURRICULUM_PREFIX):] if name.startswith(CURRICULUM_PREFIX) else name
    return LABELS.get(key, key.replace("_", " "))


def mean_and_sem(curves: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean over runs and its standard error (std with ddof=1 over sqrt(runs); 0 for a single run)."""
    arr = np.asarray(curves, dtype=np.float64)  # [runs, K + 1]
    mean = np.nanmean(arr, axis=0) if arr.shape[0] else np.full(arr.shape[1:], np.nan)
    if arr.shape[0] < 2:
        return mean, np.zeros_like(mean)
    return mean, np.nanstd(arr, axis=0, ddof=1) / math.sqrt(arr.shape[0])


def _draw_series(ax, series: Mapping[str, Sequence[Sequence[float]]], x_of=None) -> None:
    for label, runs in series.items():
        runs = [list(r) for r in runs]
        if not runs:
            continue
        mean, sem = mean_and_sem(runs)
        x = np.arange(len(mean)) if x_of is None else np.asarray(x_of(label))
        suffix = f" ({len(runs)} runs)" if len(runs) > 1 else ""
        line, = ax.plot(x, mean, marker="o", markersize=3, label=f"{label}{suffix}")
        if len(runs) > 1:
            ax.fill_between(x, mean - sem, mean + sem, color=line.get_color(), alpha=0.2)


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    FigureCanvasAgg(fig)  # the Agg canvas, whatever backend pyplot uses elsewhere
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def _save_grid(fig, axes, used: int, title: str, path: str) -> str:
    """Blanks the unused panels of a grid, adds one legend and the title, and saves it."""
    for ax in list(axes.flat)[used:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)


def _subplots(rows: int, cols: int, figsize: tuple[float, float]):
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(rows, cols, squeeze=False)


def plot_curves(series: Mapping[str, Sequence[Sequence[float]]], path: str, *, title: str,
                ylabel: str, xlabel: str = "self-improvement step k") -> str:
    """One line per label (e.g. method) of a metric vs step k; `series[label]` lists one curve per run."""
    fig, axes = _subplots(1, 1, (6.4, 4.2))
    ax = axes[0, 0]
    _draw_series(ax, series)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    length = max((len(r) for runs in series.values() for r in runs), default=1)
    ax.set_xticks(range(length) if length <= 17 else np.linspace(0, length - 1, 9).astype(int))
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_eval(record: Mapping, out_dir: str, prefix: str = "eval") -> list[str]:
    """Every curve of every evaluation of one eval.json record, one PNG per evaluation (curves as panels);
    evaluations with groups (math splits) also get a per-group accuracy grid (paper Fig. 8)."""
    paths = []
    method = record.get("method", "run")
    for name, ev in record["evaluations"].items():
        curves = ev["curves"]
        names = [ev["headline"]] + sorted(c for c in curves if c != ev["headline"])
        cols = min(3, len(names))
        rows = math.ceil(len(names) / cols)
        fig, axes = _subplots(rows, cols, (4.6 * cols, 3.4 * rows + 0.4))
        for ax, cname in zip(axes.flat, names):
            _draw_series(ax, {method: [curves[cname]]})
            ax.set_title(curve_label(cname))
            ax.set_xlabel("self-improvement step k" if ev["kind"] != "greedy_search" else "search step k")
            ax.set_ylabel(curve_label(cname))
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        for ax in list(axes.flat)[len(names):]:
            ax.axis("off")
        fig.suptitle(f"{name}: {ev['kind'].replace('_', ' ')} (K={ev['K']}, n={ev.get('n', '?')})")
        paths.append(_save(fig, os.path.join(out_dir, f"{prefix}_{name}.png")))
        groups = ev.get("groups") or {}
        if groups:
            paths.append(plot_groups({method: [groups]}, os.path.join(out_dir, f"{prefix}_{name}_groups.png"),
                                     title=f"{name}: {curve_label(ev['headline'])} per split",
                                     curve=ev["headline"]))
    return paths


def plot_groups(per_label: Mapping[str, Sequence[Mapping]], path: str, *, title: str,
                curve: str = "accuracy") -> str:
    """A grid of panels, one per group (e.g. MATH500, AIME 2024), each with one line per label."""
    names = sorted({g for runs in per_label.values() for groups in runs for g in groups})
    cols = min(4, max(len(names), 1))
    rows = max(1, math.ceil(len(names) / cols))
    fig, axes = _subplots(rows, cols, (4.0 * cols, 3.2 * rows))
    for ax, group in zip(axes.flat, names):
        series = {label: [groups[group]["curves"][curve] for groups in runs if group in groups]
                  for label, runs in per_label.items()}
        _draw_series(ax, series)
        ax.set_title(group)
        ax.set_xlabel("step k")
        ax.set_ylabel(curve_label(curve))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    return _save_grid(fig, axes, len(names), title, path)


def load_metrics(path: str) -> list[dict]:
    """Reads a run's metrics.jsonl (or the one inside a run directory), skipping torn last lines."""
    file = os.path.join(path, "metrics.jsonl") if os.path.isdir(path) else path
    if not os.path.exists(file):
        raise FileNotFoundError(f"No metrics.jsonl at {file}; expected a training run's work directory.")
    return read_metrics(file)


def _as_float(value) -> float:
    try:
        return float(value)  # the metrics writer stores non-finite values as strings ("nan")
    except (TypeError, ValueError):
        return float("nan")


def numeric_keys(runs: Mapping[str, Sequence[Mapping]], prefix: str = "") -> list[str]:
    """The keys (starting with `prefix`) with a finite numeric value in any record of any run, sorted."""
    keys = set()
    for records in runs.values():
        for r in records:
            keys.update(k for k, v in r.items() if k.startswith(prefix) and k != "iteration"
                        and isinstance(v, (int, float, str)) and not isinstance(v, bool)
                        and math.isfinite(_as_float(v)))
    return sorted(keys)


def curriculum_keys(runs: Mapping[str, Sequence[Mapping]]) -> list[str]:
    """The `curriculum/...` keys with a numeric value in any record of any run, sorted."""
    return numeric_keys(runs, CURRICULUM_PREFIX)


def plot_curriculum(runs: Mapping[str, Sequence[Mapping]] | Sequence[Mapping], path: str, *,
                    keys: Sequence[str] | None = None, title: str = "Curriculum statistics") -> str | None:
    """Curriculum statistics vs training iteration (paper Fig. 5 left, Fig. 6): one panel per
    `curriculum/...` key (sampled depth, start turn, sampled-from iteration, buffer size, ...), or one per
    given key that some run logged, one line per run. Returns None (and writes nothing) when no record
    has any of those keys (e.g. a GRPO run logs no curriculum statistics)."""
    if not isinstance(runs, Mapping):
        runs = {"run": runs}
    if keys is None:
        keys = curriculum_keys(runs)
    else:  # keep the requested order; drop keys no run logged (e.g. buffer statistics of a GRPO run)
        present = set(numeric_keys(runs))
        keys = [k for k in keys if k in present]
    if not keys:
        return None
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = _subplots(rows, cols, (4.4 * cols, 3.2 * rows))
    # One colour per run in every panel: a run that lacks a panel's key (GRPO logs no sampled depth) must
    # not shift the others' colours, or the one legend would mislabel them.
    colors = {label: f"C{i % 10}" for i, label in enumerate(runs)}
    for ax, key in zip(axes.flat, keys):
        for label, records in runs.items():
            pts = [(r["iteration"], _as_float(r[key])) for r in records if key in r and "iteration" in r]
            if pts:
                x, y = zip(*sorted(pts))
                ax.plot(x, y, label=label, linewidth=1.2, color=colors[label])
        ax.set_title(curve_label(key), fontsize=10)
        ax.set_xlabel("training iteration")
        ax.grid(alpha=0.3)
    return _save_grid(fig, axes, len(keys), title, path)
