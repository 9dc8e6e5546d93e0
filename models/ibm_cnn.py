"""IBM-CNN singing voice separation (Lin, Koh, Lui, Herremans 2018, arXiv 1812.01278).

A CNN looks at 9 frames of the mixture magnitude spectrogram (22.05 kHz, 1024-sample Hann
window zero-padded to a 4096-point DFT, hop 256: 2049 bins) and predicts, through a sigmoid per
bin, whether the centre frame's bins belong to the voice. Four 3x12 (time x frequency)
convolutions with 32, 16, 64 and 32 channels, a 1x12 max-pool along frequency after the second
and the fourth, then fully connected layers of 2048 and 512 units and 2049 outputs. It is trained
with cross entropy against the ideal binary mask (labels smoothed to 0.02/0.98), after an
autoencoder pretraining stage on vocal spectrograms (`stage: pretrain`). At inference the soft
output is thresholded (`threshold`; the authors used 0.35 and 0.15) and the binary mask and its
complement are applied to the mixture magnitude with the mixture phase: vocals and accompaniment.

Choices where the description is silent: the convolutions are unpadded ("valid"), so four 3-frame
kernels shrink exactly 9 frames to the centre one, and ReLU follows every hidden layer; the input
is log(1 + magnitude). Stereo is handled as two mono signals.

Sliding the network over every frame is vectorised by running the convolutions once over the
whole spectrogram: an unpadded convolution over 9-frame patches equals the same convolution over
the full time axis, read out at each centre, so no frame's features are computed nine times.
`patch_logits` is the literal per-patch network; the tests check both give the same numbers.
"""

from __future__ import annotations

import dataclasses
import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.base import Separator, SeparatorConfig, match_length
from models.spectral import istft, stft

STAGES = ("ibm", "pretrain")


@dataclasses.dataclass(frozen=True)
class IBMCNNConfig(SeparatorConfig):
    sources: tuple[str, ...] = ("vocals", "accompaniment")
    sample_rate: int = 22050
    stereo: bool = True
    n_fft: int = 4096
    win_length: int = 1024
    hop_length: int = 256
    conv_channels: tuple[int, ...] = (32, 16, 64, 32)
    kernel_time: int = 3
    kernel_freq: int = 12
    pool: int = 12
    hidden: tuple[int, ...] = (2048, 512)
    threshold: float = 0.35
    label_smoothing: float = 0.02
    stage: str = "ibm"  # ibm: cross entropy on the ideal binary mask; pretrain: autoencoder
    segment: int = 2 * 22050

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"config key 'stage' must be one of {', '.join(STAGES)}")
        if tuple(self.sources) != ("vocals", "accompaniment"):
            raise ValueError("config key 'sources': the IBM-CNN separates vocals, accompaniment")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError("config key 'threshold' must lie between 0 and 1")

    @property
    def context(self) -> int:
        """Frames per input patch: each unpadded convolution removes kernel_time - 1."""
        return 1 + len(self.conv_channels) * (self.kernel_time - 1)


