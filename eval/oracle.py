"""Oracle estimates computed from the true stems: upper bounds, a lower bound, a pipeline check.

irm2: power ratio mask |S_j|^2 / sum_k |S_k|^2; irm1: magnitude ratio |S_j| / sum_k |S_k|;
ibm: binary mask where source j is the loudest; mix: the mixture itself for every stem.
Masks are applied to the mixture STFT (4096-point Hann window, hop 1024) and inverted.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import istft, stft

ORACLES = ("irm2", "irm1", "ibm", "mix")
N_FFT, HOP = 4096, 1024


def oracle_estimates(method: str, stems: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Estimates {name: [T, C]} from references {name: [T, C]} whose sum is the mixture."""
    if method not in ORACLES:
        raise ValueError(f"unknown oracle '{method}' (use {', '.join(ORACLES)})")
    names = list(stems)
    mix = sum(stems.values())
    if method == "mix":
        return {name: mix.copy() for name in names}
    length = mix.shape[0]

    def spec(x: np.ndarray) -> np.ndarray:  # [T, C] -> [C, F, N]
        return stft(x.T, nperseg=N_FFT, noverlap=N_FFT - HOP, window="hann")[2]

    mix_spec = spec(mix)
    mags = np.stack([np.abs(spec(stems[n])) for n in names])  # (sources, C, F, N)
    if method == "irm2":
        power = mags**2
        masks = power / (power.sum(axis=0) + 1e-12)
    elif method == "irm1":
        masks = mags / (mags.sum(axis=0) + 1e-12)
    else:
        masks = (mags == mags.max(axis=0, keepdims=True)).astype(np.float64)
    out = {}
    for name, mask in zip(names, masks):
        audio = istft(mask * mix_spec, nperseg=N_FFT, noverlap=N_FFT - HOP, window="hann")[1].T
        audio = audio[:length]
        if audio.shape[0] < length:
            audio = np.pad(audio, ((0, length - audio.shape[0]), (0, 0)))
        out[name] = audio
    return out
