"""Ensembles: wall time and peak memory against one model, at two track lengths (prints a table).

    python bench/ensemble.py [--models default,default] [--seconds 30,120] [--ensemble max_fft]

Each row is one `sepcli separate` in a fresh process (peak RSS from the kernel's count for that
process). Streaming keeps an ensemble's memory flat in the track's length: the 4x longer track
should need about the same peak, and the ensemble about the sum of its models' time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MEASURE = """
import resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
wall = time.perf_counter() - start
print(code, wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def measure(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one command."""
    out = subprocess.run([sys.executable, "-c", MEASURE, *command], capture_output=True,
                         text=True, check=True).stdout.split()  # fmt: skip
    if out[0] != "0":
        raise SystemExit(f"failed: {' '.join(command)}")
    return float(out[1]), int(out[2]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="default,default")
    parser.add_argument("--seconds", default="30,120")
    parser.add_argument("--ensemble", default="max_fft")
    args = parser.parse_args()
    import soundfile as sf
    from rich.console import Console
    from rich.table import Table

    from sepcli.example import example_song

    models = args.models.split(",")
    table = Table(title=f"{os.cpu_count()} cores; {args.ensemble} of {', '.join(models)}")
    for column in ("setup", "track s", "wall s", "x one model", "peak RSS MB"):
        table.add_column(column, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        for seconds in (float(s) for s in args.seconds.split(",")):
            song = Path(tmp) / f"song{seconds:g}.wav"
            sf.write(song, example_song(seconds, seed=1), 44100, subtype="PCM_16")
            base = [sys.executable, "-m", "sepcli", "separate", str(song), "-o", f"{tmp}/out",
                    "--overwrite", "-q"]  # fmt: skip
            one_wall, one_rss = measure([*base, "-m", models[0]])
            table.add_row(f"-m {models[0]}", f"{seconds:g}", f"{one_wall:.1f}", "1.00",
                          f"{one_rss:.0f}")  # fmt: skip
            many = [a for m in models for a in ("-m", m)]
            wall, rss = measure([*base, *many, "--ensemble", args.ensemble])
            table.add_row(f"{len(models)} models, {args.ensemble}", f"{seconds:g}", f"{wall:.1f}",
                          f"{wall / one_wall:.2f}", f"{rss:.0f}")  # fmt: skip
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
