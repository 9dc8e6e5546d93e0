"""Melody transcription: melody checkpoints, chunked inference over whole tracks, and the batch
runner behind `sepcli transcribe` (the same guarantees as `separate`: resume, atomic writes,
per-file failures, JSON)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eval.melody import mirex_contour
from models.melody import MelodyConfig, MelodyTranscriber
from sepcli import batch, checkpoints, melody
from sepcli.audio import Resampler, adapt_channels, fit_length, load
from sepcli.checkpoints import CheckpointError

ARCHITECTURE = "melody"
OUTPUTS = {"melody": "melody.csv", "notes": "notes.csv", "midi": "notes.mid"}
WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_MELODY = "melody"


def save_melody(path: Path, model: MelodyTranscriber, provenance: dict[str, Any]) -> None:
    """A native melody checkpoint (float16 weights), as separators are saved."""
    meta = {"architecture": ARCHITECTURE, "config": model.config.to_dict(),
            "provenance": provenance}  # fmt: skip
    checkpoints.write_native(path, meta, model.state_dict(), half=True)


def melody_path(spec: str) -> Path:
    """The file behind a melody model's path or embedded name."""
    path = Path(spec).expanduser()
    if not path.exists() and (WEIGHTS_DIR / f"{spec}.safetensors").exists():
        return WEIGHTS_DIR / f"{spec}.safetensors"
    return path


def load_melody(spec: str) -> tuple[str, MelodyTranscriber, dict[str, Any]]:
    """(name, model in eval mode, metadata) from a path or the embedded `melody`."""
    path = melody_path(spec)
    meta, _ = checkpoints.read_header(path)
    if meta["architecture"] != ARCHITECTURE:
        raise CheckpointError(
            f"{spec} is not a melody model (architecture {meta['architecture']!r}); "
            "train one with 'sepcli train melody'"
        )
    try:
        model = MelodyTranscriber(MelodyConfig.from_dict(meta.get("config", {})))
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{spec}: bad melody config: {err}")
    checkpoints.load_state_strict(model, checkpoints.read_native_state(path), str(path))
    return path.stem, model.eval(), meta


