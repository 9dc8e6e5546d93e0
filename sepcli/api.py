"""The Python API: load a separator, separate arrays, files and whole folders.

    import sepcli
    sep = sepcli.load("default", device="auto", precision="auto")
    stems = sep.separate(audio, sample_rate)           # {"vocals": [C, T] float32, ...}
    sep.separate_file("song.mp3", out="stems/", fmt="flac")
    for result in sepcli.separate_files(["a.wav", "b.wav"], model=sep, out="stems/"):
        print(result["input"], result["status"])

And the sung melody (`sepcli transcribe`):

    tr = sepcli.load_transcriber("melody")             # fast=True: one pass, as --fast
    mel = tr.transcribe(audio, sample_rate)            # times, f0 (Hz, 0 unvoiced), confidence, notes
    for result in sepcli.transcribe_files(["a.wav"], model=tr, out="transcribed/"): ...

Names follow the command line (segment in seconds, overlap, shifts, tta, stems, two_stems), and
so do the errors: the exceptions the CLI prints as one line (`UsageError`, `AudioError`,
`CheckpointError`, `EngineError`). `sepcli separate` is this module plus a progress bar.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sepcli import batch, checkpoints
from sepcli import transcribe as melody_runner
from sepcli.audio import (
    DEFAULT_BIT_DEPTH,
    DEFAULT_MP3_KBPS,
    AudioError,
    Resampler,
    adapt_channels,
    check_clip_mode,
    check_output_format,
    check_output_rate,
)
from sepcli.engine import Demixer, EngineError
from sepcli.ensemble import Ensemble, EnsembleModel, ensemble_name
from sepcli.transcribe import Melody, load_melody, transcribe_melody

# progress(track, seconds done, seconds in all or None): called as each track's audio is read.
Progress = Callable[[str, float, float | None], None]


@dataclasses.dataclass
class Separator:
    """A loaded separator and the engine that runs it. Make one with `load`.

    Attributes:
        name: the model's name (the checkpoint's file name, or the embedded name).
        sources: the stems the model estimates, in order.
        sample_rate: the rate the model works at (inputs at other rates are resampled).
        model: the `torch.nn.Module` (a `models.base.Separator`); for an ensemble, an
            `EnsembleModel` that lists its members.
        demixer: the chunked engine, with the segment, overlap, batch size, shifts, TTA,
            device and precision in use (an `Ensemble` of engines for an ensemble).
        metadata: the checkpoint's metadata (architecture, config, provenance).
    """

    name: str
    model: torch.nn.Module | EnsembleModel
    demixer: Demixer | Ensemble
    metadata: dict[str, Any]

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(self.model.sources)

    @property
    def sample_rate(self) -> int:
        return int(self.model.sample_rate)

    def separate(
        self,
        audio: np.ndarray | torch.Tensor,
        sample_rate: int,
        stems: list[str] | None = None,
        two_stems: str | None = None,
    ) -> dict[str, np.ndarray]:
        """Separate audio [C, T] or [T] (float, any rate) into {stem: float32 [C, T]} at the
        input's rate and channel count. `stems` picks stems (residuals such as `no_vocals`
        too); `two_stems="vocals"` gives vocals and no_vocals."""
        mix = _as_array(audio)
        _check_rate(sample_rate)
        chosen = batch.output_stems(self.sources, stems, two_stems)
        model_mix = adapt_channels(mix, self.model.audio_channels, downmix=True)
        if sample_rate != self.sample_rate:
            model_mix = Resampler(sample_rate, self.sample_rate, model_mix.shape[0])(
                model_mix, True
            )
        estimate = self.demixer.separate(np.ascontiguousarray(model_mix, dtype=np.float32))
        out = {}
        for stem in chosen:
            part = batch.stem_audio(stem, self.sources, estimate, model_mix, _partition(self.model))
            if sample_rate != self.sample_rate:
                part = Resampler(self.sample_rate, sample_rate, part.shape[0])(part, True)
            part = _fit(part, mix.shape[-1])
            if mix.shape[0] == 1 and part.shape[0] != 1:
                part = part.mean(axis=0, keepdims=True)
            out[stem] = part.astype(np.float32)
        return out

    def separate_file(
        self, path: str | Path, out: str | Path = "separated", **options: Any
    ) -> dict:
        """Separate one file into stem files, as `sepcli separate` does; returns its result
        (input, status, outputs, error, seconds). Options as for `separate_files`."""
        (result,) = list(separate_files([path], model=self, out=out, **options))
        return result


def load(
    model: str | Path = "default",
    config: str | Path | None = None,
    device: str = "auto",
    precision: str = "auto",
    segment: float | None = None,
    overlap: float | None = None,
    batch_size: int | None = None,
    shifts: int = 0,
    tta: bool | None = None,
    on_retry: Callable[[str], None] | None = None,
) -> Separator:
    """A separator: an embedded model by name (`default`), a native `.safetensors`, or a
    community Mel-/BS-RoFormer `.ckpt` with its YAML `config`. Engine settings default to the
    checkpoint's `inference` section; `segment` is in seconds."""
    loaded = checkpoints.load_model(str(model), Path(config) if config is not None else None)
    defaults = loaded.inference
    rate = loaded.model.sample_rate
    if segment is not None and not 0.1 <= segment <= 300:
        raise EngineError(f"segment must be 0.1 to 300 seconds, got {segment}")
    demixer = Demixer(
        loaded.model,
        segment=int(segment * rate) if segment is not None else defaults.get("segment"),
        overlap=overlap if overlap is not None else defaults.get("overlap", 0.25),
        batch_size=batch_size if batch_size is not None else defaults.get("batch_size", 4),
        shifts=shifts,
        tta=tta if tta is not None else defaults.get("tta", False),
        device=device,
        precision=precision,
        on_retry=on_retry,
        cpu_bf16=bool(defaults.get("cpu_bf16", False)),
    )
    if demixer.device.type == "cpu":
        from sepcli.allocator import keep_freed_memory

        keep_freed_memory()
    return Separator(loaded.name, loaded.model, demixer, loaded.metadata)


