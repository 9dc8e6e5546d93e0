"""Separation metrics: global SDR (the MDX convention) and museval's BSSEval v4 (SiSEC convention).

Global SDR is one number per track and stem, `10 log10(sum s^2 / sum (s - s_hat)^2)`, then a mean
over tracks. BSSEval v4 gives SDR/SIR/ISR/SAR per one-second frame; the SiSEC convention takes the
median over frames per track, then the median over tracks.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-8


def global_sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """`10 log10((sum s^2 + eps) / (sum (s - s_hat)^2 + eps))` over all samples and channels."""
    reference = np.asarray(reference, dtype=np.float64)
    estimate = np.asarray(estimate, dtype=np.float64)
    if reference.shape != estimate.shape:
        raise ValueError(f"shape mismatch: reference {reference.shape}, estimate {estimate.shape}")
    signal = np.sum(reference**2)
    error = np.sum((reference - estimate) ** 2)
    return float(10 * np.log10((signal + EPS) / (error + EPS)))


def bss_eval(
    references: np.ndarray,
    estimates: np.ndarray,
    rate: int = 44100,
    window: float = 1.0,
    hop: float = 1.0,
) -> dict[str, np.ndarray]:
    """museval BSSEval v4 per frame: references/estimates [S, T, C] -> {"SDR": [S, frames], ...}."""
    import museval  # lazy: its stempeg dependency needs ffmpeg at import time

    sdr, isr, sir, sar = museval.evaluate(
        references, estimates, win=int(window * rate), hop=int(hop * rate)
    )
    return {"SDR": sdr, "ISR": isr, "SIR": sir, "SAR": sar}


def nan_median(values: np.ndarray) -> float:
    """Median ignoring NaN frames (silent reference frames), NaN if there is nothing left."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else float("nan")
