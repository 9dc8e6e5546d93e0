"""Melody scores with mir_eval (Salamon et al. 2014's measures, as MIREX reports them)."""

from __future__ import annotations

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
    mir_eval resamples both to 10 ms. Pitch is right within 50 cents."""
    import mir_eval

    scores = mir_eval.melody.evaluate(
        np.asarray(ref_times, float), np.asarray(ref_hz, float),
        np.asarray(est_times, float), np.asarray(est_hz, float),
    )  # fmt: skip
    return {key: float(scores[name]) for name, key in MEASURES.items()}


def average(per_clip: list[dict[str, float]]) -> dict[str, float]:
    """Each measure's mean over clips (NaN where no clip defines it, e.g. no voiced frame)."""
    out = {}
    for key in MEASURES.values():
        values = [clip[key] for clip in per_clip if np.isfinite(clip[key])]
        out[key] = float(np.mean(values)) if values else float("nan")
    return out
