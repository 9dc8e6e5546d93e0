"""Complex-mask U-Net (Jansson, Bittner, Montecchio, Weyde 2021, arXiv 2103.12864).

A U-Net reads the mixture's complex STFT and estimates one complex ratio mask per source and
channel. Each mask multiplies the complex mixture spectrogram, so phase is corrected along with
magnitude, and the product is inverted with the iSTFT.

What follows the paper: masks in the complex domain, carried over from speech enhancement; the
mask is bounded as in Deep Complex U-Net (Choi et al. 2019), `M = tanh(|O|) * O / |O|`, so its
magnitude stays below 1 while its phase is free; the complex mixture enters the network as its
real and imaginary parts, stacked as input channels; a magnitude-only variant (`mask:
magnitude`, a sigmoid mask on the mixture magnitude with the mixture phase) is the baseline the
paper compares against. Where the paper is not specific here, the network is the U-Net of Jansson
et al. 2017: six 5x5 convolutions with stride 2 (16..512 channels), batch norm and leaky ReLU
(0.2) on the way down; 5x5 transposed convolutions with stride 2, batch norm, ReLU, 50 % dropout
in the first three decoder layers, and concatenated skip connections on the way up. The loss is
L1 between estimated and true complex spectrograms (real and imaginary parts), the same for both
mask types so that the complex-vs-magnitude comparison changes only the mask.

The Nyquist bin is left out of the network (1024 bins divide by 2**6) and gets a zero mask.
"""

from __future__ import annotations

import dataclasses
import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.base import Separator, SeparatorConfig, match_length
from models.spectral import istft, stft

MASKS = ("complex", "magnitude")