COMMUNITY_SUFFIXES = (".ckpt", ".pth", ".pt", ".bin")


def load_ensemble(
    models: list[str | Path],
    configs: list[str | Path] | None = None,
    algorithm: str = "avg_wave",
    weights: list[float] | None = None,
    device: str = "auto",
    precision: str = "auto",
    segment: float | None = None,
    overlap: float | None = None,
    batch_size: int | None = None,
    shifts: int = 0,
    tta: bool | None = None,
    on_retry: Callable[[str], None] | None = None,
) -> Separator:
    """Several separators run as one: each at its own rate, segment, overlap and batch size
    (its checkpoint's, unless given here), their stems combined by name with `algorithm`
    (see `sepcli.ensemble`). `configs` go, in order, to the community `.ckpt` models."""
    pairs = _pair_configs([str(m) for m in models], configs or [])
    members = [load(m, c, device, precision, segment, overlap, batch_size, shifts, tta, on_retry)
               for m, c in pairs]  # fmt: skip
    engine = Ensemble([m.demixer for m in members], algorithm, weights)
    names = [m.name for m in members]
    metadata = {
        "ensemble": {"algorithm": algorithm, "weights": engine.weights,
                     "models": [{"name": m.name, "metadata": m.metadata} for m in members]}
    }  # fmt: skip
    return Separator(ensemble_name(names, algorithm, weights), engine.model, engine, metadata)


def _pair_configs(models: list[str], configs: list[str | Path]) -> list[tuple[str, Path | None]]:
    """Which YAML goes with which model: in order, to the community checkpoints."""
    if len(models) == 1 and len(configs) <= 1:
        return [(models[0], Path(configs[0]) if configs else None)]
    community = [m for m in models if Path(m).suffix.lower() in COMMUNITY_SUFFIXES]
    if len(configs) != len(community):
        raise batch.UsageError(
            f"{len(community)} community checkpoint(s) (.ckpt) and {len(configs)} --config: "
            "give one --config per .ckpt, in the same order"
        )
    given = dict(zip(community, map(Path, configs)))
    return [(m, given.get(m)) for m in models]


def _partition(model: Any) -> bool:
    return getattr(model, "partition", True)


@dataclasses.dataclass
class Plan:
    """What `separate_files` will do: the tracks with their planned outputs, and the options."""

    separator: Separator
    tracks: list[batch.Track]
    options: batch.SeparationOptions
    notes: list[str]


