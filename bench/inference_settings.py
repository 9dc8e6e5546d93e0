"""Separation quality against speed for the engine's settings (prints a table; not a test).

For one checkpoint (default: the embedded default), each row is a chunk length, an overlap and
test-time augmentation on or off. Columns: mean global SDR per stem on the MUSDB `valid` split
(the 14 tracks training validates on, never the test set, so choosing the defaults here does not
tune on the test scores), and the speed as a multiple of real time on 60 s of the synthesized
example song, model forwards and overlap-add only (no decoding or start-up).

    python bench/inference_settings.py --musdb ../shared/data/musdb18-7
    python bench/inference_settings.py             # speed only
    python bench/inference_settings.py -m runs/x/best.safetensors --musdb ... --setting 4,0.5
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SETTINGS = [  # (segment seconds, overlap, tta)
    (4.0, 0.25, False),
    (2.0, 0.5, False),
    (3.0, 0.5, False),
    (4.0, 0.5, False),
    (3.0, 0.75, False),
    (4.0, 0.75, False),
    (8.0, 0.25, False),
    (4.0, 0.25, True),
    (3.0, 0.5, True),
]


def parse_setting(text: str) -> tuple[float, float, bool]:
    parts = text.split(",")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "tta"):
        raise argparse.ArgumentTypeError(f"expected SECONDS,OVERLAP[,tta], got {text!r}")
    return float(parts[0]), float(parts[1]), len(parts) == 3


def speed(demixer, audio: np.ndarray, rate: int) -> float:
    start = time.perf_counter()
    demixer.separate(audio)
    return audio.shape[-1] / rate / (time.perf_counter() - start)


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    from sepcli.allocator import keep_freed_memory
    from sepcli.checkpoints import load_model
    from sepcli.data import load_musdb_stems
    from sepcli.engine import Demixer
    from sepcli.example import RATE, example_song
    from sepcli.train import score_tracks

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", default="default")
    parser.add_argument("--musdb", type=Path, help="MUSDB18 root; without it, speed only")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--setting",
        action="append",
        type=parse_setting,
        help="only this row: SECONDS,OVERLAP or SECONDS,OVERLAP,tta (repeatable)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    loaded = load_model(args.model)
    tracks = []
    if args.musdb:
        _, tracks, _ = load_musdb_stems(args.musdb, "train", "valid", False)
    audio = np.ascontiguousarray(example_song(60.0).T, dtype=np.float32)

    rows = []
    for segment, overlap, tta in args.setting or SETTINGS:
        chunk = int(segment * loaded.model.sample_rate)
        demixer = Demixer(loaded.model, chunk, overlap, batch_size=4, tta=tta)
        row = {
            "segment": segment,
            "overlap": overlap,
            "tta": tta,
            "speed": speed(demixer, audio, RATE),
        }
        if tracks:
            row["sdr"] = score_tracks(demixer, tracks)
        rows.append(row)
        print(json.dumps(row), flush=True)

    table = Table(title=f"{loaded.name}: inference settings, {args.threads} CPU threads")
    for column in ("segment (s)", "overlap", "TTA", "× real time"):
        table.add_column(column, justify="right")
    if tracks:
        for column in (*loaded.model.sources, "mean"):
            table.add_column(f"{column} (dB)", justify="right")
    for row in rows:
        cells = [f"{row['segment']:g}", f"{row['overlap']:g}", "yes" if row["tta"] else "no",
                 f"{row['speed']:.1f}"]  # fmt: skip
        if tracks:
            values = list(row["sdr"].values())
            cells += [f"{v:.2f}" for v in values] + [f"{np.mean(values):.3f}"]
        table.add_row(*cells)
    Console().print(table)


if __name__ == "__main__":
    main()
