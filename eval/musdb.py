"""The evaluation runner: separate each track (MUSDB, or any stem folder the CLI reads), score it
in a process pool, cache the per-track result.

Separation runs in this process while finished tracks are scored by `jobs` worker processes, so
scoring never waits behind separation. Each track's scores go to `tracks/<name>.scores.json` and
museval's own JSON to `tracks/<name>.json`; a rerun with the same model and settings (the cache
key) reuses them, and a different key clears them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from eval.metrics import bss_eval, global_sdr, nan_median, nsdr_v3

STEMS = ("vocals", "drums", "bass", "other")
# (mix [T, C], references {stem: [T, C]}, rate) -> {stem: [T, C]}; only oracles read the
# references.
Separate = Callable[[np.ndarray, dict[str, np.ndarray], int], dict[str, np.ndarray]]


def score_track(name: str, references: dict[str, np.ndarray], estimates: dict[str, np.ndarray],
                rate: int, out: Path | None, extra: dict[str, Any],
                mixture: np.ndarray | None = None) -> dict[str, Any]:  # fmt: skip
    """museval BSSEval v4 (all estimated stems jointly) and global SDR for one track; for a
    vocals + accompaniment track with its `mixture`, also BSS Eval v3 NSDR (MIR-1K's measure)."""
    import museval

    stems = [s for s in estimates if s in references]
    refs = np.stack([references[s] for s in stems])
    ests = np.stack([estimates[s] for s in stems])
    frames = bss_eval(refs, ests, rate)
    store = museval.TrackStore(track_name=name, win=1.0, hop=1.0)
    scores = {}
    for i, stem in enumerate(stems):
        values = {m: frames[m][i].tolist() for m in ("SDR", "SIR", "ISR", "SAR")}
        store.add_target(target_name=stem, values=values)
        scores[stem] = {m: nan_median(frames[m][i]) for m in ("SDR", "SIR", "ISR", "SAR")}
        scores[stem]["global_sdr"] = global_sdr(references[stem], estimates[stem])
    record = {"name": name, "scores": scores, "length": int(refs.shape[1]), **extra}
    two_stems = set(references) == {"vocals", "accompaniment"} and set(stems) == set(references)
    audible = all(np.any(references[s]) for s in stems)
    if two_stems and mixture is not None and audible:
        for stem, values in nsdr_v3(references, estimates, mixture).items():
            scores[stem].update(values)
    if out is not None:
        _write_atomic(out / f"{_safe(name)}.json", store.json)
        # Written last: its presence is what marks the track as done for a rerun.
        _write_atomic(out / f"{_safe(name)}.scores.json", json.dumps(record))
    return record


class TrackReadError(Exception):
    """A MUSDB track that cannot be decoded, named with its file."""


def _which_file_failed(folder: Path, err: Exception) -> str:
    """musdb probes every `.stem.mp4` when it opens a subset; find the one ffprobe refuses."""
    for path in sorted(folder.glob("*.stem.mp4")):
        probe = subprocess.run(
            ["ffprobe", "-v", "error", "-show_entries", "stream=codec_type", "-of", "json", str(path)],
            capture_output=True, text=True, errors="replace", timeout=60,
        )  # fmt: skip
        if probe.returncode != 0 or '"audio"' not in probe.stdout:
            reason = probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else "no audio"
            return f"{path}: cannot read this track (ffprobe: {reason})"
    return f"cannot open the MUSDB tracks in {folder} ({_first_line(err)})"


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _write_atomic(path: Path, text: str) -> None:
    """Write beside `path`, then rename: a killed run leaves no truncated cache file."""
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(text)
    os.replace(tmp, path)


def _cached_record(path: Path) -> dict[str, Any] | None:
    """A finished track's record, or None if it was never scored or its file is unreadable."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _one_blas_thread() -> None:
    # BSSEval's time goes into numpy.linalg.solve, which BLAS already spreads over every core;
    # with several workers that oversubscribes the CPU, so each worker keeps to one thread.
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def _safe(name: str) -> str:
    return name.replace("/", "_")


def check_subset(subset: str, split: str | None) -> None:
    """musdb itself takes any split name as "all tracks" and rejects a test split mid-run."""
    if subset not in ("train", "test"):
        raise ValueError(f"unknown subset '{subset}' (use test or train)")
    if split is not None and split not in ("train", "valid"):
        raise ValueError(f"unknown split '{split}' (use train or valid)")
    if split is not None and subset != "train":
        raise ValueError(f"--split {split} needs --subset train (the valid split is part of train)")


def layout_hint(root: Path, subset: str, is_wav: bool) -> str:
    """Why `root` gave no tracks, when the other MUSDB layout (or no subset folder) explains it."""
    folder = Path(root) / subset
    if not folder.is_dir():
        return f": there is no folder {folder}"
    stem_files = any(folder.glob("*.stem.mp4"))
    wav_folders = any(folder.glob("*/mixture.wav"))
    if is_wav and stem_files and not wav_folders:
        return ": it holds .stem.mp4 files (MUSDB18); drop --is-wav"
    if not is_wav and wav_folders and not stem_files:
        return ": it holds folders of WAV stems (MUSDB18-HQ); add --is-wav"
    return ""


def musdb_tracks(root: Path, subset: str, split: str | None, is_wav: bool, names: list[str] | None):
    import musdb  # lazy: stempeg refuses to import without ffmpeg

    check_subset(subset, split)
    try:
        db = musdb.DB(root=str(root), subsets=subset, split=split, is_wav=is_wav)
    except Exception as err:  # noqa: BLE001 - stempeg raises a bare Error naming no file
        raise TrackReadError(_which_file_failed(Path(root) / subset, err))
    tracks = list(db)
    if names:
        missing = sorted(set(names) - {t.name for t in tracks})
        if missing:
            raise ValueError(f"track(s) not in {root} ({subset}): {', '.join(missing)}")
        tracks = [t for t in tracks if t.name in names]
    if not tracks:
        raise ValueError(
            f"no MUSDB tracks found in {root} (subset {subset}){layout_hint(root, subset, is_wav)}"
        )
    return tracks


def model_input(track) -> tuple[np.ndarray, dict[str, np.ndarray], str]:
    """(mixture [T, C], references, which mixture): the stems' sum when the stored mix differs."""
    references = {s: track.targets[s].audio.astype(np.float64) for s in STEMS}
    stems_sum = sum(references.values())
    references["accompaniment"] = stems_sum - references["vocals"]
    stored = track.audio.astype(np.float64)
    if stored.shape == stems_sum.shape and np.max(np.abs(stored - stems_sum)) < 1e-4:
        return stored, references, "stored mixture"
    return stems_sum, references, "sum of stems"


@dataclasses.dataclass
class EvalTrack:
    """A track to score: its name, and how to read it: (mixture [T, C], references
    {stem: [T, C]}, their rate, which mixture) as float64."""

    name: str
    path: str
    read: Callable[[], tuple[np.ndarray, dict[str, np.ndarray], int, str]]


def musdb_eval_tracks(root: Path, subset: str, split: str | None, is_wav: bool,
                      names: list[str] | None) -> list[EvalTrack]:  # fmt: skip
    def reader(track):
        def read():
            mix, references, source = model_input(track)
            return mix, references, track.rate, source

        return read

    return [EvalTrack(t.name, str(t.path), reader(t))
            for t in musdb_tracks(root, subset, split, is_wav, names)]  # fmt: skip


def derived_estimates(estimates: dict[str, np.ndarray], references: dict[str, np.ndarray],
                      mix: np.ndarray) -> dict[str, np.ndarray]:  # fmt: skip
    """Estimates for references the model has no source for: `accompaniment` is the mixture
    minus a vocals-only model's vocals, or a multi-stem model's other stems summed where the
    references do not split it (a vocals + accompaniment folder)."""
    estimates = dict(estimates)
    if "accompaniment" in references and "accompaniment" not in estimates and "vocals" in estimates:
        if len(estimates) == 1:
            estimates["accompaniment"] = mix - estimates["vocals"]
        elif not all(s in references for s in ("drums", "bass", "other")):
            estimates["accompaniment"] = sum(e for s, e in estimates.items() if s != "vocals")
    return estimates


def _rescore_rate(arrays: dict[str, np.ndarray], rate: int, score_rate: int | None):
    if score_rate is None or score_rate == rate:
        return arrays
    import soxr

    return {k: soxr.resample(v, rate, score_rate, quality="HQ") for k, v in arrays.items()}


def evaluate(separate: Separate, label: str, tracks: list[EvalTrack], out: Path,
             settings: dict[str, Any], jobs: int = 1,
             on_track: Callable[[dict[str, Any]], None] | None = None,
             score_rate: int | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Score `separate` on `tracks`; returns per-track records (cached ones included).

    `separate(mix [T, C], references, rate)` returns estimates {stem: [T, C]} at `rate`.
    Scores are computed at the references' rate, or at `score_rate` when given (MIR-1K's own
    measure is at 16 kHz).
    """
    track_dir = out / "tracks"
    key = hashlib.sha256(
        json.dumps(
            {"model": label, "score_rate": score_rate, **settings}, sort_keys=True, default=str
        ).encode()  # fmt: skip
    ).hexdigest()
    key_file = out / "cache_key"
    if key_file.exists() and key_file.read_text() != key and track_dir.exists():
        shutil.rmtree(track_dir)
    track_dir.mkdir(parents=True, exist_ok=True)
    key_file.write_text(key)

    records: list[dict[str, Any]] = []
    pool = ProcessPoolExecutor(jobs, initializer=_one_blas_thread) if jobs > 1 else None
    futures: list[Future] = []
    try:
        for track in tracks:
            cached = _cached_record(track_dir / f"{_safe(track.name)}.scores.json")
            if cached is not None:
                records.append(cached)
                if on_track:
                    on_track(records[-1])
                continue
            try:
                mix, references, rate, source = track.read()
            except Exception as err:  # noqa: BLE001 - musdb/stempeg raise bare Exceptions
                raise TrackReadError(f"{track.path}: cannot read this track ({_first_line(err)})")
            estimates = derived_estimates(separate(mix, references, rate), references, mix)
            both = _rescore_rate({**{f"r:{k}": v for k, v in references.items()},
                                  **{f"e:{k}": v for k, v in estimates.items()}, "mix": mix},
                                 rate, score_rate)  # fmt: skip
            references = {k[2:]: v for k, v in both.items() if k.startswith("r:")}
            estimates = {k[2:]: v for k, v in both.items() if k.startswith("e:")}
            args = (track.name, references, estimates, score_rate or rate, track_dir,
                    {"input": source}, both["mix"])  # fmt: skip
            if pool is None:
                records.append(score_track(*args))
                if on_track:
                    on_track(records[-1])
            else:
                future = pool.submit(score_track, *args)
                if on_track:
                    future.add_done_callback(
                        lambda f: on_track(f.result()) if not f.exception() else None
                    )
                futures.append(future)
        records.extend(f.result() for f in futures)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return records
