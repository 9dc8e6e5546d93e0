"""Several separators in one pass, their estimates combined stem by stem.

Every member runs through its own chunked engine at its own rate, segment, overlap and batch
size; all are fed from the same decoded blocks, and their outputs are resampled back to the
ensemble's rate and lined up to the sample before they are combined, block by block, so memory
stays flat in the track's length. Stems are matched by name: a stem only some members estimate
is combined over those, and taken as it is where only one has it.

The algorithms (python-audio-separator and UVR name them the same way):
    avg_wave      the weighted mean of the waveforms; the safe default, it averages errors out.
    median_wave   the per-sample median; with three or more models it ignores one model's
                  glitch or burst of bleed.
    avg_fft       the weighted mean of the complex spectrograms (close to avg_wave; kept for
                  parity with the other tools).
    max_fft       per STFT bin, the estimate with the largest magnitude, phase included:
                  fuller, louder stems (what each model found), at the cost of more bleed.
    min_fft       per STFT bin, the estimate with the smallest magnitude: the least bleed (what
                  every model agrees on), at the cost of thinner stems.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

import numpy as np

from sepcli.audio import Resampler, adapt_channels
from sepcli.engine import Demixer, EngineError, TrackStream, take_samples

ALGORITHMS = ("avg_wave", "median_wave", "avg_fft", "max_fft", "min_fft")
SPECTRAL = ("avg_fft", "max_fft", "min_fft")
N_FFT, HOP = 2048, 512  # the STFT of the *_fft algorithms (4x overlap, Hann: exact inverse)


class EnsembleModel:
    """What the batch runner and the API read of a model, for an ensemble: the stems (every
    member's, in first-seen order), the rate it is fed at (the first member's) and channels."""

    def __init__(self, models: list) -> None:
        self.members = models
        self.sources = tuple(dict.fromkeys(s for m in models for s in m.sources))
        self.sample_rate = int(models[0].sample_rate)
        self.audio_channels = max(int(m.audio_channels) for m in models)
        self.segment = int(models[0].segment)
        # Residuals (no_vocals) sum the other stems only where every member splits the mix the
        # same way; otherwise they are the mixture minus the combined stem.
        self.partition = all(set(m.sources) == set(self.sources) for m in models)


class Ensemble:
    """The engine for several demixers: `stream` and `separate` as `Demixer`'s."""

    def __init__(
        self,
        members: list[Demixer],
        algorithm: str = "avg_wave",
        weights: list[float] | None = None,
    ) -> None:
        if not members:
            raise EngineError("an ensemble needs at least one model")
        if algorithm not in ALGORITHMS:
            raise EngineError(f"unknown ensemble '{algorithm}' (use {', '.join(ALGORITHMS)})")
        weights = [1.0] * len(members) if weights is None else [float(w) for w in weights]
        if len(weights) != len(members):
            raise EngineError(f"{len(weights)} weights for {len(members)} models")
        if not all(np.isfinite(w) and w > 0 for w in weights):
            raise EngineError(f"weights must be positive numbers, got {weights}")
        self.members, self.algorithm, self.weights = members, algorithm, weights
        self.model = EnsembleModel([m.model for m in members])
        self.device = members[0].device
        # Per stem: which members estimate it, at which index, with which weight.
        self.plan = {
            stem: [(k, m.sources.index(stem)) for k, m in enumerate(members) if stem in m.sources]
            for stem in self.model.sources
        }

    @property
    def sources(self) -> tuple[str, ...]:
        return self.model.sources

    @property
    def segment(self) -> int:
        return self.members[0].segment

    def with_segment(self, segment: int) -> "Ensemble":
        """Every member's chunk scaled like the first one's (the out-of-memory fallback)."""
        scale = segment / self.segment
        members = [m.with_segment(max(2, int(m.segment * scale))) for m in self.members]
        return Ensemble(members, self.algorithm, self.weights)

    def separate(self, mix: np.ndarray) -> np.ndarray:
        """Separate a whole track [C, T] -> [S, C, T]."""
        blocks = list(self.stream([mix]))
        if not blocks:
            return np.zeros((len(self.sources), mix.shape[0], 0), dtype=np.float32)
        return np.concatenate(blocks, axis=-1)

    def stream(self, blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Separate blocks [C, n] at the first member's rate; yield combined [S, C, m] blocks."""
        feeds = [_MemberFeed(m, self.model.sample_rate) for m in self.members]
        combiners = {
            stem: _SpectralCombiner(self.algorithm, [self.weights[k] for k, _ in users])
            for stem, users in self.plan.items()
            if len(users) > 1 and self.algorithm in SPECTRAL
        }
        pending: dict[str, list[np.ndarray]] = {stem: [] for stem in self.plan}
        total = 0
        for block in blocks:
            block = np.asarray(block, dtype=np.float32)
            total += block.shape[-1]
            for feed in feeds:
                feed.feed(block)
            self._combine(feeds, combiners, min(f.ready for f in feeds), pending, last=False)
            yield from _aligned(pending)
        for feed in feeds:
            feed.close(total)
        self._combine(feeds, combiners, total - feeds[0].taken, pending, last=True)
        yield from _aligned(pending)

    def _combine(self, feeds, combiners, count: int, pending, last: bool) -> None:
        """Take `count` samples from every member and add each stem's combination to `pending`
        (a spectral combination hands back fewer: it holds its last frames until the next)."""
        parts = [feed.take(count) for feed in feeds]
        channels = self.model.audio_channels
        for stem, users in self.plan.items():
            estimates = [_channels(parts[k][i], channels) for k, i in users]
            if len(estimates) == 1:  # one model has it: its stem as it is, bit for bit
                pending[stem].append(estimates[0])
            elif stem in combiners:
                pending[stem].append(combiners[stem].push(np.stack(estimates)))
                if last:
                    pending[stem].append(combiners[stem].finish())
            else:
                weights = [self.weights[k] for k, _ in users]
                pending[stem].append(combine_wave(estimates, weights, self.algorithm))


def _aligned(pending: dict[str, list[np.ndarray]]) -> Iterator[np.ndarray]:
    """The samples every stem has reached, as one [S, C, n] block; the rest stays pending."""
    count = min(sum(b.shape[-1] for b in blocks) for blocks in pending.values())
    if count == 0:
        return
    out = []
    for stem, blocks in pending.items():
        joined = np.concatenate(blocks, axis=-1)
        out.append(joined[:, :count])
        pending[stem] = [joined[:, count:]]
    yield np.stack(out).astype(np.float32, copy=False)


def combine_wave(estimates: list[np.ndarray], weights: list[float], algorithm: str) -> np.ndarray:
    """The waveform combinations of several estimates of one stem [C, n]."""
    if len(estimates) == 1:
        return estimates[0]
    stack = np.stack(estimates)
    if algorithm == "median_wave":
        return np.median(stack, axis=0)
    w = np.asarray(weights, dtype=np.float64)
    return np.tensordot(w / w.sum(), stack, axes=1).astype(np.float32)


def combine_spectra(spectra: np.ndarray, weights: list[float], algorithm: str) -> np.ndarray:
    """[K, ...] complex spectra of one stem from K models -> one; bin by bin for max and min."""
    if algorithm == "avg_fft":
        w = np.asarray(weights, dtype=np.float64)
        return np.tensordot(w / w.sum(), spectra, axes=1)
    magnitude = np.abs(spectra)
    pick = magnitude.argmax(axis=0) if algorithm == "max_fft" else magnitude.argmin(axis=0)
    return np.take_along_axis(spectra, pick[None], axis=0)[0]


class _SpectralCombiner:
    """Streaming STFT -> combination -> inverse STFT of one stem. The input is padded at the
    front with N_FFT - HOP zeros so that every real sample lies under four frames; a sample is
    final once no later frame covers it, and the overlap-added frames are divided by the summed
    squared window."""

    def __init__(self, algorithm: str, weights: list[float]) -> None:
        self.algorithm, self.weights = algorithm, weights
        self.window = np.hanning(N_FFT + 1)[:-1].astype(np.float64)  # periodic Hann
        self.lead = N_FFT - HOP
        self.buffer: np.ndarray | None = None  # [K, C, m] input from frame `next_frame` on
        self.acc: np.ndarray | None = None  # [C, N_FFT - HOP] overlap-add tail
        self.weight = np.zeros(N_FFT - HOP)
        self.skip = self.lead  # leading output samples that are padding
        self.pushed = 0  # real samples in
        self.emitted = 0  # real samples out

    def push(self, stack: np.ndarray) -> np.ndarray:
        """Estimates [K, C, n] in; the combined samples [C, m] that are final out."""
        if self.buffer is None:
            k, c = stack.shape[:2]
            self.buffer = np.zeros((k, c, self.lead))
            self.acc = np.zeros((c, N_FFT - HOP))
        self.pushed += stack.shape[-1]
        self.buffer = np.concatenate([self.buffer, stack.astype(np.float64)], axis=-1)
        return self._frames()

    def finish(self) -> np.ndarray:
        """The rest: pad the end with zeros so that the last real samples get all their frames."""
        expected = self.pushed - self.emitted
        self.buffer = np.concatenate([self.buffer, np.zeros((*self.buffer.shape[:2], N_FFT))], -1)
        out = self._frames()
        return out[:, :expected]

    def _frames(self) -> np.ndarray:
        count = (self.buffer.shape[-1] - N_FFT) // HOP + 1 if self.buffer.shape[-1] >= N_FFT else 0
        channels = self.buffer.shape[1]
        if count <= 0:
            return np.zeros((channels, 0), dtype=np.float32)
        index = np.arange(N_FFT)[None] + HOP * np.arange(count)[:, None]  # [F, N_FFT]
        frames = self.buffer[..., index] * self.window  # [K, C, F, N_FFT]
        spectra = np.fft.rfft(frames, axis=-1)
        combined = combine_spectra(spectra, self.weights, self.algorithm)  # [C, F, bins]
        pieces = np.fft.irfft(combined, n=N_FFT, axis=-1) * self.window  # [C, F, N_FFT]
        length = HOP * (count - 1) + N_FFT
        acc = np.zeros((channels, length))
        weight = np.zeros(length)
        acc[:, : N_FFT - HOP] += self.acc
        weight[: N_FFT - HOP] += self.weight
        for f in range(count):
            acc[:, f * HOP : f * HOP + N_FFT] += pieces[:, f]
            weight[f * HOP : f * HOP + N_FFT] += self.window**2
        done = HOP * count  # later frames start here or after: everything before is final
        out = acc[:, :done] / np.maximum(weight[:done], 1e-12)
        self.acc, self.weight = acc[:, done:], weight[done:]
        self.buffer = self.buffer[..., done:]
        if self.skip:
            cut = min(self.skip, out.shape[-1])
            out, self.skip = out[:, cut:], self.skip - cut
        self.emitted += out.shape[-1]
        return out.astype(np.float32)


class _MemberFeed:
    """One member's side of the stream: in at the ensemble's rate, resampled to the member's,
    separated, resampled back, and queued until every member has reached the same sample."""

    def __init__(self, demixer: Demixer, rate: int) -> None:
        model = demixer.model
        self.channels, self.stems = model.audio_channels, len(demixer.sources)
        self.track: TrackStream = demixer.open()
        self.to_model = Resampler(rate, model.sample_rate, self.channels)
        self.from_model = Resampler(model.sample_rate, rate, self.stems * self.channels)
        self.queue: list[np.ndarray] = []  # [S, C, n] blocks at the ensemble's rate
        self.ready = 0  # samples queued
        self.taken = 0  # samples handed out

    def feed(self, block: np.ndarray) -> None:
        x = self.to_model(adapt_channels(block, self.channels, downmix=True))
        self._queue(self.track.feed(x))

    def close(self, total: int) -> None:
        """End of track: flush the resamplers and the engine, then cut or pad the queue so that
        it ends exactly at `total` samples (resampling there and back may differ by one)."""
        tail = self.to_model(np.zeros((self.channels, 0), np.float32), last=True)
        out = self.track.feed(tail) if tail.shape[-1] else []
        self._queue(out + self.track.close(), last=True)
        excess = self.taken + self.ready - total
        if excess > 0:
            self._drop_end(excess)
        elif excess < 0:
            self.queue.append(np.zeros((self.stems, self.channels, -excess), np.float32))
            self.ready -= excess

    def take(self, count: int) -> np.ndarray:
        """The first `count` queued samples [S, C, count]."""
        self.ready -= count
        self.taken += count
        if count == 0:
            return np.zeros((self.stems, self.channels, 0), np.float32)
        return take_samples(self.queue, count)

    def _queue(self, blocks: list[np.ndarray], last: bool = False) -> None:
        flat = [b.reshape(-1, b.shape[-1]) for b in blocks]
        if last:
            flat.append(np.zeros((self.stems * self.channels, 0), np.float32))
        for i, block in enumerate(flat):
            back = self.from_model(block, last=last and i == len(flat) - 1)
            if back.shape[-1]:
                self.queue.append(back.reshape(self.stems, self.channels, -1))
                self.ready += back.shape[-1]

    def _drop_end(self, count: int) -> None:
        while count > 0:
            tail = self.queue[-1]
            if tail.shape[-1] <= count:
                self.queue.pop()
                count -= tail.shape[-1]
                self.ready -= tail.shape[-1]
            else:
                self.queue[-1] = tail[..., :-count]
                self.ready -= count
                count = 0


def _channels(estimate: np.ndarray, channels: int) -> np.ndarray:
    """A mono member's stem [1, n] spread over a stereo ensemble's channels."""
    return estimate if estimate.shape[0] == channels else np.repeat(estimate, channels, axis=0)


def ensemble_name(names: list[str], algorithm: str, weights: list[float] | None) -> str:
    """The output folder name of an ensemble: readable, and short enough for any file system."""
    label = "+".join(names)
    if weights is not None:
        label += "@" + ",".join(f"{w:g}" for w in weights)
    name = f"{algorithm}-{label}"
    if len(name) > 100:
        name = f"{algorithm}-{len(names)}models-{hashlib.sha256(label.encode()).hexdigest()[:12]}"
    return name
