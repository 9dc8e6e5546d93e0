"""What the RoFormer family shares: RoPE attention with head gates, feed-forward, RMSNorm, the
time/frequency transformer stack, the band split, the mask-estimator MLPs and the STFT framing.

`models/mel_roformer.py` and `models/bs_roformer.py` hold only what differs: the band layout
(overlapping mel bands, or contiguous `freqs_per_bands`), where the norms sit, and how
`mask_estimator_depth` is counted. Parameter names follow the community code (ZFTurbo's
Music-Source-Separation-Training, commit ccc011a), so its state dicts load with `strict=True`.
The forward pass is written for speed: one fused projection for q, k, v and the head gates, RoPE
as a complex multiply, SDPA over all heads at once, bands read in place from a time-major
spectrum, overlapping bands' masks summed in non-overlapping groups, and on the CPU the
transformer runs grouped so that every temporary is reused from the heap.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from models.base import Separator, SeparatorConfig, match_length


@dataclasses.dataclass(frozen=True)
class RoFormerConfig(SeparatorConfig):
    """The hyper-parameters both families share, named as in the community YAML `model:`
    section, with the community class defaults. Three are sepcli's own: `sources` names the
    stems (from the YAML's `training` section; empty: `vocals` for one stem, else stem0...),
    `segment` is the engine's chunk length in samples (`audio.chunk_size`) and `sample_rate`
    the rate the model was trained at.
    """

    dim: int = 384
    depth: int = 6
    stereo: bool = False
    num_stems: int = 1
    time_transformer_depth: int = 2
    freq_transformer_depth: int = 2
    linear_transformer_depth: int = 0
    dim_head: int = 64
    heads: int = 8
    attn_dropout: float = 0.0
    ff_dropout: float = 0.0
    flash_attn: bool = True
    dim_freqs_in: int = 1025  # unused, as in the community code
    sample_rate: int = 44100
    stft_n_fft: int = 2048
    stft_hop_length: int = 512
    stft_win_length: int = 2048
    stft_normalized: bool = False
    zero_dc: bool = True
    mask_estimator_depth: int = 2
    mlp_expansion_factor: int = 4
    skip_connection: bool = False
    use_torch_checkpoint: bool = False
    use_pope: bool = False
    multi_stft_resolution_loss_weight: float = 1.0
    multi_stft_resolutions_window_sizes: tuple[int, ...] = (4096, 2048, 1024, 512, 256)
    multi_stft_hop_size: int = 147
    multi_stft_normalized: bool = False
    sources: tuple[str, ...] = ()
    segment: int = 352800

    def __post_init__(self) -> None:
        if self.use_pope:
            raise ValueError("config key 'use_pope': PoPE positional encoding is not supported")
        if not self.sources:
            names = (
                ("vocals",)
                if self.num_stems == 1
                else tuple(f"stem{i}" for i in range(self.num_stems))
            )
            object.__setattr__(self, "sources", names)
        if len(self.sources) != self.num_stems:
            raise ValueError(
                f"config key 'sources' lists {len(self.sources)} stem(s) "
                f"but 'num_stems' is {self.num_stems}"
            )
        if self.num_stems < 1:
            raise ValueError("config key 'num_stems' must be at least 1")


class RMSNorm(nn.Module):
    """x / ||x|| * sqrt(dim) * gamma; zeros stay zeros (no epsilon inside the root)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1) * (self.gamma * self.scale)


