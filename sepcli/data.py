"""MUSDB training data: decode each track once, cache it, and draw remixed random segments.

Every training example is a fresh mixture: each stem comes from a random track at a random
offset, with a random gain, channel swap and polarity (the usual Open-Unmix/demucs remixing),
so 80 previews of 6.8 s give far more distinct mixtures than 80 examples.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import soxr

from eval.musdb import layout_hint

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
    """Random remixed segments from in-memory stems.

    Args:
        stems: per track, float32 [4, 2, T].
        segment: samples per example.
        sources: which of STEMS the model estimates; the rest still go into the mixture.
        silence_threshold: if set, redraw a stem segment whose RMS is below it (linear).
        augment: random gain (0.25..1.25), channel swap and polarity per stem.
        coherent: fraction of examples whose stems all come from one track at one offset, so
            the model also sees the timing and harmony that real mixes share (augmentation
            still applies per stem; silence filtering does not).
        speed: largest relative change of playback speed. Each stem segment (each coherent
            example, all its stems alike) is read from `segment` times a factor drawn from
            [1 - speed, 1 + speed] samples and resampled to `segment`: tempo and pitch change
            together (0.1 is about 1.7 semitones), as tape would. 0 leaves the audio as it is.
        mixup: chance that a remixed stem segment is the sum of two segments of that stem, each
            from a random track with its own augmentation (ZFTurbo's `mixup`): two singers,
            two drum kits, so each stem varies more than 94 previews alone allow. Coherent
            examples stay real mixes.
    """

    def __init__(
        self,
        stems: list[np.ndarray],
        segment: int,
        sources: tuple[str, ...],
        silence_threshold: float | None = None,
        augment: bool = True,
        coherent: float = 0.0,
        speed: float = 0.0,
        mixup: float = 0.0,
    ) -> None:
        if not 0 <= coherent <= 1:
            raise ValueError(f"coherent must be in [0, 1], got {coherent}")
        if not 0 <= speed < 1:
            raise ValueError(f"speed must be in [0, 1), got {speed}")
        if not 0 <= mixup <= 1:
            raise ValueError(f"mixup must be in [0, 1], got {mixup}")
        self.stems = stems
        self.segment = segment
        self.source_index = [STEMS.index(s) for s in sources if s in STEMS]
        self.extra = [s for s in sources if s not in STEMS]
        if self.extra and self.extra != ["accompaniment"]:
            raise ValueError(f"unknown training sources: {', '.join(self.extra)}")
        self.sources = sources
        self.silence_threshold = silence_threshold
        self.augment = augment
        self.coherent = coherent
        self.speed = speed
        self.mixup = mixup

    def _source_length(self, rng: np.random.Generator) -> int:
        """Samples to read for one segment: `segment`, or another length to change the speed."""
        # Drawn only when enabled, so a speed=0 run replays exactly as before.
        if self.speed == 0:
            return self.segment
        return round(self.segment * rng.uniform(1 - self.speed, 1 + self.speed))

    def _draw(self, rng: np.random.Generator, length: int) -> tuple[np.ndarray, int]:
        track = self.stems[rng.integers(len(self.stems))]
        return track, int(rng.integers(0, max(1, track.shape[-1] - length + 1)))

    def _cut(self, track: np.ndarray, start: int, stem: int, length: int) -> np.ndarray:
        piece = track[stem, :, start : start + length]
        if piece.shape[-1] < length:
            piece = np.pad(piece, ((0, 0), (0, length - piece.shape[-1])))
        if length != self.segment:
            piece = soxr.resample(piece.T, length, self.segment, quality="HQ").T
            piece = piece[:, : self.segment]
            piece = np.pad(piece, ((0, 0), (0, self.segment - piece.shape[-1])))
        return piece

    def _stem_segment(self, rng: np.random.Generator, stem: int) -> np.ndarray:
        piece = self._one_stem_segment(rng, stem)
        # Drawn only when enabled, so a mixup=0 run replays exactly as before.
        if self.mixup > 0 and rng.random() < self.mixup:
            piece = piece + self._one_stem_segment(rng, stem)
        return piece

    def _one_stem_segment(self, rng: np.random.Generator, stem: int) -> np.ndarray:
        length = self._source_length(rng)
        for _ in range(10):
            piece = self._cut(*self._draw(rng, length), stem, length)
            if (
                self.silence_threshold is None
                or np.sqrt(np.mean(piece**2)) >= self.silence_threshold
            ):
                break
        return self._augment(rng, piece)

    def _augment(self, rng: np.random.Generator, piece: np.ndarray) -> np.ndarray:
        if self.augment:
            piece = piece * rng.uniform(0.25, 1.25)
            if rng.random() < 0.5:
                piece = piece[::-1]
            if rng.random() < 0.5:
                piece = -piece
        return np.ascontiguousarray(piece, dtype=np.float32)

    def sample(self, rng: np.random.Generator, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """A batch: mixtures [B, 2, T] and targets [B, S, 2, T]."""
        mixes, targets = [], []
        for _ in range(batch):
            # Drawn only when enabled, so a coherent=0 run replays exactly as before.
            if self.coherent > 0 and rng.random() < self.coherent:
                length = self._source_length(rng)
                track, start = self._draw(rng, length)
                parts = np.stack(
                    [
                        self._augment(rng, self._cut(track, start, i, length))
                        for i in range(len(STEMS))
                    ]
                )
            else:
                parts = np.stack([self._stem_segment(rng, i) for i in range(len(STEMS))])
            mix = parts.sum(axis=0)
            wanted = [parts[i] for i in self.source_index]
            if "accompaniment" in self.extra:
                vocals = STEMS.index("vocals")
                wanted.append(mix - parts[vocals])
            mixes.append(mix)
            targets.append(np.stack(wanted))
        return np.stack(mixes), np.stack(targets)
