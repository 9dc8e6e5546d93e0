"""Evaluation benchmark (prints a table; not a test).

Wall time to score the shared MUSDB test previews with the IRM2 oracle three ways, in one run:
museval called directly in a loop (`museval.eval_mus_track`, the usual research script), and
sepcli's runner with `--jobs 1` and `--jobs 2`. Every variant does the same work: decode, oracle,
BSSEval v4 on all four stems. The runner's cache is disabled by a fresh output folder per run.

    python bench/eval.py [--musdb ../shared/data/musdb18-7] [--tracks N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STEMS = ("vocals", "drums", "bass", "other")


def museval_loop(root: Path, names: list[str]) -> float:
    import musdb
    import museval

    from eval.musdb import model_input
    from eval.oracle import oracle_estimates

    start = time.perf_counter()
    for track in musdb.DB(root=str(root), subsets="test"):
        if track.name not in names:
            continue
        _, references, _ = model_input(track)
        estimates = oracle_estimates("irm2", {s: references[s] for s in STEMS})
        museval.eval_mus_track(track, estimates)
    return time.perf_counter() - start


def sepcli_runner(root: Path, names: list[str], jobs: int) -> tuple[float, float]:
    from eval.musdb import evaluate
    from eval.oracle import oracle_estimates
    from eval.report import aggregate

    def separate(mix: np.ndarray, references: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return oracle_estimates("irm2", {s: references[s] for s in STEMS})

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        records = evaluate(
            separate, "oracle-irm2", root, Path(tmp), {"bench": jobs}, names=names, jobs=jobs
        )
        elapsed = time.perf_counter() - start
    vocals = aggregate(records)["stems"]["vocals"]["museval_sdr_median"]
    return elapsed, vocals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--musdb", type=Path, default=Path(__file__).parents[2] / "shared/data/musdb18-7"
    )
    parser.add_argument("--tracks", type=int, default=25)
    args = parser.parse_args()

    import musdb
    from rich.console import Console
    from rich.table import Table

    names = [t.name for t in musdb.DB(root=str(args.musdb), subsets="test")][: args.tracks]
    rows = [("museval.eval_mus_track loop", museval_loop(args.musdb, names), None)]
    for jobs in (1, 2):
        elapsed, vocals = sepcli_runner(args.musdb, names, jobs)
        rows.append((f"sepcli evaluate --jobs {jobs}", elapsed, vocals))

    baseline = rows[0][1]
    table = Table(title=f"IRM2 oracle on {len(names)} MUSDB test previews")
    for column in ("variant", "wall s", "s / track", "speed-up vs museval loop", "vocals SDR"):
        table.add_column(column, justify="right")
    for label, elapsed, vocals in rows:
        table.add_row(
            label,
            f"{elapsed:.1f}",
            f"{elapsed / len(names):.2f}",
            f"{baseline / elapsed:.2f}x",
            "" if vocals is None else f"{vocals:.2f}",
        )
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