def plan(
    inputs: Iterable[str | Path],
    model: Separator | str = "default",
    out: str | Path = "separated",
    name: str = batch.DEFAULT_TEMPLATE,
    fmt: str = "wav",
    stems: list[str] | None = None,
    two_stems: str | None = None,
    recursive: bool = False,
    overwrite: bool = False,
    bit_depth: int | None = None,
    mp3_bitrate: int | None = None,
    clip: str = "rescale",
    sample_rate: int | None = None,
    downmix: bool = False,
) -> Plan:
    """Find the inputs and plan every output, refusing bad settings, collisions and escapes
    from `out` (UsageError, AudioError) before any audio is read. Options as `separate_files`."""
    separator = model if isinstance(model, Separator) else load(model)
    if fmt == "mp3" and bit_depth is not None:
        raise AudioError(
            "--bit-depth does not apply to MP3 stems; --mp3-bitrate sets their quality"
        )
    if fmt != "mp3" and mp3_bitrate is not None:
        raise AudioError(f"--mp3-bitrate applies to --format mp3 only, not {fmt}")
    bit_depth = DEFAULT_BIT_DEPTH if bit_depth is None else bit_depth
    check_output_format(fmt, bit_depth)
    if sample_rate is not None:
        check_output_rate(fmt, sample_rate)
    check_clip_mode(clip)
    out = Path(out)
    outputs = batch.output_root(out, name, separator.name)
    tracks, notes = batch.discover([str(p) for p in inputs], recursive, outputs)
    chosen = batch.output_stems(separator.sources, stems, two_stems)
    batch.plan_outputs(tracks, out, name, separator.name, chosen, fmt)
    options = batch.SeparationOptions(
        chosen, fmt, bit_depth, clip, sample_rate, downmix, overwrite,
        DEFAULT_MP3_KBPS if mp3_bitrate is None else mp3_bitrate,
    )  # fmt: skip
    return Plan(separator, tracks, options, notes)


def run(
    planned: Plan,
    tracks: Iterable[batch.Track] | None = None,
    progress: Progress | None = None,
    reporter: batch.Reporter | None = None,
    raise_unexpected: bool = False,
) -> Iterator[dict]:
    """Separate the planned tracks (or `tracks`, a subset such as a shard or a queue's claims),
    yielding each result as it finishes."""
    reporter = reporter or batch.Reporter()
    for note in planned.notes:
        reporter.note(note)
    if progress is not None:
        reporter = _ProgressReporter(reporter, progress)
    chosen = planned.tracks if tracks is None else tracks
    results = batch.iter_batch(chosen, planned.separator.demixer, planned.options, reporter,
                               raise_unexpected)  # fmt: skip
    return (result_json(result) for result in results)


def separate_files(
    inputs: Iterable[str | Path],
    model: Separator | str = "default",
    out: str | Path = "separated",
    name: str = batch.DEFAULT_TEMPLATE,
    fmt: str = "wav",
    stems: list[str] | None = None,
    two_stems: str | None = None,
    recursive: bool = False,
    overwrite: bool = False,
    bit_depth: int | None = None,
    mp3_bitrate: int | None = None,
    clip: str = "rescale",
    sample_rate: int | None = None,
    downmix: bool = False,
    progress: Progress | None = None,
    reporter: batch.Reporter | None = None,
    raise_unexpected: bool = False,
) -> Iterator[dict]:
    """Separate files, folders (with `recursive`) and glob patterns into stem files. Returns an
    iterator that separates as it goes and yields one result per track as it finishes:
    {input, status (done/skipped/failed), outputs, error, seconds}, as `sepcli separate --json`
    lists them.

    Every output is planned, and collisions and escapes from `out` refused (UsageError), here,
    before any audio is read; a failing track is reported and the rest go on. `progress` is
    called as each track's audio is read; `reporter` (a `batch.Reporter`) gets every event.
    """
    planned = plan(inputs, model, out, name, fmt, stems, two_stems, recursive, overwrite,
                   bit_depth, mp3_bitrate, clip, sample_rate, downmix)  # fmt: skip
    if reporter is not None:
        reporter.planned(len(planned.tracks))
    return run(planned, None, progress, reporter, raise_unexpected)


def result_json(result: batch.TrackResult) -> dict:
    """A track's result as `--json` writes it."""
    return {
        "input": result.input,
        "status": result.status,
        "outputs": result.outputs,
        "error": result.error,
        "seconds": round(result.seconds, 3),
    }


