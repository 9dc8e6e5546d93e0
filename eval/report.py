"""Aggregate per-track scores into the tables researchers publish, as rich, JSON, CSV and PNG.

Conventions, stated in every table: `museval` columns are BSSEval v4 medians over one-second
frames per track, then the median over tracks (SiSEC); `global` is the MDX global SDR, the mean
over tracks. The average row is the mean over stems of the per-stem values.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

METRICS = ("SDR", "SIR", "SAR", "ISR")


def aggregate(tracks: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-track records -> {"stems": {stem: {...}}, "average": {...}}.

    A record is {"name", "scores": {stem: {"SDR": frame-median, "SIR", "SAR", "ISR", "global_sdr"}}}.
    """
    stems: dict[str, dict[str, float]] = {}
    names = sorted({s for t in tracks for s in t["scores"]}, key=_stem_order)
    for stem in names:
        rows = [t["scores"][stem] for t in tracks if stem in t["scores"]]
        entry = {}
        for metric in METRICS:
            values = np.array([r[metric] for r in rows], dtype=float)
            values = values[np.isfinite(values)]
            entry[f"museval_{metric.lower()}_median"] = (
                float(np.median(values)) if values.size else float("nan")
            )
        entry["global_sdr_mean"] = float(np.mean([r["global_sdr"] for r in rows]))
        gnsdr = _gnsdr([t for t in tracks if "nsdr" in t["scores"].get(stem, {})], stem)
        if gnsdr is not None:
            entry["gnsdr"] = gnsdr
        stems[stem] = entry
    average = {
        key: float(np.mean([v[key] for v in stems.values()]))
        for key in next(iter(stems.values()), {})
        if all(key in v for v in stems.values())
    }
    return {"stems": stems, "average": average}


def _gnsdr(tracks: list[dict[str, Any]], stem: str) -> float | None:
    """MIR-1K's GNSDR: the mean of NSDR (BSS Eval v3) over clips, weighted by clip length."""
    if not tracks:
        return None
    weights = np.array([t["length"] for t in tracks], dtype=float)
    values = np.array([t["scores"][stem]["nsdr"] for t in tracks], dtype=float)
    return float(np.sum(weights * values) / np.sum(weights))


def _stem_order(stem: str) -> tuple[int, str]:
    order = ["vocals", "drums", "bass", "other", "accompaniment"]
    return (order.index(stem) if stem in order else len(order), stem)


def write_outputs(
    out: Path, model: str, settings: dict, tracks: list[dict[str, Any]]
) -> dict[str, Any]:
    """summary.json and scores.csv in `out`; returns the summary."""
    summary = {"model": model, "settings": settings, "tracks": len(tracks), **aggregate(tracks)}
    summary["conventions"] = {
        "museval_*_median": "BSSEval v4 (museval), 1 s windows and hop; median over frames, then median over tracks",
        "global_sdr_mean": "10 log10(sum s^2 / sum (s - s_hat)^2) per track, mean over tracks (MDX)",
        "gnsdr": "vocals + accompaniment tracks only: BSS Eval v3 SDR(estimate) - SDR(mixture) "
        "per clip, channels averaged, mean weighted by clip length (MIR-1K, Huang et al. 2014)",
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    with open(out / "scores.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "track",
                "stem",
                "museval_sdr",
                "museval_sir",
                "museval_sar",
                "museval_isr",
                "global_sdr",
                "input",
            ]
        )
        for t in sorted(tracks, key=lambda t: t["name"]):
            for stem, s in t["scores"].items():
                writer.writerow(
                    [
                        t["name"],
                        stem,
                        *(f"{s[m]:.4f}" for m in METRICS),
                        f"{s['global_sdr']:.4f}",
                        t.get("input", ""),
                    ]
                )
    return summary


def summary_table(summaries: dict[str, dict[str, Any]]) -> Table:
    """Side-by-side table of one or more summaries (label -> summary)."""
    table = Table(
        title="MUSDB evaluation  (museval: median of frame medians, SiSEC; global: mean of global SDR, MDX)"
    )
    table.add_column("stem")
    for label in summaries:
        table.add_column(f"{label}\nmuseval SDR", justify="right")
        table.add_column(f"{label}\nglobal SDR", justify="right")
    stems = sorted({s for summary in summaries.values() for s in summary["stems"]}, key=_stem_order)
    gnsdr = any("gnsdr" in v for summary in summaries.values() for v in summary["stems"].values())
    if gnsdr:
        for label in summaries:
            table.add_column(f"{label}\nGNSDR", justify="right")
    for stem in [*stems, "average"]:
        row = [stem]
        for summary in summaries.values():
            values = summary["average"] if stem == "average" else summary["stems"].get(stem)
            row += (
                [f"{values['museval_sdr_median']:.2f}", f"{values['global_sdr_mean']:.2f}"]
                if values
                else ["-", "-"]
            )
        if gnsdr:
            for summary in summaries.values():
                values = summary["average"] if stem == "average" else summary["stems"].get(stem)
                row.append(f"{values['gnsdr']:.2f}" if values and "gnsdr" in values else "-")
        table.add_row(*row)
    return table