class IBMCNN(Separator):
    """forward: mix [B, C, T] -> [B, 2, C, T] (vocals, accompaniment)."""

    differentiable_output = False  # binary masks: only the cross entropy on the logits trains it

    def __init__(self, config: IBMCNNConfig) -> None:
        super().__init__()
        cfg = self.config = config
        self.sources = tuple(cfg.sources)
        self.sample_rate = cfg.sample_rate
        self.audio_channels = 2 if cfg.stereo else 1
        self.segment = cfg.segment

        layers: list[nn.Module] = []
        cin, width = 1, cfg.n_fft // 2 + 1
        for i, cout in enumerate(cfg.conv_channels):
            layers += [nn.Conv2d(cin, cout, (cfg.kernel_time, cfg.kernel_freq)), nn.ReLU()]
            width -= cfg.kernel_freq - 1
            if i % 2 == 1:
                layers.append(nn.MaxPool2d((1, cfg.pool)))
                width //= cfg.pool
            cin = cout
        if width < 1:
            raise ValueError("config: the frequency axis shrinks to nothing; use a larger n_fft")
        self.convs = nn.Sequential(*layers)
        sizes = [cin * width, *cfg.hidden]
        dense: list[nn.Module] = []
        for a, b in itertools.pairwise(sizes):
            dense += [nn.Linear(a, b), nn.ReLU()]
        dense.append(nn.Linear(sizes[-1], cfg.n_fft // 2 + 1))
        self.dense = nn.Sequential(*dense)

    def _spectrogram(self, audio: Tensor) -> Tensor:
        cfg = self.config
        return stft(audio, cfg.n_fft, cfg.hop_length, cfg.win_length)

    @staticmethod
    def features(spec: Tensor) -> Tensor:
        return torch.log1p(spec.abs())

    def patch_logits(self, patches: Tensor) -> Tensor:
        """The network on explicit patches: [P, context, F] -> centre-frame logits [P, F]."""
        x = self.convs(patches[:, None])  # (p, channels, 1, width)
        return self.dense(x.flatten(1))

    def logits(self, features: Tensor) -> Tensor:
        """Logits for every frame of [..., F, N] features -> [..., F, N], in one pass.

        The time axis is zero-padded by half a patch at each end, so edge frames see silence.
        """
        shape = features.shape
        half = self.config.context // 2
        x = features.reshape(-1, *shape[-2:]).transpose(1, 2)  # (b, n, f)
        x = F.pad(x, (0, 0, half, half))[:, None]  # (b, 1, n + 2*half, f)
        x = self.convs(x)  # (b, channels, n, width)
        x = x.permute(0, 2, 1, 3).flatten(2)  # each frame's features, in patch_logits order
        return self.dense(x).transpose(1, 2).reshape(shape)

    def vocal_mask(self, spec: Tensor) -> Tensor:
        """Binary vocal mask (0 or 1) for a complex mixture STFT [..., F, N]."""
        features = self.features(spec).to(next(self.parameters()).dtype)
        soft = torch.sigmoid(self.logits(features))
        return (soft > self.config.threshold).to(spec.real.dtype)

    def forward(self, mix: Tensor) -> Tensor:
        cfg = self.config
        length = mix.shape[-1]
        if length <= cfg.n_fft // 2:
            padded = F.pad(mix, (0, cfg.n_fft // 2 + 1 - length))
            return self.forward(padded)[..., :length]
        real_dtype = torch.float64 if mix.dtype == torch.float64 else torch.float32
        spec = self._spectrogram(mix.to(real_dtype))  # (b, c, f, n)
        vocals = self.vocal_mask(spec)
        masks = torch.stack([vocals, 1 - vocals], dim=1)  # (b, 2, c, f, n)
        audio = istft(masks * spec[:, None], cfg.n_fft, cfg.hop_length, length, cfg.win_length)
        return match_length(audio, length).to(mix.dtype)

    def loss(self, mix: Tensor, targets: Tensor) -> Tensor:
        """Cross entropy per time-frequency bin.

        stage ibm: input the mixture, target the ideal binary mask (vocals louder than the
        accompaniment), smoothed to label_smoothing / 1 - label_smoothing.
        stage pretrain: an autoencoder; input the vocals, target their own log magnitude scaled
        into [0, 1] per example.
        """
        cfg = self.config
        vocals = self._spectrogram(targets[:, 0]).abs()
        if cfg.stage == "pretrain":
            features = torch.log1p(vocals)
            peak = features.amax(dim=(-3, -2, -1), keepdim=True).clamp(min=1e-6)
            return F.binary_cross_entropy_with_logits(self.logits(features), features / peak)
        accompaniment = self._spectrogram(mix - targets[:, 0]).abs()
        labels = (vocals > accompaniment).to(mix.dtype)
        labels = labels * (1 - 2 * cfg.label_smoothing) + cfg.label_smoothing
        features = self.features(self._spectrogram(mix))
        return F.binary_cross_entropy_with_logits(self.logits(features), labels)


__all__ = ["IBMCNN", "IBMCNNConfig"]
