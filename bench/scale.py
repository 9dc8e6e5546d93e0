"""Separating a library on several processes: wall time and load balance (prints a table).

    python bench/scale.py [--model default] [--seconds 10,20,30,45,60,80,100,120]

Eight tracks of mixed length (the example song, 10-120 s) on this machine's cores, three ways:
one process with all threads; `--jobs 2` (two processes, one thread each, one shared queue);
and `--shard 1/2` and `--shard 2/2` started at once (one thread each, a static split). Busy time
is the sum of each rank's track times from the JSON report: a balanced run keeps every rank
busy until the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run(cmds: list[list[str]], env: dict) -> tuple[float, dict[str, float]]:
    start = time.perf_counter()
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              env=env) for c in cmds]  # fmt: skip
    outs = [p.communicate()[0] for p in procs]
    wall = time.perf_counter() - start
    busy: dict[str, float] = {}
    for k, out in enumerate(outs):
        for track in json.loads(out)["tracks"]:
            rank = f"shard {k + 1}" if len(cmds) > 1 else f"rank {track.get('rank', 0)}"
            busy[rank] = busy.get(rank, 0.0) + track["seconds"]
    return wall, busy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--seconds", default="10,20,30,45,60,80,100,120")
    args = parser.parse_args()
    from rich.console import Console
    from rich.table import Table

    from sepcli.example import example_song

    import soundfile as sf

    lengths = [float(s) for s in args.seconds.split(",")]
    table = Table(title=f"{len(lengths)} tracks, {sum(lengths):.0f} s of audio, model {args.model}, "
                  f"{os.cpu_count()} cores")  # fmt: skip
    for column in ("setup", "wall s", "x real time", "busy s per rank", "balance (min/max busy)"):
        table.add_column(column, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        music = Path(tmp) / "music"
        music.mkdir()
        for i, seconds in enumerate(lengths):
            sf.write(
                music / f"track{i}.wav", example_song(seconds, seed=i), 44100, subtype="PCM_16"
            )
        base = [sys.executable, "-m", "sepcli", "separate", str(music), "-r", "-m", args.model,
                "--json", "-q", "--overwrite"]  # fmt: skip
        one = {**os.environ}
        single = {**os.environ, "OMP_NUM_THREADS": "1"}
        setups = {
            f"1 process x {os.cpu_count()} threads": ([base + ["-o", f"{tmp}/a"]], one),
            "--jobs 2 (shared queue)": ([base + ["-o", f"{tmp}/b", "--jobs", "2"]], one),
            "--shard 1/2 + 2/2 at once": (
                [base + ["-o", f"{tmp}/c", "--shard", f"{k}/2"] for k in (1, 2)],
                single,
            ),  # fmt: skip
        }
        for name, (cmds, env) in setups.items():
            wall, busy = run(cmds, env)
            values = sorted(busy.values())
            table.add_row(name, f"{wall:.1f}", f"{sum(lengths) / wall:.2f}",
                          ", ".join(f"{k} {v:.1f}" for k, v in sorted(busy.items())),
                          f"{values[0] / values[-1]:.2f}")  # fmt: skip
    Console(width=150).print(table)


if __name__ == "__main__":
    main()
