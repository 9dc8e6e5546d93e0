"""Shared test helpers: small test-only separators and generated audio files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from models.base import Separator

SHARED = Path(__file__).resolve().parents[2] / "shared"
MUSDB_PREVIEWS = SHARED / "data" / "musdb18-7"
MEL_SPEC = SHARED / "specs" / "mel_roformer"


class GainSeparator(Separator):
    """Test-only: source i is the mixture times gains[i]. gains=(1,) is the identity."""

    def __init__(self, gains=(1.0, 0.5), segment: int = 1000, sample_rate: int = 44100) -> None:
        super().__init__()
        self.sources = tuple(f"s{i}" for i in range(len(gains)))
        self.gains = torch.tensor(gains, dtype=torch.float32)
        self.sample_rate, self.audio_channels, self.segment = sample_rate, 2, segment

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        return mix[:, None] * self.gains.to(mix)[None, :, None, None]


def write_tone(
    path: Path, seconds: float, rate: int = 44100, channels: int = 2, subtype: str = "PCM_16"
) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    audio = np.stack(
        [0.3 * np.sin(2 * np.pi * (220 + 110 * c) * t) for c in range(channels)], axis=1
    )
    sf.write(path, audio, rate, subtype=subtype)
    return audio


TINY_MEL_ROFORMER = dict(dim=16, depth=1, num_stems=4, sources=["vocals", "drums", "bass", "other"],
                         time_transformer_depth=1, freq_transformer_depth=1, num_bands=8, dim_head=8,
                         heads=2, mask_estimator_depth=1, mlp_expansion_factor=1, stft_hop_length=512,
                         segment=44100)  # fmt: skip


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A small random Mel-RoFormer (4 stems) in the native format, for CLI tests."""
    from sepcli import checkpoints

    torch.manual_seed(0)
    model = checkpoints.build_model("mel-roformer", TINY_MEL_ROFORMER)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    checkpoints.save_checkpoint(path, model, {"note": "random weights for tests"})
    return path
