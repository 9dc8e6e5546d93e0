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

With `salience_window` > 0 the head also has a pitch salience map, after Bittner, McFee,
Salamon, Li, Bello, "Deep Salience Representations for F0 Estimation in Polyphonic Music"
(ISMIR 2017): the mono mix's log spectrum (its own, longer STFT at the trunk's hop) is read at
the harmonics (and a subharmonic) of every pitch on the grid, a harmonic-CQT-like stack, and a
small CNN over time and pitch turns it into one logit per pitch, added to the classifier's. The
convolutions slide along pitch, so what is learnt at one pitch holds at every other: the
classifier over fixed bins has to learn each pitch apart, from the few singers of MIR-1K. The
CNN's last layer starts at zero: a model initialised from one without salience starts out
computing exactly what it did.

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
    # The pitch salience map (0 = none): its STFT size, harmonics read, CNN width.
    salience_window: int = 0
    salience_harmonics: tuple[float, ...] = (0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)
    salience_channels: int = 16
    # Dilations of the salience CNN's layers along time (3 taps each, residual), after its
    # 3x5 layers: () = none. (2, 4, 8, 16) lets each pitch see 32 frames (0.37 s) either way.
    salience_dilations: tuple[int, ...] = ()
    # More STFT sizes for the salience map: each adds its own harmonic stack, read by its own
    # first layer. A shorter window (2048) follows fast glides that the 4096-point one smears.
    salience_extra_windows: tuple[int, ...] = ()
    # The salience map also reads the harmonic stacks of the vocals that a frozen separator of
    # the trunk's architecture (`guide`: its vocal mask estimator kept) hears in the mix, so
    # the accompaniment's harmonics are turned down where the separator hears them.
    salience_guide: bool = False
    # Decode pitch as the most likely path through the frames (`viterbi_pitch_path`), not
    # frame by frame: a lone frame cannot hop to the accompaniment and back.
    pitch_smoothing: bool = False
    # Test-time transpositions (semitones, whole, non-zero): decoding also hears the mix played
    # this much higher or lower and averages the passes (`sepcli.transcribe.averaged_log_probs`);
    # each costs one more pass of the network. Empty: one pass, as trained.
    test_transpositions: tuple[float, ...] = ()  # floats: a config's ints must be >= 0

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
        if self.salience_window and not self.stft_hop_length <= self.salience_window <= 16384:
            raise ValueError(
                "config key 'salience_window' (STFT size) must be 0 or stft_hop_length..16384"
            )
        if not 1 <= len(self.salience_harmonics) <= 16 or not all(
            0 < h <= 32 for h in self.salience_harmonics
        ):
            raise ValueError("config key 'salience_harmonics' needs 1-16 harmonics in (0, 32]")
        if not 1 <= self.salience_channels <= 256:
            raise ValueError("config key 'salience_channels' must lie in 1..256")
        if len(self.salience_dilations) > 8 or not all(
            1 <= d <= 64 for d in self.salience_dilations
        ):
            raise ValueError("config key 'salience_dilations' takes up to 8 dilations in 1..64")
        extra = self.salience_extra_windows
        if extra and (
            not self.salience_window
            or len(extra) > 4
            or len(set((self.salience_window, *extra))) <= len(extra)
            or not all(self.stft_hop_length <= w <= 16384 for w in extra)
        ):
            raise ValueError(
                "config key 'salience_extra_windows' takes up to 4 STFT sizes in "
                "stft_hop_length..16384, distinct, beside a 'salience_window'"
            )
        if self.salience_guide and not self.salience_window:
            raise ValueError("config key 'salience_guide' needs a 'salience_window'")
        shifts = self.test_transpositions
        if (
            len(shifts) > 8
            or len(set(shifts)) < len(shifts)
            or not all(s != 0 and s == round(s) and -12 <= s <= 12 for s in shifts)
        ):
            raise ValueError("config key 'test_transpositions' takes up to 8 distinct whole "
                             "semitones in -12..12, without 0 (the plain pass always runs)")  # fmt: skip

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
        self.salience = PitchSalience(config, grid) if config.salience_window else None
        self.guide: MelRoFormer | None = None
        if config.salience_guide:  # not trained: its weights stay the separator's (load_guide)
            vocals_only = dataclasses.replace(
                config.trunk_config(), num_stems=1, sources=("vocals",)
            )
            self.guide = MelRoFormer(vocals_only).requires_grad_(False).eval()

    def train(self, mode: bool = True) -> "MelodyTranscriber":
        super().train(mode)
        if self.guide is not None:
            self.guide.eval()  # frozen: never its dropout, even while the rest trains
        return self

    def forward(self, mix: Tensor, train_trunk: bool = True) -> Tensor:
        """`train_trunk=False` runs the trunk without gradients (training the head alone)."""
        frames = self.frames(mix.shape[-1])
        longest = max(self.config.stft_n_fft, self.config.salience_window,
                      *self.config.salience_extra_windows)  # fmt: skip
        short = longest // 2 + 1 - mix.shape[-1]
        if short > 0:  # the centred STFTs reflect n_fft/2 samples: pad very short inputs
            mix = F.pad(mix, (0, short))
        with torch.set_grad_enabled(train_trunk and torch.is_grad_enabled()):
            x, spectrum = self.trunk.encode(mix)  # (b, t, k, d), (b, t, f * c)
        spectral = None
        if self.config.spectral_bins:
            spectral = with_context(self.log_magnitudes(spectrum), self.config.spectral_context)
        stack = self.salience.harmonic_stack(mix) if self.salience is not None else None
        if self.guide is not None:
            with torch.no_grad():
                vocals = self.guide(mix.float())[:, 0]  # (b, c, l)
            stack = torch.cat([stack, self.salience.harmonic_stack(vocals)], 1)
        return self.head(x, spectral, stack)[:, :frames]

    def head(
        self, bands: Tensor, spectral: Tensor | None = None, stack: Tensor | None = None
    ) -> Tensor:
        """Band features [B, T, K, D] and, for a spectral head, each frame's log magnitudes
        with their context ([B, T, (2 * context + 1) * bins]), for a salience head the harmonic
        stack [B, H, T, bins] -> logits [B, T, bins + 1]."""
        features = self.band_head(bands.float()).flatten(2)  # (b, t, k * h)
        if self.config.spectral_bins:
            features = torch.cat([features, spectral], -1)
        logits = self.classifier(features)
        if self.salience is None:
            return logits
        salience = self.salience(stack)[:, : logits.shape[1]]
        return torch.cat([logits[..., :-1] + salience, logits[..., -1:]], -1)

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

    def load_guide(self, separator_state: dict[str, Tensor], sources: list[str]) -> None:
        """Take the guide's weights from a Mel-RoFormer separation state dict of the trunk's
        architecture whose `sources` include vocals: its trunk and its vocal mask estimator."""
        if self.guide is None or "vocals" not in sources:
            raise ValueError("the guide needs a model with 'salience_guide' and a vocals stem")
        vocals = f"mask_estimators.{sources.index('vocals')}."
        state = {k.replace(vocals, "mask_estimators.0."): v for k, v in separator_state.items()
                 if not k.startswith("mask_estimators.") or k.startswith(vocals)}  # fmt: skip
        self.guide.load_state_dict(state)

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
        is finer than the grid; the voicing probability is the sigmoid of the voicing logit.
        With `pitch_smoothing` the most likely bin of each frame is the Viterbi path's, along
        the frames axis (-2)."""
        probs = torch.softmax(logits[..., :-1].float(), dim=-1)
        if self.config.pitch_smoothing and probs.dim() >= 2:
            # the path is a sequential loop: numpy on the CPU, whatever the logits' device
            sequences = torch.log(probs + 1e-12).cpu().reshape(-1, *probs.shape[-2:]).numpy()
            paths = [viterbi_pitch_path(s, self.config.bins_per_semitone) for s in sequences]
            centre = torch.from_numpy(np.stack(paths)).to(probs.device)
            centre = centre.reshape(probs.shape[:-1])[..., None]
        else:
            centre = probs.argmax(-1, keepdim=True)
        span = torch.arange(-4, 5, device=probs.device)
        index = centre + span
        inside = (index >= 0) & (index < probs.shape[-1])  # no bins past the grid's ends
        index = index.clamp(0, probs.shape[-1] - 1)
        weight = probs.gather(-1, index) * inside
        pitch = (self.pitch_grid[index] * weight).sum(-1) / weight.sum(-1).clamp(min=1e-12)
        return pitch, torch.sigmoid(logits[..., -1].float())


# The Viterbi path's costs (nats, per frame), chosen on the validation singers at the trunk's
# 11.6 ms hop: a glide to a neighbouring bin costs GLIDE_COST per semitone, up to GLIDE_REACH
# semitones per frame (sung pitch moves smoothly, portamento and vibrato included); any other
# jump costs JUMP_COST (a new note after a rest, or a leap, which the path takes only when the
# frames insist).
GLIDE_COST, GLIDE_REACH, JUMP_COST = 1.5, 3, 12.0


def viterbi_pitch_path(log_probs: np.ndarray, bins_per_semitone: int) -> np.ndarray:
    """The bin sequence [frames] that maximises the frames' pitch log-probabilities
    [frames, bins] minus the glide and jump costs above (as CREPE's Viterbi decoding, Kim et al.
    2018, with a banded transition plus a flat floor instead of a dense matrix)."""
    frames, bins = log_probs.shape
    reach = GLIDE_REACH * bins_per_semitone
    offsets = np.arange(-reach, reach + 1)
    source = np.arange(bins)[:, None] + offsets  # [bins, offsets]: where a glide comes from
    inside = (source >= 0) & (source < bins)
    source = source.clip(0, bins - 1)
    glide_cost = np.where(inside, GLIDE_COST * np.abs(offsets) / bins_per_semitone, np.inf)
    score = log_probs[0].astype(np.float64)
    back = np.empty((frames, bins), dtype=np.int64)
    rows = np.arange(bins)
    for t in range(1, frames):
        glides = score[source] - glide_cost
        which = glides.argmax(1)
        best = glides[rows, which]
        leap_from = int(score.argmax())
        leap = score[leap_from] - JUMP_COST
        back[t] = np.where(leap > best, leap_from, source[rows, which])
        score = np.maximum(best, leap) + log_probs[t]
    path = np.empty(frames, dtype=np.int64)
    path[-1] = int(score.argmax())
    for t in range(frames - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path


# Where the time layers sit in PitchSalience.net (its keys stay those of a model without them).
TIME_LAYERS_AT = 4


class HarmonicStack(nn.Module):
    """Mono mix [B, L] -> the log magnitude of its STFT (`n_fft` points, Hann, centred,
    hop `hop`, so frames line up whatever `n_fft`) read by linear interpolation at h * f for every
    pitch f of the grid and every h of `harmonics`, minus each frame's mean (the level is the band
    features' business; pitch is not): [B, H, T, bins], T = L // hop + 1. No weights."""

    def __init__(
        self, n_fft: int, hop: int, harmonics: tuple[float, ...], hz: np.ndarray, rate: int
    ) -> None:
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        position = np.array(harmonics)[:, None] * hz * n_fft / rate
        position = np.clip(position, 0, n_fft // 2 - 1.001)
        low = np.floor(position)
        self.top = int(low.max()) + 2  # the bins the stack reads, the frame mean's range
        self.register_buffer("low", torch.tensor(low, dtype=torch.long).flatten(), False)
        self.register_buffer("frac", torch.tensor(position - low, dtype=torch.float32), False)
        self.register_buffer("window", torch.hann_window(n_fft), False)

    def forward(self, mono: Tensor) -> Tensor:
        spec = torch.stft(mono, self.n_fft, self.hop, window=self.window, center=True,
                          return_complex=True)  # fmt: skip
        log = torch.log(spec.abs() + 1e-4)  # (b, f, t)
        log = log - log[:, : self.top].mean(1, keepdim=True)
        harmonics, bins = self.frac.shape
        below = log.index_select(1, self.low).unflatten(1, (harmonics, bins))
        above = log.index_select(1, self.low + 1).unflatten(1, (harmonics, bins))
        frac = self.frac[None, :, :, None]
        return (below * (1 - frac) + above * frac).transpose(2, 3)  # (b, h, t, bins)


class PitchSalience(nn.Module):
    """Harmonic stacks of the mix -> one salience logit per frame and pitch of the grid.

    The stack (`harmonic_stack`): a `HarmonicStack` of `salience_window` points, then one of
    each of `salience_extra_windows`, along the channels. The CNN: two 3x5 (time x pitch)
    layers, then `salience_dilations`' residual layers along time (3 taps, dilated), then one
    spanning an octave along pitch (13 taps a semitone apart), then 1x1 to a logit. The extra
    windows' stacks enter through a first layer of their own (`extra_input`), added to the
    first 3x5 layer's output; with `salience_guide`, the stacks of the guide's vocal estimate
    (as many again, after the mix's) through another (`guide_input`). The time layers give each
    pitch a view of its own past and future, as the band features have through the trunk's time
    transformers: a glide, or a note's onset under a loud chord, is read from the frames around
    it. The time layers and the extra inputs start at zero (no change), so they can be added to
    a trained model."""

    def __init__(self, config: MelodyConfig, grid_midi: np.ndarray) -> None:
        super().__init__()
        hz = 440.0 * 2.0 ** ((grid_midi - 69.0) / 12.0)
        self.stacks = nn.ModuleList(
            HarmonicStack(
                n_fft, config.stft_hop_length, config.salience_harmonics, hz, config.sample_rate
            )
            for n_fft in (config.salience_window, *config.salience_extra_windows)
        )
        h, c = len(config.salience_harmonics), config.salience_channels
        semitone = config.bins_per_semitone
        self.harmonics = h  # the first stack's channels, read by net[0]
        windows = 1 + len(config.salience_extra_windows)
        self.mix_channels = h * windows  # then, with a guide, as many of the guide's vocals
        self.net = nn.Sequential(
            nn.Conv2d(h, c, (3, 5), padding=(1, 2)), nn.GELU(),
            nn.Conv2d(c, c, (3, 5), padding=(1, 2)), nn.GELU(),
            nn.Conv2d(c, c, (1, 13), padding=(0, 6 * semitone), dilation=(1, semitone)),
            nn.GELU(), nn.Conv2d(c, 1, 1),
        )  # fmt: skip
        nn.init.zeros_(self.net[-1].weight)  # starts as no change to the classifier's logits
        nn.init.zeros_(self.net[-1].bias)
        extra = len(config.salience_extra_windows)
        self.extra_input = nn.Conv2d(extra * h, c, (3, 5), padding=(1, 2)) if extra else None
        self.temporal = nn.ModuleList(
            nn.Conv2d(c, c, (3, 1), padding=(d, 0), dilation=(d, 1))
            for d in config.salience_dilations
        )
        self.guide_input = (
            nn.Conv2d(windows * h, c, (3, 5), padding=(1, 2)) if config.salience_guide else None
        )
        added = (self.extra_input, self.guide_input)
        zero_start = [*self.temporal, *(layer for layer in added if layer is not None)]
        for layer in zero_start:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def harmonic_stack(self, mix: Tensor) -> Tensor:
        """Mix [B, C, L] -> the stacks [B, H * windows, T, bins] (T = L // hop + 1)."""
        mono = mix.float().mean(1)  # once, for every window
        return torch.cat([stack(mono) for stack in self.stacks], 1)

    def forward(self, stack: Tensor) -> Tensor:
        """The stacks [B, H * windows (* 2 with a guide), T, bins] -> logits [B, T, bins]."""
        stack = stack.float()
        x = stack[:, : self.harmonics]
        for index, layer in enumerate(self.net):
            if index == TIME_LAYERS_AT:  # after the two 3x5 layers and their GELUs
                for time_layer in self.temporal:
                    x = x + F.gelu(time_layer(x))
            x = layer(x)
            if index == 0 and self.extra_input is not None:
                x = x + self.extra_input(stack[:, self.harmonics : self.mix_channels])
            if index == 0 and self.guide_input is not None:
                x = x + self.guide_input(stack[:, self.mix_channels :])
        return x[:, 0]


def with_context(frames: Tensor, context: int) -> Tensor:
    """Rows [B, T, N] -> each row with its `context` neighbours either side, [B, T, (2c+1) N],
    earliest first; the first and last rows repeat past the ends."""
    if not context:
        return frames
    batch, length, width = frames.shape
    padded = F.pad(frames.transpose(1, 2), (context, context), mode="replicate")
    windows = padded.unfold(-1, 2 * context + 1, 1)  # (b, n, t, 2c + 1)
    return windows.permute(0, 2, 3, 1).reshape(batch, length, -1)


__all__ = ["HarmonicStack", "MelodyConfig", "MelodyTranscriber", "PitchSalience", "with_context"]
