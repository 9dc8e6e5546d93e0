"""Melody scores with mir_eval (Salamon et al. 2014's measures, as MIREX reports them)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

MEASURES = {
    "Raw Pitch Accuracy": "raw_pitch_accuracy",
    "Raw Chroma Accuracy": "raw_chroma_accuracy",
    "Voicing Recall": "voicing_recall",
    "Voicing False Alarm": "voicing_false_alarm",
    "Overall Accuracy": "overall_accuracy",
}


def melody_scores(
    ref_times: np.ndarray, ref_hz: np.ndarray, est_times: np.ndarray, est_hz: np.ndarray
) -> dict[str, float]:
    """One clip: reference and estimate contours (Hz, 0 = unvoiced), each on its own time grid;
    mir_eval reads the estimate on the reference's times (linear in cents between frames), so
    every reference frame counts once. Pitch is right within 50 cents. An estimate may give an
    unvoiced frame's pitch guess as a negative frequency (the MIREX convention): raw pitch and
    chroma accuracy then count it, the voicing measures and overall accuracy do not."""
    import mir_eval

    scores = mir_eval.melody.evaluate(
        np.asarray(ref_times, float), np.asarray(ref_hz, float),
        np.asarray(est_times, float), np.asarray(est_hz, float),
    )  # fmt: skip
    return {key: float(scores[name]) for name, key in MEASURES.items()}


def mirex_contour(hz: np.ndarray, confidence: np.ndarray, threshold: float) -> np.ndarray:
    """Every frame's pitch guess (Hz) and voicing confidence -> the contour `melody_scores`
    reads: voiced where the confidence reaches `threshold`, the guess negated elsewhere."""
    return np.where(np.asarray(confidence) >= threshold, hz, -np.asarray(hz))


def average(per_clip: list[dict[str, float]]) -> dict[str, float]:
    """Each measure's mean over clips (NaN where no clip defines it, e.g. no voiced frame)."""
    out = {}
    for key in MEASURES.values():
        values = [clip[key] for clip in per_clip if np.isfinite(clip[key])]
        out[key] = float(np.mean(values)) if values else float("nan")
    return out


def evaluate_melody(transcribe, label: str, tracks: list, out: Path,
                    on_track=None) -> dict[str, Any]:  # fmt: skip
    """Score `transcribe(mix [C, T] float32, rate) -> (times, Hz)` on stem-folder tracks with a
    `pitch.pv` (MIR-1K); writes summary.json, scores.csv and boxplot.png to `out`."""
    from sepcli.melody import midi_to_hz, read_pv

    records = []
    for track in tracks:
        labels = Path(track.path) / "pitch.pv"
        if not labels.is_file():
            continue
        mixture, _, rate, source = track.read()
        times, hz = transcribe(np.ascontiguousarray(mixture.T, dtype=np.float32), rate)
        ref_times, ref_midi = read_pv(labels)
        scores = melody_scores(ref_times, midi_to_hz(ref_midi), times, hz)
        records.append({"track": track.name, "input": source, **scores})
        if on_track:
            on_track(records[-1])
    if not records:
        raise ValueError("no track has a pitch.pv label file to score against")
    out.mkdir(parents=True, exist_ok=True)
    summary = {"model": label, "task": "melody", "tracks": len(records),
               "mean": average(records)}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    with open(out / "scores.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["track", "input", *MEASURES.values()])
        writer.writeheader()
        writer.writerows(records)
    _boxplot(records, label, out / "boxplot.png")
    return summary


def _boxplot(records: list[dict], label: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(MEASURES.values())
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.boxplot([[100 * r[k] for r in records] for k in keys], showmeans=True)
    ax.set_xticks(range(1, len(keys) + 1), [k.replace("_", "\n") for k in keys])
    ax.set_ylabel("%")
    ax.set_title(f"{label}: melody, {len(records)} clips")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
