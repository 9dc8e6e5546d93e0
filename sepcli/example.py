"""Write a synthetic example song for a first try: `python -m sepcli.example example.wav`.

Eight bars at 120 bpm: a kick/snare/hi-hat pattern, a bass line, pad chords and a sung-like
melody (a vibrato voice with vowel formants). No recorded audio is shipped with sepcli.
"""

from __future__ import annotations

import argparse

import numpy as np
import soundfile as sf

RATE = 44100


def _tone(freq: np.ndarray, harmonics: list[float], rate: int = RATE) -> np.ndarray:
    phase = 2 * np.pi * np.cumsum(freq) / rate
    return sum(a * np.sin((k + 1) * phase) for k, a in enumerate(harmonics))


def example_song(seconds: float = 16.0, seed: int = 0) -> np.ndarray:
    """A stereo mix [T, 2] in [-1, 1]."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    beat = 0.5
    drums = np.zeros(n)
    for start in np.arange(0, seconds, beat):
        i = int(start * RATE)
        k = np.arange(min(n - i, int(0.25 * RATE))) / RATE
        if int(start / beat) % 2 == 0:  # kick
            drums[i : i + k.size] += np.sin(2 * np.pi * (50 + 80 * np.exp(-k * 30)) * k) * np.exp(
                -k * 12
            )
        else:  # snare
            drums[i : i + k.size] += 0.5 * rng.standard_normal(k.size) * np.exp(-k * 20)
        j = i + int(beat / 2 * RATE)
        h = np.arange(min(max(n - j, 0), int(0.05 * RATE)))
        drums[j : j + h.size] += 0.15 * rng.standard_normal(h.size) * np.exp(-h / RATE * 80)
    roots = np.array([55.0, 55.0, 43.65, 49.0])  # A, A, F, G
    bar = (t // (4 * beat)).astype(int) % 4
    bass = 0.4 * _tone(roots[bar], [1.0, 0.3, 0.1]) * (0.6 + 0.4 * np.abs(np.sin(np.pi * t / beat)))
    chords = sum(_tone(roots[bar] * 4 * r, [0.2, 0.05]) for r in (1.0, 1.26, 1.5))
    melody = np.array([440, 494, 523, 587, 523, 494, 440, 392], dtype=float)
    note = melody[(t // beat).astype(int) % len(melody)] * (1 + 0.01 * np.sin(2 * np.pi * 5.5 * t))
    voice = _tone(note, [1.0, 0.6, 0.5, 0.3, 0.2, 0.15, 0.1]) * (((t % 4) < 3.5) * 0.25)
    left = drums * 0.6 + bass + chords * 0.7 + voice
    right = drums * 0.6 + bass + chords * 0.5 + voice
    mix = np.stack([left, right], axis=1)
    return (mix / np.abs(mix).max() * 0.8).astype(np.float32)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m sepcli.example", description="Write a synthetic example song (16-bit WAV)."
    )
    parser.add_argument("path", nargs="?", default="example.wav", help="default: example.wav")
    parser.add_argument("--seconds", type=float, default=16.0, help="length (default 16)")
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    sf.write(args.path, example_song(args.seconds), RATE, subtype="PCM_16")
    print(f"wrote {args.path} ({args.seconds:g} s synthetic song)")


if __name__ == "__main__":
    main()
