"""Vocal melody transcription on the Mel-RoFormer trunk: the second half of Wang, Lu, Chen,
"Mel-RoFormer for Vocal Separation and Vocal Melody Transcription" (ISMIR 2024).

The separation model's trunk (band split + time/frequency transformers) is kept, its mask
estimators are dropped, and a head reads the band features of every STFT frame: each band's
feature is projected to a few channels, the bands are concatenated, and one linear layer (or a
one-hidden-layer MLP, `head_hidden`) gives the logits of `bins` pitch classes on a 20-cent grid
over the singing range plus one voicing logit. The trunk starts from a trained separation
checkpoint and is fine-tuned with the head.

With `spectral_bins` > 0 the head also reads the log-magnitude of the trunk's own STFT below a
few kHz, over `spectral_context` frames either side. Not in the paper, whose trunk is far
wider than sepcli's CPU-sized one (dim 48, 32 mel bands), whose band features blur fine pitch:
heads trained on the frozen trunk of the first embedded melody model scored 77 % raw pitch
accuracy on the validation singers from the band features, 80 % from the spectrum, 82.5 % from
both (`bench/melody_head.py`).

Loss: cross-entropy of the pitch logits against Gaussian-blurred one-hot targets (25-cent
standard deviation, as CREPE: Kim, Salamon, Li, Bello, ICASSP 2018), on voiced frames only, plus
binary cross-entropy on voicing.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.mel_roformer import MelRoFormer, MelRoFormerConfig
from models.roformer import RMSNorm


@dataclasses.dataclass(frozen=True)
class MelodyConfig(MelRoFormerConfig):
    """The trunk's Mel-RoFormer hyper-parameters plus the head's. The pitch grid runs from
    `midi_low` to `midi_high` (MIDI numbers, 36 = C2 = 65 Hz, 84 = C6 = 1047 Hz) in steps of
    1 / `bins_per_semitone` semitone."""

    num_stems: int = 1
    sources: tuple[str, ...] = ("vocals",)
    midi_low: float = 36.0
    midi_high: float = 84.0
    bins_per_semitone: int = 5
    head_channels: int = 16
    blur_cents: float = 25.0
    voicing_weight: float = 1.0
    # A frame is voiced where the voicing probability reaches this; `sepcli train melody` sets
    # it to the value that gives the best overall accuracy on the validation singers.
    voicing_threshold: float = 0.5
    # The head's direct view of the spectrum (0 = band features only, as the paper) and width.
    spectral_bins: int = 0
    spectral_context: int = 0
    head_hidden: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.midi_low < self.midi_high <= 135:
            raise ValueError("config keys 'midi_low' < 'midi_high' must lie in 0..135")
        if not 1 <= self.bins_per_semitone <= 100 or not 1 <= self.head_channels <= 1024:
            raise ValueError("config keys 'bins_per_semitone' and 'head_channels' are out of range")
        if not 0 < self.blur_cents <= 1200:
            raise ValueError("config key 'blur_cents' must be in (0, 1200]")
        if not 0 < self.voicing_threshold < 1:
            raise ValueError("config key 'voicing_threshold' must lie between 0 and 1")
        if not 0 <= self.spectral_bins <= self.stft_n_fft // 2 + 1:
            raise ValueError("config key 'spectral_bins' must lie in 0..stft_n_fft/2+1")
        if not 0 <= self.spectral_context <= 16 or not 0 <= self.head_hidden <= 8192:
            raise ValueError("config keys 'spectral_context' (0..16) or 'head_hidden' (0..8192) "
                             "are out of range")  # fmt: skip

    @property
    def bins(self) -> int:
        return int(round((self.midi_high - self.midi_low) * self.bins_per_semitone)) + 1

    def trunk_config(self) -> MelRoFormerConfig:
        names = {f.name for f in dataclasses.fields(MelRoFormerConfig)}
        return MelRoFormerConfig(**{n: getattr(self, n) for n in names})


class MelodyTranscriber(nn.Module):
    """Mix [B, C, L] -> logits [B, T, bins + 1] (pitch classes, then voicing), one row per STFT
    frame of the trunk (centred frames, hop `stft_hop_length`)."""

    def __init__(self, config: MelodyConfig) -> None:
        super().__init__()
        self.config = config
        self.trunk = MelRoFormer(config.trunk_config())
        self.trunk.mask_estimators = nn.ModuleList()  # the head replaces them
        self.sample_rate = config.sample_rate
        self.audio_channels = 2 if config.stereo else 1
        self.segment = config.segment
        self.hop = config.stft_hop_length
        self.band_head = nn.Sequential(
            RMSNorm(config.dim), nn.Linear(config.dim, config.head_channels), nn.GELU()
        )
        width = config.num_bands * config.head_channels
        width += config.spectral_bins * (2 * config.spectral_context + 1)
        self.classifier: nn.Module = (
            nn.Linear(width, config.bins + 1) if not config.head_hidden else nn.Sequential(
                nn.Linear(width, config.head_hidden), nn.GELU(),
                nn.Linear(config.head_hidden, config.bins + 1),
            )
        )  # fmt: skip
        grid = config.midi_low + np.arange(config.bins) / config.bins_per_semitone
        self.register_buffer("pitch_grid", torch.tensor(grid, dtype=torch.float32), False)

    def forward(self, mix: Tensor, train_trunk: bool = True) -> Tensor:
        """`train_trunk=False` runs the trunk without gradients (training the head alone)."""
        frames = self.frames(mix.shape[-1])
        short = self.config.stft_n_fft // 2 + 1 - mix.shape[-1]
        if short > 0:  # the centred STFT reflects n_fft/2 samples: pad very short inputs
            mix = F.pad(mix, (0, short))
        with torch.set_grad_enabled(train_trunk and torch.is_grad_enabled()):
            x, spectrum = self.trunk.encode(mix)  # (b, t, k, d), (b, t, f * c)
        spectral = None
        if self.config.spectral_bins:
            spectral = with_context(self.log_magnitudes(spectrum), self.config.spectral_context)
        return self.head(x, spectral)[:, :frames]

    def head(self, bands: Tensor, spectral: Tensor | None = None) -> Tensor:
        """Band features [B, T, K, D] and, for a spectral head, each frame's log magnitudes
        with their context ([B, T, (2 * context + 1) * bins]) -> logits [B, T, bins + 1]."""
        features = self.band_head(bands.float()).flatten(2)  # (b, t, k * h)
        if self.config.spectral_bins:
            features = torch.cat([features, spectral], -1)
        return self.classifier(features)

    def log_magnitudes(self, spectrum: Tensor) -> Tensor:
        """The trunk's complex spectrum [B, T, F * C] -> log magnitudes of its lowest
        `spectral_bins` bins, channels averaged, [B, T, bins]. Not normalised per frame: the
        level tells voicing (removing each frame's mean cost 4 points of voicing accuracy on
        frozen features); for music at usual levels they have mean ~0 and spread ~1.5."""
        batch, frames = spectrum.shape[:2]
        bins = self.config.spectral_bins
        magnitude = spectrum.reshape(batch, frames, -1, self.audio_channels)[:, :, :bins].abs()
        return torch.log(magnitude.float().mean(-1) + 1e-5)

    def frames(self, length: int) -> int:
        """Frames of an input of `length` samples (the centred STFT's count)."""
        return length // self.hop + 1

    def load_trunk(self, separator_state: dict[str, Tensor]) -> list[str]:
        """Take the trunk's weights from a Mel-RoFormer separation state dict (its mask
        estimators are not used); returns the trunk keys the state did not have."""
        trunk = {k: v for k, v in separator_state.items() if not k.startswith("mask_estimators.")}
        missing, unexpected = self.trunk.load_state_dict(trunk, strict=False)
        if unexpected:
            raise ValueError(f"not a matching Mel-RoFormer: unexpected keys {unexpected[:5]}")
        return list(missing)

    def targets(self, midi: Tensor) -> Tensor:
        """Gaussian-blurred pitch targets [..., bins] for MIDI pitches [...] (0 = unvoiced gives
        a row of zeros), each row summing to one."""
        sigma = self.config.blur_cents / 100.0  # in semitones
        distance = self.pitch_grid - midi[..., None]
        weights = torch.exp(-0.5 * (distance / sigma) ** 2) * (midi[..., None] > 0)
        return weights / weights.sum(-1, keepdim=True).clamp(min=1e-12)

    def loss(self, logits: Tensor, midi: Tensor, mask: Tensor | None = None) -> Tensor:
        """Pitch cross-entropy on voiced frames + voicing BCE. `midi` [B, T] is the label per
        frame (0 = unvoiced); `mask` [B, T] marks the frames that have a label."""
        mask = torch.ones_like(midi, dtype=torch.bool) if mask is None else mask
        voiced = (midi > 0) & mask
        pitch_logits, voicing = logits[..., :-1].float(), logits[..., -1].float()
        voicing_loss = F.binary_cross_entropy_with_logits(voicing[mask], voiced[mask].float())
        if not voiced.any():
            return self.config.voicing_weight * voicing_loss
        log_probs = F.log_softmax(pitch_logits[voiced], dim=-1)
        pitch_loss = -(self.targets(midi[voiced]) * log_probs).sum(-1).mean()
        return pitch_loss + self.config.voicing_weight * voicing_loss

    @torch.no_grad()
    def decode(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """Logits [..., bins + 1] -> (MIDI pitch, voicing probability), both [...]. The pitch is
        the probability-weighted mean of the 9 bins around the most likely one (as CREPE), so it
        is finer than the grid; the voicing probability is the sigmoid of the voicing logit."""
        probs = torch.softmax(logits[..., :-1].float(), dim=-1)
        centre = probs.argmax(-1, keepdim=True)
        span = torch.arange(-4, 5, device=probs.device)
        index = centre + span
        inside = (index >= 0) & (index < probs.shape[-1])  # no bins past the grid's ends
        index = index.clamp(0, probs.shape[-1] - 1)
        weight = probs.gather(-1, index) * inside
        pitch = (self.pitch_grid[index] * weight).sum(-1) / weight.sum(-1).clamp(min=1e-12)
        return pitch, torch.sigmoid(logits[..., -1].float())


def with_context(frames: Tensor, context: int) -> Tensor:
    """Rows [B, T, N] -> each row with its `context` neighbours either side, [B, T, (2c+1) N],
    earliest first; the first and last rows repeat past the ends."""
    if not context:
        return frames
    batch, length, width = frames.shape
    padded = F.pad(frames.transpose(1, 2), (context, context), mode="replicate")
    windows = padded.unfold(-1, 2 * context + 1, 1)  # (b, n, t, 2c + 1)
    return windows.permute(0, 2, 3, 1).reshape(batch, length, -1)


__all__ = ["MelodyConfig", "MelodyTranscriber", "with_context"]
