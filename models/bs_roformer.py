"""BS-RoFormer (Lu et al., "Music Source Separation with Band-Split RoPE Transformer", 2023).

What differs from the Mel-RoFormer (`models/mel_roformer.py`; the rest is `models/roformer.py`):
the bands are `freqs_per_bands`, contiguous bin ranges that tile the spectrum without overlap
(62 bands by default), so each STFT bin takes one band's mask as it is; no transformer ends with
a norm, and one `final_norm` follows the whole stack; `mask_estimator_depth` counts Linear
layers (D Linear layers per band MLP, at least one). Parameter names and shapes follow the
community BSRoformer (ZFTurbo's Music-Source-Separation-Training, commit ccc011a), so viperx's
and ZFTurbo's `.ckpt` state dicts load with `strict=True` and give the same output. See
../shared/specs/bs_roformer/SPEC.md for the facts.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from models.roformer import BandLayout, RoFormer, RoFormerConfig

# The community default: 24 bands of 2 bins, 12 of 4, 8 of 12, 8 of 24, 8 of 48, then 128 and
# 129 (62 bands, 1025 bins: n_fft 2048).
DEFAULT_FREQS_PER_BANDS = (2,) * 24 + (4,) * 12 + (12,) * 8 + (24,) * 8 + (48,) * 8 + (128, 129)


@dataclasses.dataclass(frozen=True)
class BSRoFormerConfig(RoFormerConfig):
    """The BS-RoFormer's hyper-parameters: the shared ones (`RoFormerConfig`, whose defaults are
    the BS class defaults) plus `freqs_per_bands`. `sage_attention` (a kernel switch of the
    community code in 2025, no parameters) is accepted and ignored."""

    freqs_per_bands: tuple[int, ...] = DEFAULT_FREQS_PER_BANDS
    sage_attention: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        bins = self.stft_n_fft // 2 + 1
        if len(self.freqs_per_bands) < 2:
            raise ValueError("config key 'freqs_per_bands' needs at least two bands")
        if any(n < 1 for n in self.freqs_per_bands) or sum(self.freqs_per_bands) != bins:
            raise ValueError(
                f"config key 'freqs_per_bands' must be positive and sum to n_fft/2 + 1 = {bins}, "
                f"got {sum(self.freqs_per_bands)}"
            )


class BSRoFormer(RoFormer):
    """Band-split RoFormer separator.

    Args:
        config: a `BSRoFormerConfig`; the community YAML `model:` section passes straight in.

    forward: mix [B, C, T] -> [B, S, C, T] with S = num_stems and C = 2 (stereo) or 1.
    """

    def __init__(self, config: BSRoFormerConfig) -> None:
        starts = np.cumsum((0,) + tuple(config.freqs_per_bands))
        bins = [np.arange(lo, hi) for lo, hi in zip(starts[:-1], starts[1:])]
        layout = BandLayout.from_bins(bins, int(starts[-1]), 2 if config.stereo else 1)
        super().__init__(config, layout, norm_each_transformer=False,
                         mask_hidden_layers=max(config.mask_estimator_depth, 1) - 1)  # fmt: skip


__all__ = ["BSRoFormer", "BSRoFormerConfig", "DEFAULT_FREQS_PER_BANDS"]
