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


def nsdr_v3(references: dict[str, np.ndarray], estimates: dict[str, np.ndarray],
            mixture: np.ndarray) -> dict[str, dict[str, float]]:  # fmt: skip
    """BSS Eval v3 SDR of each estimate and of the mixture as its estimate, and their difference
    (NSDR), per stem, on the whole signal with channels averaged: MIR-1K's measure (Huang et al.
    2014; GNSDR is the length-weighted mean of NSDR over clips). `references`, `estimates` and
    `mixture` are [T, C]; every reference must hold sound."""
    from museval.metrics import bss_eval as museval_bss_eval

    def v3_sdr(estimate_rows: np.ndarray) -> np.ndarray:
        # BSS Eval v3 ("sources" version: 512-tap distortion filters per source, on the whole
        # signal); museval implements it as mir_eval.separation did.
        sdr, _, _, _, _ = museval_bss_eval(refs[..., None], estimate_rows[..., None],
                                           window=np.inf, hop=np.inf, compute_permutation=False,
                                           bsseval_sources_version=True)  # fmt: skip
        return sdr[:, 0]

    stems = list(references)
    refs = np.stack([np.asarray(references[s], np.float64).mean(axis=-1) for s in stems])
    ests = np.stack([np.asarray(estimates[s], np.float64).mean(axis=-1) for s in stems])
    mix = np.asarray(mixture, np.float64).mean(axis=-1)
    sdr, mix_sdr = v3_sdr(ests), v3_sdr(np.stack([mix] * len(stems)))
    return {s: {"sdr_v3": float(sdr[i]), "mix_sdr_v3": float(mix_sdr[i]),
                "nsdr": float(sdr[i] - mix_sdr[i])} for i, s in enumerate(stems)}  # fmt: skip