@dataclasses.dataclass(frozen=True)
class ComplexMaskUNetConfig(SeparatorConfig):
    sources: tuple[str, ...] = ("vocals", "drums", "bass", "other")
    sample_rate: int = 44100
    stereo: bool = True
    n_fft: int = 2048
    hop_length: int = 512
    channels: tuple[int, ...] = (16, 32, 64, 128, 256, 512)
    kernel_size: int = 5
    leaky_slope: float = 0.2
    dropout: float = 0.5
    dropout_layers: int = 3
    mask: str = "complex"  # complex | magnitude
    segment: int = 255 * 512  # 256 STFT frames, about 3 s

    def __post_init__(self) -> None:
        if self.mask not in MASKS:
            raise ValueError(f"config key 'mask' must be one of {', '.join(MASKS)}")
        if (self.n_fft // 2) % (2 ** len(self.channels)):
            raise ValueError(
                f"config key 'n_fft': n_fft/2 must divide by 2**{len(self.channels)} "
                "(one halving per encoder layer)"
            )


def bounded_complex_mask(real: Tensor, imag: Tensor) -> Tensor:
    """`tanh(|O|) * O / |O|` for O = real + i imag (Choi et al. 2019), computed in float32 or
    float64: in fp16, `real**2` underflows to 0 below about 2.4e-4 and the 1e-12 guard rounds
    away, so tanh(0)/0 would give NaN stems; bf16 has no complex dtype at all."""
    dtype = torch.float64 if real.dtype == torch.float64 else torch.float32
    real, imag = real.to(dtype), imag.to(dtype)
    magnitude = torch.sqrt(real.square() + imag.square() + 1e-12)
    scale = torch.tanh(magnitude) / magnitude
    return torch.complex(real * scale, imag * scale)


class Encoder(nn.Module):
    def __init__(self, cin: int, cout: int, cfg: ComplexMaskUNetConfig) -> None:
        super().__init__()
        k = cfg.kernel_size
        self.conv = nn.Conv2d(cin, cout, k, stride=2, padding=k // 2)
        self.norm = nn.BatchNorm2d(cout)
        self.slope = cfg.leaky_slope

    def forward(self, x: Tensor) -> Tensor:
        return F.leaky_relu(self.norm(self.conv(x)), self.slope)


class Decoder(nn.Module):
    def __init__(self, cin: int, cout: int, cfg: ComplexMaskUNetConfig, dropout: float) -> None:
        super().__init__()
        k = cfg.kernel_size
        self.conv = nn.ConvTranspose2d(cin, cout, k, stride=2, padding=k // 2, output_padding=1)
        self.norm = nn.BatchNorm2d(cout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(F.relu(self.norm(self.conv(x))))


class ComplexMaskUNet(Separator):
    """U-Net estimating a bounded complex (or magnitude) mask per source and channel.

    forward: mix [B, C, T] -> [B, S, C, T].
    """

    def __init__(self, config: ComplexMaskUNetConfig) -> None:
        super().__init__()
        cfg = self.config = config
        self.sources = tuple(cfg.sources)
        self.sample_rate = cfg.sample_rate
        self.audio_channels = 2 if cfg.stereo else 1
        self.segment = cfg.segment
        values_per_mask = 2 if cfg.mask == "complex" else 1
        self.mask_channels = len(self.sources) * self.audio_channels * values_per_mask

        widths = [2 * self.audio_channels, *cfg.channels]  # real and imaginary part per channel
        self.encoders = nn.ModuleList(
            Encoder(cin, cout, cfg) for cin, cout in itertools.pairwise(widths)
        )
        self.decoders = nn.ModuleList()
        depth = len(cfg.channels)
        for i in range(depth - 1):
            cin = widths[depth - i] * (1 if i == 0 else 2)  # skip connections double the input
            dropout = cfg.dropout if i < cfg.dropout_layers else 0.0
            self.decoders.append(Decoder(cin, widths[depth - i - 1], cfg, dropout))
        k = cfg.kernel_size
        self.head = nn.ConvTranspose2d(
            2 * cfg.channels[0], self.mask_channels, k, stride=2, padding=k // 2, output_padding=1
        )

    def _spectrogram(self, mix: Tensor) -> Tensor:
        return stft(mix, self.config.n_fft, self.config.hop_length)  # (b, c, f, n)

    def separate_spectrogram(self, spec: Tensor) -> Tensor:
        """Complex mixture STFT [B, C, F, N] -> complex source STFTs [B, S, C, F, N]."""
        return self.masks(spec) * spec[:, None]

    def masks(self, spec: Tensor) -> Tensor:
        """Complex mixture STFT [B, C, F, N] -> masks [B, S, C, F, N] (complex, or real in 0..1)."""
        cfg = self.config
        batch, channels, freqs, frames = spec.shape
        multiple = 2 ** len(cfg.channels)
        pad = -frames % multiple
        x = torch.view_as_real(spec[:, :, : freqs - 1])  # drop Nyquist: (b, c, f', n, 2)
        x = x.permute(0, 1, 4, 2, 3).reshape(batch, channels * 2, freqs - 1, frames)
        x = F.pad(x, (0, pad))

        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
        x = skips.pop()
        for i, decoder in enumerate(self.decoders):
            x = decoder(x if i == 0 else torch.cat([x, skips.pop()], dim=1))
        out = self.head(torch.cat([x, skips.pop()], dim=1))[..., :frames]

        sources = len(self.sources)
        # The masks are made at the spectrum's precision (float32), whatever autocast ran the
        # convolutions in: bf16 has no complex type, and fp16 squares underflow (see below).
        out = out.to(spec.real.dtype)
        if cfg.mask == "complex":
            out = out.reshape(batch, sources, channels, 2, freqs - 1, frames)
            mask = bounded_complex_mask(out[:, :, :, 0], out[:, :, :, 1])
        else:
            mask = torch.sigmoid(out.reshape(batch, sources, channels, freqs - 1, frames))
        return F.pad(mask, (0, 0, 0, 1))  # Nyquist bin: zero mask

    def forward(self, mix: Tensor) -> Tensor:
        length = mix.shape[-1]
        if length <= self.config.n_fft // 2:
            # A centred STFT reflects n_fft/2 samples at each end; pad very short inputs first.
            padded = F.pad(mix, (0, self.config.n_fft // 2 + 1 - length))
            return self.forward(padded)[..., :length]
        real_dtype = torch.float64 if mix.dtype == torch.float64 else torch.float32
        spec = self._spectrogram(mix.to(real_dtype))
        estimate = self.separate_spectrogram(spec)
        audio = istft(estimate, self.config.n_fft, self.config.hop_length, length)
        return match_length(audio, length).to(mix.dtype)

    def loss(self, mix: Tensor, targets: Tensor) -> Tensor:
        """L1 between estimated and true complex spectrograms (real and imaginary parts)."""
        estimate = self.separate_spectrogram(self._spectrogram(mix))
        reference = self._spectrogram(targets)
        return F.l1_loss(torch.view_as_real(estimate), torch.view_as_real(reference))


__all__ = ["ComplexMaskUNet", "ComplexMaskUNetConfig", "bounded_complex_mask"]
