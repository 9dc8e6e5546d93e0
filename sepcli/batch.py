"""Batch separation: find the inputs, name the outputs, separate each track, report the run.

Inputs are files, folders (recursed with `recursive`) and glob patterns. Every output path is
worked out, and checked for collisions and escapes, before any audio is touched. A track whose
outputs all exist is skipped, so a rerun resumes; a failing track is reported and the batch goes
on. Each track streams: decode -> channels -> resample -> engine -> residuals -> resample back ->
atomic stem writers.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import glob
import os
import string
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import soundfile as sf

from sepcli.audio import (
    AUDIO_EXTENSIONS,
    DEFAULT_BIT_DEPTH,
    DEFAULT_MP3_KBPS,
    AudioError,
    AudioInfo,
    Resampler,
    StemWriter,
    adapt_channels,
    check_output_format,
    check_output_rate,
    finished_output_problem,
    probe,
    read_blocks,
)
from sepcli.engine import Demixer, EngineError, OutOfMemory, take_samples
from sepcli.ensemble import Ensemble
from sepcli.files import remove_stale_temps
from sepcli.messages import one_line, shown

DEFAULT_TEMPLATE = "{model}/{relpath}/{stem}.{ext}"
# Below this many samples per chunk the out-of-memory fallback gives up on a track.
MIN_SEGMENT = 4096


class UsageError(Exception):
    """A problem with the command line as a whole; nothing has been separated."""


@dataclasses.dataclass
class Track:
    path: Path
    relpath: str  # path below the folder it was found in, without extension
    outputs: dict[str, Path] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class TrackResult:
    input: str
    status: str  # done | skipped | failed
    outputs: dict[str, str]
    error: str | None
    seconds: float
    duration: float | None = None


def track_name(path: Path) -> str:
    """File name without extension; MUSDB's `x.stem.mp4` becomes `x`."""
    name = path.name
    for suffix in (".stem.mp4", ".stem.m4a"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _is_audio(path: Path) -> bool:
    name = path.name.lower()
    return path.suffix.lower() in AUDIO_EXTENSIONS and not name.startswith(".")


def _walk(folder: Path, recursive: bool, skip: str | None = None) -> list[Path]:
    """Audio files under `folder`; follows symlinks but visits each real folder once.

    `skip` (a real path) is a folder not to enter: the outputs' folder, when it lies inside.
    """
    found: list[Path] = []
    for root, _dirs, files in _walk_folders(folder, skip):
        found.extend(Path(root) / f for f in files if _is_audio(Path(root) / f))
        if not recursive:
            break
    return found


def _walk_folders(folder: Path, skip: str | None = None) -> Iterator[tuple[str, list, list]]:
    """os.walk following symlinks, sorted, entering each real folder once (links may loop)."""
    seen: set[str] = set() if skip is None else {skip}
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        yield root, dirs, sorted(files)


def _glob(pattern: str) -> list[Path]:
    """Files matching a glob pattern, sorted. `**` goes through `_walk`, which visits each real
    folder once: `glob.glob` follows symlinks into loops (`ln -s . d/x`) without end."""
    if "**" not in pattern:
        return sorted(Path(p) for p in glob.glob(pattern))
    parts = Path(pattern).parts
    first_magic = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    base = Path(*parts[:first_magic]) if first_magic else Path(".")
    if not base.is_dir():
        return []
    found = []
    for root, _dirs, files in _walk_folders(base):
        relative = Path(root).relative_to(base).parts
        found.extend(
            Path(root) / name
            for name in files
            if _glob_match(parts[first_magic:], (*relative, name))
        )
    return sorted(found)


def _glob_match(pattern: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    """Whether path `parts` match glob `pattern` parts, as glob.glob would: `**` spans any
    number of folders, and wildcards never match a name that starts with a dot."""
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        if _glob_match(rest, parts) or (not rest and all(not p.startswith(".") for p in parts)):
            return True
        return len(parts) > 1 and not parts[0].startswith(".") and _glob_match(pattern, parts[1:])
    if not parts or (parts[0].startswith(".") and not head.startswith(".")):
        return False
    return fnmatch.fnmatchcase(parts[0], head) and _glob_match(rest, parts[1:])


def output_root(out: Path, template: str, model: str) -> Path:
    """The folder that holds every output: `out` plus the template's leading folders that name
    no track (`separated/default` for the default `{model}/{relpath}/{stem}.{ext}`)."""
    root = Path(out)
    for part in template.split("/")[:-1]:
        try:
            literal = part.format(model=model)
        except (KeyError, IndexError, ValueError):
            break  # names a track (or is malformed, which plan_outputs reports)
        root = root / literal
    return root


def discover(
    inputs: list[str], recursive: bool, outputs: Path | None = None
) -> tuple[list[Track], list[str]]:
    """Tracks to separate, and notes about inputs that gave none (or repeated a file).

    Folder walks and glob patterns skip the `outputs` folder (see `output_root`) when they meet
    it: with the output folder inside the music folder (`sepcli separate . -r`), a rerun would
    otherwise separate the stems of the first run. A file named on its own is always taken.
    """
    tracks: list[Track] = []
    notes: list[str] = []
    seen: set[str] = set()
    skip = os.path.realpath(outputs) if outputs is not None else None

    def is_output(file: Path) -> bool:
        return skip is not None and os.path.realpath(file).startswith(skip + os.sep)

    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            real = os.path.realpath(path)
            walk_skip = None if real == skip else skip  # given the outputs folder itself
            if recursive and walk_skip and walk_skip.startswith(real + os.sep):
                if os.path.isdir(walk_skip):
                    notes.append(f"{item}: skipping the output folder {outputs} inside it")
            files = _walk(path, recursive, walk_skip)
            if not files:
                notes.append(
                    f"{item}: no audio files found" + ("" if recursive else " (use -r to recurse)")
                )
            entries = [(f, str(f.relative_to(path).parent / track_name(f))) for f in files]
        elif path.exists() or path.is_symlink():
            entries = [(path, track_name(path))]
        elif glob.has_magic(item):
            matches = _glob(os.path.expanduser(item))
            entries = [(m, track_name(m)) for m in matches if m.is_file() and _is_audio(m)]
            outputs_found = [m for m, _ in entries if is_output(m)]
            if outputs_found:
                notes.append(
                    f"{item}: skipped {len(outputs_found)} file(s) in the output folder {outputs}"
                )
                entries = [(m, name) for m, name in entries if not is_output(m)]
            if not entries:
                notes.append(f"{item}: no audio files match")
        else:
            raise UsageError(f"input not found: {item}")
        for file, rel in entries:
            real = os.path.realpath(file)
            if real in seen:
                notes.append(f"{file}: given more than once, separated once")
                continue
            seen.add(real)
            tracks.append(Track(file, rel.replace(os.sep, "/")))
    if not tracks:
        raise UsageError("nothing to separate: " + "; ".join(notes))
    return tracks, notes


TEMPLATE_KEYS = ("model", "track", "trackext", "relpath", "stem", "ext")


def check_template(template: str) -> None:
    """Refuse a --name template that is not plain text with plain `{key}`s: `{track.foo}`,
    `{stem[0]}`, `{stem!r}` and `{stem:>9}` would reach Python's formatting machinery."""
    keys = " ".join(f"{{{k}}}" for k in TEMPLATE_KEYS)
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError as err:
        raise UsageError(f"bad --name template {template!r} ({err}); keys: {keys}")
    for _, field, spec, conversion in fields:
        if field is None:
            continue
        if field not in TEMPLATE_KEYS or spec or conversion:
            shown = field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            raise UsageError(
                f"bad --name template {template!r}: {{{shown}}} is not a key; keys: {keys}"
            )


def plan_outputs(
    tracks: list[Track], out: Path, template: str, model: str, stems: list[str], ext: str
) -> None:
    """Fill in each track's output paths; refuse, before any work, a template that names no
    file below `out`, two outputs on one path (two tracks, or two stems of one track), an output
    where a folder is (or must be), and overwriting an input."""
    check_template(template)
    root = Path(os.path.abspath(out))
    owners: dict[Path, tuple[Path, str]] = {}
    inputs = {Path(os.path.abspath(t.path)) for t in tracks}
    for track in tracks:
        for stem in stems:
            relative = template.format(
                model=model,
                track=track_name(track.path),
                stem=stem,
                ext=ext,
                relpath=track.relpath,
                trackext=track.path.suffix.lstrip("."),
            )
            if os.path.isabs(relative):
                raise UsageError(
                    f"--name template gives an absolute path ({relative}); it must stay inside --out"
                )
            target = Path(os.path.normpath(root / relative))
            if root == target:
                raise UsageError(
                    f"--name template {template!r} names --out itself, not a file below it; "
                    f"use e.g. {DEFAULT_TEMPLATE}"
                )
            if root not in target.parents:
                raise UsageError(f"--name template writes outside --out: {relative}")
            if target in inputs:
                raise UsageError(f"output {target} would overwrite an input file")
            if target.is_dir():
                raise UsageError(f"output {target} is an existing folder; --name must name files")
            if target in owners:
                first, first_stem = owners[target]
                if first == track.path:
                    raise UsageError(
                        f"--name template {template!r} writes stems {first_stem} and {stem} of "
                        f"{track.path} to one file, {target}; add {{stem}} to it"
                    )
                raise UsageError(
                    f"{first} and {track.path} would both write {target}; "
                    + _collision_advice(first, track.path, template)
                )
            owners[target] = (track.path, stem)
            track.outputs[stem] = target
    for target in owners:
        for parent in target.parents:
            if parent == root:
                break
            if parent in owners:
                raise UsageError(
                    f"output {parent} would be a file and a folder (of {target}); "
                    "give --name a {stem} in the file name"
                )


def _collision_advice(first: Path, second: Path, template: str) -> str:
    """How to tell two tracks' outputs apart, given why their names met."""
    same_folder = first.parent == second.parent
    if same_folder and track_name(first) == track_name(second) and "{trackext}" not in template:
        # song.wav and song.flac side by side: only the extension differs.
        return (
            "add {trackext} to the --name template, e.g. {model}/{relpath}_{trackext}/{stem}.{ext}"
        )
    if "{relpath}" not in template:
        return "use a --name template with {relpath}"
    # {relpath} only tells apart files found in one folder walk; files of the same name given
    # one by one (or in two folders) need a walk of a common folder.
    return "give a folder that holds both, with -r, or a separate --out for each"


@dataclasses.dataclass
class SeparationOptions:
    stems: list[str]  # stems to write, including residuals such as no_vocals
    fmt: str = "wav"
    bit_depth: int = DEFAULT_BIT_DEPTH
    clip: str = "rescale"
    sample_rate: int | None = None
    downmix: bool = False
    overwrite: bool = False
    mp3_bitrate: int = DEFAULT_MP3_KBPS  # kb/s, constant


def output_stems(
    sources: tuple[str, ...], stems: list[str] | None, two_stems: str | None
) -> list[str]:
    """Which stems to write: all sources by default (plus the residual for one-source models)."""
    if two_stems is not None:
        if stems is not None:
            raise UsageError("use either --stems or --two-stems, not both")
        if two_stems not in sources:
            raise UsageError(f"--two-stems {two_stems}: the model has {', '.join(sources)}")
        return [two_stems, f"no_{two_stems}"]
    available = list(sources) + [f"no_{s}" for s in sources]
    if stems == []:
        raise UsageError(f"--stems names no stem; the model has {', '.join(sources)}")
    if stems:
        unknown = [s for s in stems if s not in available]
        if unknown:
            raise UsageError(
                f"unknown stem(s) {', '.join(unknown)}; the model has {', '.join(sources)}"
            )
        return list(dict.fromkeys(stems))
    return list(sources) + ([f"no_{sources[0]}"] if len(sources) == 1 else [])


def stem_audio(
    stem: str,
    sources: tuple[str, ...],
    estimate: np.ndarray,
    mix: np.ndarray,
    partition: bool = True,
) -> np.ndarray:
    """One output stem from the estimates [S, C, n]; residuals are the other estimates summed,
    or the mixture minus the estimate for one-source models and for ensembles whose members'
    stems do not split the mixture the same way (`partition` False)."""
    if not stem.startswith("no_") or stem in sources:
        return estimate[sources.index(stem)]
    index = sources.index(stem[3:])
    if len(sources) == 1 or not partition:
        return mix - estimate[index]
    return estimate.sum(axis=0) - estimate[index]


def separate_track(
    track: Track,
    demixer: Demixer | Ensemble,
    options: SeparationOptions,
    on_audio: Callable[[float], None] | None = None,
    on_info: Callable[[AudioInfo], None] | None = None,
) -> AudioInfo:
    """Stream one track through the demixer into its stem files (all or nothing)."""
    model = demixer.model
    info = probe(track.path)
    if on_info:
        on_info(info)
    if info.channels > 2 and not options.downmix:
        raise AudioError(
            f"{info.channels} channels: only mono and stereo are separated (use --downmix)"
        )
    out_rate = options.sample_rate if options.sample_rate is not None else info.sample_rate
    check_output_rate(options.fmt, out_rate, given=options.sample_rate is not None)
    out_channels = 1 if info.channels == 1 else model.audio_channels
    to_model = Resampler(info.sample_rate, model.sample_rate, model.audio_channels)
    stems = options.stems
    from_model = Resampler(model.sample_rate, out_rate, len(stems) * model.audio_channels)
    pending_mix: list[np.ndarray] = []  # model-rate mixture not yet matched by output

    read = {"frames": 0}

    def model_rate_blocks():
        for block in read_blocks(info):
            read["frames"] += block.shape[-1]
            block = to_model(adapt_channels(block, model.audio_channels, options.downmix))
            pending_mix.append(block)
            if on_audio:
                on_audio(block.shape[-1] / model.sample_rate)
            yield block
        tail = to_model(np.zeros((model.audio_channels, 0), np.float32), last=True)
        if tail.shape[-1]:
            pending_mix.append(tail)
            yield tail

    created = _missing_folders([track.outputs[stem] for stem in stems])
    writers: dict[str, StemWriter] = {}
    try:
        for stem in stems:
            writers[stem] = StemWriter(
                track.outputs[stem],
                out_rate,
                out_channels,
                options.fmt,
                options.bit_depth,
                options.clip,
                options.mp3_bitrate,
            )
        for estimate in demixer.stream(model_rate_blocks()):
            mix = take_samples(pending_mix, estimate.shape[-1])
            partition = getattr(model, "partition", True)  # False for some ensembles
            parts = [stem_audio(s, model.sources, estimate, mix, partition) for s in stems]
            _write(writers, stems, from_model(np.concatenate(parts)), out_channels)
        _write(
            writers,
            stems,
            from_model(np.zeros((len(stems) * model.audio_channels, 0), np.float32), last=True),
            out_channels,
        )
        frames = round(read["frames"] * out_rate / info.sample_rate)
        for writer in writers.values():
            writer.commit(frames)
    except BaseException:
        for writer in writers.values():
            writer.abort()
        _remove_empty(created)
        raise
    return info


def _missing_folders(paths: list[Path]) -> list[Path]:
    """The folders that writing `paths` will create, deepest first."""
    missing: set[Path] = set()
    for path in paths:
        for folder in path.parents:
            if folder.exists():
                break
            missing.add(folder)
    return sorted(missing, key=lambda folder: len(folder.parts), reverse=True)


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders a failed track created, so that it leaves no trace."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            pass  # not empty: it holds stems finished before the failure, or other files


def _write(
    writers: dict[str, StemWriter], stems: list[str], block: np.ndarray, channels: int
) -> None:
    if block.shape[-1] == 0:
        return
    per_stem = block.reshape(len(stems), -1, block.shape[-1])
    for stem, audio in zip(stems, per_stem):
        if channels == 1 and audio.shape[0] != 1:
            audio = audio.mean(axis=0, keepdims=True)
        writers[stem].write(audio)


def run_batch(
    tracks: list[Track],
    demixer: Demixer | Ensemble,
    options: SeparationOptions,
    reporter: "Reporter",
    raise_unexpected: bool = False,
) -> list[TrackResult]:
    """Separate every track; never stops for one bad file.

    Any exception but an interruption fails its track alone; `raise_unexpected` (the CLI's
    --debug) lets the ones that are not about the input through with their traceback.
    """
    return list(iter_batch(tracks, demixer, options, reporter, raise_unexpected))


def iter_batch(
    tracks: list[Track],
    demixer: Demixer | Ensemble,
    options: SeparationOptions,
    reporter: "Reporter",
    raise_unexpected: bool = False,
) -> Iterator[TrackResult]:
    """`run_batch`, yielding each track's result as it finishes."""
    check_output_format(options.fmt, options.bit_depth)
    for track in tracks:
        start = time.perf_counter()
        outputs = {s: str(p) for s, p in track.outputs.items()}
        try:
            for path in track.outputs.values():
                remove_stale_temps(path)
            if not options.overwrite and _finished(track, demixer, options, reporter):
                result = TrackResult(str(track.path), "skipped", outputs, None, 0.0)
                reporter.track_done(result)
                yield result
                continue
            reporter.track_start(track)
            demixer, info = _separate_with_fallback(track, demixer, options, reporter)
            result = TrackResult(
                str(track.path), "done", outputs, None, time.perf_counter() - start, info.duration
            )
        except Exception as err:  # noqa: BLE001 - one track's failure, whatever it is
            if raise_unexpected and not isinstance(err, EXPECTED_TRACK_ERRORS):
                raise
            result = TrackResult(
                str(track.path), "failed", {}, track_error(err), time.perf_counter() - start
            )
        reporter.track_done(result)
        yield result


EXPECTED_TRACK_ERRORS = (AudioError, OSError, EngineError)


def track_error(err: Exception) -> str:
    """One line saying why a track failed."""
    if isinstance(err, OSError) and err.strerror:
        where = f" ({err.filename})" if err.filename else ""
        message = f"{err.strerror}{where}"
    elif isinstance(err, EXPECTED_TRACK_ERRORS):
        message = str(err)
    else:
        message = f"unexpected {type(err).__name__}: {err}"
    return one_line(message)


def _separate_with_fallback(
    track: Track, demixer: Demixer | Ensemble, options: SeparationOptions, reporter: "Reporter"
) -> tuple[Demixer | Ensemble, AudioInfo]:
    """Separate one track; out of memory at batch size 1, start again with half the segment."""
    while True:
        try:
            info = separate_track(
                track, demixer, options, reporter.audio_progress, reporter.track_info
            )
            return demixer, info
        except OutOfMemory:
            if demixer.segment // 2 < MIN_SEGMENT:
                raise
            demixer = demixer.with_segment(demixer.segment // 2)
            reporter.note(
                f"out of memory: retrying {shown(track.path.name)} with segment "
                f"{demixer.segment} samples"
            )


def _finished(
    track: Track, demixer: Demixer | Ensemble, options: SeparationOptions, reporter: "Reporter"
) -> bool:
    """Whether every output of `track` is whole: readable audio of the length, rate and channels
    this run would write. Outputs that exist but are not whole are named in a note and redone."""
    paths = list(track.outputs.values())
    if not all(p.exists() for p in paths):
        return False
    info = probe(track.path)  # an unreadable input fails here, as it would when separating
    rate = options.sample_rate if options.sample_rate is not None else info.sample_rate
    channels = 1 if info.channels == 1 else demixer.model.audio_channels
    # libsndfile's count of a WAV/FLAC/AIFF/OGG is exact; an MP3's or an ffmpeg stream's
    # length is an estimate, so there the stems need only agree with each other.
    exact = info.decoder == "soundfile" and track.path.suffix.lower() != ".mp3"
    frames = round(info.frames * rate / info.sample_rate) if exact and info.frames else None
    lengths = set()
    for path in paths:
        problem = finished_output_problem(path, frames, rate, channels)
        if problem is None and frames is None:
            lengths.add(sf.info(os.fsencode(path)).frames)
        if problem:
            reporter.note(f"{shown(track.path)}: separating it again: {shown(path)} {problem}")
            return False
    if len(lengths) > 1:
        reporter.note(f"{shown(track.path)}: separating it again: its stems differ in length")
        return False
    return True


class Reporter:
    """Where progress goes; the CLI gives a rich one, tests and library use a silent one."""

    def planned(self, tracks: int) -> None: ...
    def note(self, message: str) -> None: ...
    def track_start(self, track: Track) -> None: ...
    def track_info(self, info: AudioInfo) -> None: ...
    def audio_progress(self, seconds: float) -> None: ...
    def track_done(self, result: TrackResult) -> None: ...