class RotaryEmbedding(nn.Module):
    """Holds the RoPE inverse frequencies under the community name; not trained."""

    def __init__(self, dim_head: int) -> None:
        super().__init__()
        freqs = 10000.0 ** (-torch.arange(0, dim_head, 2, dtype=torch.float32) / dim_head)
        self.freqs = nn.Parameter(freqs, requires_grad=False)
        self._cache: tuple[tuple, Rotation] | None = None

    def rotation(self, length: int, device: torch.device) -> Rotation:
        """Rotations by p * w for positions p = 0..length-1, [length, 1, dim_head/2]: unit
        complex numbers, or (cos, sin) on devices without fast complex kernels (MPS). Cached:
        every layer of a transformer and every call at the same length reuse them."""
        key = (length, device, *_identity(self.freqs))
        if self._cache is not None and self._cache[0] == key and None not in key:
            return self._cache[1]
        positions = torch.arange(length, device=device)
        angles = positions[:, None].to(self.freqs.dtype) * self.freqs.to(device)[None, :]
        angles = angles[:, None, :]
        rotation: Rotation
        if device.type in COMPLEX_DEVICES:
            rotation = torch.polar(torch.ones_like(angles), angles)
        else:
            rotation = (angles.cos(), angles.sin())
        self._cache = (key, rotation)
        return rotation


def _identity(tensor: Tensor) -> tuple:
    """What tells a tensor's current values apart for a cache: storage, version, dtype, device.
    Inference tensors keep no version (None: never cached)."""
    version = None if tensor.is_inference() else tensor._version
    return (tensor.data_ptr(), version, tensor.dtype, tensor.device)


# Devices whose complex multiply is fast; elsewhere (MPS) RoPE runs on real cos/sin pairs.
COMPLEX_DEVICES = ("cpu", "cuda")
Rotation = Tensor | tuple[Tensor, Tensor]


def apply_rotation(x: Tensor, rotation: Rotation) -> Tensor:
    """Interleaved RoPE: feature pairs (2i, 2i+1) rotate together, as one complex number each.

    x: [batch, seq, heads, dim_head] (may be a strided view); returns the same shape, contiguous.
    """
    dtype = x.dtype if x.dtype == torch.float64 else torch.float32
    if isinstance(rotation, tuple):
        cos, sin = (r.to(dtype) for r in rotation)
        even, odd = x.to(dtype).unflatten(-1, (-1, 2)).unbind(-1)  # each (b, n, h, e/2)
        return (
            torch.stack((even * cos - odd * sin, even * sin + odd * cos), -1)
            .flatten(-2)
            .to(x.dtype)
        )
    x_real = x.to(dtype)
    if any(stride % 2 for stride in x_real.stride()[:-1]):
        x_real = x_real.contiguous()  # an odd head count leaves q, k at odd strides in the fusion
    pairs = torch.view_as_complex(x_real.unflatten(-1, (-1, 2)))  # to (b, n, h, e/2) complex
    return torch.view_as_real(pairs * rotation.to(pairs.dtype)).flatten(-2).to(x.dtype)


class Attention(nn.Module):
    """Multi-head self-attention with RoPE and a sigmoid gate per head (community layout)."""

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dim_head, self.dropout = heads, dim_head, dropout
        self.rotary_embed = RotaryEmbedding(dim_head)
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_gates = nn.Linear(dim, heads)
        self.to_out = nn.Sequential(
            nn.Linear(heads * dim_head, dim, bias=False), nn.Dropout(dropout)
        )

    def fused_projection(self) -> tuple[Tensor, Tensor]:
        """One weight and bias for q, k, v and the gates, so the normalised input is read once.

        Without autograd the concatenation is cached until the weights change (a load, a
        training step, a move to another device), instead of rebuilt on every call.
        """
        qkv, gates, gates_bias = self.to_qkv.weight, self.to_gates.weight, self.to_gates.bias

        def fused() -> tuple[Tensor, Tensor]:
            zeros = qkv.new_zeros(qkv.shape[0])
            return torch.cat([qkv, gates]), torch.cat([zeros, gates_bias])

        if torch.is_grad_enabled():
            return fused()
        key = tuple(part for t in (qkv, gates, gates_bias) for part in _identity(t))
        if None in key:
            return fused()
        if getattr(self, "_fused_key", None) != key:
            self._fused, self._fused_key = fused(), key
        return self._fused

    def forward(self, x: Tensor, rotation: Rotation) -> Tensor:
        """x: [batch, seq, dim] -> [batch, seq, dim]."""
        batch, seq, _ = x.shape
        h, e = self.heads, self.dim_head
        weight, bias = self.fused_projection()
        projected = F.linear(self.norm(x), weight, bias)
        # split/unbind rather than slicing: their backwards are one cat/stack, where each slice's
        # backward would zero-fill and copy a tensor the size of `projected`.
        qkv, gates = projected.split([3 * h * e, h], dim=-1)
        q, k, v = qkv.unflatten(-1, (3, h, e)).unbind(2)  # each (b, n, h, e)
        gates = gates.sigmoid()  # (b, n, h)
        q = apply_rotation(q, rotation).transpose(1, 2)  # to (b, h, n, e)
        k = apply_rotation(k, rotation).transpose(1, 2)
        v = v.transpose(1, 2)
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0
        )  # (b, h, n, e)
        out = out * gates.transpose(1, 2).unsqueeze(-1)
        out = out.transpose(1, 2).reshape(batch, seq, h * e)  # to (b, n, h*e)
        return self.to_out(out)


