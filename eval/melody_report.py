"""`sepcli evaluate compare` for melody results folders (`sepcli evaluate --task melody`): their
means side by side, clip-by-clip differences with standard errors, and boxplots per measure.
The functions are named as `eval.report`'s for separation folders, so `compare` runs either
module the same way."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from eval.melody import MEASURES

LOWER_IS_BETTER = {"voicing_false_alarm"}


def _melody_summary(folder: Path) -> dict[str, Any] | None:
    """`folder`'s summary.json if it is a melody evaluation's (task: melody), else None."""
    try:
        summary = json.loads((Path(folder) / "summary.json").read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return summary if isinstance(summary, dict) and summary.get("task") == "melody" else None


def is_melody_results(folder: Path) -> bool:
    """Whether `folder` holds a melody evaluation (its summary.json says task: melody)."""
    return _melody_summary(folder) is not None


def read_summary(folder: Path) -> dict[str, Any]:
    """A melody results folder's summary.json, checked; ValueError naming the file otherwise."""
    path = Path(folder) / "summary.json"
    summary = _melody_summary(folder)
    if summary is None:
        raise ValueError(f"{path} is not a sepcli melody evaluation summary")
    mean = summary.get("mean")
    if not isinstance(mean, dict) or not all(isinstance(mean.get(k), (int, float))
                                             for k in MEASURES.values()):  # fmt: skip
        raise ValueError(f"{path} lacks the mean melody measures")
    return summary


def read_melody_scores(folder: Path) -> dict[str, dict[str, float]]:
    """Per-clip measures from a melody results folder's scores.csv: {clip: {measure: value}}
    (NaN where mir_eval gave none, e.g. a clip without voiced frames)."""
    path = Path(folder) / "scores.csv"
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        return {row["track"]: {k: _number(row[k]) for k in MEASURES.values()} for row in rows}
    except (OSError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a melody scores table ({err})")


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


def summary_table(summaries: dict[str, dict[str, Any]]) -> Table:
    table = Table(title="melody: mean over clips (%)")
    table.add_column("results")
    table.add_column("clips", justify="right")
    for key in MEASURES.values():
        table.add_column(key.replace("_", " "), justify="right")
    for label, summary in summaries.items():
        table.add_row(label, str(summary.get("tracks", "")),
                      *(f"{100 * summary['mean'][k]:.2f}" for k in MEASURES.values()))  # fmt: skip
    return table


def paired_differences(first: Path, second: Path) -> dict[str, dict[str, float]]:
    """Clip-by-clip differences second - first, in points (%), per measure: their mean, its
    standard error, and the share of clips on which `second` did better (lower for voicing false
    alarm). Only clips scored in both folders, with the measure defined in both, count."""
    a, b = read_melody_scores(first), read_melody_scores(second)
    clips = sorted(set(a) & set(b))
    if not clips:
        raise ValueError(f"{first} and {second} have no clip in common")
    out = {}
    for key in MEASURES.values():
        d = np.array([100 * (b[c][key] - a[c][key]) for c in clips])
        d = d[np.isfinite(d)]
        better = -d if key in LOWER_IS_BETTER else d
        out[key] = {
            "clips": int(d.size),
            "mean": float(d.mean()) if d.size else float("nan"),
            "se": float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else float("nan"),
            "better": float(np.mean(better > 0)) if d.size else float("nan"),
        }
    return out


def paired_table(first: str, second: str, diffs: dict[str, dict[str, float]]) -> Table:
    table = Table(title=f"clip by clip: {second} - {first} (mean +- standard error, points)")
    for column in ("measure", "clips", "difference", f"{second} better"):
        table.add_column(column, justify="right")
    for key, entry in diffs.items():
        table.add_row(key.replace("_", " "), str(entry["clips"]),
                      f"{entry['mean']:+.2f} +- {entry['se']:.2f}",
                      f"{100 * entry['better']:.0f} %")  # fmt: skip
    return table


def boxplot(folders: dict[str, Path], png: Path) -> None:
    """One panel per measure, one box of per-clip values per results folder."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = {label: read_melody_scores(folder) for label, folder in folders.items()}
    keys = list(MEASURES.values())
    fig, axes = plt.subplots(1, len(keys), figsize=(3.0 * len(keys), 0.6 * len(data) + 2.4),
                             sharey=True, squeeze=False)  # fmt: skip
    for ax, key in zip(axes[0], keys):
        values = [[100 * s[key] for s in clips.values() if np.isfinite(s[key])]
                  for clips in data.values()]  # fmt: skip
        ax.boxplot(values, vert=False, showmeans=True, flierprops={"markersize": 3})
        ax.set_yticks(range(1, len(data) + 1), list(data))
        ax.set_title(key.replace("_", " "))
        ax.set_xlabel("% per clip")
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