class _ProgressReporter(batch.Reporter):
    """Passes every event on, and tells `progress` how much of each track has been read."""

    def __init__(self, inner: batch.Reporter, progress: Progress) -> None:
        self.inner, self.progress = inner, progress
        self.track, self.done, self.total = "", 0.0, None

    def note(self, message: str) -> None:
        self.inner.note(message)

    def track_start(self, track: batch.Track) -> None:
        self.track, self.done, self.total = str(track.path), 0.0, None
        self.inner.track_start(track)

    def track_info(self, info) -> None:
        self.total = info.duration
        self.inner.track_info(info)

    def audio_progress(self, seconds: float) -> None:
        self.done += seconds
        self.progress(self.track, self.done, self.total)
        self.inner.audio_progress(seconds)

    def track_done(self, result: batch.TrackResult) -> None:
        self.inner.track_done(result)


def _as_array(audio: np.ndarray | torch.Tensor) -> np.ndarray:
    """[C, T] or [T] float audio as float32 [C, T], checked."""
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().numpy()
    audio = np.asarray(audio)
    if audio.ndim == 1:
        audio = audio[None]
    if audio.ndim != 2 or audio.shape[0] > 64:
        raise AudioError(f"audio must be [channels, samples] or [samples], got shape {audio.shape}")
    if not np.issubdtype(audio.dtype, np.floating):
        raise AudioError(f"audio must be floating point in [-1, 1], got {audio.dtype}")
    audio = audio.astype(np.float32)
    if not np.isfinite(audio).all():
        raise AudioError("the audio contains NaN or infinite samples")
    return audio


def _check_rate(sample_rate: int) -> None:
    if not 1000 <= sample_rate <= 768000:
        raise AudioError(f"sample rate {sample_rate} Hz is outside 1000-768000 Hz")


def _fit(part: np.ndarray, length: int) -> np.ndarray:
    if part.shape[-1] >= length:
        return part[..., :length]
    return np.pad(part, ((0, 0), (0, length - part.shape[-1])))


@dataclasses.dataclass
class Transcriber:
    """A loaded melody model (`models.melody.MelodyTranscriber`). Make one with
    `load_transcriber`."""

    name: str
    model: torch.nn.Module
    metadata: dict[str, Any]

    def transcribe(
        self,
        audio: np.ndarray | torch.Tensor,
        sample_rate: int,
        voicing_threshold: float | None = None,
        min_note: float = 0.1,
    ) -> Melody:
        """The melody of `audio` ([C, T] or [T] float, any rate; resampled to the model's).
        `voicing_threshold`: the voicing probability from which a frame is sung (default: the
        model's own); `min_note`: the shortest note kept, in seconds."""
        x = _as_array(audio)
        if x.shape[-1] == 0:
            raise AudioError("no audio: the array has no samples")
        _check_rate(sample_rate)
        return transcribe_melody(self.model, x, sample_rate, voicing_threshold, min_note)


def load_transcriber(model: str = "melody", fast: bool = False) -> Transcriber:
    """The embedded `melody` model or a melody checkpoint (CheckpointError otherwise). With
    `fast` it hears each track once, without the model's test-time transpositions."""
    name, transcriber, metadata = load_melody(model)
    if fast:
        transcriber.config = dataclasses.replace(transcriber.config, test_transpositions=())
    return Transcriber(name, transcriber, metadata)


def transcribe_files(
    inputs: Iterable[str | Path],
    model: Transcriber | str = "melody",
    out: str | Path = "transcribed",
    recursive: bool = False,
    overwrite: bool = False,
    min_note: float = 0.1,
    voicing_threshold: float | None = None,
    fast: bool = False,
    raise_unexpected: bool = False,
) -> Iterator[dict]:
    """Transcribe files, folders (with `recursive`) and glob patterns into
    `out/<model>/<track>/{melody.csv,notes.csv,notes.mid}`, yielding one result per track as
    `sepcli transcribe --json` lists them; finished tracks are skipped unless `overwrite`, and
    a failing track is reported and the rest go on. `fast` applies to a model given by name."""
    transcriber = model if isinstance(model, Transcriber) else load_transcriber(model, fast)
    found = [str(i) for i in inputs]
    tracks, _ = melody_runner.plan(found, transcriber.name, Path(out), recursive)
    return melody_runner.run(tracks, transcriber.model, overwrite, min_note, None, raise_unexpected,
                      voicing_threshold)  # fmt: skip


__all__ = ["Melody", "Plan", "Separator", "Transcriber", "load", "load_ensemble",
           "load_transcriber", "plan", "run", "separate_files", "transcribe_files"]  # fmt: skip
