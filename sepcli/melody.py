"""Melody data and outputs: MIR-1K pitch labels on the model's frames, the f0 contour, notes
segmented from it, and the files `sepcli transcribe` writes (melody.csv, notes.csv, notes.mid).
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np

from sepcli.files import atomic_write

# MIR-1K's pitch.pv: one MIDI number per line (0 = no voice), frame k centred at 0.02 k + 0.02 s.
PV_HOP, PV_FIRST = 0.02, 0.02


def read_pv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A MIR-1K `pitch.pv`: (times in s, MIDI pitch with 0 for unvoiced)."""
    values = np.loadtxt(path, dtype=np.float64, ndmin=1)
    if values.ndim != 1 or not np.isfinite(values).all() or (values < 0).any():
        raise ValueError(f"{path}: not a pitch label file (one non-negative number per line)")
    return PV_FIRST + PV_HOP * np.arange(len(values)), values


def labels_on_frames(times: np.ndarray, midi: np.ndarray, frame_times: np.ndarray) -> np.ndarray:
    """Labels on a 20 ms grid -> one label per model frame. A frame between two voiced labels
    gets their linear interpolation; next to an unvoiced one, the nearest label; outside the
    labelled span (more than half a label hop beyond either end), 0."""
    hop = times[1] - times[0] if len(times) > 1 else PV_HOP
    position = (frame_times - times[0]) / hop  # in label frames
    left = np.clip(np.floor(position).astype(int), 0, len(times) - 1)
    right = np.clip(left + 1, 0, len(times) - 1)
    frac = np.clip(position - left, 0.0, 1.0)
    both = (midi[left] > 0) & (midi[right] > 0)
    nearest = np.where(frac < 0.5, midi[left], midi[right])
    out = np.where(both, (1 - frac) * midi[left] + frac * midi[right], nearest)
    outside = (position < -0.5) | (position > len(times) - 0.5)
    return np.where(outside, 0.0, out)


def midi_to_hz(midi: np.ndarray) -> np.ndarray:
    """MIDI pitch -> Hz, 0 staying 0 (unvoiced)."""
    midi = np.asarray(midi, dtype=np.float64)
    return np.where(midi > 0, 440.0 * 2.0 ** ((midi - 69.0) / 12.0), 0.0)


@dataclasses.dataclass(frozen=True)
class Note:
    onset: float  # seconds
    offset: float
    pitch: int  # MIDI


def notes_from_contour(
    times: np.ndarray,
    midi: np.ndarray,
    min_duration: float = 0.1,
    max_deviation: float = 0.6,
) -> list[Note]:
    """Notes from a frame-wise pitch contour (0 = unvoiced): a note runs while the voice is on
    and the pitch stays within `max_deviation` semitones of the note's running median (a glide
    or a jump starts a new one; vibrato and scoops within the range stay in the note). Notes
    shorter than `min_duration` are dropped; each note's pitch is its median, rounded."""
    if len(times) == 0:
        return []
    hop = float(np.median(np.diff(times))) if len(times) > 1 else 0.01
    notes: list[Note] = []
    start, values = None, []

    def close(end_index: int) -> None:
        onset, offset = times[start], times[end_index - 1] + hop
        if offset - onset >= min_duration - 1e-9:
            notes.append(Note(float(onset), float(offset), int(round(np.median(values)))))

    for i, pitch in enumerate(midi):
        if pitch <= 0:
            if start is not None:
                close(i)
                start, values = None, []
            continue
        if start is not None and abs(pitch - np.median(values)) > max_deviation:
            # Two frames away from the note in a row: a new note (one is a glitch or a scoop).
            ahead = midi[i + 1] if i + 1 < len(midi) else 0
            if ahead <= 0 or abs(ahead - np.median(values)) > max_deviation:
                close(i)
                start, values = None, []
        if start is None:
            start = i
        values.append(pitch)
    if start is not None:
        close(len(midi))
    return notes


def write_melody_csv(path: Path, times: np.ndarray, f0: np.ndarray, confidence: np.ndarray) -> None:
    """time (s), f0 (Hz, 0 = unvoiced), confidence (voicing probability)."""
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["time", "f0", "confidence"])
        for t, hz, c in zip(times, f0, confidence):
            out.writerow([f"{t:.4f}", f"{hz:.3f}", f"{c:.4f}"])


def write_notes_csv(path: Path, notes: list[Note]) -> None:
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["onset", "offset", "pitch"])
        for note in notes:
            out.writerow([f"{note.onset:.4f}", f"{note.offset:.4f}", note.pitch])


def write_midi(path: Path, notes: list[Note], tempo_bpm: float = 120.0) -> None:
    """A type-0 MIDI file: one track, one note-on/note-off pair per note (velocity 100)."""
    import mido

    ticks_per_beat = 480
    per_second = ticks_per_beat * tempo_bpm / 60.0
    events = []
    for note in notes:
        events.append((round(note.onset * per_second), 1, note.pitch))  # on after offs
        events.append((round(note.offset * per_second), 0, note.pitch))
    track = mido.MidiTrack()
    track.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(tempo_bpm), time=0))
    now = 0
    for tick, on, pitch in sorted(events):
        kind = "note_on" if on else "note_off"
        track.append(mido.Message(kind, note=pitch, velocity=100 if on else 0, time=tick - now))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=0))
    midi = mido.MidiFile(type=0, ticks_per_beat=ticks_per_beat)
    midi.tracks.append(track)
    with atomic_write(path) as tmp:
        midi.save(tmp)


def read_midi_notes(path: Path) -> list[Note]:
    """Notes back from a MIDI file written by `write_midi` (for tests and round trips)."""
    import mido

    midi = mido.MidiFile(path)
    now, open_at, notes = 0.0, {}, []
    for message in midi:  # iterating a MidiFile gives times in seconds
        now += message.time
        if message.type == "note_on" and message.velocity > 0:
            open_at[message.note] = now
        elif message.type in ("note_off", "note_on") and message.note in open_at:
            notes.append(Note(open_at.pop(message.note), now, message.note))
    return sorted(notes, key=lambda n: n.onset)
