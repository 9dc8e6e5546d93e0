"""Training and evaluation data: MUSDB roots and stem folders, decoded once into a float16 cache.

A dataset is named `KIND:ROOT[:WEIGHT]` on the command line (`musdb:~/musdb18`, `stems:data/eif:2`)
or as an entry of a YAML `data:` list. A stem folder holds one folder per track and one audio
file per stem, in any format soundfile or ffmpeg reads, at any rate and channel count:
`ROOT/<track>/vocals.opus`. Stems are named `vocals`, `drums`, `bass`, `other` or
`accompaniment` (everything but the vocals; `instrumental` is read as that); a `mixture` file, if
present, is what evaluation separates. A track may hold any of these.

Every target of a track covers a set of "atoms" (vocals, drums, bass, other): `accompaniment`
covers the last three. A 4-stem track whose bass is digital silence has it inside `other`
(see the EIF songs), so its `other` covers {bass, other}. The trainer remixes only targets
that are a single atom, and trains on the rest as real mixes with the loss on the groups
(`target_groups`).

Audio is kept at the model's rate as float16, memory-mapped from the cache, mono tracks mono.
Each track also records its bandwidth (the highest frequency its stems reach), so that
band-limited material (MIR-1K is 16 kHz audio) can be trained on without teaching the model that
vocals have no highs.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from sepcli.audio import AUDIO_EXTENSIONS, AudioError, load

ATOMS = ("vocals", "drums", "bass", "other")
TARGET_ATOMS = {
    "vocals": frozenset({"vocals"}),
    "drums": frozenset({"drums"}),
    "bass": frozenset({"bass"}),
    "other": frozenset({"other"}),
    "accompaniment": frozenset({"drums", "bass", "other"}),
}
ALIASES = {"instrumental": "accompaniment", "no_vocals": "accompaniment", "mix": "mixture"}
KINDS = ("musdb", "stems")
FULL_BAND = 16000.0  # Hz: a track reaching this is treated as full-band
CACHE_VERSION = 1


class DataError(ValueError):
    """A dataset that cannot be read, in words for the user."""


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """One dataset: its kind, root, sampling weight and validation split.

    Args:
        kind: `musdb` (train/ and test/, `.stem.mp4` or with `is_wav` the HQ layout) or `stems`.
        root: the dataset's folder.
        weight: relative chance that a training example (or an example's stem) comes from it.
        is_wav: MUSDB18-HQ layout.
        valid: stem folders: glob patterns of track names held out for validation (for MIR-1K,
            whole singers: `abjones_*`). MUSDB's validation is its own `valid` split.
        exclude: glob patterns of track names never read (a test split kept apart).
    """

    kind: str
    root: Path
    weight: float = 1.0
    is_wav: bool = False
    valid: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DataError(f"unknown dataset kind '{self.kind}' (use {' or '.join(KINDS)})")
        if not (self.weight > 0 and np.isfinite(self.weight)):
            raise DataError(f"dataset weight must be positive, got {self.weight}")

    @classmethod
    def parse(cls, text: str, is_wav: bool = False) -> "DataSpec":
        """`KIND:ROOT[:WEIGHT]`, as `--data` takes it (a root may hold colons of its own)."""
        kind, sep, rest = text.partition(":")
        if not sep or not rest:
            raise DataError(f"--data {text!r}: use KIND:ROOT[:WEIGHT], e.g. stems:data/eif:2")
        root, weight = rest, 1.0
        head, colon, tail = rest.rpartition(":")
        if colon and head:
            try:
                weight = float(tail)
                root = head
            except ValueError:
                pass
        return cls(kind, Path(root).expanduser(), weight, is_wav=is_wav)

    @classmethod
    def from_dict(cls, entry: Any) -> "DataSpec":
        """One entry of a YAML `data:` list."""
        if isinstance(entry, str):
            return cls.parse(entry)
        if not isinstance(entry, dict) or "kind" not in entry or "root" not in entry:
            raise DataError(f"a data entry needs 'kind' and 'root', got {entry!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(entry) - known)
        if unknown:
            raise DataError(f"unknown data key(s): {', '.join(unknown)}")
        values = dict(entry)
        values["root"] = Path(str(values["root"])).expanduser()
        for key in ("valid", "exclude"):
            patterns = values.get(key, ())
            values[key] = (patterns,) if isinstance(patterns, str) else tuple(patterns)
        try:
            values["weight"] = float(values.get("weight", 1.0))
        except (TypeError, ValueError):
            raise DataError(f"data weight must be a number, got {values.get('weight')!r}")
        return cls(**values)

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.root.name}"


@dataclasses.dataclass
class Track:
    """One track's targets at the model's rate: name -> float16 [C, T], C = 1 or 2."""

    name: str
    dataset: str
    targets: dict[str, np.ndarray]
    atoms: dict[str, frozenset[str]]
    bandwidth: float
    mixture: np.ndarray | None = None

    @property
    def length(self) -> int:
        return next(iter(self.targets.values())).shape[-1]

    def pure(self, atom: str) -> str | None:
        """The target that is `atom` alone, if the track has one."""
        return next((t for t, a in self.atoms.items() if a == {atom}), None)


def track_folders(root: Path) -> list[Path]:
    """The track folders of a stem-folder dataset, sorted."""
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{root} holds no track folders (ROOT/<track>/<stem>.<ext>)")
    return folders


def stem_files(folder: Path) -> dict[str, Path]:
    """{stem name: file} of one track folder (known names only; aliases resolved)."""
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in AUDIO_EXTENSIONS or path.name.startswith("."):
            continue
        name = path.name.split(".")[0].lower()
        name = ALIASES.get(name, name)
        if name in TARGET_ATOMS or name == "mixture":
            files.setdefault(name, path)
    return files


def split_names(names: list[str], spec: DataSpec, split: str) -> list[str]:
    """The track names of `split` (train, valid or all): `valid` patterns pick the held-out
    ones, `exclude` patterns drop tracks from every split."""
    kept = [n for n in names if not any(fnmatch.fnmatchcase(n, p) for p in spec.exclude)]
    held = [n for n in kept if any(fnmatch.fnmatchcase(n, p) for p in spec.valid)]
    if split == "valid":
        return held
    if split == "train":
        return [n for n in kept if n not in held]
    return kept


def load_tracks(
    spec: DataSpec, split: str, rate: int, cache: Path | None, with_mixture: bool = False
) -> list[Track]:
    """The tracks of one dataset split at `rate`, from the cache when it has them."""
    if spec.kind == "musdb":
        return _musdb_tracks(spec, split, rate, cache)
    folders = {f.name: f for f in track_folders(spec.root)}
    names = split_names(list(folders), spec, split)
    return [_cached_track(spec, folders[n], rate, cache, with_mixture) for n in names]


def _cached_track(
    spec: DataSpec, folder: Path, rate: int, cache: Path | None, with_mixture: bool
) -> Track:
    files = stem_files(folder)
    if not any(name in TARGET_ATOMS for name in files):
        raise DataError(f"{folder} holds no stem files (vocals, drums, bass, other, accompaniment)")
    wanted = {n: p for n, p in files.items() if n != "mixture" or with_mixture}
    stamp = json.dumps(
        [
            CACHE_VERSION,
            rate,
            *[
                (n, str(p.resolve()), p.stat().st_size, p.stat().st_mtime)
                for n, p in sorted(wanted.items())
            ],
        ]  # fmt: skip
    )
    key = hashlib.sha1(stamp.encode()).hexdigest()[:16]
    place = Path(cache) / "stems" / key if cache is not None else None
    if place is not None and (place / "track.json").exists():
        info = json.loads((place / "track.json").read_text())
        audio = {n: np.load(place / f"{n}.npy", mmap_mode="r") for n in info["files"]}
    else:
        audio = _decode(wanted, rate)
        info = {"files": sorted(audio), "bandwidth": _bandwidth(audio, rate)}
        if place is not None:
            place.mkdir(parents=True, exist_ok=True)
            for n, x in audio.items():
                np.save(place / f"{n}.npy", x)
            (place / "track.json").write_text(json.dumps(info))
    mixture = audio.pop("mixture", None)
    targets, atoms = _targets_and_atoms(audio)
    return Track(folder.name, spec.label, targets, atoms, info["bandwidth"], mixture)


def _decode(files: dict[str, Path], rate: int) -> dict[str, np.ndarray]:
    """Decode and resample every file; stems are cut to the shortest; more than two channels
    are averaged to stereo."""
    audio = {}
    for name, path in files.items():
        try:
            x, _ = load(path, rate)
        except AudioError as err:
            raise DataError(f"{path}: {err}")
        if x.shape[0] > 2:
            x = np.repeat(x.mean(axis=0, keepdims=True), 2, axis=0)
        audio[name] = x
    length = min(x.shape[-1] for x in audio.values())
    return {n: np.ascontiguousarray(x[:, :length]).astype(np.float16) for n, x in audio.items()}


def _targets_and_atoms(
    audio: dict[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], dict[str, frozenset[str]]]:
    """The training targets and the atoms each covers; silent bass goes into `other`."""
    targets = {n: x for n, x in audio.items() if n in TARGET_ATOMS}
    atoms = {n: TARGET_ATOMS[n] for n in targets}
    bass = targets.get("bass")
    if bass is not None and "other" in targets and not np.any(bass):
        # Digital silence: the song's bass line, if it has one, is in `other` (EIF).
        del targets["bass"], atoms["bass"]
        atoms["other"] = frozenset({"bass", "other"})
    return targets, atoms


def _bandwidth(audio: dict[str, np.ndarray], rate: int, floor_db: float = -80.0) -> float:
    """The highest frequency (Hz) any stem reaches within `floor_db` of its spectral peak;
    lossy encoders cut sharply (MIR-1K near 8 kHz, some EIF stems at 8.5 kHz)."""
    n = 4096
    top = 0.0
    for name, x in audio.items():
        if name == "mixture":
            continue
        mono = np.asarray(x, np.float32).mean(axis=0)
        # At most 60 frames spread over the track: the average spectrum, quickly.
        count = min(60, mono.size // n)
        if count == 0:
            continue
        starts = np.linspace(0, mono.size - n, count).astype(int)
        frames = np.stack([mono[s : s + n] for s in starts]) * np.hanning(n)
        power = (np.abs(np.fft.rfft(frames, axis=1)) ** 2).mean(axis=0)
        if power.max() <= 0:
            continue
        level = 10 * np.log10(power / power.max() + 1e-30)
        top = max(top, float(np.fft.rfftfreq(n, 1 / rate)[np.nonzero(level > floor_db)[0].max()]))
    return top if top > 0 else rate / 2


def _musdb_tracks(spec: DataSpec, split: str, rate: int, cache: Path | None) -> list[Track]:
    from sepcli.data import load_musdb_stems, resample_stems

    musdb_split = {"train": "train", "valid": "valid", "all": None}[split]
    names, stems, musdb_rate = load_musdb_stems(spec.root, "train", musdb_split, spec.is_wav,
                                                cache)  # fmt: skip
    if musdb_rate != rate:
        stems = resample_stems(stems, musdb_rate, rate)
    tracks = []
    for name, audio in zip(names, stems):
        if any(fnmatch.fnmatchcase(name, p) for p in spec.exclude):
            continue
        targets = {a: audio[i].astype(np.float16) for i, a in enumerate(ATOMS)}
        targets, atoms = _targets_and_atoms(targets)
        tracks.append(Track(name, spec.label, targets, atoms, rate / 2))
    return tracks


def target_groups(
    track_atoms: list[frozenset[str]], sources: tuple[str, ...]
) -> list[tuple[list[int], list[int]]]:
    """How a track's targets meet a model's sources: groups of (target indices, source indices)
    whose atoms coincide, to be compared as sums. A 4-stem model on a vocals + accompaniment
    track gives ([vocals], [vocals]) and ([accompaniment], [drums, bass, other]). Targets that
    touch no source (drums for a vocals-only model) form no group, and neither does a group
    whose atoms differ (a drums-only model on vocals + accompaniment: no drums target)."""
    source_atoms = [TARGET_ATOMS.get(s, frozenset({s})) for s in sources]
    groups = []
    left_targets = set(range(len(track_atoms)))
    while left_targets:
        targets = {min(left_targets)}
        sources_in: set[int] = set()
        changed = True
        while changed:  # grow the connected component of overlapping atom sets
            changed = False
            atoms = frozenset().union(*(track_atoms[t] for t in targets))
            for s, a in enumerate(source_atoms):
                if s not in sources_in and a & atoms:
                    sources_in.add(s)
                    changed = True
            atoms_s = (
                frozenset().union(*(source_atoms[s] for s in sources_in))
                if sources_in
                else frozenset()
            )
            for t in left_targets - targets:
                if track_atoms[t] & atoms_s:
                    targets.add(t)
                    changed = True
        left_targets -= targets
        if not sources_in:
            continue
        covered = frozenset().union(*(track_atoms[t] for t in targets))
        wanted = frozenset().union(*(source_atoms[s] for s in sources_in))
        if wanted == covered:
            groups.append((sorted(targets), sorted(sources_in)))
    return groups


def describe(specs: list[DataSpec], tracks: dict[str, list[Track]], rate: int) -> str:
    """A provenance line: each dataset with its training tracks and minutes."""
    parts = []
    for spec in specs:
        found = tracks.get(spec.label, [])
        minutes = sum(t.length for t in found) / rate / 60
        parts.append(
            f"{spec.label} ({len(found)} tracks, {minutes:.0f} min, weight {spec.weight:g})"
        )
    return "; ".join(parts)


def eval_tracks(root: Path, patterns: list[str] | None = None) -> list:
    """A stem folder's tracks to score (`eval.musdb.EvalTrack`), at each file's own rate: the
    `mixture` file is the input where there is one, else the sum of the stems."""
    from eval.musdb import EvalTrack

    folders = track_folders(Path(root))
    if patterns:
        folders = [f for f in folders if any(fnmatch.fnmatchcase(f.name, p) for p in patterns)]
        if not folders:
            raise DataError(f"no track of {root} matches {', '.join(patterns)}")

    def reader(folder: Path):
        def read():
            files = stem_files(folder)
            if not any(name in TARGET_ATOMS for name in files):
                raise DataError(f"{folder} holds no stem files")
            audio, rate = {}, None
            for name, path in files.items():
                x, file_rate = load(path, rate)  # every stem at the first stem's rate
                rate = rate or file_rate
                audio[name] = x
            length = min(x.shape[-1] for x in audio.values())
            channels = max(x.shape[0] for x in audio.values())
            audio = {n: np.repeat(x[:, :length], channels // x.shape[0], axis=0).T.astype(np.float64)
                     for n, x in audio.items()}  # fmt: skip
            mixture = audio.pop("mixture", None)
            source = "mixture file" if mixture is not None else "sum of stems"
            if mixture is None:
                mixture = _stems_sum(audio, folder)
            return mixture, audio, rate, source

        return read

    return [EvalTrack(f.name, str(f), reader(f)) for f in folders]


def _stems_sum(audio: dict[str, np.ndarray], folder: Path) -> np.ndarray:
    """The mixture as the sum of stems that cover every atom once: vocals + accompaniment, or
    the four stems."""
    for names in (("vocals", "accompaniment"), ATOMS):
        if all(n in audio for n in names):
            return np.sum([audio[n] for n in names], axis=0)
    raise DataError(f"{folder}: no mixture file, and its stems do not add up to a mixture")


__all__ = ["ATOMS", "DataError", "DataSpec", "Track", "load_tracks", "target_groups"]
