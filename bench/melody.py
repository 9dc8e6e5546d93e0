"""Vocal melody transcription against baselines on held-out MIR-1K singers (prints a table).

    pip install -e ".[melody-baselines]"
    python bench/melody.py --data ../shared/data/mir-1k --tracks 'bug_*' --tracks 'stool_*' \\
        --tracks 'khair_*' -m runs/melody/best.safetensors [--every N] [--crepe-model tiny]

Every method sees the clip's own 0 dB mix (MIR-1K's usual condition) and is scored with
mir_eval against `pitch.pv`:
    pyin-mix     pYIN (librosa) on the mixture;
    pyin-sep     pYIN on the vocals separated by sepcli's embedded default;
    crepe-sep    CREPE (torchcrepe, `full` by default, its weights ship in its package; 20 ms
                 hop; voiced where its periodicity is at least 0.5) on the same vocals;
    crepe-sep*   the same, with the periodicity threshold that scores best on these very clips
                 (an upper bound for CREPE: tuned on the test clips);
    sepcli       the fine-tuned Mel-RoFormer (`-m`, its own voicing threshold) on the mixture;
    sepcli-sep   the same on the separated vocals (separating first: what a user might try);
    sepcli-voice the same on the clip's clean voice alone: not a method (a mix has no clean
                 voice) but the ceiling, so the table shows how much the accompaniment costs.
Every method gives its pitch guess on unvoiced frames as a negative frequency (MIREX), so raw
pitch and chroma accuracy measure pitch alone. Means over clips with standard errors, and each
baseline's paired difference to sepcli.
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from eval.melody import mirex_contour  # noqa: E402

FMIN, FMAX = 65.0, 1047.0  # C2..C6, the transcriber's grid


def pyin(audio: np.ndarray, rate: int) -> tuple[np.ndarray, np.ndarray]:
    import librosa

    hop = rate // 100
    f0, voiced, _ = librosa.pyin(audio, fmin=FMIN, fmax=FMAX, sr=rate,
                                 frame_length=4 * 2 ** int(np.ceil(np.log2(rate / 100))),
                                 hop_length=hop, fill_na=None)  # fmt: skip
    # fill_na=None: unvoiced frames keep pYIN's best guess, given as a negative frequency
    f0 = np.where(np.isfinite(f0), f0, 0.0)
    return np.arange(len(f0)) * hop / rate, mirex_contour(f0, voiced.astype(float), 0.5)


def crepe(audio: np.ndarray, rate: int, model: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(times, f0 of every frame, periodicity)."""
    try:
        import torchaudio  # noqa: F401
    except (ImportError, OSError):
        # torchcrepe imports torchaudio for its file loader only, which this bench does not use;
        # a torchaudio that does not match the installed torch fails to import.
        sys.modules["torchaudio"] = types.ModuleType("torchaudio")
    import torch
    import torchcrepe

    x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None]
    hop = rate // 50  # 20 ms, MIR-1K's label hop
    f0, periodicity = torchcrepe.predict(x, rate, hop, FMIN, FMAX, model, batch_size=256,
                                         device="cpu", return_periodicity=True)  # fmt: skip
    f0, periodicity = f0[0].numpy(), periodicity[0].numpy()
    return np.arange(len(f0)) * hop / rate, f0, periodicity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--tracks", action="append", required=True)
    parser.add_argument("-m", "--model", required=True)
    parser.add_argument("--every", type=int, default=1, help="Only every Nth clip (sorted).")
    parser.add_argument("--crepe-model", default="full", help="torchcrepe's full or tiny.")
    args = parser.parse_args()
    from rich.console import Console
    from rich.table import Table

    import sepcli
    from eval.melody import melody_scores
    from sepcli import datasets, melody
    from sepcli import transcribe as runner

    tracks = [t for t in datasets.eval_tracks(args.data, args.tracks)
              if (Path(t.path) / "pitch.pv").is_file()]  # fmt: skip
    tracks = tracks[:: args.every]
    separator = sepcli.load("default")
    _, model, _ = runner.load_melody(args.model)
    methods = ("pyin-mix", "pyin-sep", "crepe-sep", "sepcli", "sepcli-sep", "sepcli-voice")
    scores: dict[str, list[dict]] = {m: [] for m in methods}
    seconds = dict.fromkeys(methods + ("separation",), 0.0)
    crepe_raw, references = [], []
    for i, track in enumerate(tracks):
        mixture, stems, rate, _ = track.read()
        mix = np.ascontiguousarray(mixture.T, dtype=np.float32)  # [C, T]
        voice = np.ascontiguousarray(stems["vocals"].T, dtype=np.float32)
        ref_times, ref_midi = melody.read_pv(Path(track.path) / "pitch.pv")
        ref_hz = melody.midi_to_hz(ref_midi)
        start = time.perf_counter()
        vocals = separator.separate(mix, rate)["vocals"].mean(axis=0)
        seconds["separation"] += time.perf_counter() - start
        runs = {
            "pyin-mix": lambda: pyin(mix.mean(axis=0), rate),
            "pyin-sep": lambda: pyin(vocals, rate),
            "crepe-sep": lambda: crepe(vocals, rate, args.crepe_model),
            "sepcli": lambda: runner.scoring_contour(model, mix, rate),
            "sepcli-sep": lambda: runner.scoring_contour(model, vocals[None], rate),
            "sepcli-voice": lambda: runner.scoring_contour(model, voice, rate),
        }
        for name, run in runs.items():
            start = time.perf_counter()
            times, hz, *confidence = run()
            seconds[name] += time.perf_counter() - start
            if confidence:
                crepe_raw.append((times, hz, confidence[0]))
                hz = mirex_contour(hz, confidence[0], 0.5)
            scores[name].append(melody_scores(ref_times, ref_hz, times, hz))
        references.append((ref_times, ref_hz))
        print(f"{i + 1}/{len(tracks)} {track.name}", file=sys.stderr)
    threshold, tuned = _best_threshold(crepe_raw, references, melody_scores)
    methods = (*methods[:3], f"crepe-sep* ({threshold:.2f})", *methods[3:])  # after crepe-sep
    scores[methods[3]], seconds[methods[3]] = tuned, seconds["crepe-sep"]
    keys = ("raw_pitch_accuracy", "raw_chroma_accuracy", "voicing_recall",
            "voicing_false_alarm", "overall_accuracy")  # fmt: skip
    table = Table(title=f"Melody on {len(tracks)} held-out MIR-1K clips at 0 dB (mean ± s.e., %)")
    for column in ("method", "RPA", "RCA", "VR", "VFA", "OA", "OA vs sepcli (paired)", "s/clip"):
        table.add_column(column, justify="right")
    ours = np.array([s["overall_accuracy"] for s in scores["sepcli"]])
    for name in methods:
        cells = []
        for key in keys:
            values = np.array([s[key] for s in scores[name]]) * 100
            values = values[np.isfinite(values)]
            cells.append(f"{values.mean():.1f} ± {values.std(ddof=1) / np.sqrt(len(values)):.1f}")
        diff = (np.array([s["overall_accuracy"] for s in scores[name]]) - ours) * 100
        paired = (
            ""
            if name == "sepcli"
            else f"{diff.mean():+.1f} ± {diff.std(ddof=1) / np.sqrt(len(diff)):.1f}"
        )
        extra = seconds["separation"] if "-sep" in name else 0.0
        table.add_row(name, *cells, paired, f"{(seconds[name] + extra) / len(tracks):.2f}")
    Console(width=160).print(table)


def _best_threshold(raw: list, references: list, melody_scores) -> tuple[float, list[dict]]:
    """CREPE's periodicity threshold with the best mean overall accuracy on these clips."""
    best: tuple[float, list[dict]] = (0.5, [])
    best_accuracy = -1.0
    for threshold in np.round(np.arange(0.05, 0.951, 0.05), 2):
        per_clip = [melody_scores(rt, rh, t, mirex_contour(f0, p, threshold))
                    for (t, f0, p), (rt, rh) in zip(raw, references)]  # fmt: skip
        accuracy = float(np.mean([s["overall_accuracy"] for s in per_clip]))
        if accuracy > best_accuracy:
            best, best_accuracy = (float(threshold), per_clip), accuracy
    return best


if __name__ == "__main__":
    main()
