"""Does `torch.compile` pay off on the CPU? Separating 60 s with the embedded default, eager
against compiled, wall time with loading and compiling included (prints a table).

    python bench/compile.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    from rich.console import Console
    from rich.table import Table

    import sepcli
    from sepcli.example import example_song

    audio = example_song(args.seconds).T
    table = Table(title=f"default, fp32, {args.seconds:g} s, {torch.get_num_threads()} threads")
    for column in ("mode", "wall s (load + compile + separate)", "x eager"):
        table.add_column(column, justify="right")
    eager = None
    for mode in ("eager", "compiled"):
        start = time.perf_counter()
        sep = sepcli.load("default", precision="fp32")
        if mode == "compiled":
            sep.demixer.model = torch.compile(sep.demixer.model, dynamic=False)
        sep.separate(audio, 44100)
        wall = time.perf_counter() - start
        eager = eager or wall
        table.add_row(mode, f"{wall:.1f}", f"{wall / eager:.2f}")
    Console(width=100).print(table)


if __name__ == "__main__":
    main()
