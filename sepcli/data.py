"""Training examples: MUSDB decoding and caching, and remixed random segments of any tracks.

Every remixed example is a fresh mixture: each stem comes from a random track of any dataset
that holds it, at a random offset, with a random gain, channel swap and polarity (the usual
Open-Unmix/demucs remixing), so 80 previews of 6.8 s give far more distinct mixtures than 80
examples. Real mixes of tracks with grouped stems (vocals + accompaniment) come with the groups
the loss compares.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import soxr

from eval.musdb import layout_hint
from sepcli.audio import fit_length
from sepcli.datasets import ATOMS, FULL_BAND, TARGET_ATOMS, Track, target_groups

STEMS = ("vocals", "drums", "bass", "other")


def load_musdb_stems(
    root: Path, subset: str, split: str | None, is_wav: bool, cache_dir: Path | None = None
) -> tuple[list[str], list[np.ndarray], int]:
    """All tracks of a MUSDB subset/split as float32 stems [4, 2, T] (vocals, drums, bass, other).

    Decoding `.stem.mp4` needs ffmpeg and takes a while, so the stems are cached as float16
    `.npy` files keyed by root, subset and split.
    """
    import musdb  # lazy: stempeg refuses to import without ffmpeg

    key = hashlib.sha1(f"{Path(root).resolve()}|{subset}|{split}|{is_wav}".encode()).hexdigest()[
        :12
    ]
    cache = Path(cache_dir) / f"musdb-{subset}-{split or 'all'}-{key}" if cache_dir else None
    if cache is not None and (cache / "names.txt").exists():
        names = (cache / "names.txt").read_text().splitlines()
        stems = [np.load(cache / f"{i}.npy").astype(np.float32) for i in range(len(names))]
        return names, stems, 44100
    db = musdb.DB(root=str(root), subsets=subset, split=split, is_wav=is_wav)
    if len(db) == 0:
        raise ValueError(
            f"no MUSDB tracks found in {root} (subset {subset}, split {split})"
            + layout_hint(root, subset, is_wav)
        )
    names, stems, rate = [], [], 44100
    for track in db:
        names.append(track.name)
        rate = track.rate
        audio = np.stack([track.targets[s].audio.T for s in STEMS]).astype(np.float16)
        # Train on the float16-rounded audio even on the first run, so that a run that decodes
        # and a resumed run that reads the cache see bit-identical data.
        stems.append(audio.astype(np.float32))
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        for i, s in enumerate(stems):
            np.save(cache / f"{i}.npy", s.astype(np.float16))
        (cache / "names.txt").write_text("\n".join(names))
    return names, stems, rate


def resample_stems(stems: list[np.ndarray], rate: int, target: int) -> list[np.ndarray]:
    """Resample each track's stems [S, C, T] with soxr (once, before training)."""
    out = []
    for track in stems:
        frames = track.reshape(-1, track.shape[-1]).T  # (T, S*C), as soxr wants
        resampled = soxr.resample(frames, rate, target, quality="HQ").T
        out.append(np.ascontiguousarray(resampled.reshape(*track.shape[:-1], -1), np.float32))
    return out