@torch.inference_mode()
def frame_logits(model: MelodyTranscriber, audio: np.ndarray, chunk_seconds: float = 6.0,
                 batch_size: int = 4) -> np.ndarray:  # fmt: skip
    """Logits [frames, bins + 1] of a whole track [C, T] at the model's rate: chunks of
    `chunk_seconds` overlapping by half, averaged with a tapered window, so a track of any
    length runs in bounded memory. Every chunk holds the track's own audio: the last one ends
    where the track does, not in padded silence, which the model never heard in training:
    on MIR-1K (clips of 3-12 s) it cost 2.4 points of overall accuracy (validation singers; 2.6
    on the test ones, with the threshold re-chosen), all of it in the voicing."""
    hop = model.hop
    length = audio.shape[-1]
    frames = model.frames(length)
    chunk = max(hop * 8, int(chunk_seconds * model.sample_rate) // (2 * hop) * 2 * hop)
    x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    if length <= chunk:
        return model(x[None])[0].float().numpy()
    starts = list(range(0, length - chunk, chunk // 2))
    last = (length - chunk) // hop * hop  # whole hops: its frames are the track's last ones
    if last > starts[-1]:
        starts.append(last)
    per_chunk = model.frames(chunk)
    taper = torch.from_numpy(np.hanning(per_chunk + 2)[1:-1].astype(np.float32))[:, None]
    acc = torch.zeros(frames, model.config.bins + 1)
    weight = torch.zeros(frames, 1)
    for i in range(0, len(starts), batch_size):
        group = starts[i : i + batch_size]
        pieces = torch.stack([x[:, start : start + chunk] for start in group])
        for start, logits in zip(group, model(pieces).float()):
            at = start // hop
            acc[at : at + per_chunk] += logits * taper
            weight[at : at + per_chunk] += taper
    return (acc / weight).numpy()


def averaged_log_probs(model: MelodyTranscriber, audio: np.ndarray) -> np.ndarray:
    """[frames, bins + 1] of a track [C, T] at the model's rate: pitch log-probabilities, then
    the voicing logit. With the config's `test_transpositions` (test-time augmentation) the
    track is also heard transposed (`transposed_pass`) and the passes are averaged, each bin
    over the passes whose grid holds it. One pass hears a voice at one place of its range and
    formants; the passes together, as the model trained with `pitch_shift`, at several."""
    frames, bins = model.frames(audio.shape[-1]), model.config.bins
    total = np.zeros((frames, bins + 1), np.float32)  # float32: 1 MB per 5 s of audio
    count = np.zeros((1, bins + 1), np.float32)
    for semitones in (0, *model.config.test_transpositions):
        rows, covered = transposed_pass(model, audio, semitones)
        total[:, covered] += rows[:, covered]
        count[:, covered] += 1
    return total / count


def transposed_pass(
    model: MelodyTranscriber, audio: np.ndarray, semitones: float
) -> tuple[np.ndarray, np.ndarray]:
    """The track [C, T] heard `semitones` higher (played 2^(s/12) times faster, soxr), read
    back on the original track's frames and pitch grid: (rows [frames, bins + 1] as in
    `averaged_log_probs`, the columns [bins + 1] this pass covers; a pitch moved past the
    grid's ends is not heard)."""
    frames, bins = model.frames(audio.shape[-1]), model.config.bins
    ratio = 2.0 ** (semitones / 12)
    heard = audio if semitones == 0 else fit_length(audio, round(audio.shape[-1] / ratio))
    logits = torch.from_numpy(frame_logits(model, np.ascontiguousarray(heard)))
    rows = torch.cat([torch.log_softmax(logits[:, :-1], -1), logits[:, -1:]], -1).numpy()
    # original frame k (time k hop / rate) is heard at the transposed track's frame k / ratio
    position = np.clip(np.arange(frames) / ratio, 0, len(rows) - 1)
    left = np.floor(position).astype(int)
    right = np.minimum(left + 1, len(rows) - 1)
    frac = (position - left)[:, None].astype(np.float32)
    rows = (1 - frac) * rows[left] + frac * rows[right]
    shift = round(semitones) * model.config.bins_per_semitone  # its bin b + shift is bin b
    back = np.zeros_like(rows)
    covered = np.zeros(bins + 1, bool)
    covered[max(0, -shift) : min(bins, bins - shift)] = True
    covered[-1] = True  # the voicing logit
    back[:, :bins][:, covered[:bins]] = rows[:, :bins][:, np.roll(covered[:bins], shift)]
    back[:, -1] = rows[:, -1]
    return back, covered


def frame_contour(
    model: MelodyTranscriber, audio: np.ndarray, rate: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Audio [C, T] at any rate -> (frame times in s, MIDI pitch of every frame, voicing
    probability): the pitch is the model's best guess even where it hears no voice."""
    x = adapt_channels(audio, model.audio_channels, downmix=True)
    if rate != model.sample_rate:
        x = Resampler(rate, model.sample_rate, x.shape[0])(x, last=True)
    logits = torch.from_numpy(averaged_log_probs(model, x))
    pitch, voicing = model.decode(logits)
    pitch, voicing = pitch.numpy().astype(np.float64), voicing.numpy().astype(np.float64)
    return np.arange(len(pitch)) * model.hop / model.sample_rate, pitch, voicing


def transcribe_audio(
    model: MelodyTranscriber, audio: np.ndarray, rate: int, threshold: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Audio [C, T] at any rate -> (frame times in s, MIDI pitch with 0 where unvoiced,
    voicing probability). Voiced means a probability of at least `threshold` (default: the
    model's own, `voicing_threshold` in its config)."""
    times, pitch, voicing = frame_contour(model, audio, rate)
    return times, np.where(voicing >= _threshold(model, threshold), pitch, 0.0), voicing


@dataclasses.dataclass(frozen=True)
class Melody:
    """A transcribed melody: per model frame (11.6 ms for the embedded model) the time in
    seconds, f0 in Hz (0 where unvoiced) and the voicing probability, as `melody.csv` holds
    them; and the notes segmented from it, as `notes.csv` and `notes.mid`."""

    times: np.ndarray
    f0: np.ndarray
    confidence: np.ndarray
    notes: list[melody.Note]


def transcribe_melody(
    model: MelodyTranscriber,
    audio: np.ndarray,
    rate: int,
    threshold: float | None = None,
    min_note: float = 0.1,
) -> Melody:
    """Audio [C, T] at any rate -> its `Melody`: `transcribe_audio`'s contour and the notes
    segmented from it, none shorter than `min_note` seconds."""
    times, midi, voicing = transcribe_audio(model, audio, rate, threshold)
    notes = melody.notes_from_contour(times, midi, min_duration=min_note)
    return Melody(times, melody.midi_to_hz(midi), voicing, notes)


def scoring_contour(
    model: MelodyTranscriber, audio: np.ndarray, rate: int, threshold: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(times, Hz) in the MIREX convention that mir_eval reads: unvoiced frames carry their
    pitch guess as a negative frequency, so raw pitch and chroma accuracy measure the pitch
    alone and the voicing measures the voicing alone."""
    times, pitch, voicing = frame_contour(model, audio, rate)
    return times, mirex_contour(melody.midi_to_hz(pitch), voicing, _threshold(model, threshold))


def _threshold(model: MelodyTranscriber, threshold: float | None) -> float:
    return model.config.voicing_threshold if threshold is None else threshold


def plan(inputs: list[str], model_name: str, out: Path, recursive: bool) -> tuple[list, list]:
    """Tracks and their three outputs, `out/<model>/<relpath>/{melody.csv,notes.csv,notes.mid}`;
    collisions and escapes refused before any work (as `separate` plans its stems)."""
    outputs = batch.output_root(out, batch.DEFAULT_TEMPLATE, model_name)
    tracks, notes = batch.discover(inputs, recursive, outputs)
    batch.plan_outputs(tracks, out, batch.DEFAULT_TEMPLATE, model_name, ["melody", "notes"], "csv")
    for track in tracks:
        folder = track.outputs["melody"].parent
        track.outputs = {key: folder / name for key, name in OUTPUTS.items()}
    return tracks, notes


def finished(track: batch.Track) -> bool:
    """All three outputs exist and read back (a killed run never leaves a partial file, but a
    run killed between two files leaves a track to redo)."""
    paths = track.outputs
    if not all(p.is_file() and p.stat().st_size > 0 for p in paths.values()):
        return False
    try:
        header = paths["melody"].read_text().splitlines()[:1]
        melody.read_midi_notes(paths["midi"])
    except (OSError, ValueError, EOFError):
        return False
    return header == ["time,f0,confidence"]


def run(
    tracks: list[batch.Track],
    model: MelodyTranscriber,
    overwrite: bool,
    min_note: float,
    on_track: Callable[[dict], None] | None = None,
    raise_unexpected: bool = False,
    threshold: float | None = None,
) -> Iterator[dict]:
    """Transcribe each track; a failing track is reported and the rest go on."""
    for track in tracks:
        start = time.perf_counter()
        result = {"input": str(track.path), "outputs": {k: str(p) for k, p in track.outputs.items()},
                  "error": None}  # fmt: skip
        if not overwrite and finished(track):
            result["status"] = "skipped"
        else:
            try:
                audio, rate = load(track.path)
                if audio.shape[-1] == 0:
                    raise ValueError("no audio in the file")
                found = transcribe_melody(model, audio, rate, threshold, min_note)
                melody.write_melody_csv(track.outputs["melody"], found.times, found.f0,
                                        found.confidence)  # fmt: skip
                melody.write_notes_csv(track.outputs["notes"], found.notes)
                melody.write_midi(track.outputs["midi"], found.notes)
                result.update(status="done", notes=len(found.notes),
                              voiced=round(float((found.f0 > 0).mean()), 3))  # fmt: skip
            except Exception as err:  # noqa: BLE001 - one bad file fails alone
                if raise_unexpected:
                    raise
                result.update(status="failed", error=batch.track_error(err))
        result["seconds"] = round(time.perf_counter() - start, 3)
        if on_track:
            on_track(result)
        yield result