def read_summary(folder: Path) -> dict[str, Any]:
    """A results folder's summary.json, checked; ValueError naming the file if it is not one."""
    path = Path(folder) / "summary.json"
    if not path.is_file():
        raise ValueError(
            f"{folder} has no summary.json; run 'sepcli evaluate --out {folder}' first"
        )
    try:
        summary = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"{path} is not valid JSON ({err})")
    if not _is_summary(summary):
        raise ValueError(f"{path} is not a sepcli evaluate summary (no per-stem scores)")
    return summary


def _is_summary(summary: Any) -> bool:
    def scores(entry: Any) -> bool:
        return isinstance(entry, dict) and all(
            isinstance(entry.get(key), (int, float))
            for key in ("museval_sdr_median", "global_sdr_mean")
        )

    return (
        isinstance(summary, dict)
        and isinstance(summary.get("stems"), dict)
        and bool(summary["stems"])
        and all(scores(v) for v in summary["stems"].values())
        and scores(summary.get("average"))
    )


def read_track_scores(folder: Path) -> list[dict[str, Any]]:
    """The per-track records of a results folder; unreadable or malformed files are left out."""
    records = []
    for path in sorted((folder / "tracks").glob("*.scores.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            continue
        if isinstance(record, dict) and isinstance(record.get("scores"), dict):
            records.append(record)
    return records


def boxplot(folders: dict[str, Path], png: Path) -> None:
    """Per-stem boxplots of per-track museval SDR, one box per results folder (SiSEC style)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = {label: read_track_scores(folder) for label, folder in folders.items()}
    stems = sorted(
        {s for tracks in data.values() for t in tracks for s in t["scores"]}, key=_stem_order
    )
    fig, axes = plt.subplots(
        1, len(stems), figsize=(3.2 * len(stems), 4), sharey=True, squeeze=False
    )
    for ax, stem in zip(axes[0], stems):
        values = [[t["scores"][stem]["SDR"] for t in tracks if stem in t["scores"] and np.isfinite(t["scores"][stem]["SDR"])]
                  for tracks in data.values()]  # fmt: skip
        ax.boxplot(values, vert=False, showfliers=True, flierprops={"markersize": 3})
        ax.set_yticks(range(1, len(data) + 1), list(data))
        ax.set_title(stem)
        ax.set_xlabel("SDR (dB), museval median per track")
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def paired_differences(first: Path, second: Path) -> dict[str, dict[str, float]]:
    """Track-by-track differences second - first, per stem and over all track-stems: the mean
    and its standard error for museval SDR and global SDR, and the share of track-stems that
    improved (global). Only tracks scored in both folders count."""
    a = {t["name"]: t["scores"] for t in read_track_scores(first)}
    b = {t["name"]: t["scores"] for t in read_track_scores(second)}
    names = sorted(set(a) & set(b))
    rows: dict[str, dict[str, list[float]]] = {}
    for name in names:
        for stem in set(a[name]) & set(b[name]):
            for metric, key in (("museval", "SDR"), ("global", "global_sdr")):
                d = b[name][stem][key] - a[name][stem][key]
                if np.isfinite(d):
                    for group in (stem, "all"):
                        rows.setdefault(group, {}).setdefault(metric, []).append(float(d))
    out = {}
    for group, metrics in sorted(rows.items(), key=lambda kv: _stem_order(kv[0])):
        entry = {"tracks": len(metrics.get("global", []))}
        for metric, values in metrics.items():
            v = np.array(values)
            entry[f"{metric}_mean"] = float(v.mean())
            entry[f"{metric}_se"] = (
                float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else float("nan")
            )
        entry["improved"] = float(np.mean(np.array(metrics.get("global", [0.0])) > 0))
        out[group] = entry
    return out


def paired_table(first: str, second: str, diffs: dict[str, dict[str, float]]) -> Table:
    table = Table(title=f"track by track: {second} - {first} (mean +- standard error, dB)")
    for column in ("stem", "track-stems", "museval SDR", "global SDR", "global better"):
        table.add_column(column, justify="right")
    for group, entry in diffs.items():
        table.add_row(group, str(entry["tracks"]),
                      f"{entry.get('museval_mean', float('nan')):+.3f} +- {entry.get('museval_se', float('nan')):.3f}",
                      f"{entry['global_mean']:+.3f} +- {entry['global_se']:.3f}",
                      f"{100 * entry['improved']:.0f} %")  # fmt: skip
    return table