class RemixDataset:
    """Random training examples from in-memory tracks of one or more datasets.

    Args:
        tracks: per dataset label, (sampling weight, its `Track`s); or a plain list of float32
            stems [4, C, T] (vocals, drums, bass, other), one dataset of weight 1.
        segment: samples per example.
        sources: the model's sources; `accompaniment` is drums + bass + other.
        silence_threshold: if set, redraw a remixed stem segment whose RMS is below it (linear),
            up to 10 times, as the community training code skips silent targets.
        augment: random gain (0.25..1.25), channel swap and polarity per stem.
        coherent: fraction of examples that are real mixes: every target of one track at one
            offset (augmentation still applies per target; silence filtering does not). Tracks
            that hold grouped targets (vocals + accompaniment) take part in these only.
        speed: largest relative change of playback speed. Each stem segment (each coherent
            example, all its stems alike) is read from `segment` times a factor drawn from
            [1 - speed, 1 + speed] samples and resampled to `segment`: tempo and pitch change
            together (0.1 is about 1.7 semitones), as tape would. 0 leaves the audio as it is.
        mixup: chance that a remixed stem segment is the sum of two segments of that stem, each
            from a random track with its own augmentation (ZFTurbo's `mixup`).
        channels: the model's channel count (mono tracks are duplicated, stereo averaged).

    A remixed example draws each atom (vocals, drums, bass, other) from the tracks that hold it
    alone: a dataset by weight, then a track by length. `sample` returns mixtures, targets and
    `groups`: row k of an example's [S, S] matrix says which model sources sum to its target k
    (the identity for remixes and 4-stem tracks; a zero row is no target). An example with a
    band-limited stem (below 16 kHz, as MIR-1K's) is low-passed as a whole at that bandwidth,
    so no example pairs dull vocals with bright drums.
    """

    def __init__(
        self,
        tracks: dict[str, tuple[float, list[Track]]] | list[np.ndarray],
        segment: int,
        sources: tuple[str, ...],
        silence_threshold: float | None = None,
        augment: bool = True,
        coherent: float = 0.0,
        speed: float = 0.0,
        mixup: float = 0.0,
        channels: int = 2,
        rate: int = 44100,
    ) -> None:
        if not 0 <= coherent <= 1:
            raise ValueError(f"coherent must be in [0, 1], got {coherent}")
        if not 0 <= speed < 1:
            raise ValueError(f"speed must be in [0, 1), got {speed}")
        if not 0 <= mixup <= 1:
            raise ValueError(f"mixup must be in [0, 1], got {mixup}")
        unknown = [s for s in sources if s not in TARGET_ATOMS]
        if unknown:
            raise ValueError(f"unknown training sources: {', '.join(unknown)}")
        if isinstance(tracks, list):
            tracks = {"musdb": (1.0, [_four_stem_track(i, a, rate) for i, a in enumerate(tracks)])}
        self.datasets = {label: (w, found) for label, (w, found) in tracks.items() if found}
        if not self.datasets:
            raise ValueError("no training tracks")
        self.segment, self.sources, self.channels, self.rate = segment, sources, channels, rate
        self.silence_threshold = silence_threshold
        self.augment, self.coherent, self.speed, self.mixup = augment, coherent, speed, mixup
        # Per atom, the datasets (weight, [(track, target name)]) whose tracks hold it alone.
        self.pools: dict[str, list[tuple[float, list[tuple[Track, str]]]]] = {}
        for atom in ATOMS:
            for weight, found in self.datasets.values():
                holders = [(t, t.pure(atom)) for t in found if t.pure(atom)]
                if holders:
                    self.pools.setdefault(atom, []).append((weight, holders))
        self._groups_cache: dict[tuple, list] = {}

    # ---------------------------------------------------------------- drawing

    def _pick(self, rng: np.random.Generator, choices: list[tuple[float, list]], lengths) -> Any:
        """A dataset by weight, then an item by length."""
        weights = np.array([w for w, _ in choices])
        items = choices[int(rng.choice(len(choices), p=weights / weights.sum()))][1]
        sizes = np.array([lengths(item) for item in items], dtype=np.float64)
        return items[int(rng.choice(len(items), p=sizes / sizes.sum()))]

    def _source_length(self, rng: np.random.Generator) -> int:
        """Samples to read for one segment: `segment`, or another length to change the speed."""
        if self.speed == 0:
            return self.segment
        return round(self.segment * rng.uniform(1 - self.speed, 1 + self.speed))

    def _cut(self, audio: np.ndarray, start: int, length: int) -> np.ndarray:
        piece = np.asarray(audio[:, start : start + length], dtype=np.float32)
        if piece.shape[0] != self.channels:
            piece = (np.repeat(piece, self.channels, axis=0) if piece.shape[0] == 1
                     else piece.mean(axis=0, keepdims=True))  # fmt: skip
        if piece.shape[-1] < length:
            piece = np.pad(piece, ((0, 0), (0, length - piece.shape[-1])))
        return fit_length(piece, self.segment)

    def _offset(self, rng: np.random.Generator, track: Track, length: int) -> int:
        return int(rng.integers(0, max(1, track.length - length + 1)))

    def _atom_segment(self, rng: np.random.Generator, atom: str) -> tuple[np.ndarray, float]:
        piece, bandwidth = self._one_atom_segment(rng, atom)
        if self.mixup > 0 and rng.random() < self.mixup:
            other, other_bandwidth = self._one_atom_segment(rng, atom)
            piece, bandwidth = piece + other, min(bandwidth, other_bandwidth)
        return piece, bandwidth

    def _one_atom_segment(self, rng: np.random.Generator, atom: str) -> tuple[np.ndarray, float]:
        length = self._source_length(rng)
        for _ in range(10):
            track, target = self._pick(rng, self.pools[atom], lambda item: item[0].length)
            piece = self._cut(track.targets[target], self._offset(rng, track, length), length)
            if (
                self.silence_threshold is None
                or np.sqrt(np.mean(piece**2)) >= self.silence_threshold
            ):
                break
        return self._augment(rng, piece), track.bandwidth

    def _augment(self, rng: np.random.Generator, piece: np.ndarray) -> np.ndarray:
        if self.augment:
            piece = piece * rng.uniform(0.25, 1.25)
            if rng.random() < 0.5:
                piece = piece[::-1]
            if rng.random() < 0.5:
                piece = -piece
        return np.ascontiguousarray(piece, dtype=np.float32)

    def _groups(self, atoms: tuple[frozenset[str], ...]) -> list:
        if atoms not in self._groups_cache:
            self._groups_cache[atoms] = target_groups(list(atoms), self.sources)
        return self._groups_cache[atoms]

    def _lowpass(self, parts: list[np.ndarray], bandwidth: float) -> list[np.ndarray]:
        """Every part cut above `bandwidth` Hz, when that is below full band."""
        if bandwidth >= FULL_BAND or bandwidth >= self.rate / 2:
            return parts
        cut = int(np.ceil(bandwidth / self.rate * self.segment))
        out = []
        for part in parts:
            spectrum = np.fft.rfft(part, axis=-1)
            spectrum[..., cut:] = 0
            out.append(np.fft.irfft(spectrum, n=part.shape[-1], axis=-1).astype(np.float32))
        return out

    def example(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One example: mixture [C, T], targets [S, C, T], groups [S, S]."""
        if self.coherent > 0 and rng.random() < self.coherent:
            track = self._pick(rng, list(self.datasets.values()), lambda t: t.length)
            length = self._source_length(rng)
            start = self._offset(rng, track, length)
            names = list(track.targets)
            parts = [self._augment(rng, self._cut(track.targets[n], start, length)) for n in names]
            atoms = tuple(track.atoms[n] for n in names)
            bandwidth = track.bandwidth
        else:
            drawn = [self._atom_segment(rng, atom) for atom in ATOMS if atom in self.pools]
            parts = [piece for piece, _ in drawn]
            atoms = tuple(TARGET_ATOMS[a] for a in ATOMS if a in self.pools)
            bandwidth = min(b for _, b in drawn)
        parts = self._lowpass(parts, bandwidth)
        mix = np.sum(parts, axis=0)
        targets = np.zeros((len(self.sources), *mix.shape), dtype=np.float32)
        groups = np.zeros((len(self.sources), len(self.sources)), dtype=np.float32)
        for row, (target_ids, source_ids) in enumerate(self._groups(atoms)):
            targets[row] = np.sum([parts[t] for t in target_ids], axis=0)
            groups[row, source_ids] = 1
        return mix.astype(np.float32), targets, groups

    def sample(
        self, rng: np.random.Generator, batch: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A batch: mixtures [B, C, T], targets [B, S, C, T] and groups [B, S, S]."""
        examples = [self.example(rng) for _ in range(batch)]
        return tuple(np.stack(parts) for parts in zip(*examples))  # type: ignore[return-value]


def _four_stem_track(index: int, stems: np.ndarray, rate: int) -> Track:
    targets = {atom: stems[i] for i, atom in enumerate(ATOMS)}
    return Track(f"track{index}", "musdb", targets, {a: TARGET_ATOMS[a] for a in ATOMS}, rate / 2)