class LinearAttention(nn.Module):
    """XCA-style attention across features (community `linear_transformer_depth` slot)."""

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dim_head, self.dropout = heads, dim_head, dropout
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Sequential(nn.Linear(dim, 3 * heads * dim_head, bias=False))
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.to_out = nn.Sequential(nn.Identity(), nn.Linear(heads * dim_head, dim, bias=False))

    def forward(self, x: Tensor, rotation: Tensor | None = None) -> Tensor:
        """x: [batch, seq, dim] -> [batch, seq, dim]."""
        batch, seq, _ = x.shape
        qkv = self.to_qkv(self.norm(x)).unflatten(-1, (3, self.heads, self.dim_head))
        q, k, v = qkv.permute(2, 0, 3, 4, 1)  # each (b, h, e, n)
        q = F.normalize(q, dim=-1) * self.temperature.exp()
        k = F.normalize(k, dim=-1)
        out = F.scaled_dot_product_attention(
            q, k, v, scale=8.0, dropout_p=self.dropout if self.training else 0.0
        )  # (b, h, e, n)
        out = out.permute(0, 3, 1, 2).reshape(batch, seq, -1)  # to (b, n, h*e)
        return self.to_out(out)


class FeedForward(nn.Module):
    def __init__(self, dim: int, dropout: float, mult: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(
            RMSNorm(dim),
            nn.Linear(dim, dim * mult),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(dim * mult, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Transformer(nn.Module):
    """Pre-norm residual stack of (attention, feed-forward) pairs; the Mel-RoFormer ends each
    stack with an RMSNorm (`norm_output`), the BS-RoFormer has one norm after all of them."""

    def __init__(
        self,
        cfg: "RoFormerConfig",
        depth: int,
        linear: bool = False,
        norm_output: bool = True,
    ) -> None:
        super().__init__()
        attention = LinearAttention if linear else Attention
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    attention(cfg.dim, cfg.heads, cfg.dim_head, cfg.attn_dropout),
                    FeedForward(cfg.dim, cfg.ff_dropout),
                ]
            )
            for _ in range(depth)
        )
        self.norm = RMSNorm(cfg.dim) if norm_output else nn.Identity()
        self.linear = linear

    def layers_forward(self, x: Tensor) -> Tensor:
        """x: [batch, seq, dim] -> [batch, seq, dim]."""
        rotation = None
        if not self.linear:
            rotation = self.layers[0][0].rotary_embed.rotation(x.shape[1], x.device)
        for attn, ff in self.layers:
            x = attn(x, rotation) + x
            x = ff(x) + x
        return self.norm(x)

    def forward(self, x: Tensor, out: Tensor | None = None) -> Tensor:
        """x: [B, N, seq, dim] (any strides): N independent sequences per batch item.

        Without autograd on the CPU, sequences go through in groups of about TOKENS_PER_GROUP
        tokens and are written into `out` (any strides, e.g. a transposed view of the next
        stage's input). Every temporary then stays under glibc's 32 MB mmap threshold and is
        reused from the heap; full-size temporaries would be fresh mmaps that cost a page fault
        per 4 kB. On other devices, and under autograd, all sequences go through at once.
        """
        batch, count, seq, dim = x.shape
        # Grouping dodges glibc's mmap threshold; on a GPU it would only multiply kernel launches.
        if torch.is_grad_enabled() or x.device.type != "cpu":
            y = self.layers_forward(x.reshape(batch * count, seq, dim))
            return y.view(batch, count, seq, dim)
        if out is None:
            out = x.new_empty(batch, count, seq, dim)
        group = max(1, TOKENS_PER_GROUP // seq)
        for b in range(batch):
            for start in range(0, count, group):
                out[b, start : start + group] = self.layers_forward(x[b, start : start + group])
        return out


TOKENS_PER_GROUP = 4096


class BandSplit(nn.Module):
    """Per-band RMSNorm + Linear from each band's STFT features to `dim`.

    Band k's features are `band_sizes[k]` consecutive values of the input starting at
    `offsets[k]`; mel bands are contiguous bin ranges, so they are read in place.
    """

    def __init__(self, dim: int, band_sizes: list[int], offsets: list[int]) -> None:
        super().__init__()
        self.band_sizes, self.offsets = band_sizes, offsets
        self.to_features = nn.ModuleList(
            nn.Sequential(RMSNorm(size), nn.Linear(size, dim)) for size in band_sizes
        )

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, T, features] -> [B, T, K, D]."""
        out = []
        for (norm, linear), start, size in zip(self.to_features, self.offsets, self.band_sizes):
            band = x[..., start : start + size]
            # linear(normalize(band) * g) = linear_without_bias(band * g) / ||band|| + bias: the
            # band is read twice (its norm, one GEMM) and never copied.
            weight = linear.weight * (norm.gamma * norm.scale)
            length = torch.linalg.vector_norm(band, dim=-1, keepdim=True).clamp_min(1e-12)
            out.append(torch.addcdiv(linear.bias, F.linear(band, weight), length))
        return torch.stack(out, dim=2)


# Weights that read the residual stream (`dim` wide) and those that write into it; growth must
# treat those axes differently from hidden-unit axes. Names follow the community layout.
_READS_RESIDUAL = re.compile(r"(to_qkv(\.0)?|to_gates|net\.1|to_freqs\.\d+\.0\.0)\.weight$")
_WRITES_RESIDUAL = re.compile(r"(to_out\.[01]|net\.4|to_features\.\d+\.1)\.(weight|bias)$")
_NORMS_RESIDUAL = re.compile(r"(norm|net\.0)\.gamma$")


def _widened(key: str, old: Tensor, fresh: Tensor) -> Tensor:
    """Parameter `key`'s old value embedded in the larger freshly initialised one.

    Old units keep their weights. New hidden units keep their fresh input weights, and nothing
    reads them yet: their outgoing weights are zero. New residual channels (a larger `dim`) start
    at zero, as every layer that writes them has zero weights there, while the layers that read
    them keep fresh weights so that the channels get gradients and come alive. An RMSNorm over
    the residual divides by sqrt(dim) more channels, so its old gains are scaled to match.
    """
    grown = fresh.clone()
    if old.dim() == 2 and not _READS_RESIDUAL.search(key):
        grown[:, old.shape[1] :] = 0
    if _WRITES_RESIDUAL.search(key):
        grown[old.shape[0] :] = 0
    grown[tuple(slice(0, n) for n in old.shape)] = old
    if _NORMS_RESIDUAL.search(key):
        grown[: old.shape[0]] *= (old.shape[0] / fresh.shape[0]) ** 0.5
    return grown


def disjoint_groups(offsets: list[int], sizes: list[int]) -> list[list[int]]:
    """Bands in groups whose spans [offset, offset + size) do not overlap, in offset order.

    Greedy interval colouring: mel bands overlap only their neighbours, so this gives two groups.
    """
    groups: list[list[int]] = []
    for k in sorted(range(len(offsets)), key=lambda k: offsets[k]):
        for group in groups:
            if offsets[group[-1]] + sizes[group[-1]] <= offsets[k]:
                group.append(k)
                break
        else:
            groups.append([k])
    return groups


def place(pieces: list[Tensor], offsets: list[int], width: int) -> Tensor:
    """Non-overlapping pieces [..., size] laid out at their offsets along a zero row of `width`.

    One concatenation with zero gaps: its backward is slicing, where adding into slices of a
    zero tensor would copy the whole gradient once per piece.
    """
    parts, end = [], 0
    for piece, start in zip(pieces, offsets):
        if start > end:
            parts.append(piece.new_zeros(*piece.shape[:-1], start - end))
        parts.append(piece)
        end = start + piece.shape[-1]
    if width > end:
        parts.append(pieces[-1].new_zeros(*pieces[-1].shape[:-1], width - end))
    return torch.cat(parts, dim=-1)


class MaskEstimator(nn.Module):
    """One MLP + GLU per band, from `dim` back to that band's complex mask features.

    Each MLP has `hidden_layers` Tanh layers of `dim * expansion` units (the two families count
    the YAML's `mask_estimator_depth` differently). Band k's output lands at `offsets[k]` of a
    `width`-wide row; where bands overlap, their outputs are summed.
    """

    def __init__(
        self,
        dim: int,
        band_sizes: list[int],
        offsets: list[int],
        width: int,
        hidden_layers: int,
        expansion: int,
    ) -> None:
        super().__init__()
        hidden = dim * expansion
        depth = hidden_layers
        self.offsets, self.width = offsets, width
        self.groups = disjoint_groups(offsets, band_sizes)

        def mlp(size: int) -> nn.Sequential:
            layers: list[nn.Module] = []
            widths = [dim] + [hidden] * depth + [2 * size]
            for i, (d_in, d_out) in enumerate(zip(widths[:-1], widths[1:])):
                layers.append(nn.Linear(d_in, d_out))
                if i < depth:
                    layers.append(nn.Tanh())
            return nn.Sequential(nn.Sequential(*layers), nn.GLU(dim=-1))

        self.to_freqs = nn.ModuleList(mlp(size) for size in band_sizes)

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, T, K, D] -> [B, T, width].

        A loop over bands: these GEMMs are large and FLOP-bound, and stacking the MLPs into one
        batched weight would copy ~700 MB per stem on every call.
        """
        # unbind, not x[:, :, k]: its backward is one stack, not a zero-filled copy per band.
        masks = [band(xk) for band, xk in zip(self.to_freqs, x.unbind(2))]
        placed = [
            place([masks[k] for k in group], [self.offsets[k] for k in group], self.width)
            for group in self.groups
        ]
        return sum(placed[1:], placed[0])


@dataclasses.dataclass
class BandLayout:
    """Where the bands sit in the packed spectrum: band k reads `sizes[k]` values from
    `offsets[k]` of each frame's `width` values (bins, then channels, then real/imaginary).
    `rows_per_bin` counts, for each packed row, the bands that cover it (None: exactly one)."""

    sizes: list[int]
    offsets: list[int]
    width: int
    rows_per_bin: Tensor | None = None

    @classmethod
    def from_bins(cls, bins: list[np.ndarray], n_bins: int, channels: int) -> "BandLayout":
        """From each band's (contiguous) bins."""
        if any(len(b) == 0 or np.any(np.diff(b) != 1) for b in bins):
            raise ValueError("bands must be non-empty contiguous bin ranges")
        counts = np.zeros(n_bins)
        for b in bins:
            counts[b] += 1
        overlap = counts.max() > 1
        # torch.tensor, not from_numpy: it follows a `with torch.device(...)` around the build.
        rows = torch.tensor(counts, dtype=torch.float32).repeat_interleave(channels)
        return cls([len(b) * channels * 2 for b in bins], [int(b[0]) * channels * 2 for b in bins],
                   n_bins * channels * 2, rows if overlap else None)  # fmt: skip


class RoFormer(Separator):
    """The band-split RoFormer separator; subclasses give the band layout and the norm style.

    Args:
        config: a `RoFormerConfig` subclass; the community YAML `model:` section passes in.
        layout: the bands (`BandLayout`).
        norm_each_transformer: an RMSNorm ends every time/freq transformer (Mel) instead of one
            `final_norm` after the whole stack (BS).
        mask_hidden_layers: Tanh layers per band MLP.

    forward: mix [B, C, T] -> [B, S, C, T] with S = num_stems and C = 2 (stereo) or 1.
    """

    def __init__(
        self,
        config: RoFormerConfig,
        layout: BandLayout,
        norm_each_transformer: bool,
        mask_hidden_layers: int,
    ) -> None:
        super().__init__()
        cfg = self.config = config
        self.sources = tuple(cfg.sources)
        self.sample_rate = cfg.sample_rate
        self.audio_channels = 2 if cfg.stereo else 1
        self.segment = cfg.segment

        self.layers = nn.ModuleList()
        for _ in range(cfg.depth):
            block = nn.ModuleList()
            if cfg.linear_transformer_depth > 0:
                block.append(Transformer(cfg, cfg.linear_transformer_depth, linear=True,
                                         norm_output=norm_each_transformer))  # fmt: skip
            block.append(Transformer(cfg, cfg.time_transformer_depth,
                                     norm_output=norm_each_transformer))  # fmt: skip
            block.append(Transformer(cfg, cfg.freq_transformer_depth,
                                     norm_output=norm_each_transformer))  # fmt: skip
            self.layers.append(block)
        self.final_norm = None if norm_each_transformer else RMSNorm(cfg.dim)

        self.band_offsets = layout.offsets
        if layout.rows_per_bin is not None:
            self.register_buffer("bands_per_row", layout.rows_per_bin, persistent=False)
        else:
            self.bands_per_row = None
        self.band_split = BandSplit(cfg.dim, layout.sizes, layout.offsets)
        self.mask_estimators = nn.ModuleList(
            MaskEstimator(
                cfg.dim,
                layout.sizes,
                layout.offsets,
                layout.width,
                mask_hidden_layers,
                cfg.mlp_expansion_factor,
            )  # fmt: skip
            for _ in range(cfg.num_stems)
        )

    def grow_from(self, smaller: "RoFormer") -> None:
        """Load `smaller`, a copy of this model with fewer transformer layers or narrower layers.

        The extra (attention, feed-forward) layers come after the old ones, inside each
        transformer's final norm, with their output projections at zero: they add nothing to the
        residual stream. Wider mask MLPs (a larger `mlp_expansion_factor`) and a wider model (a
        larger `dim`, which widens the residual stream and every MLP) grow as `_widened` says.
        The grown model computes what `smaller` did (exactly, but for rounding when `dim` grows),
        so training starts from its quality rather than from scratch. Raises ValueError for any
        other model.
        """
        old, new = smaller.config, self.config
        growable = {
            "time_transformer_depth": 0,
            "freq_transformer_depth": 0,
            "mlp_expansion_factor": 0,
            "dim": 0,
        }
        if dataclasses.replace(old, **growable) != dataclasses.replace(new, **growable):
            raise ValueError("the configs differ in more than transformer depths and widths")
        if any(getattr(old, name) > getattr(new, name) for name in growable):
            raise ValueError("the checkpoint is larger than the config")
        state = self.state_dict()
        for key, value in smaller.state_dict().items():
            state[key] = (
                value if value.shape == state[key].shape else _widened(key, value, state[key])
            )
        self.load_state_dict(state)
        before = [t for t in smaller.modules() if isinstance(t, Transformer)]
        after = [t for t in self.modules() if isinstance(t, Transformer)]
        with torch.no_grad():
            for old_transformer, transformer in zip(before, after):
                for attention, feed_forward in transformer.layers[len(old_transformer.layers) :]:
                    attention.to_out[0].weight.zero_()
                    feed_forward.net[4].weight.zero_()
                    feed_forward.net[4].bias.zero_()

    def _stft_args(self, device: torch.device, dtype: torch.dtype) -> dict:
        """The model's STFT parameters, shared by the analysis and the synthesis."""
        cfg = self.config
        return {
            "n_fft": cfg.stft_n_fft,
            "hop_length": cfg.stft_hop_length,
            "win_length": cfg.stft_win_length,
            "window": torch.hann_window(cfg.stft_win_length, device=device, dtype=dtype),
            "normalized": cfg.stft_normalized,
        }

    def _stft(self, audio: Tensor) -> Tensor:
        return torch.stft(audio, **self._stft_args(audio.device, audio.dtype), return_complex=True)

    def _run(self, fn: nn.Module, x: Tensor, out: Tensor | None = None) -> Tensor:
        if self.config.use_torch_checkpoint and self.training:
            return checkpoint(fn, x, use_reentrant=False)
        return fn(x, out=out)

    def forward(self, mix: Tensor) -> Tensor:
        """mix: [B, C, L] -> [B, S, C, L]."""
        cfg = self.config
        batch, channels, length = mix.shape
        if length <= cfg.stft_n_fft // 2:
            # The centred STFT reflects n_fft/2 samples at each end, so very short inputs are
            # zero-padded first and the output cut back: the contract holds for any length.
            padded = F.pad(mix, (0, cfg.stft_n_fft // 2 + 1 - length))
            return self.forward(padded)[..., :length]
        stems = self.separate_spectrum(mix)  # (b, s, c, f, t)
        freqs, frames = stems.shape[-2:]
        # istft to the input length: identical to the community output on its shorter length,
        # and it keeps the Separator contract (same T) without zero-filling the tail.
        audio = torch.istft(
            stems.reshape(-1, freqs, frames),
            **self._stft_args(mix.device, stems.real.dtype),
            length=length,
        )
        audio = audio.reshape(batch, cfg.num_stems, channels, -1)
        return match_length(audio, length).to(mix.dtype)

    def separate_spectrum(self, mix: Tensor) -> Tensor:
        """mix: [B, C, L] -> the masked mixture STFT of every stem, complex [B, S, C, F, T]."""
        cfg = self.config
        batch, channels, _ = mix.shape
        real_dtype = torch.float64 if mix.dtype == torch.float64 else torch.float32
        x, spec_t = self.encode(mix)
        freqs, frames = spec_t.shape[-1] // channels, spec_t.shape[1]
        if self.bands_per_row is None:
            scaled = spec_t.clone() if cfg.zero_dc else spec_t
        else:
            # Overlapping bands' complex masks are averaged per STFT row: summed here, with the
            # division moved onto the mixture (one row count per row, not one per stem).
            scaled = spec_t / self.bands_per_row.clamp(min=1e-8)
        if cfg.zero_dc:
            scaled[..., :channels] = 0  # rows 0..c-1 are bin 0
        stems = []
        for estimator in self.mask_estimators:
            summed = estimator(x).to(real_dtype)
            stem = torch.view_as_complex(summed.unflatten(-1, (-1, 2))) * scaled  # (b, t, f*c)
            stems.append(stem.view(batch, frames, freqs, channels).permute(0, 3, 2, 1))
        return torch.stack(stems, dim=1)  # (b, s, c, f, t)

    def encode(self, mix: Tensor) -> tuple[Tensor, Tensor]:
        """The trunk: mix [B, C, L] -> band features [B, T, K, D] (one per STFT frame and band,
        what the mask estimators read; the melody head reads them too) and the time-major
        complex mixture spectrum [B, T, F*C]."""
        cfg = self.config
        batch, channels, length = mix.shape
        real_dtype = torch.float64 if mix.dtype == torch.float64 else torch.float32
        spec = self._stft(mix.reshape(batch * channels, length).to(real_dtype))  # (b*c, f, t)
        freqs, frames = spec.shape[-2:]
        # Time-major spectrum, rows bin-major then channel: (b, t, f*c).
        spec_t = spec.reshape(batch, channels, freqs, frames).permute(0, 3, 2, 1)
        spec_t = spec_t.reshape(batch, frames, freqs * channels)
        features = torch.view_as_real(spec_t).reshape(batch, frames, -1)  # (b, t, f*c*2)
        x = self.band_split(features)  # (b, t, k, d)
        bands = x.shape[2]

        spare = torch.empty_like(x) if not torch.is_grad_enabled() else None
        earlier: list[Tensor] = []
        for block in self.layers:
            if cfg.linear_transformer_depth > 0:
                linear, time, freq = block
                x = self._run(linear, x.reshape(batch, 1, frames * bands, -1)).view_as(x)
            else:
                time, freq = block
            if cfg.skip_connection:  # after the linear transformer, as the community code does
                for y in earlier:
                    x = x + y
            # Time: each band is a sequence over frames; the result lands in `spare` as (b, t, k, d).
            y = self._run(
                time, x.transpose(1, 2), out=spare.transpose(1, 2) if spare is not None else None
            )
            y = y.transpose(1, 2)
            # Frequency: each frame is a sequence over bands; written back over x's storage.
            out = x if spare is not None and not cfg.skip_connection else None
            x = self._run(freq, y, out=out)
            if cfg.skip_connection:
                earlier.append(x)

        if self.final_norm is not None:
            x = self.final_norm(x)
        return x, spec_t

    def loss(self, mix: Tensor, targets: Tensor) -> Tensor:
        """L1 on the waveform + multi-resolution STFT L1, as the community training code does."""
        return self.loss_from_estimate(self(mix), targets)

    def loss_from_estimate(
        self, estimate: Tensor, targets: Tensor, rows: Tensor | None = None
    ) -> Tensor:
        """`loss` on given estimates [B, S, C, T]; `rows` [B, S] (bool) keeps only the stems an
        example has targets for (the trainer sums estimates into grouped targets first)."""
        cfg = self.config
        if rows is not None:
            estimate, targets = estimate[rows], targets[rows]  # to (rows, C, T)
        loss = F.l1_loss(estimate, targets)
        flat_est = estimate.reshape(-1, estimate.shape[-1])
        flat_ref = targets.reshape(-1, targets.shape[-1])
        stft_loss = estimate.new_zeros(())
        for window_size in cfg.multi_stft_resolutions_window_sizes:
            kwargs = dict(
                n_fft=max(window_size, cfg.stft_n_fft),
                win_length=window_size,
                hop_length=cfg.multi_stft_hop_size,
                normalized=cfg.multi_stft_normalized,
                window=torch.hann_window(window_size, device=estimate.device),
                return_complex=True,
            )
            est_spec = torch.stft(flat_est.float(), **kwargs)
            ref_spec = torch.stft(flat_ref.float(), **kwargs)
            stft_loss = stft_loss + F.l1_loss(est_spec, ref_spec)
        return loss + cfg.multi_stft_resolution_loss_weight * stft_loss


__all__ = ["BandLayout", "RoFormer", "RoFormerConfig", "Transformer"]
