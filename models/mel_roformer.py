"""Mel-RoFormer (Wang, Lu, Chen, ISMIR 2024): the RoFormer on overlapping mel bands.

What differs from the BS-RoFormer (`models/bs_roformer.py`; the rest is `models/roformer.py`):
the bands are `num_bands` mel bands from a Slaney mel filterbank, which overlap, so the masks of
the bands that share an STFT bin are averaged; an RMSNorm ends every time and frequency
transformer and there is no final norm; `mask_estimator_depth` counts hidden layers (D + 1
Linear layers per band MLP). Parameter names and shapes follow the community MelBandRoformer,
so its `.ckpt` state dicts load with `strict=True` and give the same output. See
../shared/specs/mel_roformer/SPEC.md for the facts.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from models.roformer import BandLayout, RoFormer, RoFormerConfig
from models.spectral import mel_band_membership

MAX_BANDS = 512  # the band table is num_bands x (n_fft/2 + 1); community models use 60


@dataclasses.dataclass(frozen=True)
class MelRoFormerConfig(RoFormerConfig):
    """The Mel-RoFormer's hyper-parameters: the shared ones (`RoFormerConfig`) with the Mel
    class defaults, plus `num_bands` and `match_input_audio_length`."""

    stereo: bool = True
    num_bands: int = 60
    attn_dropout: float = 0.1
    ff_dropout: float = 0.1
    mask_estimator_depth: int = 1
    match_input_audio_length: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.num_bands <= MAX_BANDS:
            raise ValueError(f"config key 'num_bands' must be in 1..{MAX_BANDS}")


class MelRoFormer(RoFormer):
    """Mel-band RoFormer separator.

    Args:
        config: a `MelRoFormerConfig`; the community YAML `model:` section passes straight in.

    forward: mix [B, C, T] -> [B, S, C, T] with S = num_stems and C = 2 (stereo) or 1.
    """

    def __init__(self, config: MelRoFormerConfig) -> None:
        membership = mel_band_membership(config.sample_rate, config.stft_n_fft, config.num_bands)
        channels = 2 if config.stereo else 1
        bins = [np.flatnonzero(row) for row in membership]
        layout = BandLayout.from_bins(bins, membership.shape[1], channels)
        super().__init__(config, layout, norm_each_transformer=True,
                         mask_hidden_layers=config.mask_estimator_depth)  # fmt: skip


def reference_flops(cfg: MelRoFormerConfig, frames: int) -> float:
    """Multiply-add FLOPs of one forward on one chunk of `frames` STFT frames (batch 1)."""
    bins = mel_band_membership(cfg.sample_rate, cfg.stft_n_fft, cfg.num_bands).sum(axis=1)
    channels = 2 if cfg.stereo else 1
    sizes = bins * channels * 2
    d, inner, k = cfg.dim, cfg.heads * cfg.dim_head, cfg.num_bands
    tokens = frames * k
    proj = 2 * tokens * d * (3 * inner + cfg.heads + inner)
    ff = 2 * tokens * d * 4 * d * 2
    attn_time = 4 * k * frames**2 * inner
    attn_freq = 4 * frames * k**2 * inner
    per_depth = (proj + ff) * (cfg.time_transformer_depth + cfg.freq_transformer_depth)
    per_depth += attn_time * cfg.time_transformer_depth + attn_freq * cfg.freq_transformer_depth
    hidden = d * cfg.mlp_expansion_factor
    mlp = k * (d * hidden + (cfg.mask_estimator_depth - 1) * hidden**2) + hidden * 2 * sizes.sum()
    return float(
        cfg.depth * per_depth + 2 * frames * mlp * cfg.num_stems + 2 * frames * sizes.sum() * d
    )


__all__ = ["MelRoFormer", "MelRoFormerConfig", "reference_flops"]
