"""The spectral front end shared by the separators: STFT/iSTFT of multichannel audio and mel bands.

`stft` and `istft` fold the batch and channel axes so that every model sees the same transform
(periodic Hann window, centred frames with reflect padding, one-sided, unnormalised), which is
what the community Mel-RoFormer code uses too.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor


def stft(audio: Tensor, n_fft: int, hop: int, win_length: int | None = None) -> Tensor:
    """Complex STFT of `audio` [..., T] -> [..., n_fft // 2 + 1, 1 + T // hop]."""
    win_length = win_length or n_fft
    shape = audio.shape
    window = torch.hann_window(win_length, device=audio.device, dtype=audio.dtype)
    spec = torch.stft(
        audio.reshape(-1, shape[-1]),  # to (batch*channels, time)
        n_fft=n_fft,
        hop_length=hop,
        win_length=win_length,
        window=window,
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )
    return spec.reshape(*shape[:-1], *spec.shape[-2:])


def istft(
    spec: Tensor, n_fft: int, hop: int, length: int | None, win_length: int | None = None
) -> Tensor:
    """Inverse of `stft`: complex [..., F, N] -> real [..., length]."""
    win_length = win_length or n_fft
    shape = spec.shape
    window = torch.hann_window(win_length, device=spec.device, dtype=spec.real.dtype)
    audio = torch.istft(
        spec.reshape(-1, *shape[-2:]),  # to (batch*channels, freqs, frames)
        n_fft=n_fft,
        hop_length=hop,
        win_length=win_length,
        window=window,
        center=True,
        length=length,
    )
    return audio.reshape(*shape[:-2], audio.shape[-1])


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney mel scale (librosa's default, htk=False): linear below 1 kHz, log above."""
    hz = np.atleast_1d(np.asarray(hz, dtype=np.float64))
    f_sp = 200.0 / 3
    mels = hz / f_sp
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    above = hz >= min_log_hz
    mels[above] = min_log_mel + np.log(hz[above] / min_log_hz) / logstep
    return mels


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    mels = np.atleast_1d(np.asarray(mels, dtype=np.float64))
    f_sp = 200.0 / 3
    hz = mels * f_sp
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    above = mels >= min_log_mel
    hz[above] = min_log_hz * np.exp(logstep * (mels[above] - min_log_mel))
    return hz


@functools.lru_cache(maxsize=16)
def mel_band_membership(sample_rate: int, n_fft: int, num_bands: int) -> np.ndarray:
    """Which STFT bins belong to which mel band: bool [num_bands, n_fft // 2 + 1].

    The pattern is where librosa's Slaney mel filterbank (fmin 0, fmax sr/2) is positive, with
    bin 0 forced into the first band and the Nyquist bin into the last, as the community
    Mel-RoFormer code does. Only the sign of each triangle matters, and the smallest triangle
    value away from the forced corners is ~1e-4, so float64 reproduces the pattern exactly.
    """
    n_freqs = n_fft // 2 + 1
    fft_freqs = np.linspace(0, sample_rate / 2, n_freqs)
    mel_edges = _mel_to_hz(
        np.linspace(_hz_to_mel(0.0)[0], _hz_to_mel(sample_rate / 2)[0], num_bands + 2)
    )
    widths = np.diff(mel_edges)
    ramps = mel_edges[:, None] - fft_freqs[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, 0] = 1.0
    weights[-1, -1] = 1.0
    return weights > 0
